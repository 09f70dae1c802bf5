//! The data-driven corpus: every directory under `tests/corpus/` is one case, loaded with
//! `archway_devfile::load` from that directory on the real filesystem.
//!
//! A case holds the files of a project (`devfile.yaml`, `.devcontainer/devcontainer.json`, a
//! parent devfile, …), optionally `load-file.txt` (the path passed as `-f`), and
//! `expected.txt`: which file was read, the diagnostics as `file:line:col: severity: message`
//! (with hints), and the environment as JSON with each container's fingerprint — or the
//! load error. Run with `UPDATE_EXPECT=1` to rewrite the expectations, then review the diff.

use std::path::{Path, PathBuf};

use archway_devfile::{Environment, Filesystem, LoadError, fingerprint, load};

const MIN_CASES: usize = 30;

pub(crate) fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

pub(crate) fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus_root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    cases
}

fn render(case: &Path) -> String {
    let file = std::fs::read_to_string(case.join("load-file.txt"))
        .ok()
        .map(|s| PathBuf::from(s.trim()));
    let mut out = String::new();
    match load(case, file.as_deref(), &Filesystem) {
        Ok(loaded) => {
            out.push_str(&format!("== file {}\n== diagnostics\n", loaded.file));
            for d in &loaded.diagnostics {
                out.push_str(&format!("{d}\n"));
            }
            out.push_str("== fingerprints\n");
            for c in &loaded.env.containers {
                out.push_str(&format!("{} {}\n", c.name, fingerprint(c)));
            }
            out.push_str("== environment\n");
            let json = serde_json::to_string_pretty(&loaded.env).unwrap();
            // The JSON form reads back to the same environment.
            let back: Environment = serde_json::from_str(&json).unwrap();
            assert_eq!(back, loaded.env, "{}: JSON round trip", case.display());
            out.push_str(&json);
            out.push('\n');
        }
        Err(LoadError::Invalid { file, diagnostics }) => {
            out.push_str(&format!("== file {file}\n== diagnostics\n"));
            for d in &diagnostics {
                out.push_str(&format!("{d}\n"));
            }
            out.push_str("== environment\n(none: errors)\n");
        }
        Err(e) => {
            // Absolute paths differ between machines.
            let text = e.to_string().replace(&case.display().to_string(), "<case>");
            out.push_str(&format!("== error\n{text}\n"));
        }
    }
    out
}

#[test]
fn corpus() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let cases = cases();
    assert!(
        cases.len() >= MIN_CASES,
        "the corpus has only {} cases",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let got = render(case);
        let expected_path = case.join("expected.txt");
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "=== {}\n--- expected\n{want}\n--- got\n{got}",
                case.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} corpus cases differ (UPDATE_EXPECT=1 rewrites them):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
