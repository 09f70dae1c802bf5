//! Test support: start the real `archway` binary on loopback, and a small registry client
//! that speaks the raw protocol so tests can observe every status code and header.

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use archway_oci::{Descriptor, Digest, ImageManifest, Index, Platform, media_type};
use reqwest::blocking::{Client, Response};
use reqwest::header::HeaderMap;

pub fn archway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_archway"))
}

/// The environment variable naming the test S3 server's bucket (`s3://archway-test`);
/// `AWS_ENDPOINT_URL` and the usual AWS variables say how to reach it. `scripts/test.sh`
/// starts the server and sets them.
pub const S3_ENV: &str = "ARCHWAY_TEST_S3";

/// Where a registry under test keeps its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A temporary directory (`--root`).
    Fs,
    /// A fresh prefix of the test bucket (`--storage s3://…`).
    S3(String),
}

impl Backend {
    /// A fresh prefix on the test S3 server; `None` (after a visible [`skip`]) without one.
    pub fn s3() -> Option<Backend> {
        match std::env::var(S3_ENV) {
            Ok(bucket) => Some(Backend::S3(format!(
                "{}/t{:016x}",
                bucket.trim_end_matches('/'),
                rand::random::<u64>()
            ))),
            Err(_) => {
                skip(&format!(
                    "no S3 server: {S3_ENV} is not set (scripts/test.sh starts one; see scripts/lib.sh start_test_s3)"
                ));
                None
            }
        }
    }

    /// The storage flags of `registry serve` and `registry gc` for this backend.
    pub fn args(&self, root: &Path) -> Vec<String> {
        match self {
            Backend::Fs => vec!["--root".into(), root.display().to_string()],
            Backend::S3(location) => vec!["--storage".into(), location.clone()],
        }
    }
}

/// Runs test functions that take a [`Backend`] once per backend, as `<module>::fs::<name>`
/// and `<module>::s3::<name>`, so that one suite covers both (the object store's tests skip,
/// visibly, without a test S3 server).
macro_rules! on_each_backend {
    ($($test:ident),* $(,)?) => {
        mod fs {
            $(
                #[test]
                fn $test() {
                    super::$test(crate::support::Backend::Fs)
                }
            )*
        }
        mod s3 {
            $(
                #[test]
                fn $test() {
                    if let Some(b) = crate::support::Backend::s3() {
                        super::$test(b)
                    }
                }
            )*
        }
    };
}

/// A running `archway registry serve`. Killed when dropped.
pub struct RegistryProcess {
    child: Option<Child>,
    pub addr: String,
    pub root: PathBuf,
    pub backend: Backend,
    pub log: PathBuf,
    extra: Vec<String>,
    envs: Vec<(String, String)>,
    soft_nofile: Option<u64>,
    _dir: Option<tempfile::TempDir>,
    _config: Option<tempfile::TempDir>,
}

