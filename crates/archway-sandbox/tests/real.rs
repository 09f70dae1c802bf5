//! The sandbox against the real OCI runtime on this host (runc or crun), with busybox root
//! filesystems unpacked from the repository's two-platform fixture. Needs what `scripts/test.sh`
//! installs: an OCI runtime, util-linux, overlayfs, and qemu-user binfmt for the arm64 test.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use archway_oci::layer::{EntryData, ExtractOptions, extract_layer};
use archway_oci::layout::ImageLayout;
use archway_oci::{ParsedManifest, Platform};
use archway_sandbox::{Exit, ExtraMount, Network, Outcome, RunSpec, Sandbox};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/busybox-oci")
}

/// Unpack the fixture's image for `platform`.
fn rootfs(platform: &Platform) -> tempfile::TempDir {
    let layout = ImageLayout::open(fixture()).unwrap();
    let index = layout.resolve(Some("1.35")).unwrap();
    let index = ParsedManifest::parse(
        &layout.read_blob(&index.digest).unwrap(),
        Some(&index.media_type),
    )
    .unwrap();
    let want = platform.normalized();
    let m = index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().map(|p| p.normalized()) == Some(want.clone()))
        .unwrap();
    let m =
        ParsedManifest::parse(&layout.read_blob(&m.digest).unwrap(), Some(&m.media_type)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for l in &m.layers {
        let mut f = layout.open_blob(&l.digest, Some(l.size)).unwrap();
        extract_layer(
            &mut f,
            Path::new("layer"),
            dir.path(),
            &ExtractOptions {
                privileged: is_root(),
                ..Default::default()
            },
        )
        .unwrap();
    }
    dir
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Records that the running test skips itself (as the CLI suite's `support::skip` does):
/// printed, and appended to `$ARCHWAY_SKIP_LOG`, which `scripts/test.sh` reports.
fn skip(reason: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(log) = std::env::var_os("ARCHWAY_SKIP_LOG") {
        let line = format!("{test}: {reason}\n");
        std::io::Write::write_all(
            &mut std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
            line.as_bytes(),
        )
        .unwrap();
    }
}

fn sandbox() -> Sandbox {
    Sandbox::detect(None).expect("an OCI runtime (scripts/test.sh installs runc and crun)")
}

fn spec<'a>(platform: &'a Platform, root: &'a Path, dir: &'a Path, script: &str) -> RunSpec<'a> {
    RunSpec {
        platform,
        rootfs: root,
        dir,
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
        cwd: "/".into(),
        user: String::new(),
        mounts: Vec::new(),
        network: Network::None,
        timeout: Some(Duration::from_secs(120)),
        collect_changes: true,
    }
}

fn run(sb: &Sandbox, spec: &RunSpec<'_>) -> (Outcome, Vec<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    let out = sb
        .run(spec, &move |line: &str| {
            l.lock().unwrap().push(line.to_owned())
        })
        .unwrap();
    let got = lines.lock().unwrap().clone();
    (out, got)
}

fn changes_and_output(sb: Sandbox) {
    let host = Platform::host();
    let root = rootfs(&host);
    let dir = tempfile::tempdir().unwrap();
    let script = "echo hello; id -u; echo data > /new; rm /bin/ls; mkdir -p /d/e; rm -rf /home; mkdir /home; echo x > /home/f; echo err >&2";
    let (out, lines) = run(&sb, &spec(&host, root.path(), dir.path(), script));
    assert_eq!(out.exit, Exit::Code(0), "{}", out.output_tail);
    assert!(
        lines.contains(&"hello".to_owned())
            && lines.contains(&"0".to_owned())
            && lines.contains(&"err".to_owned()),
        "{lines:?}"
    );
    let keys: Vec<&str> = out.changes.keys().map(String::as_str).collect();
    // A deletion is a whiteout, a replaced directory is opaque, and nothing the runtime mounted
    // (/proc, /dev, /sys, /etc/hosts) is a change.
    assert_eq!(
        keys,
        [
            "bin",
            "bin/.wh.ls",
            "d",
            "d/e",
            "home",
            "home/.wh..wh..opq",
            "home/f",
            "new"
        ],
        "{keys:?}"
    );
    assert!(
        matches!(&out.changes["new"].data, EntryData::File(p) if std::fs::read_to_string(p).unwrap() == "data\n")
    );
    assert_eq!((out.changes["new"].uid, out.changes["new"].gid), (0, 0));
    // The root filesystem itself was not touched.
    assert!(root.path().join("bin/ls").exists() && !root.path().join("new").exists());
}

