//! `archway build`: Dockerfiles → multi-platform images, daemonless and reproducible.
//! Kaniko's executor flags are accepted as aliases, so a Kaniko job moves over by changing
//! one line.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use archway_build::{BuildError, BuildEvent, BuildRequest, Builder, ProgressSink, RegistrySource};
use archway_client::copy::{CopyOptions, Selection};
use archway_client::{Location, copy};
use archway_oci::Platform;
use clap::{Args, Subcommand};

use super::common::{Format, RegistryArgs, human_bytes, print_json};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BuildArgs {
    #[command(subcommand)]
    command: Option<BuildCommand>,
    /// Build context directory.
    #[arg(value_name = "CONTEXT")]
    context_pos: Option<PathBuf>,
    /// Build context (Kaniko's --context; `dir://` prefix accepted).
    #[arg(long = "context", value_name = "DIR", conflicts_with = "context_pos")]
    context_flag: Option<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile). Kaniko: --dockerfile.
    #[arg(
        short = 'f',
        long = "file",
        visible_alias = "dockerfile",
        value_name = "FILE"
    )]
    file: Option<PathBuf>,
    /// Platforms to build, comma-separated or repeated (default: this machine's).
    /// Kaniko: --custom-platform.
    #[arg(
        long = "platform",
        visible_alias = "custom-platform",
        value_name = "PLATFORMS"
    )]
    platforms: Vec<String>,
    /// Name for the result (repeatable); pushed with --push. Kaniko: --destination (pushes
    /// unless --no-push).
    #[arg(short = 't', long = "tag", value_name = "REF")]
    tags: Vec<String>,
    /// Kaniko's --destination: a tag that is pushed.
    #[arg(long = "destination", value_name = "REF", hide = true)]
    destinations: Vec<String>,
    /// Push the tags to their registries.
    #[arg(long)]
    push: bool,
    /// Kaniko: build without pushing the destinations.
    #[arg(long)]
    no_push: bool,
    /// Also write the result as `oci:DIR[:TAG]` (an OCI layout) or `tar:FILE` (an OCI
    /// archive); repeatable.
    #[arg(long = "output", short = 'o', value_name = "DEST")]
    outputs: Vec<String>,
    /// Kaniko: write an OCI archive here.
    #[arg(long = "tar-path", value_name = "FILE", hide = true)]
    tar_path: Option<PathBuf>,
    /// Build argument (repeatable), KEY=VALUE.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
    /// Build this stage (name or index) instead of the last.
    #[arg(long)]
    target: Option<String>,
    /// Secret for `RUN --mount=type=secret` (repeatable): id=NAME,src=FILE.
    #[arg(long = "secret", value_name = "id=NAME,src=FILE")]
    secrets: Vec<String>,
    /// Label to add to the image config (repeatable), KEY=VALUE.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Do not reuse cached steps.
    #[arg(long)]
    no_cache: bool,
    /// Share the step cache through this registry repository (Kaniko: --cache-repo).
    #[arg(long, value_name = "REF")]
    cache_repo: Option<String>,
    /// Kaniko: --cache=true|false (use the --cache-repo).
    #[arg(long, value_name = "BOOL", hide = true)]
    cache: Option<bool>,
    /// Local store for layers, cache and snapshots (default: ~/.cache/archway/build).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Only check the Dockerfile (all stages, every platform's ARG expansion) and print
    /// diagnostics, like `docker build --check`: no network, and sources missing from the
    /// context (or a context that is not there) are warnings, not errors.
    #[arg(long)]
    check: bool,
    /// After the build, prune the build store down to this size, least recently used first
    /// (BuildKit's GC policy; e.g. 20GB, or 10% of the disk, the default). `0` turns it off.
    #[arg(long, value_name = "SIZE|N%", env = "ARCHWAY_BUILD_KEEP_STORAGE")]
    keep_storage: Option<String>,
    /// Kaniko: builds are always reproducible; accepted for compatibility.
    #[arg(long, hide = true)]
    reproducible: bool,
    /// OCI runtime for RUN steps: crun, runc or a path (default: see `archway doctor`).
    #[arg(long, env = "ARCHWAY_RUNTIME")]
    runtime: Option<String>,
    /// Kill a RUN step that runs longer than this (e.g. 20m).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    step_timeout: Option<std::time::Duration>,
    /// Attach an SPDX SBOM (the packages of each platform's image: dpkg, apk, busybox) to
    /// each pushed image, as an OCI 1.1 referrer (`archway image referrers` lists them). On by
    /// default with `--push`; `--sbom=false` turns it off.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    sbom: Option<bool>,
    /// Attach SLSA v1 provenance (in-toto): base images by digest, the Dockerfile's digest,
    /// build arguments, the source commit, the builder; timestamps from SOURCE_DATE_EPOCH
    /// when set, so reproducible builds keep reproducible attestations. On by default with
    /// `--push`; `--provenance=false` turns it off. The builder id comes from
    /// ARCHWAY_BUILDER_ID (default: CI_JOB_URL in a CI job, else urn:archway:build).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    provenance: Option<bool>,
    /// Sign each pushed image with this key (ECDSA P-256 PEM, see `archway sign
    /// --generate-key`): cosign-compatible signature attachments, the index and each platform.
    #[arg(long, value_name = "FILE")]
    sign_key: Option<PathBuf>,
    /// Pull `FROM` images of a registry from a mirror first (repeatable), e.g.
    /// `docker.io=mirror.internal:5000/hub`, as dockerd's `registry-mirrors`; the registry
    /// itself is tried when the mirror fails.
    #[arg(
        long = "registry-mirror",
        value_name = "REGISTRY=HOST[/PREFIX]",
        env = "ARCHWAY_REGISTRY_MIRRORS",
        value_delimiter = ','
    )]
    registry_mirrors: Vec<archway_client::mirror::Mirror>,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
    /// Summary format on stdout.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Subcommand)]
