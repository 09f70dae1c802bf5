//! The front end for dev environments: `devfile.yaml` (devfile schema 2.0 to 2.3) and
//! `.devcontainer/devcontainer.json`, read as people write them and lowered into one validated
//! [`Environment`] — containers sharing one network namespace, their volumes, the images to
//! build, commands and lifecycle events — for a runtime to start as rootless sandboxes.
//!
//! **Invariants:**
//! * Pure: text in, a typed [`Environment`] plus positioned [`Diagnostic`]s out. The only I/O
//!   is through a [`FileSource`] the caller passes (to find the file in a directory and to
//!   read a devfile's local `parent`); [`Filesystem`] is the real one, [`MemoryFiles`] a
//!   fake. Nothing here depends on the sandbox or build crates.
//! * Every field is read, warned about (unknown or unsupported, by name, at its position,
//!   with a "did you mean" for misspellings) or refused with an error; nothing is silently
//!   dropped. Errors fail the load ([`LoadError::Invalid`] carries all the diagnostics);
//!   warnings come back in [`Loaded::diagnostics`].
//! * The model's JSON form is stable, and [`fingerprint`] of a container changes exactly when
//!   its JSON does.
//!
//! Modules: [`devfile`] and [`devcontainer`] are the two front ends; [`model`] is what they
//! produce; [`quantity`] reads Kubernetes quantities (`512Mi`, `500m`).

pub mod devcontainer;
pub mod devfile;
mod fields;
mod jsonc;
pub mod model;
mod node;
mod paths;
pub mod quantity;
mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use archway_diag::{Diagnostic, Severity, Span};
pub use model::{
    Action, BindMount, Command, CommandLine, Container, Endpoint, EnvVar, Environment, Events,
    Exposure, Format, Group, GroupKind, ImageBuild, ImageSource, Metadata, Part, Placeholder,
    Project, Protocol, Template, Volume, VolumeMount, fingerprint,
};

/// The files `load` looks for, in order, when it is not told which.
pub const CANDIDATES: [&str; 5] = [
    "devfile.yaml",
    ".devfile.yaml",
    "devfile.yml",
    ".devcontainer/devcontainer.json",
    ".devcontainer.json",
];

/// Files larger than this are refused (no dev environment file is near it).
pub const MAX_FILE_SIZE: u64 = 4 << 20;

/// Why a file could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("no such file")]
    NotFound,
    #[error("{0}")]
    Failed(String),
}

/// Where files come from. The caller decides (a directory, a git tree, a test's strings) and
/// does the I/O; the front ends only ask.
pub trait FileSource {
    /// The text of the file at `path`.
    fn read(&self, path: &Path) -> Result<String, ReadError>;
}

/// Files on the local filesystem.
#[derive(Clone, Copy, Debug, Default)]
pub struct Filesystem;

impl FileSource for Filesystem {
    fn read(&self, path: &Path) -> Result<String, ReadError> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReadError::NotFound,
            _ => ReadError::Failed(e.to_string()),
        })?;
        if meta.is_dir() {
            return Err(ReadError::Failed("is a directory".into()));
        }
        if meta.len() > MAX_FILE_SIZE {
            return Err(ReadError::Failed(format!(
                "larger than {} MiB",
                MAX_FILE_SIZE >> 20
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| ReadError::Failed(e.to_string()))?;
        String::from_utf8(bytes).map_err(|_| ReadError::Failed("not UTF-8 text".into()))
    }
}

/// Files held in memory, by path (for tests and for callers that already have the text).
#[derive(Clone, Debug, Default)]
pub struct MemoryFiles(pub BTreeMap<PathBuf, String>);

impl MemoryFiles {
    pub fn with(mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        self.0.insert(path.into(), text.into());
        self
    }
}

impl FileSource for MemoryFiles {
    fn read(&self, path: &Path) -> Result<String, ReadError> {
        let normalized = PathBuf::from(paths::normalize(path));
        self.0
            .get(path)
            .or_else(|| self.0.get(&normalized))
            .cloned()
            .ok_or(ReadError::NotFound)
    }
}

/// A loaded environment with the warnings found on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub env: Environment,
    /// Warnings only (any error fails the load).
    pub diagnostics: Vec<Diagnostic>,
    /// The file that was read, relative to the directory (as diagnostics name it).
    pub file: String,
}

/// Why no environment could be loaded.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LoadError {
    /// No file given and none of [`CANDIDATES`] exists.
    #[error("no devfile.yaml, .devfile.yaml, devfile.yml, .devcontainer/devcontainer.json or .devcontainer.json in {}", dir.display())]
    NotFound { dir: PathBuf },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
    /// The file has errors: `diagnostics` holds them with any warnings, in source order.
    #[error("{file} has {} error{}", count_errors(diagnostics), if count_errors(diagnostics) == 1 { "" } else { "s" })]
    Invalid {
        file: String,
        diagnostics: Vec<Diagnostic>,
    },
}

fn count_errors(diagnostics: &[Diagnostic]) -> usize {
    diagnostics.iter().filter(|d| d.is_error()).count()
}

impl LoadError {
    /// The diagnostics of an invalid file (empty for the other errors).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            LoadError::Invalid { diagnostics, .. } => diagnostics,
            _ => &[],
        }
    }
}