#[test]
fn root_changes_and_output() {
    if !is_root() {
        skip("needs root (rootless_changes_and_output covers the unprivileged path)");
        return;
    }
    changes_and_output(sandbox());
}

#[test]
fn rootless_changes_and_output() {
    // As root this is the user-namespace path (userxattr overlay, --map-root-user); the truly
    // unprivileged run is the CLI test `sandbox::rootless_run_as_nobody`.
    changes_and_output(sandbox().with_rootless(true));
}

#[test]
fn exit_codes_users_and_network() {
    let sb = sandbox();
    let host = Platform::host();
    let root = rootfs(&host);
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = run(
        &sb,
        &spec(&host, root.path(), dir.path(), "echo failing; exit 3"),
    );
    assert_eq!(out.exit, Exit::Code(3));
    assert!(out.output_tail.contains("failing"));

    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(
        &host,
        root.path(),
        dir.path(),
        "id -u; id -g; echo $HOME; ls /sys/class/net",
    );
    s.user = "1234:4321".into();
    s.collect_changes = false;
    let (out, lines) = run(&sb, &s);
    assert_eq!(out.exit, Exit::Code(0), "{}", out.output_tail);
    assert_eq!(lines, ["1234", "4321", "/", "lo"]);

    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&host, root.path(), dir.path(), "ls /sys/class/net | wc -l");
    s.network = Network::Host;
    let (out, lines) = run(&sb, &s);
    assert_eq!(out.exit, Exit::Code(0), "{}", out.output_tail);
    let host_ifaces = std::fs::read_dir("/sys/class/net").unwrap().count();
    assert_eq!(lines, [host_ifaces.to_string()]);
    // Running from a missing program is the process's failure, reported by the runtime.
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(&host, root.path(), dir.path(), "");
    s.argv = vec!["/no/such/program".into()];
    let err = sb.run(&s, &|_| {}).map(|o| o.exit);
    assert!(
        matches!(&err, Err(e) if e.to_string().contains("no/such/program"))
            || matches!(err, Ok(Exit::Code(c)) if c != 0),
        "{err:?}"
    );
}

#[test]
fn mounts_bind_and_tmpfs() {
    let sb = sandbox();
    let host = Platform::host();
    let root = rootfs(&host);
    let cache = tempfile::tempdir().unwrap();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "s3cret").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(
        &host,
        root.path(),
        dir.path(),
        "echo built > /cache/obj; cat /run/secrets/token; echo; (echo no > /run/secrets/token) 2>/dev/null || echo read-only; echo t > /scratch/t; echo kept > /kept",
    );
    s.mounts = vec![
        ExtraMount::Bind {
            host: cache.path().to_owned(),
            target: "/cache".into(),
            readonly: false,
        },
        ExtraMount::Bind {
            host: secret.path().to_owned(),
            target: "/run/secrets/token".into(),
            readonly: true,
        },
        ExtraMount::Tmpfs {
            target: "/scratch".into(),
        },
    ];
    let (out, lines) = run(&sb, &s);
    assert_eq!(out.exit, Exit::Code(0), "{}", out.output_tail);
    assert_eq!(lines, ["s3cret", "read-only"]);
    assert_eq!(
        std::fs::read_to_string(cache.path().join("obj")).unwrap(),
        "built\n"
    );
    assert_eq!(std::fs::read_to_string(secret.path()).unwrap(), "s3cret");
    // Only the step's own file is a change: mount points, the secret and the tmpfs are not.
    assert_eq!(out.changes.keys().collect::<Vec<_>>(), ["kept"]);
}

