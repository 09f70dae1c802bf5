//! `archway dev`: dev environments as real detached sandboxes. Images come from a real
//! `archway registry serve` holding the busybox fixture, through `--registry-mirror
//! docker.io=HOST/hub` (as `local_run.rs` does). Every test removes what it started
//! (`dev down`, also when it fails) and checks that nothing of it keeps running.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{RegistryProcess, UserEnv, as_nobody, busybox_layout, owned_dir, run, skip};

/// A registry with `hub/library/busybox:1.35` (amd64 + arm64).
fn mirror() -> RegistryProcess {
    let reg = RegistryProcess::start();
    run(UserEnv::new().archway().args([
        "image",
        "copy",
        "--all",
        "--quiet",
        &format!("oci:{}:1.35", busybox_layout().display()),
        &format!("{}/hub/library/busybox:1.35", reg.host()),
    ]));
    reg
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The processes whose command line mentions `needle` (supervisors name the state
/// directory, which is inside the repository).
fn processes_mentioning(needle: &str) -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmd = fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(needle).then_some(cmd)
        })
        .collect()
}

/// One repository with a dev environment file, and the archway that runs it.
struct Dev {
    env: UserEnv,
    repo: tempfile::TempDir,
    reg: RegistryProcess,
}

impl Dev {
    fn new(files: &[(&str, &str)]) -> Dev {
        let dev = Dev {
            env: UserEnv::new(),
            repo: tempfile::tempdir().unwrap(),
            reg: mirror(),
        };
        for (path, text) in files {
            dev.write(path, text);
        }
        dev
    }

    fn write(&self, path: &str, text: &str) {
        let p = self.repo.path().join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.repo.path().join(rel)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.archway();
        c.current_dir(self.repo.path()).args(args);
        c
    }

    fn output(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs `archway ARGS`, asserting success; stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "archway {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `archway ARGS`, asserting failure; stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            !out.status.success(),
            "archway {args:?} succeeded but should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn mirror_flag(&self) -> String {
        format!("docker.io={}/hub", self.reg.host())
    }

    /// `archway dev up --registry-mirror … EXTRA`; stdout.
    fn up(&self, extra: &[&str]) -> String {
        let m = self.mirror_flag();
        let mut args = vec!["dev", "up", "--registry-mirror", &m];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    /// `archway dev ls --format json`.
    fn ls(&self) -> Vec<Value> {
        serde_json::from_str::<Vec<Value>>(&self.ok(&["dev", "ls", "--format", "json"])).unwrap()
    }

    /// A container's entry in `dev ls --format json`.
    fn container(&self, name: &str) -> Value {
        self.ls()
            .iter()
            .flat_map(|e| e["containers"].as_array().unwrap().clone())
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name} in dev ls"))
    }

    fn pid(&self, name: &str) -> u32 {
        let c = self.container(name);
        assert_eq!(c["state"], "running", "{c}");
        c["pid"].as_u64().expect("a running container has a pid") as u32
    }

