//! `archway image …`: copy, inspect, list tags, import a root filesystem, remove.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use archway_client::copy::{CopyOptions, Selection};
use archway_client::image::{ImportOptions, Inspection};
use archway_client::{Location, copy};
use archway_oci::Platform;
use archway_oci::layer::LayerOptions;
use clap::{Args, Subcommand};

use super::common::{Format, RegistryArgs, block_on, human_bytes, print_json, progress, short};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Copy an image between registries and OCI layouts, preserving digests.
    ///
    /// Locations: `docker://REGISTRY/NAME:TAG` (or just `REGISTRY/NAME:TAG`) and
    /// `oci:DIR[:TAG]`. From a multi-platform index, copies this machine's platform unless
    /// `--all` (everything, index included) or `--platform`.
    ///
    /// Examples:
    ///   archway image copy --all oci:./busybox:1.35 127.0.0.1:5000/library/busybox:1.35
    ///   archway image copy --platform linux/arm64 reg.io/app:1.0 oci:./app-arm64:1.0
    ///   archway image copy --platform linux/arm64 --keep-index reg.io/app:1.0 mirror.io/app:1.0
    #[command(verbatim_doc_comment)]
    Copy(CopyArgs),
    /// Show an image's manifest, platforms, config and layers.
    ///
    /// Examples:
    ///   archway image inspect 127.0.0.1:5000/library/busybox:1.35
    ///   archway image inspect --platform linux/arm64 --format json reg.io/app:1.0
    ///   archway image inspect --raw oci:./busybox:1.35
    #[command(verbatim_doc_comment)]
    Inspect(InspectArgs),
    /// List the tags of a repository.
    Tags(TagsArgs),
    /// List what refers to an image (OCI 1.1 referrers: SBOMs, provenance, signatures), for
    /// the image and, for an index, each platform's image.
    ///
    /// Example:
    ///   archway image referrers --artifact-type application/spdx+json reg.io/app:1.0
    #[command(verbatim_doc_comment)]
    Referrers(ReferrersArgs),
    /// Make a one-layer image from a root filesystem (a directory or a .tar/.tar.gz).
    ///
    /// Reproducible: the same input gives the same digest (timestamps are set to
    /// $SOURCE_DATE_EPOCH, default 0, and owners to root unless --keep-owners).
    ///
    /// Example (an arm64 busybox image from Debian's package):
    ///   apt-get download busybox-static:arm64 && dpkg-deb -x busybox-static_*_arm64.deb rootfs
    ///   archway image import rootfs --platform linux/arm64 --cmd sh -t 127.0.0.1:5000/busybox:arm64
    #[command(verbatim_doc_comment)]
    Import(ImportArgs),
    /// Remove a tag (or, by digest, a manifest) from a registry or an OCI layout.
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Source location.
    src: String,
    /// Destination location.
    dst: String,
    /// Copy every platform of an index (and the index itself).
    #[arg(long, conflicts_with = "platform")]
    all: bool,
    /// Copy only this platform's image of an index (e.g. linux/arm64).
    #[arg(long)]
    platform: Option<Platform>,
    /// With --platform: push the source's index too, unchanged (its digest is kept; its
    /// other platforms stay absent). The destination must accept sparse indexes
    /// (`archway registry serve --allow-sparse`).
    #[arg(long, requires = "platform")]
    keep_index: bool,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
    /// Report format on stdout.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image location.
    image: String,
    /// Print the manifest's exact bytes.
    #[arg(long)]
    raw: bool,
    /// The image of this platform in an index.
    #[arg(long)]
    platform: Option<Platform>,
    /// List what refers to the image instead (SBOMs, provenance, signatures), as `archway
    /// image referrers` does.
    #[arg(long, conflicts_with_all = ["raw", "platform"])]
    referrers: bool,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct TagsArgs {
    /// Repository (REGISTRY/NAME; a tag is ignored).
    repository: String,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct ReferrersArgs {
    /// The image (REGISTRY/NAME:TAG or @DIGEST).
    image: String,
    /// Only referrers of this artifact type (e.g. application/spdx+json).
    #[arg(long)]
    artifact_type: Option<String>,
    /// Also print each referrer's document (the SPDX SBOM, the in-toto statement; at most
    /// 32 MiB each, digest checked); with `--format json` as a `content` field.
    #[arg(long)]
    content: bool,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// The largest referrer document `--content` reads.
const MAX_REFERRER_DOCUMENT: u64 = 32 << 20;

/// The first layer of the referrer manifest `digest` in `r`'s repository: the SBOM or
/// statement itself, checked against its digest.
async fn referrer_document(
    client: &archway_client::Client,
    r: &archway_oci::Reference,
    digest: &archway_oci::Digest,
) -> anyhow::Result<Vec<u8>> {
    use futures_util::StreamExt;
    let at = archway_oci::Reference {
        tag: None,
        digest: Some(digest.clone()),
        ..r.clone()
    };
    let m = client.get_manifest(&at).await?;
    let parsed = archway_oci::ParsedManifest::parse(&m.bytes, None)?;
    let Some(layer) = parsed.layers.first() else {
        anyhow::bail!("referrer {digest} has no layer to show");
    };
    if layer.size > MAX_REFERRER_DOCUMENT {
        anyhow::bail!(
            "referrer {digest}: its document is {} bytes, more than --content reads (32 MiB)",
            layer.size
        );
    }
    let mut s = client.get_blob(&at, &layer.digest, 0).await?;
    let mut data = Vec::new();
    while let Some(c) = s.next().await {
        data.extend_from_slice(&c?);
        if data.len() as u64 > layer.size {
            anyhow::bail!("referrer {digest}: its document is larger than its descriptor says");
        }
    }
    if archway_oci::Digest::sha256(&data) != layer.digest {
        anyhow::bail!("referrer {digest}: its document does not match its digest");
    }
    Ok(data)
}

fn referrers_cmd(a: ReferrersArgs) -> anyhow::Result<ExitCode> {
    let archway_client::Location::Registry(r) = archway_client::Location::parse(&a.image)? else {
        anyhow::bail!("{}: referrers live in registries", a.image);
    };
    let client = a.registry.client(&[r.registry.as_str()])?;
    let rows = block_on(async {
        let m = client.get_manifest(&r).await?;
        let mut subjects = vec![(None, m.digest.clone())];
        if archway_oci::media_type::is_index(&m.media_type) {
            let index: archway_oci::Index = serde_json::from_slice(&m.bytes)?;
            subjects.extend(index.manifests.iter().map(|d| {
                (
                    d.platform.as_ref().map(ToString::to_string),
                    d.digest.clone(),
                )
            }));
        }
        let mut rows = Vec::new();
        for (platform, digest) in subjects {
            let Some(list) = client
                .referrers(&r, &digest, a.artifact_type.as_deref())
                .await?
            else {
                anyhow::bail!(
                    "{}: the registry has no referrers API (OCI 1.1)",
                    r.registry
                );
            };
            for d in list {
                let mut row = serde_json::json!({
                    "subject": digest.to_string(),
                    "platform": platform,
                    "artifactType": d.artifact_type,
                    "digest": d.digest.to_string(),
                    "size": d.size,
                });
                if a.content {
                    let doc = referrer_document(&client, &r, &d.digest).await?;
                    row["content"] = serde_json::from_slice(&doc).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&doc).into_owned())
                    });
                }
                rows.push(row);
            }
        }
        Ok(rows)
    })??;
    match a.format {
        Format::Json => print_json(&rows)?,
        Format::Text => {
            for row in &rows {
                println!(
                    "{}  {}  {}  {}",
                    row["platform"].as_str().unwrap_or("(image)"),
                    row["artifactType"].as_str().unwrap_or("-"),
                    row["digest"].as_str().unwrap_or_default(),
                    row["subject"].as_str().unwrap_or_default(),
                );
                if let Some(content) = row.get("content") {
                    println!("{}", serde_json::to_string_pretty(content)?);
                }
            }
            if rows.is_empty() {
                eprintln!("nothing refers to {}", r);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Root filesystem: a directory, or a tar archive (optionally gzip-compressed).
    rootfs: PathBuf,
    /// Platform of the files (e.g. linux/amd64, linux/arm64).
    #[arg(long)]
    platform: Platform,
    /// Where to store the image: REGISTRY/NAME:TAG or oci:DIR:TAG.
    #[arg(short = 't', long = "tag")]
    tag: String,
    /// Environment variable (repeatable), KEY=VALUE. Default: a standard PATH.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Default command; a JSON array (`["sh","-c","x"]`) or a plain string run as one word.
    #[arg(long)]
    cmd: Option<String>,
    /// Entrypoint; a JSON array or a single word.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Working directory.
    #[arg(long)]
    workdir: Option<String>,
    /// User to run as.
    #[arg(long)]
    user: Option<String>,
    /// Label (repeatable), KEY=VALUE.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Keep the files' numeric owners instead of making everything root-owned.
    #[arg(long)]
    keep_owners: bool,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// REGISTRY/NAME:TAG, REGISTRY/NAME@DIGEST or oci:DIR:TAG.
    image: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

fn registries(locations: &[&Location]) -> Vec<String> {
    locations
        .iter()
        .filter_map(|l| match l {
            Location::Registry(r) => Some(r.registry.clone()),
            Location::Layout { .. } => None,
        })
        .collect()
}

pub fn run(cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Copy(a) => copy_cmd(a),
        ImageCommand::Inspect(a) => inspect_cmd(a),
        ImageCommand::Tags(a) => tags_cmd(a),
        ImageCommand::Referrers(a) => referrers_cmd(a),
        ImageCommand::Import(a) => import_cmd(a),
        ImageCommand::Rm(a) => rm_cmd(a),
    }
}

fn copy_cmd(a: CopyArgs) -> anyhow::Result<ExitCode> {
    let src = Location::parse(&a.src)?;
    let dst = Location::parse(&a.dst)?;
    let regs = registries(&[&src, &dst]);
    let client = a
        .registry
        .client(&regs.iter().map(String::as_str).collect::<Vec<_>>())?;
    let default_platform = a.platform.is_none() && !a.all;
    let selection = match (&a.platform, a.all) {
        (_, true) => Selection::All,
        (Some(p), false) if a.keep_index => Selection::PlatformKeepingIndex(p.clone()),
        (Some(p), false) => Selection::Platform(p.clone()),
        (None, false) => Selection::Platform(Platform::host()),
    };
    let opts = CopyOptions {
        selection,
        concurrency: a.registry.concurrency,
        progress: progress(a.quiet || a.format == Format::Json),
    };
    let report = block_on(copy(&client, &src, &dst, &opts))?.map_err(|e| {
        let sparse_refused = a.keep_index && archway_oci::error_chain(&e).contains("MANIFEST_BLOB_UNKNOWN");
        let e = anyhow::Error::new(e).context(format!("copying {src} to {dst}"));
        if sparse_refused {
            e.context("the destination refuses an index whose other platforms it does not have; serve it with `archway registry serve --allow-sparse`")
        } else {
            e
        }
    })?;
    match a.format {
        Format::Json => print_json(&report)?,
        Format::Text => {
            let digest = report
                .digest
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            println!(
                "{} -> {}  {digest}\n{} manifests; blobs: {} copied ({}), {} already there, {} mounted",
                report.source,
                report.destination,
                report.manifests,
                report.blobs_copied,
                human_bytes(report.bytes_copied),
                report.blobs_existing,
                report.blobs_mounted
            );
            if default_platform && !report.platforms.is_empty() {
                println!(
                    "copied {} only (the source is multi-platform); pass --all to copy every platform",
                    report.platforms.join(", ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect_cmd(a: InspectArgs) -> anyhow::Result<ExitCode> {
    if a.referrers {
        return referrers_cmd(ReferrersArgs {
            image: a.image,
            artifact_type: None,
            content: false,
            format: a.format,
            registry: a.registry,
        });
    }
    let loc = Location::parse(&a.image)?;
    let regs = registries(&[&loc]);
    let client = a
        .registry
        .client(&regs.iter().map(String::as_str).collect::<Vec<_>>())?;
    let ins = block_on(archway_client::image::inspect(
        &client,
        &loc,
        a.platform.as_ref(),
    ))?
    .with_context(|| format!("inspecting {loc}"))?;
    if a.raw {
        use std::io::Write;
        std::io::stdout().write_all(&ins.raw)?;
        println!();
        return Ok(ExitCode::SUCCESS);
    }
    match a.format {
        Format::Json => print_json(&ins)?,
        Format::Text => print_inspection(&ins),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_inspection(ins: &Inspection) {
    println!("Name:       {}", ins.name);
    println!("Digest:     {}", ins.digest);
    println!("MediaType:  {}", ins.media_type);
    if !ins.manifests.is_empty() {
        println!("Platforms:");
        for m in &ins.manifests {
            println!(
                "  {:<16} {}  {:>9}  {}",
                m.platform.as_deref().unwrap_or("(none)"),
                m.digest,
                human_bytes(m.size),
                m.media_type
            );
        }
    }
    if let Some(img) = &ins.image {
        if !ins.manifests.is_empty() {
            println!(
                "Selected:   {} {}",
                img.platform.as_deref().unwrap_or("?"),
                img.digest
            );
        }
        println!(
            "Platform:   {}",
            img.platform.as_deref().unwrap_or("(not in config)")
        );
        if let Some(c) = &img.created {
            println!("Created:    {c}");
        }
        println!("Config:     {}", img.config_digest);
        if let Some(rc) = &img.config.config {
            if let Some(e) = &rc.entrypoint {
                println!(
                    "Entrypoint: {}",
                    serde_json::to_string(e).unwrap_or_default()
                );
            }
            if let Some(c) = &rc.cmd {
                println!(
                    "Cmd:        {}",
                    serde_json::to_string(c).unwrap_or_default()
                );
            }
            for e in rc.env.iter().flatten() {
                println!("Env:        {e}");
            }
            if let Some(w) = &rc.working_dir {
                println!("WorkingDir: {w}");
            }
            for (k, v) in rc.labels.iter().flatten() {
                println!("Label:      {k}={v}");
            }
        }
        println!(
            "Layers:     {} ({} in all)",
            img.layers.len(),
            human_bytes(img.size)
        );
        for l in &img.layers {
            println!(
                "  {} {:>9}  {}",
                short(&l.digest),
                human_bytes(l.size),
                l.media_type
            );
        }
    }
}

fn tags_cmd(a: TagsArgs) -> anyhow::Result<ExitCode> {
    let loc = Location::parse(&a.repository)?;
    let Location::Registry(r) = loc else {
        bail!(
            "`archway image tags` lists a registry repository; for an OCI layout read its index.json"
        );
    };
    let client = a.registry.client(&[&r.registry])?;
    let tags =
        block_on(client.list_tags(&r))?.with_context(|| format!("listing tags of {}", r.name()))?;
    match a.format {
        Format::Json => print_json(&serde_json::json!({ "repository": r.name(), "tags": tags }))?,
        Format::Text => {
            for t in tags {
                println!("{t}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `["a","b"]` as JSON, else one word.
fn command_words(s: &str) -> anyhow::Result<Vec<String>> {
    let t = s.trim();
    if t.starts_with('[') {
        serde_json::from_str(t).with_context(|| format!("`{s}` is not a JSON array of strings"))
    } else {
        Ok(vec![t.to_owned()])
    }
}

fn import_cmd(a: ImportArgs) -> anyhow::Result<ExitCode> {
    let dest = Location::parse(&a.tag)?;
    let regs = registries(&[&dest]);
    let client = a
        .registry
        .client(&regs.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--label `{l}` is not KEY=VALUE"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    for e in &a.env {
        if !e.contains('=') {
            bail!("--env `{e}` is not KEY=VALUE");
        }
    }
    let (mtime, created) = archway_oci::config::reproducible_timestamp();
    let opts = ImportOptions {
        platform: a.platform.clone(),
        layer: LayerOptions {
            mtime,
            keep_owners: a.keep_owners,
        },
        env: a.env.clone(),
        cmd: a.cmd.as_deref().map(command_words).transpose()?,
        entrypoint: a.entrypoint.as_deref().map(command_words).transpose()?,
        working_dir: a.workdir.clone(),
        user: a.user.clone(),
        labels,
        created,
        created_by: format!(
            "archway image import {}",
            a.rootfs
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
    };
    let report = block_on(archway_client::image::import(
        &client, &a.rootfs, &dest, &opts,
    ))?
    .with_context(|| format!("importing {} as {dest}", a.rootfs.display()))?;
    match a.format {
        Format::Json => print_json(&report)?,
        Format::Text => println!(
            "{}  {}  {}\nlayer {} ({}), config {}",
            report.destination,
            report.platform,
            report.digest,
            report.layer,
            human_bytes(report.layer_size),
            report.config
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn rm_cmd(a: RmArgs) -> anyhow::Result<ExitCode> {
    let loc = Location::parse(&a.image)?;
    let regs = registries(&[&loc]);
    let client = a
        .registry
        .client(&regs.iter().map(String::as_str).collect::<Vec<_>>())?;
    let removal = block_on(archway_client::image::remove(&client, &loc))?
        .with_context(|| format!("removing {loc}"))?;
    match removal.deleted_manifest {
        Some(d) => println!(
            "deleted manifest {d} (the registry cannot delete tags alone; every tag naming it is gone)"
        ),
        None => println!("removed {}", removal.reference),
    }
    Ok(ExitCode::SUCCESS)
}
