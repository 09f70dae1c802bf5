//! The toolbox: a job whose image is one of the builder or manifest tools pipelines call —
//! Kaniko's executor, `docker` (with a `docker:dind` service), podman, buildah,
//! manifest-tool — runs in a sandbox where those commands are Archway's own, so a pipeline
//! written for Kaniko or docker-in-docker runs unchanged, unprivileged, with no daemon.
//!
//! The toolbox sandbox's root filesystem is the runner host's `/usr` (read-only) under a small
//! prepared tree: `/kaniko/executor` and `/archway-toolbox/bin/{docker,podman,buildah,
//! manifest-tool}` are links to the `archway` binary (bound read-only at
//! `/archway-toolbox/archway`), which dispatches on the name it is called by. Logins, pushes
//! and manifest lists run inside the sandbox with the job's own credentials. Builds need
//! sandboxes of their own, which an unprivileged sandbox cannot nest, so the command inside
//! sends them over a Unix socket (`/archway-toolbox/run/toolbox.sock`) to the runner, which
//! runs `archway build` on the host with its build store (the job's cache) and streams the
//! output back. The runner trusts nothing in a request: paths must lie inside the job's
//! project directory (after resolving symlinks on the host), only flags that name no path are
//! passed, and the credentials used are the ones the job sent.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use archway_client::mirror::Mirror;
use archway_oci::Reference;
use archway_sandbox::ExtraMount;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Where the toolbox lives inside the sandbox.
pub const ROOT: &str = "/archway-toolbox";
/// The job's image store (images `docker build` made, for `docker push` and `docker tag`).
pub const IMAGES: &str = "/archway-toolbox/images";
/// The socket builds are sent to.
pub const SOCKET: &str = "/archway-toolbox/run/toolbox.sock";
/// The environment variable that tells the commands where the socket is.
pub const SOCKET_ENV: &str = "ARCHWAY_TOOLBOX_SOCKET";
/// The commands the toolbox serves, by the name they are called.
pub const COMMANDS: &[&str] = &["docker", "podman", "buildah", "manifest-tool", "executor"];

/// Largest request line a job may send.
const MAX_REQUEST: usize = 1 << 20;

/// Which tool a job's image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Kaniko,
    Docker,
    Podman,
    Buildah,
    ManifestTool,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Kaniko => "kaniko",
            Tool::Docker => "docker",
            Tool::Podman => "podman",
            Tool::Buildah => "buildah",
            Tool::ManifestTool => "manifest-tool",
        }
    }

    /// What the job's commands become, for the job log.
    pub fn describe(self) -> &'static str {
        match self {
            Tool::Kaniko => "/kaniko/executor runs `archway build` (Kaniko's flags)",
            Tool::Docker => {
                "docker build|buildx build|login|push|tag|manifest run Archway's builder and \
                 registry client (no daemon: a docker:dind service is not needed)"
            }
            Tool::Podman => "podman build|login|push|tag|manifest run Archway's",
            Tool::Buildah => "buildah bud|build|login|push|tag|manifest run Archway's",
            Tool::ManifestTool => {
                "manifest-tool push from-args|from-spec and inspect run Archway's"
            }
        }
    }
}

/// The tool a job image is, if the toolbox serves it.
pub fn tool_for_image(image: &str) -> Option<Tool> {
    let r: Reference = image.parse().ok()?;
    let repo = r.repository.as_str();
    if repo.ends_with("kaniko-project/executor") {
        return Some(Tool::Kaniko);
    }
    match (r.registry.as_str(), repo) {
        ("docker.io", "library/docker") => Some(Tool::Docker),
        (
            "quay.io",
            "podman/stable" | "podman/upstream" | "podman/testing" | "containers/podman",
        ) => Some(Tool::Podman),
        ("quay.io", "buildah/stable" | "buildah/upstream" | "containers/buildah") => {
            Some(Tool::Buildah)
        }
        ("docker.io", "mplatform/manifest-tool") => Some(Tool::ManifestTool),
        _ => None,
    }
}

/// Whether a service image is a Docker daemon (`docker:dind`), which the toolbox replaces.
pub fn is_dind(image: &str) -> bool {
    image.parse::<Reference>().is_ok_and(|r| {
        r.registry == "docker.io"
            && r.repository == "library/docker"
            && r.tag.as_deref().is_some_and(|t| t.contains("dind"))
    })
}

