//! `services:`: sidecar sandboxes started from their images before the job's script, on the
//! host's network (as the job is), so the job reaches each one on `localhost` and by its
//! aliases (written into the job's `/etc/hosts`); stopped when the job ends.
//!
//! As gitlab-runner does, the job waits (at most [`READY_TIMEOUT`]) for the ports the
//! service's image `EXPOSE`s to accept connections, and warns, with the service's last output,
//! if it stopped or never listened; a service image that cannot be pulled fails the job.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use archway_api::{JobPayload, ServiceDef};
use archway_oci::Platform;
use archway_oci::run_config::{RunOverrides, resolve_run};
use archway_sandbox::{Exit, Network, RunSpec};

use super::{SandboxExecutor, expand};
use crate::executor::JobIo;
use crate::toolbox;

/// How long a job waits for its services' ports.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A service that was started.
#[derive(Debug)]
pub struct Running {
    name: String,
    cancel: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<Exit, String>>,
    log: PathBuf,
}

/// The host names a service answers to: its `alias` (a comma- or space-separated list, as
/// GitLab accepts) and the two GitLab derives from the image name without its tag
/// (`registry.io/group/db` → `registry.io__group__db`, `registry.io-group-db`).
pub fn aliases(s: &ServiceDef, image: &str) -> Vec<String> {
    let mut out: Vec<String> = s
        .alias
        .iter()
        .flat_map(|a| a.split([',', ' ']))
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    let base = image.split('@').next().unwrap_or(image);
    let base = match base.rsplit_once(':') {
        Some((b, tag)) if !tag.contains('/') => b,
        _ => base,
    };
    for derived in [base.replace('/', "__"), base.replace('/', "-")] {
        if !out.contains(&derived) {
            out.push(derived);
        }
    }
    out.retain(|a| {
        a.len() <= 253
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    });
    out
}

