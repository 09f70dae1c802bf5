//! `archway run` and `archway doctor`: foreign architectures through qemu, rootless runs as an
//! unprivileged user, and nothing left running or half-written after `kill -9`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    RegistryProcess, UserEnv, as_nobody, busybox_layout, owned_dir, push_busybox, run, skip,
};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn fixture_ref() -> String {
    format!("oci:{}:1.35", busybox_layout().display())
}

#[test]
fn run_both_platforms_and_reuse_the_snapshot() {
    let env = UserEnv::new();
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    for (platform, machine) in [("linux/amd64", "x86_64"), ("linux/arm64", "aarch64")] {
        let out = env.ok(&[
            "run",
            "--platform",
            platform,
            "--cache-dir",
            s,
            &fixture_ref(),
            "uname",
            "-m",
        ]);
        assert_eq!(out, format!("{machine}\n"));
    }
    let snapshots = std::fs::read_dir(store.path().join("snapshots"))
        .unwrap()
        .count();
    // A second start unpacks nothing: same snapshots, and the exit code comes through.
    let o = env
        .archway()
        .args([
            "run",
            "--cache-dir",
            s,
            &fixture_ref(),
            "sh",
            "-c",
            "echo $HOME; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/root\n");
    assert_eq!(
        std::fs::read_dir(store.path().join("snapshots"))
            .unwrap()
            .count(),
        snapshots
    );
    // Scratch directories are gone after each run.
    assert_eq!(
        std::fs::read_dir(store.path().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn run_options_env_user_workdir_volume_timeout() {
    let env = UserEnv::new();
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("in.txt"), "from host\n").unwrap();
    let v = format!("{}:/data:ro", vol.path().display());
    let out = env.ok(&[
        "run",
        "--cache-dir",
        s,
        "-e",
        "GREETING=hi",
        "-u",
        "1000:1000",
        "-w",
        "/tmp",
        "-v",
        &v,
        &fixture_ref(),
        "sh",
        "-c",
        "echo $GREETING $(id -u) $(pwd); cat /data/in.txt; touch /data/x 2>/dev/null || echo ro",
    ]);
    assert_eq!(out, "hi 1000 /tmp\nfrom host\nro\n");
    let started = Instant::now();
    let o = env
        .archway()
        .args([
            "run",
            "--cache-dir",
            s,
            "--timeout",
            "1s",
            &fixture_ref(),
            "sleep",
            "60",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(124));
    assert!(String::from_utf8_lossy(&o.stderr).contains("killed after 1s"));
    assert!(started.elapsed() < Duration::from_secs(30));
    let e = env.fails(&[
        "run",
        "--cache-dir",
        s,
        "-u",
        "nosuchuser",
        &fixture_ref(),
        "true",
    ]);
    assert!(e.contains("unable to find user nosuchuser"), "{e}");
}

#[test]
fn doctor_reports_runtime_and_emulation() {
    let env = UserEnv::new();
    let out = env.ok(&["doctor", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["runtime"].is_string(), "{v}");
    // The host's own architecture is native; the other of amd64/arm64 goes through qemu.
    let host = archway_oci::Platform::host().normalized();
    let foreign = if host.architecture == "arm64" {
        "linux/amd64"
    } else {
        "linux/arm64"
    };
    let state = |p: &str| {
        v["emulation"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e[0] == p)
            .map(|e| e[1]["state"].clone())
    };
    assert_eq!(state(foreign), Some("qemu".into()), "{v}");
    assert_eq!(state(&host.to_string()), Some("native".into()), "{v}");
    let text = env.ok(&["doctor"]);
    assert!(text.contains("RUN steps can run here"), "{text}");
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.unwrap().path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(marker))
        .count()
}

#[test]
fn kill_9_leaves_nothing_running_and_the_next_start_cleans_up() {
    let env = UserEnv::new();
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let marker = format!("{}", 3_000_000 + std::process::id());
    let mut child = env
        .archway()
        .args([
            "run",
            "--cache-dir",
            s,
            &fixture_ref(),
            "sh",
            "-c",
            &format!("sleep {marker}; true"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while processes_with(&format!("sleep{}{marker}", '\0')) == 0 {
        assert!(
            Instant::now() < deadline,
            "the sandboxed sleep never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with(&format!("sleep{}{marker}", '\0')) > 0 {
        assert!(
            Instant::now() < deadline,
            "the sandboxed process outlived archway"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its scratch directory is left behind by the kill and removed by the next start.
    assert_eq!(
        std::fs::read_dir(store.path().join("tmp")).unwrap().count(),
        1
    );
    env.ok(&["run", "--cache-dir", s, &fixture_ref(), "true"]);
    assert_eq!(
        std::fs::read_dir(store.path().join("tmp")).unwrap().count(),
        0
    );
}

/// A world-traversable directory owned by `uid` inside a fresh temporary directory.
#[test]
fn rootless_run_and_build_as_nobody() {
    if !is_root() {
        // Becoming `nobody` needs root; unprivileged, the other tests here are the rootless ones.
        skip("needs root to run archway as nobody");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = owned_dir(65534, "home", &tmp);
    let store = home.join("store");
    // Inputs nobody can read, wherever the checkout is.
    let fixture = home.join("busybox-oci");
    run(Command::new("cp")
        .arg("-r")
        .arg(busybox_layout())
        .arg(&fixture));
    run(Command::new("chmod").arg("-R").arg("a+rX").arg(&fixture));
    let fixture = format!("oci:{}:1.35", fixture.display());
    // The single id mapping (the subordinate-id path has its own test in build.rs).
    let nobody = || {
        let mut c = as_nobody(&home);
        c.env("ARCHWAY_ROOTLESS_SUBIDS", "off");
        c
    };
    let out = run(nobody()
        .args(["run", "--platform", "linux/arm64", "--cache-dir"])
        .arg(&store)
        .args([
            &fixture,
            "sh",
            "-c",
            "uname -m; id -u; echo x > /tmp/f && echo wrote",
        ]));
    assert_eq!(out, "aarch64\n0\nwrote\n");

    // The same build as root and as nobody gives the same digests.
    let reg = RegistryProcess::start();
    let env = UserEnv::new();
    push_busybox(&env, reg.host(), "library/busybox", "1.35");
    let ctx = home.join("ctx");
    run(Command::new("cp")
        .arg("-r")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/build-corpus/seed-print-arch"))
        .arg(&ctx));
    run(Command::new("chmod").arg("-R").arg("a+rX").arg(&ctx));
    let args = |c: &mut Command, store: &Path| {
        c.current_dir(&ctx)
            .args([
                "build",
                ".",
                "--platform",
                "linux/amd64,linux/arm64",
                "--build-arg",
                &format!("BASE={}/library/busybox:1.35", reg.host()),
                "--cache-dir",
            ])
            .arg(store);
    };
    let mut c = nobody();
    args(&mut c, &home.join("build-store"));
    let rootless = run(&mut c);
    let root_store = tempfile::tempdir().unwrap();
    let mut c = env.archway();
    args(&mut c, root_store.path());
    let rootful = run(&mut c);
    assert_eq!(
        rootless.trim(),
        rootful.trim(),
        "rootless and root builds differ"
    );
}