impl RegistryProcess {
    /// A registry with a fresh temporary root.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_limited(extra, None)
    }

    /// A registry on `backend`, with `extra` flags.
    pub fn start_on(backend: &Backend, extra: &[&str]) -> Self {
        Self::start_full(backend, extra, &[], None)
    }

    /// A registry on `backend` with `extra` flags and environment variables.
    pub fn start_on_env(backend: &Backend, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_full(backend, extra, envs, None)
    }

    /// Another process on the same storage and flags (a replica), on a port of its own.
    pub fn replica(&self) -> Self {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = self
            .envs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Self::spawn(
            &self.backend,
            &self.root,
            &extra,
            &envs,
            "127.0.0.1:0",
            None,
        )
    }

    /// The storage flags this registry was started with (for `registry gc`).
    pub fn storage_args(&self) -> Vec<String> {
        self.backend.args(&self.root)
    }

    /// With `--htpasswd` (the users of [`htpasswd`] at bcrypt `cost`), `--access` with
    /// `access` rules if given, and `extra` flags.
    pub fn start_with_users(cost: u32, access: Option<&str>, extra: &[&str]) -> Self {
        let config = tempfile::tempdir().expect("tempdir");
        let users = htpasswd(config.path(), cost);
        let mut args = vec!["--htpasswd".to_owned(), users.display().to_string()];
        if let Some(rules) = access {
            let path = config.path().join("access");
            fs::write(&path, rules).unwrap();
            args.extend(["--access".to_owned(), path.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut r = Self::start_with(&args);
        r._config = Some(config);
        r
    }

    /// Listening on `listen` (e.g. a non-loopback address, for TLS tests).
    pub fn start_listening(listen: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let mut r = Self::spawn(&Backend::Fs, &root, extra, &[], listen, None);
        r._dir = Some(dir);
        r
    }

    /// Started (through `sh`) with the soft open-file limit set to `soft_nofile`.
    pub fn start_limited(extra: &[&str], soft_nofile: Option<u64>) -> Self {
        Self::start_full(&Backend::Fs, extra, &[], soft_nofile)
    }

    fn start_full(
        backend: &Backend,
        extra: &[&str],
        envs: &[(&str, &str)],
        soft_nofile: Option<u64>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let mut r = Self::spawn(backend, &root, extra, envs, "127.0.0.1:0", soft_nofile);
        r._dir = Some(dir);
        r
    }

    fn spawn(
        backend: &Backend,
        root: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
        listen: &str,
        soft_nofile: Option<u64>,
    ) -> Self {
        let log = root.with_extension(format!("log-{}", rand::random::<u32>()));
        fs::create_dir_all(root.parent().unwrap()).unwrap();
        let stderr = fs::File::create(&log).expect("log file");
        let mut cmd = match soft_nofile {
            None => archway(),
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -Sn {n} && exec \"$0\" \"$@\"")])
                    .arg(env!("CARGO_BIN_EXE_archway"));
                c
            }
        };
        let child = cmd
            .args(["registry", "serve", "--listen", listen])
            .args(backend.args(root))
            .args(extra)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn archway");
        let mut r = RegistryProcess {
            child: Some(child),
            addr: String::new(),
            root: root.to_owned(),
            backend: backend.clone(),
            log,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            soft_nofile,
            _dir: None,
            _config: None,
        };
        r.addr = r.wait_for_address();
        r
    }

    fn wait_for_address(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            // The line may be half written when read: only a whole line counts.
            if let Some(rest) = text
                .split("listening on http://")
                .nth(1)
                .or_else(|| text.split("listening on https://").nth(1))
                && rest.contains('\n')
                && let Some(addr) = rest.split_whitespace().next()
            {
                return addr.to_owned();
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("archway registry exited with {status}:\n{text}");
            }
            assert!(Instant::now() < deadline, "registry did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `host:port`, as used in image references.
    pub fn host(&self) -> &str {
        &self.addr
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = c.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        c.wait().unwrap()
    }

    /// Starts the registry again on the same root and address.
    pub fn restart(&mut self) {
        self.kill9();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = self
            .envs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut fresh = Self::spawn(
            &self.backend,
            &self.root,
            &extra,
            &envs,
            &self.addr,
            self.soft_nofile,
        );
        self.child = fresh.child.take();
        self.log = std::mem::take(&mut fresh.log);
    }

    /// The server's process id (`sh` execs into it when a limit was set).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A raw distribution-protocol client for tests.
pub struct Raw {
    pub http: Client,
    pub base: String,
    pub auth: Option<String>,
}

pub fn error_code(resp: Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().unwrap_or(serde_json::Value::Null);
    let code = body["errors"][0]["code"].as_str().unwrap_or("").to_owned();
    (status, code)
}

pub fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

impl Raw {
    pub fn new(reg: &RegistryProcess) -> Self {
        Raw {
            http: Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            base: reg.url(""),
            auth: None,
        }
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{}", self.base, path)
        };
        let b = self.http.request(method, url);
        match &self.auth {
            Some(a) => b.header("authorization", a),
            None => b,
        }
    }

    /// Monolithic upload: `POST ?digest=`.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let d = Digest::sha256(data);
        let r = self
            .req(
                reqwest::Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            )
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "push blob: {:?}", r.text());
        d
    }

    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.req(
            reqwest::Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
        )
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .unwrap()
    }

    /// `POST /v2/<repo>/blobs/uploads/`: a new session's location.
    pub fn start_upload(&self, repo: &str) -> String {
        let r = self
            .req(reqwest::Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "start upload: {:?}", r.text());
        header(r.headers(), "location")
    }

    pub fn get(&self, path: &str) -> Response {
        self.req(reqwest::Method::GET, path).send().unwrap()
    }

    pub fn head(&self, path: &str) -> Response {
        self.req(reqwest::Method::HEAD, path).send().unwrap()
    }

    /// Pushes a one-layer image whose layer holds `layer`; returns (manifest bytes, digest).
    pub fn push_image(
        &self,
        repo: &str,
        tag: &str,
        layer: &[u8],
        platform: Option<&Platform>,
    ) -> (Vec<u8>, Digest) {
        let (manifest, _) = image_manifest(layer, platform);
        let config = config_json(platform);
        self.push_blob(repo, layer);
        self.push_blob(repo, &config);
        let r = self.put_manifest(repo, tag, media_type::OCI_MANIFEST, &manifest);
        assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
        let d = Digest::sha256(&manifest);
        (manifest, d)
    }

    /// Pushes a two-platform image (amd64 + arm64) and its index under `tag`.
    pub fn push_multiarch(&self, repo: &str, tag: &str) -> (Vec<u8>, Digest, Vec<Digest>) {
        let mut children = Vec::new();
        let mut descriptors = Vec::new();
        for p in [Platform::linux_amd64(), Platform::linux_arm64()] {
            let layer = format!("layer for {p} {}", rand::random::<u64>()).into_bytes();
            let (m, d) = self.push_image(repo, &d_tag(&p), &layer, Some(&p));
            let mut desc = Descriptor::new(media_type::OCI_MANIFEST, d.clone(), m.len() as u64);
            desc.platform = Some(p);
            descriptors.push(desc);
            children.push(d);
        }
        let mut index = Index::new_oci();
        index.manifests = descriptors;
        let bytes = index.to_json();
        let r = self.put_manifest(repo, tag, media_type::OCI_INDEX, &bytes);
        assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
        let d = Digest::sha256(&bytes);
        (bytes, d, children)
    }
}