/// A build, as the command inside the sandbox asks for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildCall {
    /// The context directory (an absolute path inside the sandbox).
    pub context: String,
    /// The Dockerfile (an absolute path inside the sandbox), default `CONTEXT/Dockerfile`.
    #[serde(default)]
    pub dockerfile: Option<String>,
    /// `archway build` flags that name no path (see [`check_flags`]).
    #[serde(default)]
    pub flags: Vec<String>,
    /// Also keep the result in the job's image store under this key.
    #[serde(default)]
    pub store_as: Option<String>,
    /// Also write an OCI archive here (inside the project directory).
    #[serde(default)]
    pub tar_path: Option<String>,
    /// The job's Docker client config (`config.json` content) for pulls and pushes.
    #[serde(default)]
    pub docker_config: Option<String>,
}

/// Flags of `archway build` a job may pass (each names no host path), and whether each takes
/// a value.
const FLAGS: &[(&str, bool)] = &[
    ("--tag", true),
    ("-t", true),
    ("--destination", true),
    ("--platform", true),
    ("--build-arg", true),
    ("--target", true),
    ("--label", true),
    ("--cache-repo", true),
    ("--cache", true),
    ("--push", false),
    ("--no-push", false),
    ("--no-cache", false),
    ("--quiet", false),
    ("-q", false),
];

/// Refuses any flag not in the list above (a path the runner would read or write).
pub fn check_flags(flags: &[String]) -> Result<(), String> {
    let mut i = 0;
    while i < flags.len() {
        let f = &flags[i];
        let (name, inline) = match f.split_once('=') {
            Some((n, _)) => (n, true),
            None => (f.as_str(), false),
        };
        match FLAGS.iter().find(|(n, _)| *n == name) {
            Some((_, true)) if !inline => i += 2,
            Some(_) => i += 1,
            None => return Err(format!("`{f}` is not a build flag the toolbox passes on")),
        }
    }
    Ok(())
}

/// A store key: what `docker build -t` names become in the job's image store.
pub fn store_key(reference: &str) -> String {
    archway_oci::Digest::sha256(reference.as_bytes()).hex()[..32].to_owned()
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Frame kinds on the socket, runner → command.
pub const FRAME_OUTPUT: u8 = b'o';
pub const FRAME_EXIT: u8 = b'x';

/// One frame: a kind byte, a big-endian u32 length, the payload.
pub fn encode_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 5);
    v.push(kind);
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Reads one frame (`None` at the end of the stream).
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > 16 << 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

/// The runner's side of the toolbox.
#[derive(Clone, Debug)]
pub struct Toolbox {
    /// The `archway` binary (bound into the sandbox, and run for builds).
    pub exe: PathBuf,
    /// The build store builds use (the runner's).
    pub store_dir: PathBuf,
    /// OCI runtime for RUN steps.
    pub runtime: Option<String>,
    /// Registry mirrors for `FROM` images.
    pub mirrors: Vec<Mirror>,
}

/// One job's toolbox: its socket server runs until this is dropped (builds in flight are
/// killed with it).
#[derive(Debug)]
pub struct JobToolbox {
    task: tokio::task::JoinHandle<()>,
    run: PathBuf,
    /// Mounts the job's sandbox needs.
    pub mounts: Vec<ExtraMount>,
    /// Environment for the job.
    pub env: Vec<String>,
}

impl Drop for JobToolbox {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.run);
    }
}

/// Host directories `/usr`-merged systems link from the root, and others bind.
const ROOT_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