    /// Waits until `dev ls` shows the container in a state `ok` accepts.
    fn wait_state(&self, name: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let c = self.container(name);
            if ok(&c) {
                return c;
            }
            assert!(Instant::now() < deadline, "container {name} stayed {c}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Nothing started from this repository runs any more.
    fn assert_nothing_running(&self) {
        let needle = self.repo.path().display().to_string();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = processes_mentioning(&needle);
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "still running: {left:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let dir = self.path(".archway/dev");
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let _ = self
                .cmd(&["dev", "down", "--volumes", "--time", "1s", "--name", &name])
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// The CodeCatalyst walkthrough's environment: a tools container with `IS_LOCAL` and a
/// second container standing in for DynamoDB Local (busybox `httpd` on `port`).
fn codecatalyst_devfile(port: u16) -> String {
    format!(
        r#"schemaVersion: 2.0.0
metadata:
  name: aws-universal
components:
  - name: aws-runtime
    container:
      image: busybox:1.35
      mountSources: true
      volumeMounts:
        - name: docker-store
          path: /var/lib/docker
      env:
        - name: IS_LOCAL
          value: "true"
  - name: docker-store
    volume:
      size: 1Gi
  - name: dynamodb
    container:
      image: busybox:1.35
      mountSources: false
      command: ["sh", "-c"]
      args: ["mkdir -p /srv && echo dynamodb-local > /srv/index.html && exec httpd -f -p {port} -h /srv"]
      endpoints:
        - name: dynamodb
          targetPort: {port}
          exposure: internal
          protocol: http
commands:
  - id: started
    exec:
      component: aws-runtime
      commandLine: echo "$IS_LOCAL $(pwd)" > post-start.txt
      workingDir: ${{PROJECT_SOURCE}}
  - id: goodbye
    exec:
      component: aws-runtime
      commandLine: echo bye > "$PROJECT_SOURCE/pre-stop.txt"
  - id: where
    exec:
      component: aws-runtime
      commandLine: pwd; echo "$GREETING"
      workingDir: /tmp
      env:
        - name: GREETING
          value: hi
  - id: both
    composite:
      commands: [where, fail]
  - id: fail
    exec:
      component: dynamodb
      commandLine: exit 3
events:
  postStart: [started]
  preStop: [goodbye]
"#
    )
}

#[test]
fn codecatalyst_environment_tools_reach_the_service_on_localhost() {
    let port = free_port();
    let dev = Dev::new(&[("devfile.yaml", &codecatalyst_devfile(port))]);
    let out = dev.up(&[]);
    assert!(out.contains("Dev environment `aws-universal`"), "{out}");
    assert!(out.contains(&format!("http://localhost:{port}/")), "{out}");
    assert!(out.contains("archway dev shell"), "{out}");
    // postStart ran in the tools container, in the project's directory, with its variables.
    assert_eq!(
        fs::read_to_string(dev.path("post-start.txt")).unwrap(),
        "true /projects/".to_owned()
            + dev.repo.path().file_name().unwrap().to_str().unwrap()
            + "\n"
    );
    // The tools container reaches the other one on localhost.
    let page = dev.ok(&[
        "dev",
        "exec",
        "--",
        "wget",
        "-qO-",
        &format!("http://localhost:{port}/"),
    ]);
    assert_eq!(page, "dynamodb-local\n");
    assert_eq!(
        dev.ok(&[
            "dev",
            "exec",
            "--",
            "sh",
            "-c",
            "echo $IS_LOCAL $PROJECT_SOURCE"
        ]),
        format!(
            "true /projects/{}\n",
            dev.repo.path().file_name().unwrap().to_str().unwrap()
        )
    );
    // The persistent volume is a directory of the environment's state.
    dev.ok(&[
        "dev",
        "exec",
        "--",
        "sh",
        "-c",
        "echo kept > /var/lib/docker/f",
    ]);
    assert_eq!(
        fs::read_to_string(dev.path(".archway/dev/aws-universal/volumes/docker-store/f")).unwrap(),
        "kept\n"
    );
    // A command the file defines, with its own directory and environment; a composite
    // stops at its first failure and passes its code on.
    assert_eq!(dev.ok(&["dev", "exec", "where"]), "/tmp\nhi\n");
    let both = dev.output(&["dev", "exec", "both"]);
    assert_eq!(both.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&both.stdout), "/tmp\nhi\n");
    // `ls` in text and JSON.
    let ls = dev.ok(&["dev", "ls"]);
    assert!(ls.contains("aws-runtime") && ls.contains("running"), "{ls}");
    let envs = dev.ls();
    assert_eq!(envs.len(), 1);
    assert_eq!(envs[0]["name"], "aws-universal");
    let db = dev.container("dynamodb");
    assert_eq!(db["platform"], "linux/amd64");
    assert_eq!(db["image"], "busybox:1.35");
    assert_eq!(db["endpoints"][0]["port"], port);
    assert!(db["pid"].as_u64().is_some());
    // The state is not for git.
    assert_eq!(
        fs::read_to_string(dev.path(".archway/.gitignore"))
            .unwrap()
            .lines()
            .last(),
        Some("*")
    );
    // `down` stops it all and removes the state.
    let down = dev.ok(&["dev", "down", "--time", "2s"]);
    assert!(
        down.contains("Removed dev environment `aws-universal`"),
        "{down}"
    );
    assert!(
        down.contains("persistent volumes stay"),
        "volumes are kept: {down}"
    );
    assert!(
        !dev.path(".archway/dev/aws-universal/environment.json")
            .exists()
    );
    assert!(!dev.path(".archway/dev/aws-universal/containers").exists());
    assert!(
        dev.path(".archway/dev/aws-universal/volumes/docker-store/f")
            .exists()
    );
    dev.assert_nothing_running();
    assert!(dev.ls().is_empty());
    // `--volumes` removes them too.
    dev.up(&[]);
    assert_eq!(
        dev.ok(&["dev", "exec", "--", "cat", "/var/lib/docker/f"]),
        "kept\n"
    );
    dev.ok(&["dev", "down", "--volumes", "--time", "2s"]);
    assert!(!dev.path(".archway/dev/aws-universal").exists());
    dev.assert_nothing_running();
}

#[test]
fn exec_without_and_with_a_terminal() {
    let dev = Dev::new(&[(
        "devfile.yaml",
        "schemaVersion: 2.2.0\nmetadata: {name: tty}\ncomponents:\n  - name: tools\n    container:\n      image: busybox:1.35\n",
    )]);
    dev.up(&[]);
    // No terminal: busybox `tty` says so and fails; the exit code comes through.
    let out = dev.output(&["dev", "exec", "--", "tty"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "not a tty\n");
    assert_eq!(out.status.code(), Some(1));
    let out = dev.output(&["dev", "exec", "--", "sh", "-c", "exit 42"]);
    assert_eq!(out.status.code(), Some(42));
    // With one (script(1) gives `dev exec` a pseudo-terminal as stdin and stdout).
    let line = format!("{} dev exec -- tty", env!("CARGO_BIN_EXE_archway"));
    let mut script = Command::new("script");
    script.args(["-qec", &line, "/dev/null"]);
    dev.env.apply(&mut script);
    let out = run(script.current_dir(dev.repo.path()).stdin(Stdio::null()));
    assert!(out.contains("/dev/pts/"), "{out:?}");
    // -T turns it off even on a terminal.
    let mut script = Command::new("script");
    script.args([
        "-qec",
        &format!("{line} ; echo rc=$?").replace("exec --", "exec -T --"),
        "/dev/null",
    ]);
    dev.env.apply(&mut script);
    let out = String::from_utf8_lossy(
        &script
            .current_dir(dev.repo.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(out.contains("not a tty"), "{out:?}");
    // A program that is not there: the runtime's reason, said once, and a failure.
    let err = dev.fails(&["dev", "exec", "--", "no-such-program"]);
    assert!(err.contains("no-such-program"), "{err}");
    // Unknown command ids list the real ones; a stopped container is named.
    let err = dev.fails(&["dev", "exec", "nope"]);
    assert!(err.contains("no command `nope`"), "{err}");
    let err = dev.fails(&["dev", "exec", "-c", "db", "--", "true"]);
    assert!(err.contains("no container `db`"), "{err}");
    dev.ok(&["dev", "down", "--time", "1s"]);
    dev.assert_nothing_running();
}

#[test]
fn kill_9_is_seen_by_ls_and_up_restarts_only_what_died_or_changed() {
    let port = free_port();
    let dev = Dev::new(&[("devfile.yaml", &codecatalyst_devfile(port))]);
    dev.up(&[]);
    let tools = dev.pid("aws-runtime");
    let db = dev.pid("dynamodb");
    // kill -9 of the service's process: ls tells the truth (checked, not recorded).
    run(Command::new("kill").args(["-9", &db.to_string()]));
    let c = dev.wait_state("dynamodb", |c| c["state"] != "running");
    assert_eq!(c["state"], "exited", "{c}");
    assert!(c["pid"].is_null(), "{c}");
    let ls = dev.ok(&["dev", "ls"]);
    assert!(ls.contains("exited("), "{ls}");
    let err = dev.fails(&["dev", "exec", "-c", "dynamodb", "--", "true"]);
    assert!(err.contains("`dynamodb` is not running"), "{err}");
    // `up` brings back what died and leaves the rest alone.
    let out = dev.up(&[]);
    assert!(out.contains("unchanged, kept running"), "{out}");
    assert_eq!(dev.pid("aws-runtime"), tools);
    let db2 = dev.pid("dynamodb");
    assert_ne!(db2, db);
    assert_eq!(
        dev.ok(&[
            "dev",
            "exec",
            "--",
            "wget",
            "-qO-",
            &format!("http://localhost:{port}/")
        ]),
        "dynamodb-local\n"
    );
    // Changing one container restarts only that one.
    dev.write(
        "devfile.yaml",
        &codecatalyst_devfile(port).replace("value: \"true\"", "value: \"changed\""),
    );
    let out = dev.up(&[]);
    assert!(out.contains("changed, restarted"), "{out}");
    assert_eq!(
        dev.pid("dynamodb"),
        db2,
        "the unchanged container kept running"
    );
    assert_ne!(dev.pid("aws-runtime"), tools);
    assert_eq!(
        dev.ok(&["dev", "exec", "--", "sh", "-c", "echo $IS_LOCAL"]),
        "changed\n"
    );
    // postStart ran again in the restarted container only.
    assert!(
        fs::read_to_string(dev.path("post-start.txt"))
            .unwrap()
            .starts_with("changed ")
    );
    // kill -9 of a supervisor (what a reboot looks like to the records): not running.
    let sup: Value = serde_json::from_str(
        &fs::read_to_string(
            dev.path(".archway/dev/aws-universal/containers/aws-runtime/supervisor.json"),
        )
        .unwrap(),
    )
    .unwrap();
    run(Command::new("kill").args(["-9", &sup["pid"].to_string()]));
    let c = dev.wait_state("aws-runtime", |c| c["state"] != "running");
    assert_eq!(c["state"], "exited", "{c}");
    dev.up(&[]);
    dev.pid("aws-runtime");
    dev.ok(&["dev", "down", "--time", "1s"]);
    dev.assert_nothing_running();
}

#[test]
fn stop_runs_pre_stop_and_keeps_the_state() {
    let port = free_port();
    let dev = Dev::new(&[("devfile.yaml", &codecatalyst_devfile(port))]);
    dev.up(&[]);
    let out = dev.ok(&["dev", "stop", "--time", "5s"]);
    assert!(out.contains("Stopped"), "{out}");
    assert_eq!(
        fs::read_to_string(dev.path("pre-stop.txt")).unwrap(),
        "bye\n"
    );
    for name in ["aws-runtime", "dynamodb"] {
        let c = dev.container(name);
        assert_eq!(c["state"], "stopped", "{c}");
    }
    dev.assert_nothing_running();
    assert!(
        dev.path(".archway/dev/aws-universal/environment.json")
            .exists()
    );
    let err = dev.fails(&["dev", "exec", "--", "true"]);
    assert!(err.contains("is not running (it is stopped)"), "{err}");
    // Stopping again says so.
    assert!(dev.ok(&["dev", "stop"]).contains("is not running"));
    // And up starts both again.
    dev.up(&[]);
    dev.pid("aws-runtime");
    dev.pid("dynamodb");
    dev.ok(&["dev", "down", "--time", "1s"]);
    dev.assert_nothing_running();
}

#[test]
fn an_arm64_environment_runs_through_qemu() {
    let dev = Dev::new(&[(
        "devfile.yaml",
        "schemaVersion: 2.2.0\nmetadata: {name: arm}\ncomponents:\n  - name: tools\n    container:\n      image: busybox:1.35\n",
    )]);
    let out = dev.up(&["--platform", "linux/arm64"]);
    assert!(
        out.contains("Emulated: linux/arm64 runs through qemu-user"),
        "{out}"
    );
    assert_eq!(dev.ok(&["dev", "exec", "--", "uname", "-m"]), "aarch64\n");
    assert_eq!(dev.container("tools")["platform"], "linux/arm64");
    // A later `up` keeps the platform the environment was started with.
    let out = dev.up(&[]);
    assert!(out.contains("unchanged, kept running"), "{out}");
    dev.ok(&["dev", "down", "--time", "1s"]);
    dev.assert_nothing_running();
}

#[test]
fn a_devcontainer_json_with_post_create_and_forwarded_ports() {
    let port = free_port();
    let dev = Dev::new(&[(
        ".devcontainer/devcontainer.json",
        &format!(
            r#"{{
  // Comments and trailing commas, as VS Code writes them.
  "name": "web",
  "image": "busybox:1.35",
  "containerEnv": {{ "GREETING": "hello ${{localEnv:DEV_TEST_WHO:nobody}}" }},
  "remoteEnv": {{ "WHERE": "${{containerWorkspaceFolder}}" }},
  "postCreateCommand": "echo \"$GREETING\" > ${{containerWorkspaceFolder}}/created.txt",
  "postStartCommand": ["sh", "-c", "echo started >> /tmp/starts"],
  "forwardPorts": [{port}],
}}"#
        ),
    )]);
    let m = dev.mirror_flag();
    let out = run(dev
        .cmd(&["dev", "up", "--registry-mirror", &m])
        .env("DEV_TEST_WHO", "tester"));
    assert!(out.contains(&format!("localhost:{port}")), "{out}");
    let base = dev
        .repo
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        fs::read_to_string(dev.path("created.txt")).unwrap(),
        "hello tester\n"
    );
    assert_eq!(
        dev.ok(&[
            "dev",
            "exec",
            "--",
            "sh",
            "-c",
            "pwd; echo $WHERE; cat /tmp/starts"
        ]),
        format!("/workspaces/{base}\n/workspaces/{base}\nstarted\n")
    );
    // The forwarded port is a port of this machine: what the container serves there is
    // reachable from the host.
    dev.ok(&[
        "dev",
        "exec",
        "--",
        "sh",
        "-c",
        &format!(
            "mkdir -p /tmp/w && echo from-dc > /tmp/w/index.html && httpd -p {port} -h /tmp/w"
        ),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Ok(r) = reqwest::blocking::get(format!("http://127.0.0.1:{port}/")) {
            break r.text().unwrap();
        }
        assert!(Instant::now() < deadline, "nothing on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(body, "from-dc\n");
    // postCreate runs once: not again when the environment is brought up again.
    fs::remove_file(dev.path("created.txt")).unwrap();
    dev.ok(&["dev", "stop", "--time", "2s"]);
    dev.up(&[]);
    assert!(!dev.path("created.txt").exists());
    dev.ok(&["dev", "down", "--time", "1s"]);
    dev.assert_nothing_running();
}

#[test]
fn an_image_built_from_a_dockerfile_and_rebuilt_when_it_changes() {
    let dev = Dev::new(&[
        (
            ".devcontainer/Dockerfile",
            "FROM busybox:1.35\nRUN echo one-$(uname -m) > /built\n",
        ),
        (
            ".devcontainer/devcontainer.json",
            r#"{"name": "built", "build": {"dockerfile": "Dockerfile"}}"#,
        ),
    ]);
    dev.up(&["--platform", "linux/arm64"]);
    assert_eq!(
        dev.ok(&["dev", "exec", "--", "cat", "/built"]),
        "one-aarch64\n"
    );
    assert_eq!(dev.container("devcontainer")["image"], "build:devcontainer");
    // Same file, same image: kept. A changed Dockerfile: a new image, so a restart.
    assert!(dev.up(&[]).contains("unchanged, kept running"));
    dev.write(
        ".devcontainer/Dockerfile",
        "FROM busybox:1.35\nRUN echo two-$(uname -m) > /built\n",
    );
    assert!(dev.up(&[]).contains("changed, restarted"));
    assert_eq!(
        dev.ok(&["dev", "exec", "--", "cat", "/built"]),
        "two-aarch64\n"
    );
    dev.ok(&["dev", "down", "--time", "1s"]);
    dev.assert_nothing_running();
}

#[test]
fn bad_input_is_refused_with_what_and_where() {
    // An image the registry does not have: named, with the container.
    let dev = Dev::new(&[(
        "devfile.yaml",
        "schemaVersion: 2.2.0\nmetadata: {name: bad}\ncomponents:\n  - name: tools\n    container:\n      image: busybox:0.0-missing\n",
    )]);
    let m = dev.mirror_flag();
    let err = dev.fails(&["dev", "up", "--registry-mirror", &m]);
    assert!(
        err.contains("pulling image `busybox:0.0-missing`") && err.contains("container `tools`"),
        "{err}"
    );
    assert!(dev.ls().is_empty());

    // An unknown component: the front end's positioned error, and nothing starts.
    dev.write(
        "devfile.yaml",
        "schemaVersion: 2.2.0\nmetadata: {name: bad}\ncomponents:\n  - name: runtime\n    container:\n      image: busybox:1.35\ncommands:\n  - id: run\n    exec:\n      component: runtim\n      commandLine: echo\n",
    );
    let err = dev.fails(&["dev", "up", "--registry-mirror", &m]);
    assert!(
        err.contains("devfile.yaml:10:18: error: exec command `run` runs in component `runtim`, which is not defined"),
        "{err}"
    );
    assert!(err.contains("did you mean `runtime`?"), "{err}");
    assert!(err.contains("nothing was started"), "{err}");

    // A port something else holds: the port is named, and nothing starts (warnings are
    // printed with their positions first).
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    dev.write(
        "devfile.yaml",
        &format!(
            "schemaVersion: 2.2.0\nmetadata: {{name: bad}}\ncomponents:\n  - name: tools\n    container:\n      image: busybox:1.35\n      colour: blue\n  - name: web\n    container:\n      image: busybox:1.35\n      mountSources: false\n      command: [httpd, -f, -p, \"{port}\"]\n      endpoints:\n        - name: site\n          targetPort: {port}\n"
        ),
    );
    let err = dev.fails(&["dev", "up", "--registry-mirror", &m]);
    assert!(err.contains("devfile.yaml:7:7: warning:"), "{err}");
    assert!(
        err.contains(&format!(
            "endpoint `site` of container `web`: port {port} is already in use"
        )),
        "{err}"
    );
    assert!(err.contains("nothing was started"), "{err}");
    assert!(dev.ls().is_empty());
    drop(holder);
    // Once the port is free, it starts.
    dev.up(&[]);
    dev.wait_state("web", |c| c["state"] == "running");

    // A container whose process ends at once: said, with its output.
    dev.write(
        "devfile.yaml",
        "schemaVersion: 2.2.0\nmetadata: {name: bad}\ncomponents:\n  - name: tools\n    container:\n      image: busybox:1.35\n      command: [sh, -c, 'echo goodbye; exit 5']\n",
    );
    let err = dev.fails(&["dev", "up", "--registry-mirror", &m]);
    assert!(
        err.contains("container `tools` stopped as it started (exited(5))"),
        "{err}"
    );
    assert!(err.contains("goodbye"), "{err}");
    dev.ok(&["dev", "down", "--time", "1s"]);
    dev.assert_nothing_running();

    // No file at all.
    let empty = Dev::new(&[]);
    let err = empty.fails(&["dev", "up"]);
    assert!(err.contains("no dev environment file"), "{err}");
    let err = empty.fails(&["dev", "exec", "--", "true"]);
    assert!(err.contains("no dev environment in"), "{err}");
}

#[test]
fn rootless_dev_environment_as_nobody() {
    if !rustix::process::geteuid().is_root() {
        skip("needs root to run archway as nobody");
        return;
    }
    let reg = mirror();
    let top = tempfile::tempdir().unwrap();
    let home = owned_dir(65534, "home", &top);
    let repo = owned_dir(65534, "repo", &top);
    let port = free_port();
    fs::write(repo.join("devfile.yaml"), codecatalyst_devfile(port)).unwrap();
    rustix::fs::chown(
        repo.join("devfile.yaml"),
        Some(rustix::fs::Uid::from_raw(65534)),
        Some(rustix::fs::Gid::from_raw(65534)),
    )
    .unwrap();
    let nobody = |args: &[&str]| -> Output {
        let mut c = as_nobody(&home);
        c.current_dir(&repo).args(args).stdin(Stdio::null());
        c.output().unwrap()
    };
    let ok = |args: &[&str]| -> String {
        let out = nobody(args);
        assert!(
            out.status.success(),
            "archway {args:?} as nobody failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let guard = Cleanup(&nobody);
    ok(&[
        "dev",
        "up",
        "--registry-mirror",
        &format!("docker.io={}/hub", reg.host()),
    ]);
    assert_eq!(
        ok(&[
            "dev",
            "exec",
            "--",
            "wget",
            "-qO-",
            &format!("http://localhost:{port}/")
        ]),
        "dynamodb-local\n"
    );
    // Root in the container is nobody outside: what it writes in the project is nobody's.
    ok(&["dev", "exec", "--", "sh", "-c", "id -u > uid.txt"]);
    assert_eq!(fs::read_to_string(repo.join("uid.txt")).unwrap(), "0\n");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&fs::metadata(repo.join("uid.txt")).unwrap()),
        65534
    );
    let ls: Vec<Value> = serde_json::from_str(&ok(&["dev", "ls", "--format", "json"])).unwrap();
    assert!(
        ls[0]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "running")
    );
    ok(&["dev", "down", "--time", "1s"]);
    drop(guard);
    let needle = repo.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !processes_mentioning(&needle).is_empty() {
        assert!(
            Instant::now() < deadline,
            "still running: {:?}",
            processes_mentioning(&needle)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `dev down` as nobody when a rootless test ends, passing or not.
struct Cleanup<'a>(&'a dyn Fn(&[&str]) -> Output);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = (self.0)(&["dev", "down", "--volumes", "--time", "1s"]);
    }
}
