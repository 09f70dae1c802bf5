//! What `archway` prints on stderr for common failures, as snapshots (`tests/it/snapshots/`):
//! one `error:` line with the whole cause chain below it, each cause once. Temporary paths and
//! ports are filtered. `INSTA_UPDATE=always` (or `cargo insta review`) updates them.

use std::process::Output;

use crate::support::UserEnv;

/// stderr of a failing `archway` run, with this test's temporary directory and any loopback
/// port replaced by placeholders.
fn stderr_of(env: &UserEnv, out: Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).replace(&env.home.path().display().to_string(), "[HOME]")
}

fn check(name: &str, env: &UserEnv, args: &[&str]) {
    let out = env.archway().args(args).output().unwrap();
    let stderr = stderr_of(env, out);
    insta::with_settings!({
        snapshot_suffix => name,
        description => format!("archway {}", args.join(" ")),
        omit_expression => true,
        filters => vec![(r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]")],
    }, {
        insta::assert_snapshot!(stderr);
    });
}

#[test]
fn common_failures_print_each_cause_once() {
    let env = UserEnv::new();
    let home = env.home.path().display().to_string();
    let missing = format!("{home}/nonexistent");
    let out = format!("oci:{home}/out:1");
    std::fs::create_dir_all(env.home.path().join("ctx")).unwrap();
    let ctx = format!("{home}/ctx");
    check(
        "import_missing_rootfs",
        &env,
        &[
            "image",
            "import",
            &missing,
            "--platform",
            "linux/amd64",
            "-t",
            &out,
        ],
    );
    check(
        "inspect_bad_reference",
        &env,
        &["image", "inspect", "Upper/Case:1"],
    );
    check(
        "copy_missing_layout",
        &env,
        &["image", "copy", &format!("oci:{missing}:1"), &out],
    );
    check("build_without_dockerfile", &env, &["build", &ctx]);
    check("lint_missing_file", &env, &["lint", &missing]);
    check(
        "run_bad_platform",
        &env,
        &[
            "run",
            "--platform",
            "linux/",
            &format!("oci:{missing}:1"),
            "true",
        ],
    );
}