#[test]
fn time_limit_kills_the_whole_tree() {
    let sb = sandbox();
    let host = Platform::host();
    let root = rootfs(&host);
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("archway-timeout-{}", std::process::id());
    let mut s = spec(
        &host,
        root.path(),
        dir.path(),
        &format!("(sleep 300; echo {marker}) & sleep 300"),
    );
    s.timeout = Some(Duration::from_secs(1));
    let started = Instant::now();
    let (out, _) = run(&sb, &s);
    assert_eq!(out.exit, Exit::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(60));
    // No `sleep 300` from this run survives (they were in the run's PID namespace): the kernel
    // reaps them as the namespace goes, which we wait for.
    let survivors = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|c| String::from_utf8_lossy(c).contains(&marker))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while survivors() > 0 {
        assert!(
            Instant::now() < deadline,
            "processes of the run survived it"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_other_architecture_runs_through_qemu() {
    let sb = sandbox();
    // arm64 on an amd64 host, amd64 on an arm64 one.
    let (foreign, machine) = if Platform::host().architecture == "arm64" {
        (Platform::linux_amd64(), "x86_64")
    } else {
        (Platform::linux_arm64(), "aarch64")
    };
    sb.check_platform(&foreign)
        .expect("qemu-user binfmt for the other architecture (scripts/test.sh enables it)");
    let root = rootfs(&foreign);
    let dir = tempfile::tempdir().unwrap();
    let (out, lines) = run(
        &sb,
        &spec(
            &foreign,
            root.path(),
            dir.path(),
            "uname -m; echo arm > /arch",
        ),
    );
    assert_eq!(out.exit, Exit::Code(0), "{}", out.output_tail);
    assert_eq!(lines, [machine]);
    assert_eq!(out.changes.keys().collect::<Vec<_>>(), ["arch"]);
}

/// A long-lived run entered from outside, as `archway dev exec` does: commands with their
/// own environment, directory and exit code; the runtime's own complaints as errors; status,
/// the main process's host pid, a signal that ends the run, and a handle that knows it ended.
fn long_lived_run_is_entered_from_outside(sb: Sandbox) {
    use archway_sandbox::{Exec, ExecStdio, RunningHandle, SandboxError};
    let host = Platform::host();
    let root = rootfs(&host);
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(
        &host,
        root.path(),
        dir.path(),
        "trap 'exit 0' TERM; while sleep 1 & wait $!; do :; done",
    );
    s.timeout = None;
    s.collect_changes = false;
    s.env.push("FROM_RUN=yes".into());
    let (tx, rx) = std::sync::mpsc::channel::<RunningHandle>();
    let tx = Mutex::new(tx);
    std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            sb.run_observed(&s, &|_| {}, None, &|h: &RunningHandle| {
                tx.lock().unwrap().send(h.clone()).unwrap();
            })
        });
        let handle = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the run reports itself running");
        assert!(handle.is_alive());
        assert_eq!(sb.status(&handle).unwrap().status, "running");
        let main = handle.main_pid().expect("the container's main process");
        let cmdline = std::fs::read(format!("/proc/{main}/cmdline")).unwrap();
        assert!(String::from_utf8_lossy(&cmdline).contains("trap"));

        let out_file = dir.path().join("exec.out");
        let exec = |argv: &[&str], env: &[&str], cwd: Option<&str>| {
            let f = std::fs::File::create(&out_file).unwrap();
            let code = sb.exec(
                &handle,
                &Exec {
                    argv: argv.iter().map(|a| a.to_string()).collect(),
                    env: env.iter().map(|a| a.to_string()).collect(),
                    cwd: cwd.map(str::to_owned),
                    user: None,
                    tty: false,
                },
                ExecStdio {
                    stdin: std::process::Stdio::null(),
                    stdout: f.into(),
                    stderr: std::process::Stdio::inherit(),
                },
            );
            (code, std::fs::read_to_string(&out_file).unwrap())
        };
        let (code, out) = exec(
            &["sh", "-c", "echo $FROM_RUN $ADDED; pwd; echo $$; exit 7"],
            &["ADDED=1"],
            Some("/tmp"),
        );
        assert_eq!(code.unwrap(), 7);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[..2], ["yes 1", "/tmp"], "{out}");
        assert_ne!(
            lines[2], "1",
            "the command is not the container's first process"
        );
        let (code, _) = exec(&["no-such-program"], &[], None);
        match code {
            Err(SandboxError::Exec { message, .. }) => {
                assert!(message.contains("no-such-program"), "{message}")
            }
            other => panic!("expected the runtime's complaint, got {other:?}"),
        }

        sb.signal(&handle, "TERM").unwrap();
        let out = run.join().unwrap().unwrap();
        assert_eq!(out.exit, Exit::Code(0), "{}", out.output_tail);
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.is_alive() {
            assert!(
                Instant::now() < deadline,
                "the run's first process outlived it"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(handle.main_pid(), None);
        assert!(matches!(
            exec(&["true"], &[], None).0,
            Err(SandboxError::NotRunning { .. })
        ));
    });
}

#[test]
fn root_long_lived_run_is_entered_from_outside() {
    if !is_root() {
        skip("needs root (the rootless variant covers the unprivileged path)");
        return;
    }
    long_lived_run_is_entered_from_outside(sandbox());
}

#[test]
fn rootless_long_lived_run_is_entered_from_outside() {
    long_lived_run_is_entered_from_outside(sandbox().with_rootless(true));
}
