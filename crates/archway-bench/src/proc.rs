//! Child server processes: start, wait until they answer, sample their resident memory, stop.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A server under test.
#[derive(Debug)]
pub struct Server {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Server {
    /// Spawns `cmd` (which must listen on `addr`) and waits until it accepts connections.
    pub fn start(name: &str, mut cmd: Command, addr: SocketAddr) -> anyhow::Result<Server> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let mut s = Server {
            name: name.to_owned(),
            addr,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = s.child.try_wait()? {
                bail!("{name} exited with {status} before listening");
            }
            if Instant::now() > deadline {
                bail!("{name} did not listen on {addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts sampling resident memory every 20 ms until the sampler is stopped.
    pub fn sample_rss(&self) -> RssSampler {
        RssSampler::start(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident set size of a process, in bytes (from /proc).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Background sampler of a process's peak RSS over a period.
#[derive(Debug)]
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_bytes(pid).unwrap_or(0)));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(r) = rss_bytes(pid) {
                    p.fetch_max(r, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    /// Stops sampling and returns the peak seen, in bytes.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// The `archway` binary to benchmark: `given`, else the one next to this program.
pub fn archway_binary(given: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    let archway = match given {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("archway"),
    };
    if !archway.exists() {
        bail!(
            "{} not found; build it with `cargo build --release` or pass --archway",
            archway.display()
        );
    }
    Ok(archway)
}

/// `archway registry serve` on a free loopback port with its storage at `root`.
pub fn start_archway_registry(
    archway: &std::path::Path,
    root: &std::path::Path,
) -> anyhow::Result<Server> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut cmd = Command::new(archway);
    cmd.args([
        "registry",
        "serve",
        "--quiet",
        "--listen",
        &addr.to_string(),
        "--root",
    ])
    .arg(root);
    Server::start("archway registry", cmd, addr)
}

/// True if `program` is a path that exists or a name found on PATH.
pub fn on_path(program: &std::path::Path) -> bool {
    if program.components().count() > 1 {
        return program.exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Credentials the benchmark's S3 server accepts (moto checks none).
pub const S3_KEY: &str = "archway-bench";
/// The bucket the benchmark's servers share.
pub const S3_BUCKET: &str = "archway-bench";

/// A fresh moto S3 server (`moto_server`, PyPI `moto[server]`) on a free loopback port, with
/// the bucket [`S3_BUCKET`]; its endpoint is `http://<addr>`.
pub fn start_moto(moto: &std::path::Path) -> anyhow::Result<Server> {
    use std::io::{Read, Write};
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut cmd = Command::new(moto);
    cmd.args(["-H", "127.0.0.1", "-p", &addr.port().to_string()]);
    let server = Server::start("moto", cmd, addr)?;
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "PUT /{S3_BUCKET} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 200") {
        bail!(
            "creating the bucket on moto: {}",
            answer.lines().next().unwrap_or("")
        );
    }
    Ok(server)
}

/// `archway registry serve` on a free loopback port with its storage on the S3 server at
/// `endpoint` (`s3://archway-bench/archway`), redirecting blob reads to it if `redirect`.
pub fn start_archway_registry_s3(
    archway: &std::path::Path,
    endpoint: &str,
    redirect: bool,
) -> anyhow::Result<Server> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut cmd = Command::new(archway);
    cmd.args([
        "registry",
        "serve",
        "--quiet",
        "--listen",
        &addr.to_string(),
        "--storage",
        &format!("s3://{S3_BUCKET}/archway"),
    ]);
    if redirect {
        cmd.arg("--storage-redirect");
    }
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", S3_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_KEY)
        .env("AWS_REGION", "us-east-1");
    Server::start("archway registry (s3)", cmd, addr)
}

/// The wall time of running `cmd` to completion; an error (with its stderr) if it fails.
pub fn time_command(mut cmd: Command) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    let d = t.elapsed();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(d)
}