fn d_tag(p: &Platform) -> String {
    format!("only-{}", p.architecture)
}

pub fn config_json(platform: Option<&Platform>) -> Vec<u8> {
    let p = platform.cloned().unwrap_or_else(Platform::linux_amd64);
    format!(
        r#"{{"architecture":"{}","os":"{}","rootfs":{{"type":"layers","diff_ids":[]}},"config":{{}}}}"#,
        p.architecture, p.os
    )
    .into_bytes()
}

/// An OCI manifest for one layer blob (the layer is declared as an uncompressed tar).
pub fn image_manifest(layer: &[u8], platform: Option<&Platform>) -> (Vec<u8>, ImageManifest) {
    let config = config_json(platform);
    let m = ImageManifest {
        schema_version: 2,
        media_type: media_type::OCI_MANIFEST.to_owned(),
        artifact_type: None,
        config: Descriptor::for_bytes(media_type::OCI_CONFIG, &config),
        layers: vec![Descriptor::for_bytes(media_type::OCI_LAYER_TAR, layer)],
        subject: None,
        annotations: None,
    };
    (m.to_json(), m)
}

/// Reads a whole response body.
pub fn body(mut r: Response) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

/// True when an external program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Records that the running test skips itself (it returns right after): printed, and appended
/// to `$ARCHWAY_SKIP_LOG`, which `scripts/test.sh` reports (and, in CI, fails on). A skipped
/// test still shows as "ok" in cargo's output; this is what makes it visible.
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned();
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(log) = std::env::var_os("ARCHWAY_SKIP_LOG") {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("ARCHWAY_SKIP_LOG is writable");
        writeln!(f, "{test}: {reason}").expect("ARCHWAY_SKIP_LOG is writable");
    }
}

/// Interop tests need real clients; `.ci/run` installs them. Locally, set
/// `ARCHWAY_SKIP_INTEROP=1` to skip (visibly, see [`skip`]) when they are missing instead of
/// failing.
pub fn require(program: &str) -> bool {
    if have(program) {
        return true;
    }
    if std::env::var_os("ARCHWAY_SKIP_INTEROP").is_some() {
        skip(&format!(
            "{program} is not installed (ARCHWAY_SKIP_INTEROP set)"
        ));
        return false;
    }
    panic!(
        "{program} is not installed; run .ci/run (it installs the interop clients) or set ARCHWAY_SKIP_INTEROP=1"
    );
}

/// Runs a command, panicking with its output if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The repository's two-platform busybox OCI layout (tag `1.35`).
pub fn busybox_layout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/busybox-oci")
}