/// TCP ports an image exposes (`8080/tcp`; UDP ports cannot be probed).
fn tcp_ports(config: &archway_oci::config::ImageConfig) -> Vec<u16> {
    config
        .config
        .as_ref()
        .and_then(|c| c.exposed_ports.as_ref())
        .map(|p| {
            p.keys()
                .filter_map(|k| {
                    let (port, proto) = k.split_once('/').unwrap_or((k, "tcp"));
                    (proto == "tcp").then(|| port.parse().ok()).flatten()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl SandboxExecutor {
    /// Starts the job's services; returns them and the aliases they answer to. An image
    /// that cannot be pulled is an error (the job fails, as on GitLab).
    pub(super) async fn start_services(
        &self,
        job: &JobPayload,
        io: &JobIo,
        platform: &Platform,
        toolbox_job: bool,
    ) -> Result<(Vec<Running>, Vec<String>), String> {
        let mut running = Vec::new();
        let mut all_aliases = Vec::new();
        for (i, s) in job.services.iter().enumerate() {
            let image = expand(&s.name, job);
            if toolbox_job && toolbox::is_dind(&image) {
                io.log.note(&format!(
                    "Service {image}: not started; the toolbox serves docker commands without a daemon"
                ));
                continue;
            }
            let pull = match self.mirrored(&image) {
                Some(m) => m,
                None => image.clone(),
            };
            io.log
                .note(&format!("Starting service {image} for {platform}"));
            let (rootfs, config) = match self.image(job, &pull, platform).await {
                Ok(x) => x,
                Err(e) => {
                    // Stop what already started.
                    stop(running, io).await;
                    return Err(format!("cannot pull the service image {image}: {e}"));
                }
            };
            let mut env: Vec<String> = job
                .variables
                .iter()
                .map(|v| format!("{}={}", v.name, v.value))
                .collect();
            env.extend(
                s.variables
                    .iter()
                    .map(|v| format!("{}={}", v.name, v.value)),
            );
            let run = match resolve_run(
                config.config.as_ref(),
                &RunOverrides {
                    entrypoint: s.entrypoint.clone(),
                    command: s.command.clone().unwrap_or_default(),
                    env,
                    user: None,
                    workdir: None,
                },
            ) {
                Ok(r) => r,
                Err(e) => {
                    stop(running, io).await;
                    return Err(format!("service {image}: {e}"));
                }
            };
            let names = aliases(s, &image);
            io.log.note(&format!(
                "Service {image} answers on localhost and as {}",
                names.join(", ")
            ));
            all_aliases.extend(names);
            let ports = tcp_ports(&config);
            let cancel = Arc::new(AtomicBool::new(false));
            let log = io.work_dir.join(format!("service-{i}.log"));
            let dir = io.work_dir.join(format!("service-{i}"));
            let task = {
                let sandbox = self.sandbox.clone();
                let platform = platform.clone();
                let cancel = cancel.clone();
                let log = log.clone();
                let timeout = Duration::from_secs(job.timeout_secs.max(1) + 60);
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                    let file = std::sync::Mutex::new(
                        std::fs::File::create(&log).map_err(|e| e.to_string())?,
                    );
                    let spec = RunSpec {
                        platform: &platform,
                        rootfs: &rootfs,
                        dir: &dir,
                        argv: run.argv,
                        env: run.env,
                        cwd: run.cwd,
                        user: run.user,
                        mounts: Vec::new(),
                        network: Network::Host,
                        timeout: Some(timeout),
                        collect_changes: false,
                    };
                    let out = sandbox
                        .run_cancellable(
                            &spec,
                            &|line: &str| {
                                if let Ok(mut f) = file.lock() {
                                    let _ = writeln!(f, "{line}");
                                }
                            },
                            Some(&cancel),
                        )
                        .map_err(|e| e.to_string());
                    let _ = std::fs::remove_dir_all(&dir);
                    out.map(|o| o.exit)
                })
            };
            let mut svc = Running {
                name: image.clone(),
                cancel,
                task,
                log,
            };
            // Wait for the exposed ports, as gitlab-runner's health check does.
            let started = Instant::now();
            let mut pending = ports.clone();
            while !pending.is_empty()
                && started.elapsed() < READY_TIMEOUT
                && !svc.task.is_finished()
            {
                let mut still = Vec::new();
                for p in pending {
                    if tokio::net::TcpStream::connect(("127.0.0.1", p))
                        .await
                        .is_err()
                    {
                        still.push(p);
                    }
                }
                pending = still;
                if !pending.is_empty() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            if svc.task.is_finished() {
                let ended = (&mut svc.task).await;
                io.log.note(&format!(
                    "WARNING: service {image} stopped ({}); it probably did not start properly. Its last output:\n{}",
                    match ended {
                        Ok(Ok(e)) => format!("{e:?}"),
                        Ok(Err(e)) => e,
                        Err(e) => e.to_string(),
                    },
                    tail(&svc.log)
                ));
                continue;
            }
            if !pending.is_empty() {
                io.log.note(&format!(
                    "WARNING: service {image} did not listen on port(s) {pending:?} within {}s. Its last output:\n{}",
                    READY_TIMEOUT.as_secs(),
                    tail(&svc.log)
                ));
            }
            running.push(svc);
        }
        Ok((running, all_aliases))
    }
}

/// Stops the services (their sandboxes are killed) and waits for them.
pub(super) async fn stop(services: Vec<Running>, io: &JobIo) {
    for s in &services {
        s.cancel.store(true, Ordering::SeqCst);
    }
    for s in services {
        match tokio::time::timeout(Duration::from_secs(30), s.task).await {
            Ok(_) => {}
            Err(_) => io.log.note(&format!(
                "WARNING: service {} did not stop within 30s",
                s.name
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_as_gitlab_derives_them() {
        let s = ServiceDef {
            name: "registry.example.com/group/db:16".into(),
            alias: Some("db,database cache".into()),
            ..ServiceDef::default()
        };
        assert_eq!(
            aliases(&s, &s.name),
            [
                "db",
                "database",
                "cache",
                "registry.example.com__group__db",
                "registry.example.com-group-db"
            ]
        );
        let plain = ServiceDef {
            name: "postgres:16".into(),
            ..ServiceDef::default()
        };
        assert_eq!(aliases(&plain, "postgres:16"), ["postgres"]);
        let port = ServiceDef {
            name: "127.0.0.1:5000/tools/httpd".into(),
            alias: Some("bad alias/with slash".into()),
            ..ServiceDef::default()
        };
        // `127.0.0.1:5000/…` keeps its port; a `/` in an alias is refused.
        assert_eq!(aliases(&port, &port.name), ["bad", "slash"]);
    }
}
