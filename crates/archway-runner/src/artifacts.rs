//! Job artifacts on the runner: which files of the project directory `artifacts:` keeps
//! (gitlab-runner's rules: globs relative to the project directory with `**` crossing
//! directories, a matched directory keeps everything under it, `exclude` wins, `untracked`
//! adds every file the checkout did not have, nothing outside the project directory), the
//! archive (a deterministic gzipped tar, so identical artifacts are stored once), and the
//! dotenv reports (GitLab's format: `KEY=VALUE` lines, nothing else).
//!
//! Pure apart from reading the project directory; the executor uploads and downloads.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use archway_api::{ArtifactsDef, VarDef};
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// What `artifacts:` selected.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Relative paths (`/`-separated), sorted.
    pub files: Vec<String>,
    /// Paths given that cannot be used, with why (shown in the job log, as gitlab-runner does).
    pub warnings: Vec<String>,
}

/// Why a dotenv report was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {why}")]
pub struct DotenvError {
    pub file: String,
    pub line: usize,
    pub why: String,
}

fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

/// A pattern relative to the project directory, or why it is not one.
fn relative(pattern: &str) -> Result<String, String> {
    let p = pattern.trim();
    let p = p.strip_prefix("./").unwrap_or(p);
    let p = p.trim_end_matches('/');
    if p.is_empty() {
        return Err("an empty path".into());
    }
    if p.starts_with('/') {
        return Err("outside the project directory (an absolute path)".into());
    }
    let mut depth = 0i32;
    for c in Path::new(p).components() {
        match c {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return Err("outside the project directory".into());
                }
            }
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    Ok(p.to_owned())
}

fn set(patterns: &[String], warnings: &mut Vec<String>, what: &str) -> GlobSet {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        match relative(p) {
            Ok(rel) => match glob(&rel) {
                Ok(g) => {
                    b.add(g);
                }
                Err(e) => warnings.push(format!("{what} `{p}`: not a valid pattern: {e}")),
            },
            Err(why) => warnings.push(format!("{what} `{p}`: {why}; ignored")),
        }
    }
    b.build().unwrap_or_else(|_| GlobSet::empty())
}

/// Whether `rel` or one of its parent directories matches.
fn matches_self_or_parent(set: &GlobSet, rel: &str) -> bool {
    if set.is_match(rel) {
        return true;
    }
    let mut cut = rel;
    while let Some((parent, _)) = cut.rsplit_once('/') {
        if set.is_match(parent) {
            return true;
        }
        cut = parent;
    }
    false
}