/// A CNCF distribution 2.8 registry (Debian's `docker-registry`), optionally with htpasswd
/// (basic) auth. Killed when dropped.
pub struct DistributionProcess {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl DistributionProcess {
    pub fn start(user: Option<(&str, &str)>) -> Option<Self> {
        if !require("docker-registry") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let auth = match user {
            Some((u, p)) => {
                let path = dir.path().join("htpasswd");
                fs::write(&path, format!("{u}:{}\n", bcrypt::hash(p, 5).unwrap())).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    path.display()
                )
            }
            None => String::new(),
        };
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(DistributionProcess {
            child,
            addr,
            _dir: dir,
        })
    }
}

impl Drop for DistributionProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An isolated user environment for `archway` client commands: its own HOME (manifest lists),
/// DOCKER_CONFIG (credentials) and XDG_DATA_HOME.
pub struct UserEnv {
    pub home: tempfile::TempDir,
}

impl UserEnv {
    pub fn new() -> Self {
        UserEnv {
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn docker_config_dir(&self) -> PathBuf {
        self.home.path().join(".docker")
    }

    /// `archway` with this environment.
    pub fn archway(&self) -> Command {
        let mut c = archway();
        self.apply(&mut c);
        c
    }

    /// Applies this environment to another program (docker, podman, skopeo).
    pub fn apply(&self, c: &mut Command) {
        c.env("HOME", self.home.path())
            .env("DOCKER_CONFIG", self.docker_config_dir())
            .env("XDG_DATA_HOME", self.home.path().join(".local/share"))
            .env_remove("ARCHWAY_LOG");
    }

    /// Runs archway with `args`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        run(self.archway().args(args))
    }

    /// Runs archway with `args`, asserting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.archway().args(args).output().unwrap();
        assert!(
            !out.status.success(),
            "archway {args:?} succeeded but should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// Pushes the two-platform busybox fixture to `host/repo:tag` with archway.
pub fn push_busybox(env: &UserEnv, host: &str, repo: &str, tag: &str) {
    env.ok(&[
        "image",
        "copy",
        "--all",
        "--quiet",
        &format!("oci:{}:1.35", busybox_layout().display()),
        &format!("{host}/{repo}:{tag}"),
    ]);
}

/// The fixture's top-level digest and its per-platform manifest digests.
pub fn busybox_digests() -> (String, Vec<(String, String)>) {
    let layout = archway_oci::layout::ImageLayout::open(busybox_layout()).unwrap();
    let top = layout.resolve(Some("1.35")).unwrap();
    let index: archway_oci::Index =
        serde_json::from_slice(&layout.read_blob(&top.digest).unwrap()).unwrap();
    let children = index
        .manifests
        .iter()
        .map(|m| {
            (
                m.platform.as_ref().unwrap().to_string(),
                m.digest.to_string(),
            )
        })
        .collect();
    (top.digest.to_string(), children)
}

/// An htpasswd file with users alice, bob and admin, password `pw`, at bcrypt `cost`.
pub fn htpasswd(dir: &Path, cost: u32) -> PathBuf {
    let hash = bcrypt::hash("pw", cost).unwrap();
    let path = dir.join("users");
    fs::write(&path, format!("alice:{hash}\nbob:{hash}\nadmin:{hash}\n")).unwrap();
    path
}

/// `GET /token` for `scopes`, with Basic credentials or anonymously.
pub fn token(raw: &Raw, user: Option<(&str, &str)>, scopes: &[&str]) -> Response {
    let mut q: Vec<(&str, &str)> = vec![("service", "archway-registry")];
    q.extend(scopes.iter().map(|s| ("scope", *s)));
    let mut b = raw.http.get(format!("{}/token", raw.base)).query(&q);
    if let Some((u, p)) = user {
        b = b.basic_auth(u, Some(p));
    }
    b.send().unwrap()
}

/// The `Authorization` value for a token response (checked for Docker's fields).
pub fn bearer(resp: Response) -> String {
    assert_eq!(resp.status().as_u16(), 200);
    let v: serde_json::Value = resp.json().unwrap();
    assert_eq!(v["token"], v["access_token"]);
    assert_eq!(v["expires_in"], 300);
    assert!(v["issued_at"].as_str().unwrap().ends_with('Z'));
    format!("Bearer {}", v["token"].as_str().unwrap())
}

/// What a [`FaultyS3`] rule does instead of forwarding a request.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Answers in the store's stead with this status and S3 error code (`SlowDown`, …).
    Status(u16, &'static str),
    /// Forwards, then cuts the response off after this many bytes (headers included).
    CutAfter(usize),
}

/// Requests a [`Fault`] applies to: the method (`""` for any) and a part of the path, for
/// the next `times` matching requests.
#[derive(Clone, Debug)]
pub struct FaultRule {
    pub method: &'static str,
    pub path_contains: &'static str,
    pub fault: Fault,
    pub times: usize,
}

/// A fault-injecting HTTP proxy in front of the test S3 server (`AWS_ENDPOINT_URL`):
/// requests go through unchanged unless a rule matches. Point a registry at it with
/// [`FaultyS3::envs`]. Its threads end with the test process.
pub struct FaultyS3 {
    pub endpoint: String,
    rules: std::sync::Arc<std::sync::Mutex<Vec<FaultRule>>>,
    injected: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FaultyS3 {
    /// A proxy to the test S3 server; `None` (after a visible [`skip`]) without one.
    pub fn start() -> Option<FaultyS3> {
        let upstream = match std::env::var("AWS_ENDPOINT_URL") {
            Ok(u) if std::env::var_os(S3_ENV).is_some() => u,
            _ => {
                skip(&format!(
                    "no S3 server: {S3_ENV} is not set (scripts/test.sh starts one)"
                ));
                return None;
            }
        };
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let proxy = FaultyS3 {
            endpoint,
            rules: Default::default(),
            injected: Default::default(),
        };
        let (rules, injected) = (proxy.rules.clone(), proxy.injected.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (rules, injected, upstream) =
                    (rules.clone(), injected.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let _ = relay(client, &upstream, &rules, &injected);
                });
            }
        });
        Some(proxy)
    }

    pub fn add(&self, rule: FaultRule) {
        self.rules.lock().unwrap().push(rule);
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// Faults injected so far.
    pub fn injected(&self) -> usize {
        self.injected.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The environment that points an `archway` process at this proxy.
    pub fn envs(&self) -> [(&'static str, &str); 1] {
        [("AWS_ENDPOINT_URL", self.endpoint.as_str())]
    }
}

/// One request from `client`: a fault, or forwarded to `upstream` with `Connection: close`
/// and the answer relayed back. The connection closes after each answer.
fn relay(
    mut client: std::net::TcpStream,
    upstream: &str,
    rules: &std::sync::Mutex<Vec<FaultRule>>,
    injected: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    use std::io::Write;
    // Request head.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut parts = request_line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    let mut length = 0usize;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':').unwrap_or((line, ""));
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse().unwrap_or(0),
            "transfer-encoding" => panic!("FaultyS3 does not relay chunked request bodies"),
            "connection" => continue,
            _ => {}
        }
        headers.push(line.to_owned());
    }
    let mut body = vec![0u8; length];
    client.read_exact(&mut body)?;

    let fault = {
        let mut rules = rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|r| {
                r.times > 0
                    && (r.method.is_empty() || r.method == method)
                    && target.contains(r.path_contains)
            })
            .map(|r| {
                r.times -= 1;
                r.fault
            })
    };
    if fault.is_some() {
        injected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    if let Some(Fault::Status(status, code)) = fault {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test</Message></Error>"
        );
        write!(
            client,
            "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        )?;
        return Ok(());
    }
    let mut up = std::net::TcpStream::connect(upstream)?;
    let mut out = format!("{request_line}\r\n");
    for h in headers {
        out.push_str(&h);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    up.write_all(&body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    match fault {
        Some(Fault::CutAfter(n)) => {
            client.write_all(&answer[..n.min(answer.len())])?;
            client.shutdown(std::net::Shutdown::Both)?;
        }
        _ => client.write_all(&answer)?,
    }
    Ok(())
}

/// A moto S3 server of a test's own (`$ARCHWAY_TEST_MOTO`, which `scripts/test.sh` sets),
/// whose clock the test sets through libfaketime: what is written while the clock is set back
/// looks that old to everyone (S3's `LastModified` is the store's clock). Killed when dropped.
pub struct MotoProcess {
    child: Child,
    pub endpoint: String,
    clock: PathBuf,
    _dir: tempfile::TempDir,
}

impl MotoProcess {
    const BUCKET: &'static str = "archway-clock";

    /// `None` (after a visible [`skip`]) without moto or libfaketime.
    pub fn start() -> Option<MotoProcess> {
        let Some(moto) = std::env::var_os("ARCHWAY_TEST_MOTO") else {
            skip("ARCHWAY_TEST_MOTO is not set (scripts/test.sh installs moto and sets it)");
            return None;
        };
        let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
        let lib = PathBuf::from(format!("/usr/lib/{triplet}/faketime/libfaketimeMT.so.1"));
        if !lib.exists() {
            skip("libfaketime is not installed (scripts/test.sh installs it)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let clock = dir.path().join("clock");
        fs::write(&clock, "+0\n").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("LD_PRELOAD", &lib)
            .env("FAKETIME_TIMESTAMP_FILE", &clock)
            // libfaketime re-reads the clock file at most once a second (re-reading it on
            // every call makes the server crawl); see `set_clock`.
            .env("FAKETIME_CACHE_DURATION", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let r = Client::new()
            .put(format!("{endpoint}/{}", Self::BUCKET))
            .send()
            .unwrap();
        assert!(
            r.status().is_success(),
            "creating the bucket: {}",
            r.status()
        );
        Some(MotoProcess {
            child,
            endpoint,
            clock,
            _dir: dir,
        })
    }

    /// Sets the store's clock relative to the real one (`-3h`, `+0`), and waits out
    /// libfaketime's one-second cache of the setting.
    pub fn set_clock(&self, offset: &str) {
        fs::write(&self.clock, format!("{offset}\n")).unwrap();
        std::thread::sleep(Duration::from_millis(2500));
    }

    /// A fresh prefix of this server's bucket.
    pub fn backend(&self) -> Backend {
        Backend::S3(format!(
            "s3://{}/t{:016x}",
            Self::BUCKET,
            rand::random::<u64>()
        ))
    }

    pub fn envs(&self) -> [(&'static str, &str); 1] {
        [("AWS_ENDPOINT_URL", self.endpoint.as_str())]
    }
}

impl Drop for MotoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small HTTP/1.1 file server for `ADD <url>` and git-over-HTTP (the "dumb" protocol is
/// static files): serves `root`, answers `GET`/`HEAD` with `ETag` and a fixed
/// `Last-Modified`, honours `If-None-Match` with 304, logs every request (`METHOD PATH
/// STATUS`, `proxied` when the request line had an absolute URL, as a proxy gets it), and
/// holds a `GET /hold/...` until [`HttpServer::release`]. Stopped when dropped.
pub struct HttpServer {
    pub addr: String,
    pub root: PathBuf,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    released: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// `Last-Modified` of everything the test server serves: 2023-11-14 22:13:20 UTC.
pub const HTTP_LAST_MODIFIED: (&str, u64) = ("Tue, 14 Nov 2023 22:13:20 GMT", 1_700_000_000);

impl HttpServer {
    pub fn start(root: &Path) -> HttpServer {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = HttpServer {
            addr,
            root: root.to_owned(),
            log: Default::default(),
            released: Default::default(),
            stop: Default::default(),
        };
        let (root, log, released, stop) = (
            server.root.clone(),
            server.log.clone(),
            server.released.clone(),
            server.stop.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let (root, log, released) = (root.clone(), log.clone(), released.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                            break;
                        }
                        headers.push(h.trim().to_owned());
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or("").to_owned();
                    let target = parts.next().unwrap_or("/").to_owned();
                    let (proxied, path) = match target.strip_prefix("http://") {
                        Some(rest) => (true, rest.find('/').map_or("/", |i| &rest[i..]).to_owned()),
                        None => (false, target.clone()),
                    };
                    let path = path.split('?').next().unwrap_or("/").to_owned();
                    if path.starts_with("/hold/") {
                        let (lock, cv) = &*released;
                        let mut go = lock.lock().unwrap();
                        log.lock().unwrap().push(format!("{method} {path} held"));
                        while !*go {
                            go = cv.wait(go).unwrap();
                        }
                    }
                    let file = root.join(path.trim_start_matches('/'));
                    let body = std::fs::read(&file).ok().filter(|_| file.is_file());
                    let etag = body
                        .as_ref()
                        .map(|b| format!("\"{}\"", &archway_oci::Digest::sha256(b).hex()[..16]));
                    let if_none_match = headers.iter().find_map(|h| {
                        h.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case("if-none-match"))
                            .map(|(_, v)| v.trim().to_owned())
                    });
                    let status = match (&body, &etag) {
                        (None, _) => 404,
                        (Some(_), Some(e)) if if_none_match.as_deref() == Some(e.as_str()) => 304,
                        _ => 200,
                    };
                    log.lock().unwrap().push(format!(
                        "{method} {path} {status}{}",
                        if proxied { " proxied" } else { "" }
                    ));
                    let mut head = format!(
                        "HTTP/1.1 {status} X\r\nConnection: close\r\nLast-Modified: {}\r\n",
                        HTTP_LAST_MODIFIED.0
                    );
                    if let Some(e) = &etag {
                        head.push_str(&format!("ETag: {e}\r\n"));
                    }
                    let payload = if status == 200 && method == "GET" {
                        body.unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    let len = if status == 200 { body_len(&file) } else { 0 };
                    head.push_str(&format!("Content-Length: {len}\r\n\r\n"));
                    let _ = conn.write_all(head.as_bytes());
                    let _ = conn.write_all(&payload);
                });
            }
        });
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Lets every held `GET /hold/...` (and later ones) through.
    pub fn release(&self) {
        let (lock, cv) = &*self.released;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }

    /// Waits (polling, with a deadline) until a request matching `needle` was logged.
    pub fn wait_for(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().iter().any(|l| l.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "no request `{needle}` within {within:?}: {:?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn body_len(file: &Path) -> u64 {
    fs::metadata(file).map(|m| m.len()).unwrap_or(0)
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.release();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the accept loop so it sees `stop`.
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

/// A bare git repository served over dumb HTTP from `served/<name>.git`, made from the files
/// of `src` in one commit tagged `v1` (fixed author and dates, so its commit id is fixed).
pub fn git_repository(src: &Path, served: &Path, name: &str) -> String {
    let work = tempfile::tempdir().unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(work.path()));
    let git = |args: &[&str], dir: &Path| {
        run(Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z"))
    };
    git(&["init", "-q", "-b", "main"], work.path());
    git(&["add", "-A"], work.path());
    git(&["commit", "-q", "-m", "fixture"], work.path());
    git(&["tag", "-a", "v1", "-m", "v1"], work.path());
    let bare = served.join(format!("{name}.git"));
    fs::create_dir_all(served).unwrap();
    git(
        &[
            "clone",
            "-q",
            "--bare",
            work.path().to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
        served,
    );
    git(&["update-server-info"], &bare);
    git(&["rev-parse", "HEAD"], work.path()).trim().to_owned()
}

/// podman/buildah with private storage so tests do not share state.
pub fn containers_tool(program: &str, dir: &Path) -> Command {
    let mut c = Command::new(program);
    c.arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "vfs"]);
    c.env("REGISTRIES_CONFIG_PATH", "/dev/null");
    c
}

/// A private Docker engine for one test.
pub struct Dockerd {
    child: Child,
    sock: String,
    config: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

impl Dockerd {
    pub fn start() -> Option<Dockerd> {
        if !require("dockerd") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let sock = format!("unix://{}/docker.sock", dir.path().display());
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .args(["--iptables=false", "--bridge=none", "--host", &sock])
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let d = Dockerd {
            child,
            sock,
            config: tempfile::tempdir().unwrap(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.docker().arg("version").output().unwrap().status.success() {
            assert!(Instant::now() < deadline, "dockerd did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(d)
    }

    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", &self.sock)
            .env("DOCKER_CONFIG", self.config.path());
        c
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory owned by `uid` (and its group) in `parent`, which everyone may enter.
pub fn owned_dir(uid: u32, name: &str, parent: &tempfile::TempDir) -> PathBuf {
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = parent.path().join(name);
    std::fs::create_dir_all(&d).unwrap();
    rustix::fs::chown(
        &d,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(uid)),
    )
    .unwrap();
    d
}

/// `archway` as the unprivileged user `nobody` (65534), run from a copy in `home` (the checkout
/// may sit under a directory nobody cannot enter).
pub fn as_nobody(home: &Path) -> Command {
    let bin = home.join("archway");
    if !bin.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_archway"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin);
    c.env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("DOCKER_CONFIG", home.join("docker"))
        .env_remove("ARCHWAY_LOG");
    c
}
