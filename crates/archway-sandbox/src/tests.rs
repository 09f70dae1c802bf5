//! Bundle, mount and change logic against the recording runtime (no real containers here; those
//! are in tests/real.rs).

use std::sync::Arc;

use super::*;

fn rootfs() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("etc")).unwrap();
    std::fs::create_dir_all(d.path().join("proc")).unwrap();
    std::fs::write(
        d.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(d.path().join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    d
}

fn spec<'a>(platform: &'a Platform, root: &'a Path, dir: &'a Path) -> RunSpec<'a> {
    RunSpec {
        platform,
        rootfs: root,
        dir,
        argv: vec!["/bin/sh".into(), "-c".into(), "make".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/src".into(),
        user: "app".into(),
        mounts: vec![ExtraMount::Bind {
            host: std::env::temp_dir(),
            target: "/cache".into(),
            readonly: false,
        }],
        network: Network::None,
        timeout: Some(Duration::from_secs(5)),
        collect_changes: true,
    }
}

fn lines() -> (Arc<Mutex<Vec<String>>>, impl Fn(&str) + Sync) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    (got, move |l: &str| g.lock().unwrap().push(l.to_owned()))
}

#[test]
fn bundle_users_mounts_and_changes() {
    let root = rootfs();
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(RecordingRuntime {
        behaviour: Some(Box::new(
            |upper: &Path, _config: &serde_json::Value, out: &(dyn Fn(&[u8]) + Sync)| {
                // The "container": prints in pieces, builds something, and the runtime leaves
                // mount-point artifacts behind.
                out(b"compiling\nlin");
                out(b"king\n");
                out(b"done");
                std::fs::create_dir_all(upper.join("src/out")).unwrap();
                std::fs::write(upper.join("src/out/app"), b"\x7fELF").unwrap();
                std::fs::create_dir_all(upper.join("etc")).unwrap();
                std::fs::write(upper.join("etc/hosts"), b"").unwrap();
                std::fs::create_dir_all(upper.join("cache")).unwrap();
                Exit::Code(0)
            },
        )),
        ..Default::default()
    });
    let sb = Sandbox::new(rt.clone()).with_rootless(false);
    let host = Platform::host();
    let (got, on_line) = lines();
    let out = sb
        .run(&spec(&host, root.path(), dir.path()), &on_line)
        .unwrap();
    assert_eq!(out.exit, Exit::Code(0));
    assert_eq!(*got.lock().unwrap(), ["compiling", "linking", "done"]);
    assert_eq!(out.output_tail, "compiling\nlinking\ndone");
    assert_eq!(
        out.changes.keys().collect::<Vec<_>>(),
        ["src", "src/out", "src/out/app"]
    );

    let launches = rt.launches.lock().unwrap();
    let l = &launches[0];
    assert!(l.id.starts_with("archway-"));
    assert_eq!(l.lower, std::fs::canonicalize(root.path()).unwrap());
    assert_eq!(l.timeout, Some(Duration::from_secs(5)));
    let p = &l.config["process"];
    assert_eq!(
        (p["user"]["uid"].as_u64(), p["user"]["gid"].as_u64()),
        (Some(1000), Some(1000))
    );
    assert_eq!(p["env"], serde_json::json!(["PATH=/bin", "HOME=/home/app"]));
    assert_eq!(p["cwd"], "/src");
    assert_eq!(
        l.config["root"]["path"].as_str().unwrap(),
        std::fs::canonicalize(dir.path().join("merged"))
            .unwrap()
            .to_str()
            .unwrap()
    );
    let dests: Vec<&str> = l.config["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    assert_eq!(
        dests[5..],
        ["/cache", "/etc/hosts"],
        "no resolv.conf without a network"
    );
    assert!(
        std::fs::read_to_string(dir.path().join("hosts"))
            .unwrap()
            .contains("localhost")
    );
}

#[test]
fn host_network_gets_resolv_conf() {
    let root = rootfs();
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(RecordingRuntime::default());
    let sb = Sandbox::new(rt.clone()).with_rootless(true);
    let host = Platform::host();
    let mut s = spec(&host, root.path(), dir.path());
    s.network = Network::Host;
    s.user = String::new();
    sb.run(&s, &|_| {}).unwrap();
    let launches = rt.launches.lock().unwrap();
    let l = &launches[0];
    assert!(l.rootless);
    let ns: Vec<&str> = l.config["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert!(!ns.contains(&"network"));
    assert_eq!(l.config["process"]["user"]["uid"], 0);
    let dests: Vec<&str> = l.config["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    if Path::new("/etc/resolv.conf").exists() {
        assert!(dests.contains(&"/etc/resolv.conf"));
    }
}

#[test]
fn foreign_platform_without_binfmt_fails_before_running() {
    let root = rootfs();
    let dir = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let rt = Arc::new(RecordingRuntime::default());
    let sb = Sandbox::new(rt.clone()).with_binfmt_dir(empty.path());
    let foreign = if Platform::host().architecture == "arm64" {
        "linux/amd64".parse::<Platform>()
    } else {
        "linux/arm64".parse::<Platform>()
    }
    .unwrap();
    let err = sb
        .run(&spec(&foreign, root.path(), dir.path()), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot run linux/") && err.contains("update-binfmts"),
        "{err}"
    );
    assert!(rt.launches.lock().unwrap().is_empty());
}

#[test]
fn unknown_user_fails_before_running() {
    let root = rootfs();
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(RecordingRuntime::default());
    let sb = Sandbox::new(rt.clone());
    let host = Platform::host();
    let mut s = spec(&host, root.path(), dir.path());
    s.user = "postgres".into();
    let err = sb.run(&s, &|_| {}).unwrap_err().to_string();
    assert!(err.contains("unable to find user postgres"), "{err}");
    assert!(rt.launches.lock().unwrap().is_empty());
}

#[test]
fn failing_process_keeps_its_output() {
    let root = rootfs();
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(RecordingRuntime {
        behaviour: Some(Box::new(
            |_: &Path, _: &serde_json::Value, out: &(dyn Fn(&[u8]) + Sync)| {
                out(&vec![b'x'; 100 * 1024]);
                out(b"\nerror: no such file\n");
                Exit::Code(2)
            },
        )),
        ..Default::default()
    });
    let sb = Sandbox::new(rt);
    let host = Platform::host();
    let (got, on_line) = lines();
    let out = sb
        .run(&spec(&host, root.path(), dir.path()), &on_line)
        .unwrap();
    assert_eq!(out.exit, Exit::Code(2));
    assert_eq!(out.output_tail.len(), TAIL);
    assert!(out.output_tail.ends_with("error: no such file\n"));
    // The 100 KiB line came through in pieces, then the error line.
    assert_eq!(got.lock().unwrap().last().unwrap(), "error: no such file");
}