impl Toolbox {
    /// The toolbox root filesystem under `cache_dir` (made once, atomically).
    pub fn rootfs(&self, cache_dir: &Path) -> io::Result<PathBuf> {
        let dest = cache_dir.join("toolbox-rootfs-v1");
        if dest.is_dir() {
            return Ok(dest);
        }
        std::fs::create_dir_all(cache_dir)?;
        let tmp = cache_dir.join(format!(".toolbox-rootfs-{}", uuid::Uuid::new_v4().simple()));
        let mk = |p: &str| std::fs::create_dir_all(tmp.join(p));
        for d in [
            "usr",
            "etc/ssl",
            "tmp",
            "root",
            "kaniko/.docker",
            "workspace",
            "archway-toolbox/bin",
            "archway-toolbox/run",
            "archway-toolbox/images",
            "builds",
            "var/tmp",
        ] {
            mk(d)?;
        }
        for d in ROOT_DIRS {
            let host = Path::new("/").join(d);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    std::os::unix::fs::symlink(std::fs::read_link(&host)?, tmp.join(d))?;
                }
                Ok(m) if m.is_dir() => mk(d)?,
                _ => {}
            }
        }
        std::fs::write(
            tmp.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        )?;
        std::fs::write(tmp.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
        std::fs::write(tmp.join("archway-toolbox/archway"), b"")?;
        for c in COMMANDS {
            std::os::unix::fs::symlink("../archway", tmp.join("archway-toolbox/bin").join(c))?;
        }
        std::os::unix::fs::symlink("/archway-toolbox/archway", tmp.join("kaniko/executor"))?;
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => Ok(dest),
            // Another job made it first.
            Err(_) if dest.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(dest)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts the job's socket server. `dir` is the job's own directory on the host; `src`
    /// the host directory mounted at `project_dir`. `platform` is the job's platform, the
    /// default for builds.
    pub fn start(
        &self,
        tool: Tool,
        dir: &Path,
        project_dir: &str,
        src: &Path,
        platform: &str,
    ) -> io::Result<JobToolbox> {
        // Socket paths are short (108 bytes), and job directories can be deep: the socket's
        // directory is in the temporary directory, removed with the job.
        let run = std::env::temp_dir().join(format!(
            "archway-toolbox-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        let images = dir.join("images");
        std::fs::create_dir_all(&run)?;
        std::fs::create_dir_all(&images)?;
        let sock = run.join("toolbox.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock)?;
        let mut mounts = vec![ExtraMount::Bind {
            host: "/usr".into(),
            target: "/usr".into(),
            readonly: true,
        }];
        for d in ROOT_DIRS {
            let host = Path::new("/").join(d);
            if std::fs::symlink_metadata(&host).is_ok_and(|m| m.is_dir()) {
                mounts.push(ExtraMount::Bind {
                    host,
                    target: format!("/{d}"),
                    readonly: true,
                });
            }
        }
        for etc in ["/etc/ssl", "/etc/alternatives", "/etc/ca-certificates"] {
            if Path::new(etc).is_dir() {
                mounts.push(ExtraMount::Bind {
                    host: etc.into(),
                    target: etc.into(),
                    readonly: true,
                });
            }
        }
        mounts.extend([
            ExtraMount::Bind {
                host: self.exe.clone(),
                target: format!("{ROOT}/archway"),
                readonly: true,
            },
            ExtraMount::Bind {
                host: run.clone(),
                target: format!("{ROOT}/run"),
                readonly: false,
            },
            ExtraMount::Bind {
                host: images.clone(),
                target: IMAGES.into(),
                readonly: false,
            },
        ]);
        let mut env = vec![
            format!(
                "PATH={ROOT}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/kaniko:/busybox"
            ),
            "HOME=/root".into(),
            format!("{SOCKET_ENV}={SOCKET}"),
            format!("ARCHWAY_TOOLBOX={}", tool.name()),
        ];
        if tool == Tool::Kaniko {
            env.push("DOCKER_CONFIG=/kaniko/.docker".into());
        }
        let server = Arc::new(Server {
            toolbox: self.clone(),
            project_dir: PathBuf::from(project_dir),
            src: src.to_owned(),
            images,
            scratch: dir.join("builds"),
            platform: platform.to_owned(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    break;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    if let Err(e) = server.handle(conn).await {
                        tracing::debug!("toolbox connection: {e}");
                    }
                });
            }
        });
        Ok(JobToolbox {
            task,
            run,
            mounts,
            env,
        })
    }
}

#[derive(Debug)]
struct Server {
    toolbox: Toolbox,
    project_dir: PathBuf,
    src: PathBuf,
    images: PathBuf,
    scratch: PathBuf,
    platform: String,
}

/// `path` (absolute, inside the sandbox) under `inside`, as the same place under `host`; the
/// result must stay under `host` once symlinks are resolved.
fn map_path(path: &str, inside: &Path, host: &Path, must_exist: bool) -> Result<PathBuf, String> {
    let p = Path::new(path);
    let rel = p.strip_prefix(inside).map_err(|_| {
        format!(
            "{path}: the toolbox builds only from files under {} (the project directory)",
            inside.display()
        )
    })?;
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!("{path}: `..` is not allowed here"));
    }
    let mapped = host.join(rel);
    let root = std::fs::canonicalize(host).map_err(|e| format!("{}: {e}", host.display()))?;
    let check = if must_exist {
        Some(mapped.clone())
    } else {
        mapped.parent().map(Path::to_path_buf)
    };
    if let Some(c) = check {
        let real = std::fs::canonicalize(&c).map_err(|_| format!("{path} does not exist"))?;
        if !real.starts_with(&root) {
            return Err(format!(
                "{path} leads outside the project directory (a symbolic link?)"
            ));
        }
    }
    Ok(mapped)
}

