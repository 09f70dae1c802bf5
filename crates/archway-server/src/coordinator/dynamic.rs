//! Dynamic child pipelines (`trigger: include: - artifact: FILE  job: JOB`): planned when the
//! trigger job starts, from the file the generating job kept in its artifacts, with the
//! parent's planning context and the repository at the parent's commit (the pipeline's source
//! snapshot) for the child's own `include: local`s — the contract of
//! `archway_pipeline::graph::ChildPipeline`.
//!
//! Archives are read synchronously on a blocking thread, streamed from wherever they are
//! stored (only those the child asks for are read): a file is found by scanning the gzipped
//! tar, and at most [`MAX_FILE`] bytes of it are read (a generated pipeline larger than that
//! is refused, as GitLab limits included files).

use std::collections::BTreeMap;
use std::io::Read;

use archway_api::{DynamicChild, JobDefinition};
use archway_pipeline::FileSource;

use crate::sources::StoredArchive;

/// Largest pipeline file read from an archive.
pub const MAX_FILE: u64 = 1 << 20;

/// An archive the planner may look into (on a blocking thread).
pub(super) trait Archive: std::fmt::Debug + Send + Sync {
    /// Its bytes; `None` if it cannot be read.
    fn open(&self) -> Option<Box<dyn Read + Send + '_>>;
}

impl Archive for StoredArchive {
    fn open(&self) -> Option<Box<dyn Read + Send + '_>> {
        self.reader().ok().map(|r| r as Box<dyn Read + Send>)
    }
}

/// Files of the pipeline's source snapshot and of its jobs' artifact archives.
#[derive(Debug)]
pub(super) struct ArchiveFiles<A: Archive = StoredArchive> {
    /// The source snapshot (`None`: the pipeline has none).
    pub(super) source: Option<A>,
    /// (job name, artifact archive) of the pipeline's successful jobs.
    pub(super) artifacts: Vec<(String, A)>,
}

fn normalise(p: &str) -> String {
    let p = p.trim_start_matches("./").trim_start_matches('/');
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// The text of `path` in the gzipped tar `archive`.
fn read_entry(archive: &impl Archive, path: &str) -> Option<String> {
    let want = normalise(path);
    if want.split('/').any(|c| c == "..") {
        return None;
    }
    let f = archive.open()?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    for e in tar.entries().ok()? {
        let e = e.ok()?;
        let name = normalise(&e.path().ok()?.to_string_lossy());
        if name == want && e.header().entry_type().is_file() {
            if e.size() > MAX_FILE {
                return None;
            }
            let mut s = String::new();
            e.take(MAX_FILE).read_to_string(&mut s).ok()?;
            return Some(s);
        }
    }
    None
}

impl<A: Archive> FileSource for ArchiveFiles<A> {
    fn read(&self, path: &str) -> Option<String> {
        read_entry(self.source.as_ref()?, path)
    }

    fn artifact(&self, job: &str, path: &str) -> Option<String> {
        self.artifacts
            .iter()
            .filter(|(name, _)| archway_api::plan::names_job(job, name))
            .find_map(|(_, archive)| read_entry(archive, path))
    }
}

/// Plans the child: its stages and job definitions, or why it cannot run (the diagnostics,
/// as `file:line:col: error: …` lines).
pub(super) fn plan<A: Archive>(
    dynamic: &DynamicChild,
    variables: BTreeMap<String, String>,
    files: &ArchiveFiles<A>,
) -> Result<(Vec<String>, Vec<JobDefinition>), String> {
    let (pipeline, diags) =
        archway_pipeline::plan_child(&dynamic.context, &dynamic.child, variables, files);
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.is_error())
        .take(10)
        .map(ToString::to_string)
        .collect();
    if !errors.is_empty() {
        return Err(format!(
            "the dynamic child pipeline could not be planned:\n{}",
            errors.join("\n")
        ));
    }
    let Some(p) = pipeline else {
        return Err("the dynamic child pipeline could not be planned".into());
    };
    let jobs = if p.runs {
        archway_api::plan::job_definitions(&p)
    } else {
        Vec::new()
    };
    if jobs.is_empty() {
        return Err("the dynamic child pipeline has no jobs to run".into());
    }
    Ok((p.stages.clone(), jobs))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    impl Archive for PathBuf {
        fn open(&self) -> Option<Box<dyn Read + Send + '_>> {
            Some(Box::new(std::fs::File::open(self).ok()?))
        }
    }

    fn archive(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let path = dir.join(name);
        let f = std::fs::File::create(&path).unwrap();
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            f,
            flate2::Compression::fast(),
        ));
        for (p, text) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(text.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, p, text.as_bytes()).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        path
    }

    #[test]
    fn files_come_from_the_snapshot_and_the_named_jobs_artifacts() {
        let d = tempfile::tempdir().unwrap();
        let files = ArchiveFiles {
            source: Some(archive(
                d.path(),
                "src.tgz",
                &[("./ci/common.yml", "x: 1\n")],
            )),
            artifacts: vec![
                (
                    "generate: [a]".into(),
                    archive(d.path(), "a.tgz", &[("child.yml", "from a\n")]),
                ),
                (
                    "other".into(),
                    archive(d.path(), "o.tgz", &[("child.yml", "from other\n")]),
                ),
            ],
        };
        assert_eq!(files.read("ci/common.yml").as_deref(), Some("x: 1\n"));
        assert_eq!(files.read("/ci/common.yml").as_deref(), Some("x: 1\n"));
        assert_eq!(files.read("missing.yml"), None);
        assert_eq!(
            files.artifact("generate", "child.yml").as_deref(),
            Some("from a\n")
        );
        assert_eq!(files.artifact("nobody", "child.yml"), None);
        assert_eq!(files.artifact("generate", "../child.yml"), None);
    }
}