enum BuildCommand {
    /// Remove build-store content no running build uses: snapshots, exploded layers, step
    /// cache, pulled images, cache mounts, downloads (like `docker builder prune -a`).
    ///
    /// Examples:
    ///   archway build prune                              # everything not in use
    ///   archway build prune --keep-storage 10GB          # least recently used first
    ///   archway build prune --filter until=24h --dry-run
    #[command(verbatim_doc_comment)]
    Prune(PruneArgs),
    /// Show what the build store holds, by kind, and what a prune could free.
    Du(DuArgs),
}

#[derive(Debug, Args)]
struct PruneArgs {
    /// Keep the most recently used content up to this size (e.g. 512MB, 10GB).
    #[arg(long, value_name = "SIZE", value_parser = archway_build::gc::parse_size)]
    keep_storage: Option<u64>,
    /// Only remove content unused for this long: `until=DURATION` (e.g. until=24h, until=7d).
    #[arg(long, value_name = "until=DURATION")]
    filter: Vec<String>,
    /// Only report what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// The build store (default: ~/.cache/archway/build).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, Args)]
struct DuArgs {
    /// The build store (default: ~/.cache/archway/build).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

enum Output {
    Layout(PathBuf, Option<String>),
    Tar(PathBuf),
}

fn parse_kv(items: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for kv in items {
        match kv.split_once('=') {
            Some((k, v)) => {
                out.insert(k.to_owned(), v.to_owned());
            }
            // `--build-arg NAME` takes the value from the environment, as docker does.
            None if what == "--build-arg" => {
                if let Ok(v) = std::env::var(kv) {
                    out.insert(kv.clone(), v);
                }
            }
            None => bail!("{what} `{kv}` is not KEY=VALUE"),
        }
    }
    Ok(out)
}

fn parse_secret(s: &str) -> anyhow::Result<(String, PathBuf)> {
    let mut id = None;
    let mut src = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("id", v)) => id = Some(v.to_owned()),
            Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
            Some(("type", "file")) => {}
            _ => bail!("--secret `{s}`: expected id=NAME,src=FILE"),
        }
    }
    match (id, src) {
        (Some(id), Some(src)) => {
            if !src.is_file() {
                bail!("--secret {id}: {} does not exist", src.display());
            }
            let src = std::fs::canonicalize(&src)
                .with_context(|| format!("--secret {id}: {}", src.display()))?;
            Ok((id, src))
        }
        _ => bail!("--secret `{s}`: expected id=NAME,src=FILE"),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reports an attestation push: an error when asked for explicitly, a warning when it was
/// only the default (a registry without OCI 1.1 referrers should not fail the push).
fn attested(
    n: anyhow::Result<usize>,
    explicit: bool,
    what: &str,
    off: &str,
    r: &archway_oci::Reference,
    quiet: bool,
) -> anyhow::Result<()> {
    match n {
        Ok(n) => {
            if !quiet {
                eprintln!(
                    "attached {n} {what}{} to {r}",
                    if n == 1 { "" } else { "s" }
                );
            }
            Ok(())
        }
        Err(e) if explicit => Err(e.context(format!("attaching the {what} to {r}"))),
        Err(e) => {
            eprintln!(
                "warning: the image is pushed but its {what} could not be attached to {r}: {e:#} ({off} skips it)"
            );
            Ok(())
        }
    }
}

/// What the provenance says about this build: its Dockerfile, arguments, base images and
/// source. Times are SOURCE_DATE_EPOCH when set (reproducible), else the build's own.
fn provenance_inputs(
    context: &std::path::Path,
    dockerfile: &std::path::Path,
    dockerfile_text: &str,
    req: &BuildRequest,
    result: &archway_build::BuildResult,
    started: u64,
) -> super::attest::ProvenanceInputs {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let epoch_set = env("SOURCE_DATE_EPOCH").is_some();
    let (started_on, finished_on) = if epoch_set {
        (req.source_date_epoch, req.source_date_epoch)
    } else {
        (started, now_secs())
    };
    let builder_id = env("ARCHWAY_BUILDER_ID")
        .or_else(|| env("CI_JOB_URL"))
        .unwrap_or_else(|| "urn:archway:build".to_owned());
    let invocation_id = env("CI_JOB_URL")
        .or_else(|| env("CI_JOB_ID"))
        .unwrap_or_else(|| result.tag.clone());
    // The source: the CI job's project and commit, else the context's git checkout.
    let git = |args: &[&str]| super::remote::git(context, args).filter(|s| !s.is_empty());
    let commit = env("CI_COMMIT_SHA").or_else(|| git(&["rev-parse", "HEAD"]));
    let origin = env("CI_PROJECT_URL").or_else(|| git(&["remote", "get-url", "origin"]));
    let source = commit.as_ref().map(|c| {
        let repo = origin.clone().unwrap_or_else(|| "local".to_owned());
        let repo = repo.strip_prefix("git+").unwrap_or(&repo).to_owned();
        format!("git+{repo}@{c}")
    });
    let source_digest = commit
        .filter(|c| c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|c| BTreeMap::from([("gitCommit".to_owned(), c)]))
        .unwrap_or_default();
    super::attest::ProvenanceInputs {
        build: archway_attest::provenance::BuildProvenance {
            subjects: Vec::new(),
            builder_id,
            builder_version: BTreeMap::from([(
                "archway".to_owned(),
                archway_attest::VERSION.to_owned(),
            )]),
            invocation_id,
            started_on,
            finished_on,
            source,
            source_digest,
            dockerfile: Some(archway_attest::provenance::DockerfileInput {
                // Relative to the context, so where the checkout lives does not matter.
                path: dockerfile
                    .strip_prefix(context)
                    .unwrap_or(dockerfile)
                    .to_string_lossy()
                    .into_owned(),
                digest: archway_oci::Digest::sha256(dockerfile_text.as_bytes()),
            }),
            build_args: req.build_args.clone(),
            target: req.target.clone(),
            platform: None,
            base_images: Vec::new(),
        },
        bases: result.bases.clone(),
    }
}

fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH=`{v}` is not a number of seconds")),
        _ => Ok(0),
    }
}