impl Server {
    /// The `archway build` command line for a call, after checking it.
    fn command(&self, call: &BuildCall, config_dir: &Path) -> Result<Vec<String>, String> {
        check_flags(&call.flags)?;
        let context = map_path(&call.context, &self.project_dir, &self.src, true)?;
        if !context.is_dir() {
            return Err(format!("build context {} is not a directory", call.context));
        }
        let mut args = vec![
            "build".to_owned(),
            "--context".to_owned(),
            context.to_string_lossy().into_owned(),
        ];
        if let Some(f) = &call.dockerfile {
            let f = map_path(f, &self.project_dir, &self.src, true)?;
            args.extend(["--file".to_owned(), f.to_string_lossy().into_owned()]);
        }
        if !call
            .flags
            .iter()
            .any(|f| f == "--platform" || f.starts_with("--platform="))
        {
            args.extend(["--platform".to_owned(), self.platform.clone()]);
        }
        args.extend(call.flags.iter().cloned());
        if let Some(k) = &call.store_as {
            if !valid_key(k) {
                return Err(format!("store key `{k}` is not alphanumeric"));
            }
            args.extend([
                "--output".to_owned(),
                format!("oci:{}:latest", self.images.join(k).display()),
            ]);
        }
        if let Some(t) = &call.tar_path {
            let t = map_path(t, &self.project_dir, &self.src, false)?;
            args.extend(["--output".to_owned(), format!("tar:{}", t.display())]);
        }
        args.extend([
            "--cache-dir".to_owned(),
            self.toolbox.store_dir.to_string_lossy().into_owned(),
            "--authfile".to_owned(),
            config_dir
                .join("config.json")
                .to_string_lossy()
                .into_owned(),
        ]);
        if let Some(r) = &self.toolbox.runtime {
            args.extend(["--runtime".to_owned(), r.clone()]);
        }
        for m in &self.toolbox.mirrors {
            args.extend(["--registry-mirror".to_owned(), m.to_string()]);
        }
        Ok(args)
    }

    async fn handle(&self, conn: UnixStream) -> io::Result<()> {
        let (r, mut w) = conn.into_split();
        let mut line = Vec::new();
        let n = BufReader::new(r.take(MAX_REQUEST as u64 + 1))
            .read_until(b'\n', &mut line)
            .await?;
        let fail = |msg: String| {
            let mut v = encode_frame(FRAME_OUTPUT, format!("archway toolbox: {msg}\n").as_bytes());
            v.extend(encode_frame(FRAME_EXIT, b"2"));
            v
        };
        if n > MAX_REQUEST {
            w.write_all(&fail("request too large".into())).await?;
            return Ok(());
        }
        let call: BuildCall = match serde_json::from_slice(&line) {
            Ok(c) => c,
            Err(e) => {
                w.write_all(&fail(format!("bad request: {e}"))).await?;
                return Ok(());
            }
        };
        let config_dir = self
            .scratch
            .join(format!("build-{}", uuid::Uuid::new_v4().simple()));
        let args = match self.command(&call, &config_dir) {
            Ok(a) => a,
            Err(e) => {
                w.write_all(&fail(e)).await?;
                return Ok(());
            }
        };
        let config = call.docker_config.as_deref().unwrap_or("{}");
        if serde_json::from_str::<serde_json::Value>(config).is_err() {
            w.write_all(&fail("the job's docker config.json is not JSON".into()))
                .await?;
            return Ok(());
        }
        std::fs::create_dir_all(&config_dir)?;
        std::fs::write(config_dir.join("config.json"), config)?;
        let result = self.run(&args, &config_dir, &mut w).await;
        let _ = std::fs::remove_dir_all(&config_dir);
        result
    }