/// Turns a front end's result into a [`Loaded`] or an [`LoadError::Invalid`].
fn finish(
    file: &str,
    env: Option<Environment>,
    mut diagnostics: Vec<Diagnostic>,
) -> Result<Loaded, LoadError> {
    // Stable order: by file, then position; messages at one position keep their order.
    diagnostics.sort_by(|a, b| {
        (&a.span.file, a.span.line, a.span.col).cmp(&(&b.span.file, b.span.line, b.span.col))
    });
    match env {
        Some(env) if !diagnostics.iter().any(Diagnostic::is_error) => Ok(Loaded {
            env,
            diagnostics,
            file: file.to_owned(),
        }),
        _ => Err(LoadError::Invalid {
            file: file.to_owned(),
            diagnostics,
        }),
    }
}

/// A name for the environment when the file gives none: the directory's, made a valid name.
fn name_of_dir(dir: &Path) -> Option<String> {
    let base = dir.file_name()?.to_str()?;
    let name = devfile::sanitize_name(base);
    (!name.is_empty()).then_some(name)
}

/// Finds and reads the dev environment file of the project in `dir`: `file` if given
/// (relative to `dir`), else the first of [`CANDIDATES`] that exists. A `.json` file is read
/// as a devcontainer.json, anything else as a devfile.
pub fn load(dir: &Path, file: Option<&Path>, fs: &dyn FileSource) -> Result<Loaded, LoadError> {
    let (display, text) = match file {
        Some(f) => {
            let path = dir.join(f);
            let text = fs.read(&path).map_err(|source| LoadError::Read {
                path: path.clone(),
                source,
            })?;
            let shown = path.strip_prefix(dir).unwrap_or(f);
            (paths::normalize(shown), text)
        }
        None => {
            let mut found = None;
            for c in CANDIDATES {
                let path = dir.join(c);
                match fs.read(&path) {
                    Ok(text) => {
                        found = Some((c.to_owned(), text));
                        break;
                    }
                    Err(ReadError::NotFound) => {}
                    Err(source) => return Err(LoadError::Read { path, source }),
                }
            }
            found.ok_or_else(|| LoadError::NotFound {
                dir: dir.to_owned(),
            })?
        }
    };
    let default_name = name_of_dir(dir);
    if display.ends_with(".json") {
        let (env, diags) = devcontainer::parse(&display, &text, default_name.as_deref());
        finish(&display, env, diags)
    } else {
        let (env, diags) = devfile::parse(&display, &text, dir, fs, default_name.as_deref());
        finish(&display, env, diags)
    }
}

/// Reads a devfile. `name` is its path relative to the repository root (diagnostics name it
/// so, and a `parent: uri:` is read through `fs` relative to its directory); paths in the
/// model are relative to that root.
pub fn parse_devfile(name: &str, text: &str, fs: &dyn FileSource) -> Result<Loaded, LoadError> {
    let (env, diags) = devfile::parse(name, text, Path::new(""), fs, None);
    finish(name, env, diags)
}

/// Reads a devcontainer.json. `name` is its path relative to the repository root (paths in
/// the model, such as the Dockerfile's, are relative to that root).
pub fn parse_devcontainer(name: &str, text: &str) -> Result<Loaded, LoadError> {
    let (env, diags) = devcontainer::parse(name, text, None);
    finish(name, env, diags)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVFILE: &str = "schemaVersion: 2.2.0\ncomponents:\n  - name: tools\n    container:\n      image: alpine:3\n";

    #[test]
    fn load_finds_the_first_candidate() {
        let fs = MemoryFiles::default()
            .with("/p/.devcontainer/devcontainer.json", "{\"image\": \"x\"}")
            .with("/p/.devfile.yaml", DEVFILE);
        let l = load(Path::new("/p"), None, &fs).unwrap();
        assert_eq!(l.file, ".devfile.yaml");
        assert_eq!(l.env.name, "p");
        let l = load(
            Path::new("/p"),
            Some(Path::new(".devcontainer/devcontainer.json")),
            &fs,
        )
        .unwrap();
        assert_eq!(l.env.format, Format::Devcontainer);
        assert_eq!(l.file, ".devcontainer/devcontainer.json");
    }

    #[test]
    fn load_errors() {
        let fs = MemoryFiles::default();
        let e = load(Path::new("/empty"), None, &fs).unwrap_err();
        assert!(matches!(e, LoadError::NotFound { .. }));
        assert!(e.to_string().contains("/empty"), "{e}");
        let e = load(Path::new("/p"), Some(Path::new("dev.yaml")), &fs).unwrap_err();
        assert_eq!(e.to_string(), "cannot read /p/dev.yaml");
        let e = parse_devfile("devfile.yaml", "schemaVersion: 1.0.0\n", &fs).unwrap_err();
        assert_eq!(e.to_string(), "devfile.yaml has 1 error");
        assert_eq!(e.diagnostics().len(), 1);
    }

    #[test]
    fn filesystem_reads_and_reports() {
        let dir = std::env::temp_dir().join(format!("archway-devfile-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(".devcontainer")).unwrap();
        std::fs::write(
            dir.join(".devcontainer/devcontainer.json"),
            "{ // c\n \"image\": \"debian\", }",
        )
        .unwrap();
        let l = load(&dir, None, &Filesystem).unwrap();
        assert_eq!(l.file, ".devcontainer/devcontainer.json");
        assert_eq!(Filesystem.read(&dir.join("nope")), Err(ReadError::NotFound));
        assert!(matches!(Filesystem.read(&dir), Err(ReadError::Failed(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
