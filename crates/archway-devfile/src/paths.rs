//! Lexical path arithmetic for the paths files name (a parent devfile, a Dockerfile, a build
//! context): resolved against the directory of the file that names them, `/`-separated, with
//! `.` and `..` folded, without touching the filesystem.

use std::path::{Component, Path};

/// `path` with `.` dropped and `..` folded (a leading `..` is kept), `/`-separated; `.` for
/// an empty path.
pub(crate) fn normalize(path: &Path) -> String {
    let mut absolute = false;
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                absolute = true;
                parts.clear();
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.last().is_some_and(|p| p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..".into());
                }
            }
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// `rel` as written in `file`, resolved against `file`'s directory.
pub(crate) fn beside(file: &str, rel: &str) -> String {
    let dir = Path::new(file).parent().unwrap_or(Path::new(""));
    normalize(&dir.join(rel))
}

/// Whether a resolved path leaves the directory it is relative to.
pub(crate) fn escapes(resolved: &str) -> bool {
    resolved == ".." || resolved.starts_with("../") || resolved.starts_with('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical() {
        assert_eq!(normalize(Path::new("a/./b/../c")), "a/c");
        assert_eq!(normalize(Path::new("")), ".");
        assert_eq!(normalize(Path::new("./")), ".");
        assert_eq!(normalize(Path::new("../x")), "../x");
        assert_eq!(normalize(Path::new("/a/../../b")), "/b");
        assert_eq!(
            beside(".devcontainer/devcontainer.json", "Dockerfile"),
            ".devcontainer/Dockerfile"
        );
        assert_eq!(beside(".devcontainer/devcontainer.json", ".."), ".");
        assert_eq!(
            beside("devfile.yaml", "./base/devfile.yaml"),
            "base/devfile.yaml"
        );
        assert_eq!(
            beside("base/devfile.yaml", "../docker/Dockerfile"),
            "docker/Dockerfile"
        );
        assert_eq!(beside("devfile.yaml", "/abs/Dockerfile"), "/abs/Dockerfile");
        assert!(escapes("../x") && escapes("/x") && !escapes("x/.."));
    }
}