    async fn run(
        &self,
        args: &[String],
        config_dir: &Path,
        w: &mut tokio::net::unix::OwnedWriteHalf,
    ) -> io::Result<()> {
        let mut child = tokio::process::Command::new(&self.toolbox.exe)
            .args(args)
            .env("DOCKER_CONFIG", config_dir)
            .env_remove(SOCKET_ENV)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        let pump = |mut s: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
            })
        };
        if let Some(o) = child.stdout.take() {
            pump(Box::new(o));
        }
        if let Some(e) = child.stderr.take() {
            pump(Box::new(e));
        }
        drop(tx);
        while let Some(chunk) = rx.recv().await {
            // The job went away: stop the build (kill_on_drop).
            w.write_all(&encode_frame(FRAME_OUTPUT, &chunk)).await?;
        }
        let status = child.wait().await?;
        let code = status.code().unwrap_or(128 + 9);
        w.write_all(&encode_frame(FRAME_EXIT, code.to_string().as_bytes()))
            .await?;
        w.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_the_toolbox_serves() {
        for (image, tool) in [
            ("gcr.io/kaniko-project/executor:debug", Some(Tool::Kaniko)),
            (
                "gcr.io/kaniko-project/executor:v1.23.2-debug",
                Some(Tool::Kaniko),
            ),
            ("docker:latest", Some(Tool::Docker)),
            ("docker:24", Some(Tool::Docker)),
            ("docker.io/library/docker:27-cli", Some(Tool::Docker)),
            ("quay.io/podman/stable", Some(Tool::Podman)),
            ("quay.io/buildah/stable:v1.37", Some(Tool::Buildah)),
            ("mplatform/manifest-tool:alpine", Some(Tool::ManifestTool)),
            ("busybox", None),
            ("public.ecr.aws/docker/library/fedora:36", None),
            ("example.com/docker:1", None),
        ] {
            assert_eq!(tool_for_image(image), tool, "{image}");
        }
        assert!(is_dind("docker:23.0-dind"));
        assert!(is_dind("docker:dind"));
        assert!(!is_dind("docker:24"));
        assert!(!is_dind("postgres:16"));
    }

    #[test]
    fn only_flags_without_paths_pass() {
        let ok: Vec<String> = [
            "-t",
            "r/a:1",
            "--push",
            "--build-arg=A=1",
            "--platform",
            "linux/arm64",
        ]
        .map(String::from)
        .to_vec();
        assert!(check_flags(&ok).is_ok());
        for bad in [
            vec!["--output", "tar:/etc/x"],
            vec!["--cache-dir", "/"],
            vec!["--secret=id=a,src=/etc/shadow"],
            vec!["-f", "/etc/passwd"],
            vec!["--authfile=/root/.docker/config.json"],
        ] {
            let bad: Vec<String> = bad.into_iter().map(String::from).collect();
            assert!(check_flags(&bad).is_err(), "{bad:?}");
        }
        // A value that looks like a flag is still the value.
        let v: Vec<String> = ["--label", "--x=y"].map(String::from).to_vec();
        assert!(check_flags(&v).is_ok());
    }

    #[test]
    fn paths_stay_in_the_project_directory() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("app")).unwrap();
        std::os::unix::fs::symlink("/etc", src.join("escape")).unwrap();
        let inside = Path::new("/builds/p");
        assert_eq!(
            map_path("/builds/p/app", inside, &src, true).unwrap(),
            src.join("app")
        );
        assert!(map_path("/etc", inside, &src, true).is_err());
        assert!(map_path("/builds/p/../../etc", inside, &src, true).is_err());
        assert!(map_path("/builds/p/escape", inside, &src, true).is_err());
        assert!(map_path("/builds/p/escape/x.tar", inside, &src, false).is_err());
        assert!(map_path("/builds/p/app/out.tar", inside, &src, false).is_ok());
        assert!(map_path("/builds/p/missing", inside, &src, true).is_err());
    }

    #[test]
    fn frames_round_trip() {
        let mut v = encode_frame(FRAME_OUTPUT, b"hello");
        v.extend(encode_frame(FRAME_EXIT, b"0"));
        let mut r = &v[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((FRAME_OUTPUT, b"hello".to_vec()))
        );
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((FRAME_EXIT, b"0".to_vec()))
        );
        assert_eq!(read_frame(&mut r).unwrap(), None);
        assert_eq!(store_key("r/a:1").len(), 32);
        assert!(valid_key(&store_key("r/a:1")));
        assert!(!valid_key("../x"));
    }
}
