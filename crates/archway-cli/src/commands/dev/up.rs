//! `archway dev up`: load the file, pull or build the images, decide what changes, check the
//! ports, start what must start (each container under its own detached supervisor), wait for
//! it to run and its endpoints to listen, run the lifecycle commands, and say what runs where.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use archway_build::{ImageStore, PulledImage, RegistrySource};
use archway_client::Location;
use archway_devfile::{Environment, ImageSource};
use archway_oci::Platform;
use archway_sandbox::{Emulation, Sandbox};

use super::exec::Runner;
use super::state::{self, ContainerDir, ContainerState, EnvDir, EnvRecord, write_json};
use super::{
    UpArgs, check_name, load, name_flag, plan, project_root, run_event, supervise, url, word,
};
use crate::commands::common::block_on;
use crate::commands::sandbox::{open_store, runner as step_runner, unpacking};

/// Whether anything could listen on `port`; why not.
fn port_problem(port: u16) -> Option<String> {
    for addr in ["0.0.0.0", "127.0.0.1"] {
        match std::net::TcpListener::bind((addr, port)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Some(format!(
                    "port {port} is already in use on this host (find what listens with `ss -ltnp 'sport = :{port}'`)"
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Some(format!(
                    "port {port} needs privileges to listen on (below net.ipv4.ip_unprivileged_port_start); use a port above 1023"
                ));
            }
            Err(e) => return Some(format!("port {port} cannot be listened on: {e}")),
        }
    }
    None
}

fn listens(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

/// An image, ready for a container.
struct ReadyImage {
    reference: String,
    digest: String,
    image: PulledImage,
    rootfs: PathBuf,
}

fn has_shell(rootfs: &Path) -> bool {
    ["bin/sh", "usr/bin/sh"]
        .iter()
        .any(|p| std::fs::symlink_metadata(rootfs.join(p)).is_ok())
}

/// Builds an `image` component for `platform` with the builder, as `archway build` does.
async fn build_image(
    images: &ImageStore,
    source: Arc<RegistrySource>,
    env: &Environment,
    name: &str,
    root: &Path,
    platform: &Platform,
    runtime: Option<&str>,
) -> anyhow::Result<ReadyImage> {
    let Some(b) = env.images.iter().find(|i| i.name == name) else {
        bail!("no image build `{name}` in the file");
    };
    if b.root_required {
        eprintln!(
            "warning: image `{name}` says it needs root to build; building it rootless anyway"
        );
    }
    let dockerfile = root.join(&b.dockerfile);
    let text = std::fs::read_to_string(&dockerfile)
        .with_context(|| format!("reading {} (image `{name}`)", dockerfile.display()))?;
    let (df, diags) = archway_build::dockerfile::parse(&b.dockerfile, &text);
    for d in &diags {
        eprintln!("{d}");
    }
    let Some(df) = df.filter(|_| !diags.iter().any(|d| d.is_error())) else {
        bail!("{} has errors; image `{name}` was not built", b.dockerfile);
    };
    let req = archway_build::BuildRequest {
        context: root.join(&b.context),
        dockerfile: df,
        platforms: vec![platform.clone()],
        build_args: b
            .args
            .iter()
            .map(|a| (a.name.clone(), a.value.to_string()))
            .collect(),
        target: b.target.clone(),
        labels: BTreeMap::new(),
        no_cache: false,
        secrets: BTreeMap::new(),
        source_date_epoch: 0,
    };
    let progress: archway_build::ProgressSink = Arc::new(|e| match e {
        archway_build::BuildEvent::Warning(w) => eprintln!("warning: {w}"),
        archway_build::BuildEvent::Step {
            platform,
            stage,
            text,
            cached,
        } => eprintln!(
            "[{platform} {stage}]{} {text}",
            if cached { " CACHED" } else { "" }
        ),
        archway_build::BuildEvent::Output { platform, line } => eprintln!("[{platform}] {line}"),
        _ => {}
    });
    let mut builder = archway_build::Builder::new(images.store().clone(), source)
        .with_progress(progress)
        .with_unpacking(unpacking());
    if let Ok(r) = step_runner(runtime, None) {
        builder = builder.with_runner(r);
    }
    let result = match builder.build(&req).await {
        Ok(r) => r,
        Err(archway_build::BuildError::Invalid(diags)) => {
            for d in &diags {
                eprintln!("{d}");
            }
            bail!("{} has errors; image `{name}` was not built", b.dockerfile);
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("building image `{name}`"))),
    };
    let from = Location::Layout {
        path: result.layout.clone(),
        tag: Some(result.tag.clone()),
    };
    let image = images.pull(&from, platform).await?;
    let rootfs = images.unpack(&image).await?;
    Ok(ReadyImage {
        reference: format!("build:{name}"),
        digest: image.manifest.digest.to_string(),
        image,
        rootfs,
    })
}

/// Every container's image, pulled (or built) for `platform` and unpacked, once per distinct
/// source; keyed by [`plan::image_name`].
fn ready_images(
    images: &ImageStore,
    source: &Arc<RegistrySource>,
    env: &Environment,
    root: &Path,
    platform: &Platform,
    runtime: Option<&str>,
) -> anyhow::Result<BTreeMap<String, ReadyImage>> {
    let mut ready: BTreeMap<String, ReadyImage> = BTreeMap::new();
    for c in &env.containers {
        let key = plan::image_name(c);
        if ready.contains_key(&key) {
            continue;
        }
        let r = match &c.image {
            ImageSource::Pull(reference) => {
                eprintln!(
                    "pulling {reference} ({platform}) for container `{}`",
                    c.name
                );
                let location = Location::parse(reference).with_context(|| {
                    format!(
                        "container `{}`: image `{reference}` is not a valid reference",
                        c.name
                    )
                })?;
                block_on(async {
                    let image = images.pull(&location, platform).await?;
                    let rootfs = images.unpack(&image).await?;
                    anyhow::Ok(ReadyImage {
                        reference: reference.clone(),
                        digest: image.manifest.digest.to_string(),
                        image,
                        rootfs,
                    })
                })?
                .with_context(|| {
                    format!(
                        "pulling image `{reference}` ({platform}) for container `{}`: check the name and tag, and that this machine can reach its registry (or give --registry-mirror)",
                        c.name
                    )
                })?
            }
            ImageSource::Build(b) => {
                eprintln!(
                    "building image `{b}` ({platform}) for container `{}`",
                    c.name
                );
                block_on(build_image(
                    images,
                    source.clone(),
                    env,
                    b,
                    root,
                    platform,
                    runtime,
                ))??
            }
        };
        ready.insert(key, r);
    }
    Ok(ready)
}

/// `archway dev up`
pub fn up(a: UpArgs) -> anyhow::Result<ExitCode> {
    let root = project_root()?;
    let loaded = load(&root, a.select.file.as_deref())?;
    let env = loaded.env;
    let name = a.select.name.clone().unwrap_or_else(|| env.name.clone());
    check_name(&name)?;
    let envdir = EnvDir::new(&root, &name);
    let _lock = envdir.lock()?;
    let previous = envdir.record();
    let platform: Platform = match (&a.platform, &previous) {
        (Some(p), _) => p.parse().with_context(|| format!("--platform {p}"))?,
        (None, Some(r)) => r.platform.parse()?,
        (None, None) => Platform::host(),
    };
    let runtime = a
        .runtime
        .clone()
        .or_else(|| previous.as_ref().and_then(|r| r.runtime.clone()));
    let sandbox = Sandbox::detect(runtime.as_deref())
        .context("dev environments need an OCI runtime (see `archway doctor`)")?;
    sandbox.check_platform(&platform)?;
    let host = Platform::host();
    let emulation = archway_sandbox::binfmt::emulation(
        Path::new(archway_sandbox::binfmt::BINFMT_DIR),
        &host,
        &platform,
    );
    if env.containers.is_empty() {
        bail!("{} defines no containers: nothing to start", loaded.file);
    }

    // State directory (never committed).
    let dot = root.join(".archway");
    std::fs::create_dir_all(envdir.dir.join("containers"))
        .with_context(|| format!("creating {}", envdir.dir.display()))?;
    let ignore = dot.join(".gitignore");
    if !ignore.exists() {
        std::fs::write(
            &ignore,
            "# Archway's local state (pipeline runs, dev environments)\n*\n",
        )
        .with_context(|| format!("writing {}", ignore.display()))?;
    }

    // Images, once per distinct source.
    let registries: Vec<String> = env
        .containers
        .iter()
        .filter_map(|c| match &c.image {
            ImageSource::Pull(r) => r.parse::<archway_oci::Reference>().ok().map(|r| r.registry),
            ImageSource::Build(_) => None,
        })
        .collect();
    let client = a
        .registry
        .client(&registries.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mirrors: Vec<archway_client::mirror::Mirror> = if a.registry_mirrors.is_empty() {
        previous
            .iter()
            .flat_map(|p| &p.registry_mirrors)
            .filter_map(|m| m.parse().ok())
            .collect()
    } else {
        a.registry_mirrors.clone()
    };
    let source = Arc::new(RegistrySource::new(client).with_mirrors(mirrors.clone()));
    let store = open_store(a.cache_dir.as_deref())?;
    let images = ImageStore::new(store.clone(), source.clone()).with_unpacking(unpacking());
    let lease = images.lease()?;
    let ready = ready_images(&images, &source, &env, &root, &platform, runtime.as_deref())?;

    // What each container runs.
    let env_id = plan::env_id(&root, &name);
    let host_env = |k: &str| std::env::var(k).ok();
    let ctx = plan::Context {
        project: &root,
        env_id: env_id.clone(),
        local_env: &host_env,
    };
    let volume_dir = |v: &str| envdir.volume(&plan::volume_dir_name(v, &ctx));
    let inputs = plan::LaunchInputs {
        platform: platform.to_string(),
        store: store.root().to_owned(),
        runtime: runtime.clone(),
        volume_dir: &volume_dir,
    };
    let mut launches = BTreeMap::new();
    for c in &env.containers {
        let img = &ready[&plan::image_name(c)];
        let facts = plan::ImageFacts {
            reference: img.reference.clone(),
            digest: img.digest.clone(),
            config: img.image.config.config.as_ref(),
            rootfs: img.rootfs.clone(),
            has_shell: has_shell(&img.rootfs),
        };
        let (launch, warnings) =
            plan::launch_spec(&env, c, &facts, &ctx, &inputs).map_err(anyhow::Error::msg)?;
        for w in warnings {
            eprintln!("warning: {w}");
        }
        launches.insert(c.name.clone(), launch);
    }

    // What changes.
    let current: BTreeMap<String, (Option<String>, bool)> = envdir
        .containers()
        .iter()
        .map(|c| {
            (
                c.name(),
                (c.launch().map(|l| l.fingerprint), c.state().is_running()),
            )
        })
        .collect();
    let wanted: BTreeMap<String, String> = launches
        .iter()
        .map(|(n, l)| (n.clone(), l.fingerprint.clone()))
        .collect();
    let changes = plan::changes(&wanted, &current);
    // Stopped first: what changed or left the file, and the supervisors of containers that
    // just died and are still writing down how (so no old record lands on a new run).
    let to_stop: Vec<String> = changes
        .restart
        .iter()
        .chain(&changes.remove)
        .filter(|n| current.get(*n).is_some_and(|(_, running)| *running))
        .chain(changes.start.iter().filter(|n| {
            envdir
                .container(n)
                .supervisor()
                .is_some_and(|p| p.is_alive())
        }))
        .cloned()
        .collect();
    if !to_stop.is_empty() {
        eprintln!("stopping {}", to_stop.join(", "));
        super::stop::stop_containers(&sandbox, &envdir, &to_stop, Duration::from_secs(10))?;
    }
    for n in &changes.remove {
        let dir = envdir.container(n);
        std::fs::remove_dir_all(&dir.dir)
            .with_context(|| format!("removing {}", dir.dir.display()))?;
    }
    let starting: Vec<String> = changes
        .restart
        .iter()
        .chain(&changes.start)
        .cloned()
        .collect();

    // Ports: every endpoint of a container about to start must be free.
    for n in &starting {
        for e in &launches[n].endpoints {
            if matches!(e.protocol, archway_devfile::Protocol::Udp) {
                continue;
            }
            if let Some(why) = port_problem(e.port) {
                bail!(
                    "endpoint `{}` of container `{n}`: {why}. The containers use the host's network, so each endpoint is a port of this machine: stop what holds it or change the endpoint's targetPort; nothing was started",
                    e.name
                );
            }
        }
    }

    let record = EnvRecord {
        name: name.clone(),
        file: loaded.file.clone(),
        project: root.clone(),
        platform: platform.to_string(),
        created: previous.as_ref().is_some_and(|p| p.created),
        registry_mirrors: mirrors.iter().map(ToString::to_string).collect(),
        runtime: runtime.clone(),
        environment: env.clone(),
    };
    write_json(&envdir.record_path(), &record)?;

    // Start.
    for n in &starting {
        let dir = envdir.container(n);
        std::fs::create_dir_all(&dir.dir)
            .with_context(|| format!("creating {}", dir.dir.display()))?;
        for p in [dir.running_path(), dir.exit_path(), dir.supervisor_path()] {
            let _ = std::fs::remove_file(p);
        }
        for m in &launches[n].mounts {
            if let state::MountRecord::Bind { host, .. } = m
                && host.starts_with(envdir.dir.join("volumes"))
            {
                std::fs::create_dir_all(host)
                    .with_context(|| format!("creating the volume {}", host.display()))?;
            }
        }
        write_json(&dir.launch_path(), &launches[n])?;
        supervise::spawn(&envdir.dir, &dir)?;
    }
    let deadline = Instant::now() + a.timeout;
    for n in &starting {
        wait_running(&envdir.container(n), deadline)?;
    }
    // The supervisors hold their own leases now: touch the root filesystems again under
    // them, then let ours go.
    block_on(async {
        for r in ready.values() {
            let _ = images.unpack(&r.image).await;
        }
    })?;
    drop(lease);

    // Endpoints of the service containers (a tools container's ports are for what its
    // user will start in it).
    let mut silent = Vec::new();
    for n in starting.iter().filter(|n| !launches[*n].tools) {
        for e in &launches[n].endpoints {
            if matches!(e.protocol, archway_devfile::Protocol::Udp) {
                continue;
            }
            while !listens(e.port)
                && Instant::now() < deadline
                && envdir.container(n).state().is_running()
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            if !listens(e.port) {
                silent.push((n.clone(), e.clone()));
            }
        }
    }
    for (n, e) in &silent {
        let dir = envdir.container(n);
        eprintln!(
            "warning: container `{n}` ({}) does not listen on port {} (endpoint `{}`). Its last output:\n{}",
            dir.state().label(),
            e.port,
            e.name,
            dir.log_tail(15)
        );
    }

    // Lifecycle commands.
    let runner = Runner {
        sandbox: &sandbox,
        envdir: &envdir,
        env: &env,
        project: &root,
        env_id,
    };
    let mut failed = Vec::new();
    if !record.created {
        for (event, ids) in [
            ("onCreate", &env.events.on_create),
            ("updateContent", &env.events.update_content),
            ("postCreate", &env.events.post_create),
        ] {
            run_event(&runner, event, ids, &mut failed);
        }
        let mut done = record.clone();
        done.created = true;
        write_json(&envdir.record_path(), &done)?;
    }
    let post_start: Vec<String> = env
        .events
        .post_start
        .iter()
        .filter(|id| {
            commands_containers(&env, id)
                .iter()
                .any(|c| starting.contains(c))
        })
        .cloned()
        .collect();
    run_event(&runner, "postStart", &post_start, &mut failed);

    let record = envdir.record().unwrap_or(record);
    let flag = name_flag(&record, &root);
    report(&Report {
        name: &name,
        envdir: &envdir,
        env: &env,
        changes: &changes,
        file: &loaded.file,
        platform: &platform,
        emulation: &emulation,
        flag: &flag,
    });
    if !failed.is_empty() {
        eprintln!(
            "error: {} failed; the environment is running: fix and rerun them with `archway dev exec{flag} ID`",
            failed.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What `up` says when it is done.
struct Report<'a> {
    name: &'a str,
    envdir: &'a EnvDir,
    env: &'a Environment,
    changes: &'a plan::Changes,
    file: &'a str,
    platform: &'a Platform,
    emulation: &'a Emulation,
    /// `--name NAME` when later commands need it.
    flag: &'a str,
}

fn report(r: &Report<'_>) {
    let Report {
        envdir,
        env,
        changes,
        platform,
        emulation,
        flag,
        ..
    } = *r;
    let host = Platform::host();
    println!(
        "Dev environment `{}` from {} is up on {platform}.",
        r.name, r.file
    );
    match emulation {
        Emulation::Native => {}
        Emulation::Qemu { .. } => println!(
            "Emulated: {platform} runs through qemu-user on this {host} machine, so commands run slower than natively."
        ),
        Emulation::Missing { reason, .. } => println!("Emulation problem: {reason}"),
    }
    println!();
    print_containers(envdir, env, changes);
    let endpoints: Vec<_> = env.endpoints().collect();
    if !endpoints.is_empty() {
        println!();
        println!(
            "{:<16} {:<16} {:>6}  {:<9} {:<9} URL",
            "ENDPOINT", "CONTAINER", "PORT", "PROTOCOL", "EXPOSURE"
        );
        for (c, e) in &endpoints {
            println!(
                "{:<16} {:<16} {:>6}  {:<9} {:<9} {}",
                e.name,
                c.name,
                e.port,
                word(&e.protocol),
                word(&e.exposure),
                url(e)
            );
        }
        println!(
            "The containers share this machine's network: endpoints are its ports, and containers reach each other on localhost."
        );
    }
    println!();
    println!("Enter it:  archway dev shell{flag}");
    let ids: Vec<&str> = env.commands.iter().map(|c| c.id.as_str()).collect();
    if ids.is_empty() {
        println!("Run:       archway dev exec{flag} -- COMMAND");
    } else {
        println!(
            "Run:       archway dev exec{flag} ID (one of: {}) or -- COMMAND",
            ids.join(", ")
        );
    }
    println!("Stop:      archway dev stop{flag}   (remove: archway dev down{flag})");
}

/// The containers a command runs in (composites: all of theirs).
fn commands_containers(env: &Environment, id: &str) -> Vec<String> {
    fn walk(env: &Environment, id: &str, out: &mut Vec<String>, depth: usize) {
        if depth > 32 {
            return;
        }
        match env.command(id).map(|c| &c.action) {
            Some(archway_devfile::Action::Exec { container, .. }) => out.push(container.clone()),
            Some(archway_devfile::Action::Composite { commands, .. }) => {
                for c in commands {
                    walk(env, c, out, depth + 1);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(env, id, &mut out, 0);
    out
}

/// Waits for a supervisor to report its container running.
fn wait_running(dir: &ContainerDir, deadline: Instant) -> anyhow::Result<()> {
    let name = dir.name();
    let spawned = Instant::now();
    loop {
        match dir.state() {
            ContainerState::Running { .. } => return Ok(()),
            ContainerState::Starting => {}
            // It ended and its supervisor is still writing down how.
            ContainerState::Exited { code: None }
                if dir.supervisor().is_some_and(|p| p.is_alive()) => {}
            // The supervisor has not written its identity yet.
            ContainerState::Missing | ContainerState::Exited { code: None }
                if dir.supervisor().is_none() && spawned.elapsed() < Duration::from_secs(10) => {}
            ContainerState::Failed { error } => bail!(
                "container `{name}` could not start: {error}\n(its log: {})",
                dir.log_path().display()
            ),
            other => bail!(
                "container `{name}` stopped as it started ({}). Its last output:\n{}\n(the whole log: {}; a container must keep running: give it a long-running command)",
                other.label(),
                dir.log_tail(20),
                dir.log_path().display()
            ),
        }
        if Instant::now() >= deadline {
            bail!(
                "container `{name}` did not start within the --timeout. Its last output:\n{}",
                dir.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The container table `up` prints.
fn print_containers(envdir: &EnvDir, env: &Environment, changes: &plan::Changes) {
    println!(
        "{:<16} {:<12} {:>8}  {:<28} NOTE",
        "CONTAINER", "STATE", "PID", "IMAGE"
    );
    for c in &env.containers {
        let dir = envdir.container(&c.name);
        let state = dir.state();
        let pid = match state {
            ContainerState::Running { pid: Some(p) } => p.to_string(),
            _ => "-".into(),
        };
        let note = if changes.keep.contains(&c.name) {
            "unchanged, kept running"
        } else if changes.restart.contains(&c.name) {
            "changed, restarted"
        } else {
            "started"
        };
        let tools = if c.tools { " (tools)" } else { "" };
        println!(
            "{:<16} {:<12} {:>8}  {:<28} {note}{tools}",
            c.name,
            state.label(),
            pid,
            plan::image_name(c)
        );
    }
}