/// Every file (and symbolic link) under `root`, relative and sorted; directories are not
/// listed. Symbolic links are not followed.
pub fn list(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for e in rd.flatten() {
            let r = rel.join(e.file_name());
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(r),
                Ok(_) => out.push(r.to_string_lossy().into_owned()),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// The files of `project` that `def` keeps. `checked_out` is the list of files the
/// checkout had (for `untracked`).
pub fn select(project: &Path, def: &ArtifactsDef, checked_out: &BTreeSet<String>) -> Selection {
    let mut warnings = Vec::new();
    let paths = set(&def.paths, &mut warnings, "artifacts:paths");
    // Reports are kept in the archive too, as GitLab keeps them.
    let reports: Vec<String> = def.dotenv.iter().chain(&def.junit).cloned().collect();
    let reports = set(&reports, &mut warnings, "artifacts:reports");
    let exclude = set(&def.exclude, &mut warnings, "artifacts:exclude");
    let files = list(project)
        .into_iter()
        .filter(|f| {
            (matches_self_or_parent(&paths, f)
                || reports.is_match(f.as_str())
                || (def.untracked && !checked_out.contains(f)))
                && !matches_self_or_parent(&exclude, f)
        })
        .collect();
    Selection { files, warnings }
}

/// Writes `files` of `project` as a gzipped tar to `out` (deterministic: sorted entries, no
/// owners or times), returning its size. Symbolic links are stored as links.
pub fn archive(project: &Path, files: &[String], out: &Path) -> std::io::Result<u64> {
    let f = std::fs::File::create(out)?;
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for rel in files {
        tar.append_path_with_name(project.join(rel), rel)?;
    }
    let gz = tar.into_inner()?;
    let mut f = gz.finish()?;
    f.flush()?;
    f.sync_all()?;
    Ok(f.metadata()?.len())
}

/// The sha256 digest of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<archway_oci::Digest> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut h = archway_oci::digest::Digester::new(archway_oci::digest::Algorithm::Sha256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

/// Unpacks an artifact archive into `project` (entries that would land outside it are
/// refused by the tar reader).
pub fn unpack(archive: &Path, project: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(archive)?;
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
    a.set_preserve_permissions(true);
    a.set_overwrite(true);
    a.unpack(project)
}

/// Parses a dotenv report as GitLab does: every line `KEY=VALUE` (`KEY` of letters, digits
/// and `_`), a value in matching single or double quotes has them removed; no empty lines,
/// comments or multi-line values.
pub fn parse_dotenv(file: &str, text: &str) -> Result<Vec<VarDef>, DotenvError> {
    let err = |line: usize, why: &str| DotenvError {
        file: file.to_owned(),
        line,
        why: why.to_owned(),
    };
    if text.len() > 5 * 1024 {
        return Err(err(0, "a dotenv report may be at most 5 KiB"));
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (i, line) in body.split('\n').enumerate() {
        let n = i + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(err(
                n,
                "not KEY=VALUE (dotenv reports have no empty lines, comments or multi-line values)",
            ));
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(err(
                n,
                &format!("`{key}` is not a variable name (letters, digits and _)"),
            ));
        }
        let v = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        out.push(VarDef {
            name: key.to_owned(),
            value: v.to_owned(),
        });
    }
    if out.len() > 50 {
        return Err(err(0, "a dotenv report may set at most 50 variables"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f.as_bytes()).unwrap();
        }
        d
    }

    fn def(paths: &[&str], exclude: &[&str]) -> ArtifactsDef {
        ArtifactsDef {
            paths: paths.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            when: "on_success".into(),
            ..ArtifactsDef::default()
        }
    }

    #[test]
    fn paths_globs_directories_and_excludes_select_as_gitlab_runner_does() {
        let d = tree(&[
            "out/app",
            "out/lib/x.o",
            "out/lib/x.so",
            "docs/a.md",
            "docs/deep/b.md",
            "top.md",
            "src/main.rs",
        ]);
        let none = BTreeSet::new();
        for (paths, exclude, want) in [
            (
                vec!["out/"],
                vec![],
                vec!["out/app", "out/lib/x.o", "out/lib/x.so"],
            ),
            (
                vec!["out"],
                vec!["out/**/*.o"],
                vec!["out/app", "out/lib/x.so"],
            ),
            // `*` stays in one directory; `**` crosses them.
            (vec!["*.md"], vec![], vec!["top.md"]),
            (vec!["docs/*.md"], vec![], vec!["docs/a.md"]),
            (
                vec!["**/*.md"],
                vec![],
                vec!["docs/a.md", "docs/deep/b.md", "top.md"],
            ),
            (vec!["./src/main.rs"], vec![], vec!["src/main.rs"]),
            (vec!["out/"], vec!["out/lib"], vec!["out/app"]),
            (vec!["missing/"], vec![], vec![]),
        ] {
            let s = select(d.path(), &def(&paths, &exclude), &none);
            assert_eq!(s.files, want, "{paths:?} - {exclude:?}");
            assert!(s.warnings.is_empty());
        }
    }

    #[test]
    fn paths_outside_the_project_are_refused_with_a_warning() {
        let d = tree(&["a.txt"]);
        let s = select(
            d.path(),
            &def(&["/etc/passwd", "../secret", "sub/../../x", "a.txt"], &[]),
            &BTreeSet::new(),
        );
        assert_eq!(s.files, vec!["a.txt"]);
        assert_eq!(s.warnings.len(), 3, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("outside the project directory"));
        assert!(s.warnings[1].contains("`../secret`: outside the project directory"));
    }

    #[test]
    fn untracked_adds_what_the_checkout_did_not_have_and_reports_are_kept() {
        let d = tree(&["src/lib.rs", "target/bin", "build.env", "report.xml"]);
        let checked_out: BTreeSet<String> = ["src/lib.rs".to_owned()].into();
        let mut a = def(&[], &["target/**"]);
        a.untracked = true;
        a.dotenv = vec!["build.env".into()];
        let s = select(d.path(), &a, &checked_out);
        assert_eq!(s.files, vec!["build.env", "report.xml"]);
        let mut b = def(&[], &[]);
        b.junit = vec!["*.xml".into()];
        assert_eq!(select(d.path(), &b, &checked_out).files, vec!["report.xml"]);
    }

    #[test]
    fn archives_are_deterministic_and_unpack_to_the_same_files() {
        let d = tree(&["out/a", "out/b/c"]);
        std::os::unix::fs::symlink("a", d.path().join("out/link")).unwrap();
        let files = list(d.path());
        assert_eq!(files, vec!["out/a", "out/b/c", "out/link"]);
        let t = tempfile::tempdir().unwrap();
        archive(d.path(), &files, &t.path().join("1.tgz")).unwrap();
        archive(d.path(), &files, &t.path().join("2.tgz")).unwrap();
        assert_eq!(
            std::fs::read(t.path().join("1.tgz")).unwrap(),
            std::fs::read(t.path().join("2.tgz")).unwrap()
        );
        let into = t.path().join("into");
        unpack(&t.path().join("1.tgz"), &into).unwrap();
        assert_eq!(list(&into), files);
        assert_eq!(
            std::fs::read_to_string(into.join("out/b/c")).unwrap(),
            "out/b/c"
        );
        assert_eq!(
            std::fs::read_link(into.join("out/link")).unwrap(),
            Path::new("a")
        );
    }

    #[test]
    fn dotenv_reports_follow_gitlabs_rules() {
        let v = parse_dotenv("b.env", "VERSION=1.2.3\nNAME=\"my app\"\nQ='x=y'\nEMPTY=\n").unwrap();
        let got: Vec<(&str, &str)> = v
            .iter()
            .map(|v| (v.name.as_str(), v.value.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("VERSION", "1.2.3"),
                ("NAME", "my app"),
                ("Q", "x=y"),
                ("EMPTY", "")
            ]
        );
        assert_eq!(parse_dotenv("e.env", "").unwrap(), vec![]);
        for (text, line, why) in [
            ("A=1\n\nB=2\n", 2, "not KEY=VALUE"),
            ("# comment\nA=1\n", 1, "not KEY=VALUE"),
            ("A-B=1\n", 1, "`A-B` is not a variable name"),
            ("export A=1\n", 1, "`export A` is not a variable name"),
            ("=1\n", 1, "`` is not a variable name"),
        ] {
            let e = parse_dotenv("r.env", text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}");
            assert!(e.why.contains(why), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("r.env:{line}: ")));
        }
        let many: String = (0..51).map(|i| format!("V{i}=x\n")).collect();
        assert!(
            parse_dotenv("m.env", &many)
                .unwrap_err()
                .why
                .contains("at most 50")
        );
        let big = format!("A={}\n", "x".repeat(6000));
        assert!(
            parse_dotenv("big.env", &big)
                .unwrap_err()
                .why
                .contains("5 KiB")
        );
    }
}