pub fn run(a: BuildArgs) -> anyhow::Result<ExitCode> {
    // Rootless with subordinate ids, the store's trees belong to ids only that namespace
    // can manage: builds, prune and du all run in it.
    let note = (a.command.is_none()).then_some("this build");
    if !a.check
        && let Some(code) = super::sandbox::rerun_with_subordinate_ids(note)?
    {
        return Ok(code);
    }
    match a.command {
        Some(BuildCommand::Prune(p)) => return prune(p),
        Some(BuildCommand::Du(d)) => return du(d),
        None => {}
    }
    let context = a
        .context_pos
        .clone()
        .or_else(|| {
            a.context_flag
                .as_ref()
                .map(|c| PathBuf::from(c.trim_start_matches("dir://")))
        })
        .unwrap_or_else(|| PathBuf::from("."));
    // `--check` judges the Dockerfile alone: it may run where the context is not.
    if !context.is_dir() && !a.check {
        bail!("build context {} is not a directory", context.display());
    }
    let dockerfile_path = a.file.clone().unwrap_or_else(|| context.join("Dockerfile"));
    let text = std::fs::read_to_string(&dockerfile_path).with_context(|| {
        format!(
            "reading {} (pass the Dockerfile with -f)",
            dockerfile_path.display()
        )
    })?;
    let display = dockerfile_path
        .strip_prefix("./")
        .unwrap_or(&dockerfile_path)
        .to_string_lossy()
        .into_owned();
    let (df, diags) = archway_build::dockerfile::parse(&display, &text);
    let mut platforms: Vec<Platform> = Vec::new();
    for p in &a.platforms {
        for x in archway_oci::platform::parse_list(p)? {
            if !platforms.contains(&x) {
                platforms.push(x);
            }
        }
    }
    if platforms.is_empty() {
        platforms.push(Platform::host());
    }
    let Some(df) = df else {
        for d in &diags {
            eprintln!("{d}");
        }
        return Ok(ExitCode::FAILURE);
    };
    let mut secrets = BTreeMap::new();
    for s in &a.secrets {
        let (id, src) = parse_secret(s)?;
        secrets.insert(id, src);
    }
    let req_epoch = source_date_epoch()?;
    let started = now_secs();
    let req = BuildRequest {
        context: context.clone(),
        dockerfile: df,
        platforms: platforms.clone(),
        build_args: parse_kv(&a.build_args, "--build-arg")?,
        target: a.target.clone(),
        labels: parse_kv(&a.labels, "--label")?,
        no_cache: a.no_cache,
        secrets,
        source_date_epoch: req_epoch,
    };

    if a.check {
        let tree = if context.is_dir() {
            Some(archway_build::context::Tree::context(&context)?)
        } else {
            eprintln!(
                "note: build context {} is not here; its files are not checked",
                context.display()
            );
            None
        };
        let (_, more) = Builder::lint(&req, tree.as_ref());
        let all: Vec<_> = diags.into_iter().chain(more).collect();
        for d in &all {
            eprintln!("{d}");
        }
        let errors = all.iter().filter(|d| d.is_error()).count();
        let warnings = all.len() - errors;
        let names: Vec<String> = platforms.iter().map(ToString::to_string).collect();
        if errors == 0 {
            println!(
                "{display}: ok for {} ({warnings} warnings)",
                names.join(", ")
            );
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("{display}: {errors} errors, {warnings} warnings");
        return Ok(ExitCode::FAILURE);
    }
    if diags.iter().any(|d| d.is_error()) {
        for d in &diags {
            eprintln!("{d}");
        }
        eprintln!("{display}: the build did not start; fix the errors above");
        return Ok(ExitCode::FAILURE);
    }
    for d in &diags {
        eprintln!("{d}");
    }

    // Where the result goes.
    let mut push_tags: Vec<String> = Vec::new();
    if a.push {
        push_tags.extend(a.tags.iter().cloned());
        if a.tags.is_empty() {
            bail!("--push needs at least one -t REGISTRY/NAME:TAG");
        }
    }
    if !a.no_push {
        push_tags.extend(a.destinations.iter().cloned());
    }
    let mut outputs = Vec::new();
    for o in &a.outputs {
        if let Some(rest) = o.strip_prefix("oci:") {
            let (path, tag) = match rest.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') => (p, Some(t.to_owned())),
                _ => (rest, None),
            };
            outputs.push(Output::Layout(PathBuf::from(path), tag));
        } else if let Some(f) = o.strip_prefix("tar:") {
            outputs.push(Output::Tar(PathBuf::from(f)));
        } else if let Some(kv) = o.strip_prefix("type=") {
            bail!("--output type={kv}: use oci:DIR[:TAG] or tar:FILE");
        } else {
            bail!("--output `{o}`: expected oci:DIR[:TAG] or tar:FILE");
        }
    }
    if let Some(t) = &a.tar_path {
        outputs.push(Output::Tar(t.clone()));
    }
    for t in push_tags.iter() {
        Location::parse(t).with_context(|| format!("--tag {t}"))?;
    }

    let regs: Vec<String> = push_tags
        .iter()
        .chain(a.cache_repo.iter())
        .filter_map(|t| t.parse::<archway_oci::Reference>().ok().map(|r| r.registry))
        .collect();
    let client = a
        .registry
        .client(&regs.iter().map(String::as_str).collect::<Vec<_>>())?;
    let store = super::sandbox::open_store(a.cache_dir.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let quiet = a.quiet || a.format == Format::Json;
    let tty = std::io::stderr().is_terminal();
    let progress: ProgressSink = {
        let sink: ProgressSink = Arc::new(move |e: BuildEvent| match e {
            BuildEvent::Warning(w) => eprintln!("warning: {w}"),
            _ if quiet => {}
            BuildEvent::Step {
                platform,
                stage,
                text,
                cached,
            } => {
                let mark = if cached { " CACHED" } else { "" };
                eprintln!("[{platform} {stage}]{mark} {text}");
            }
            BuildEvent::Output { platform, line } => {
                if tty {
                    eprintln!("  {platform} | {line}");
                } else {
                    eprintln!("[{platform}] {line}");
                }
            }
            BuildEvent::Pulled {
                reference,
                platform,
            } => eprintln!("[{platform}] pulled {reference}"),
            BuildEvent::CacheExported {
                repository,
                entries,
            } => eprintln!("cache: {entries} step results in {repository}"),
            BuildEvent::Pruned { items, bytes } => eprintln!(
                "build store: removed {items} least recently used items ({}) to stay under its size cap",
                human_bytes(bytes)
            ),
        });
        sink
    };
    // The signing key is read before the build, so a bad key fails fast.
    let sign_key = match &a.sign_key {
        Some(p) => {
            if push_tags.is_empty() {
                bail!("--sign-key signs what is pushed: add --push (or Kaniko's --destination)");
            }
            let pem = std::fs::read_to_string(p)
                .with_context(|| format!("reading --sign-key {}", p.display()))?;
            Some(
                archway_attest::sign::SigningKey::from_pem(&pem)
                    .with_context(|| format!("--sign-key {}", p.display()))?,
            )
        }
        None => None,
    };
    let sandbox = super::sandbox::runner(a.runtime.as_deref(), a.step_timeout);
    let cache_repo = match (&a.cache_repo, a.cache) {
        (Some(r), None | Some(true)) => {
            let r: archway_oci::Reference =
                r.parse().with_context(|| format!("--cache-repo {r}"))?;
            if r.tag.is_some() || r.digest.is_some() {
                bail!(
                    "--cache-repo {r}: give a repository without a tag (entries are tagged by cache key)"
                );
            }
            Some(r)
        }
        _ => None,
    };
    let gc = keep_storage_policy(a.keep_storage.as_deref(), store.root())?;
    let sbom_store = store.clone();
    let mut builder = Builder::new(
        store,
        Arc::new(RegistrySource::new(client.clone()).with_mirrors(a.registry_mirrors.clone())),
    )
    .with_progress(progress)
    .with_unpacking(super::sandbox::unpacking());
    if let Some(policy) = gc {
        builder = builder.with_gc(policy);
    }
    if let Ok(runner) = &sandbox {
        builder = builder.with_runner(runner.clone());
    }
    if let Some(repo) = cache_repo {
        builder = builder.with_cache_repo(repo);
    }
    let result = match rt.block_on(builder.build(&req)) {
        Ok(r) => r,
        Err(BuildError::Invalid(diags)) => {
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!("{display}: the build did not start; fix the errors above");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            let mut err = anyhow::Error::new(e);
            if let Err(why) = &sandbox {
                err = err.context(format!("(sandbox: {why})"));
            }
            return Err(err.context(format!("building {display}")));
        }
    };
    for w in &result.warnings {
        if !w.is_error() && !diags.contains(w) {
            eprintln!("{w}");
        }
    }

    let provenance = provenance_inputs(&context, &dockerfile_path, &text, &req, &result, started);

    // Deliver.
    let source = Location::Layout {
        path: result.layout.clone(),
        tag: Some(result.tag.clone()),
    };
    let opts = CopyOptions {
        selection: Selection::All,
        concurrency: a.registry.concurrency,
        progress: None,
    };
    let default_tag = a
        .tags
        .first()
        .or(a.destinations.first())
        .and_then(|t| t.parse::<archway_oci::Reference>().ok())
        .and_then(|r| r.tag);
    let mut delivered = Vec::new();
    for t in &push_tags {
        // `-t REGISTRY/NAME` means its `latest` tag, as with docker.
        let dest = match Location::parse(t)? {
            Location::Registry(mut r) if r.tag.is_none() && r.digest.is_none() => {
                r.tag = Some("latest".into());
                Location::Registry(r)
            }
            other => other,
        };
        rt.block_on(copy(&client, &source, &dest, &opts))
            .with_context(|| format!("pushing to {t}"))?;
        if let Location::Registry(r) = &dest {
            let single = result
                .images
                .first()
                .map(|(p, _)| p.clone())
                .unwrap_or_else(Platform::host);
            if a.sbom.unwrap_or(true) {
                let n = rt.block_on(super::attest::attach_sboms(
                    &client,
                    sbom_store.clone(),
                    &source,
                    r,
                    &single,
                    req_epoch,
                ));
                attested(n, a.sbom.is_some(), "SBOM", "--sbom=false", r, quiet)?;
            }
            if a.provenance.unwrap_or(true) {
                let n = rt.block_on(super::attest::attach_provenance(
                    &client,
                    r,
                    &single,
                    &provenance,
                ));
                attested(
                    n,
                    a.provenance.is_some(),
                    "provenance attestation",
                    "--provenance=false",
                    r,
                    quiet,
                )?;
            }
        }
        if let (Some(key), Location::Registry(r)) = (&sign_key, &dest) {
            let signed = rt
                .block_on(super::sign::sign_image(&client, key, r))
                .with_context(|| format!("signing {r}"))?;
            if !quiet {
                eprintln!("signed {r} ({} manifests)", signed.len());
            }
        }
        delivered.push(dest.to_string());
    }
    for o in &outputs {
        match o {
            Output::Layout(path, tag) => {
                let dest = Location::Layout {
                    path: path.clone(),
                    tag: tag
                        .clone()
                        .or_else(|| default_tag.clone())
                        .or_else(|| Some("latest".into())),
                };
                rt.block_on(copy(&client, &source, &dest, &opts))
                    .with_context(|| format!("writing {dest}"))?;
                delivered.push(dest.to_string());
            }
            Output::Tar(file) => {
                let tmp = tempfile::tempdir()?;
                let dest = Location::Layout {
                    path: tmp.path().to_owned(),
                    tag: default_tag.clone().or_else(|| Some("latest".into())),
                };
                rt.block_on(copy(&client, &source, &dest, &opts))?;
                write_archive(tmp.path(), file)
                    .with_context(|| format!("writing {}", file.display()))?;
                delivered.push(format!("tar:{}", file.display()));
            }
        }
    }
    let summary = serde_json::json!({
        "digest": result.descriptor.digest.to_string(),
        "media_type": result.descriptor.media_type,
        "platforms": result.images.iter().map(|(p, d)| serde_json::json!({"platform": p.to_string(), "digest": d.digest.to_string()})).collect::<Vec<_>>(),
        "steps": result.steps,
        "cached_steps": result.cached_steps,
        "outputs": delivered,
    });
    match a.format {
        Format::Json => print_json(&summary)?,
        Format::Text => {
            println!("{}", result.descriptor.digest);
            let size: u64 = result.images.iter().map(|(_, d)| d.size).sum();
            if !a.quiet {
                eprintln!(
                    "built {} ({} steps, {} cached, manifests {}){}",
                    result
                        .images
                        .iter()
                        .map(|(p, _)| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    result.steps,
                    result.cached_steps,
                    human_bytes(size),
                    if delivered.is_empty() {
                        String::new()
                    } else {
                        format!(" → {}", delivered.join(", "))
                    }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The size cap after a build: `--keep-storage` as a size or a percentage of the disk, `0`
/// for none, BuildKit's default (10% of the disk) without it.
fn keep_storage_policy(
    value: Option<&str>,
    root: &Path,
) -> anyhow::Result<Option<archway_build::GcPolicy>> {
    let Some(v) = value.map(str::trim) else {
        return Ok(Some(archway_build::GcPolicy::default_for(root)));
    };
    if let Some(p) = v.strip_suffix('%') {
        let percent: u64 = p
            .trim()
            .parse()
            .with_context(|| format!("--keep-storage {v}: expected a size or N%"))?;
        return Ok(Some(archway_build::GcPolicy::percent_of_disk(
            root, percent,
        )));
    }
    let bytes =
        archway_build::gc::parse_size(v).map_err(|e| anyhow::anyhow!("--keep-storage: {e}"))?;
    Ok((bytes > 0).then_some(archway_build::GcPolicy { keep_bytes: bytes }))
}

fn prune(a: PruneArgs) -> anyhow::Result<ExitCode> {
    let mut unused_for = None;
    for f in &a.filter {
        match f.split_once('=') {
            Some(("until", d)) => {
                unused_for = Some(
                    archway_oci::duration::parse_duration(d)
                        .or_else(|| humantime::parse_duration(d).ok())
                        .with_context(|| {
                            format!("--filter {f}: `{d}` is not a duration (e.g. 24h, 90m, 7d)")
                        })?,
                );
            }
            _ => bail!("--filter {f}: the only filter is until=DURATION (e.g. until=24h)"),
        }
    }
    let store = super::sandbox::open_store(a.cache_dir.as_deref())?;
    let report = store.prune(&archway_build::PruneOptions {
        keep_storage: a.keep_storage,
        unused_for,
        dry_run: a.dry_run,
    })?;
    match a.format {
        Format::Json => print_json(&report)?,
        Format::Text => {
            let verb = if report.dry_run {
                "would remove"
            } else {
                "removed"
            };
            for r in &report.removed {
                println!(
                    "{verb} {} {} ({})",
                    r.kind_label(),
                    r.name,
                    human_bytes(r.bytes)
                );
            }
            println!(
                "{verb} {} items, {}; the store went from {} to {}{}",
                report.removed.len(),
                human_bytes(report.bytes_freed),
                human_bytes(report.total_before),
                human_bytes(report.total_after),
                if report.kept_in_use > 0 {
                    format!(
                        " ({} items kept: a running build uses them)",
                        report.kept_in_use
                    )
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn du(a: DuArgs) -> anyhow::Result<ExitCode> {
    let store = super::sandbox::open_store(a.cache_dir.as_deref())?;
    let usage = store.disk_usage()?;
    match a.format {
        Format::Json => print_json(&usage)?,
        Format::Text => {
            println!(
                "{:<20} {:>7} {:>12} {:>12}",
                "KIND", "ITEMS", "SIZE", "RECLAIMABLE"
            );
            for k in usage.kinds.iter().chain([&usage.blobs]) {
                println!(
                    "{:<20} {:>7} {:>12} {:>12}",
                    k.label,
                    k.items,
                    human_bytes(k.bytes),
                    human_bytes(k.reclaimable)
                );
            }
            if usage.scratch > 0 {
                println!(
                    "{:<20} {:>7} {:>12} {:>12}",
                    "scratch",
                    "",
                    human_bytes(usage.scratch),
                    ""
                );
            }
            println!(
                "{:<20} {:>7} {:>12} {:>12}",
                "total",
                "",
                human_bytes(usage.total),
                human_bytes(usage.reclaimable)
            );
            if usage.running_builds > 0 {
                println!(
                    "{} running builds hold what they use; it is not reclaimable until they end",
                    usage.running_builds
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Tars an OCI layout into an archive (sorted entries, fixed times) that `skopeo copy
/// oci-archive:` and `podman load` read.
fn write_archive(dir: &Path, file: &Path) -> anyhow::Result<()> {
    // Written beside the target and renamed: a crash never leaves a half-written archive.
    let tmp = archway_oci::atomic_file::temp_path_for(file);
    let result = write_archive_to(dir, &tmp)
        .and_then(|()| Ok(archway_oci::atomic_file::commit(&tmp, file)?));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_archive_to(dir: &Path, file: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::create(file)?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    b.mode(tar::HeaderMode::Deterministic);
    let mut paths = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            paths.push(p);
        }
    }
    paths.sort();
    for p in paths {
        let rel = p.strip_prefix(dir)?;
        if p.is_dir() {
            b.append_dir(rel, &p)?;
        } else {
            b.append_path_with_name(&p, rel)?;
        }
    }
    b.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(())
}
