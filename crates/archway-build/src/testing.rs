//! Test doubles for the builder, so builds are tested without root, an OCI runtime, qemu or a
//! registry: [`RecordingRunner`] (a [`StepRunner`] that records every RUN and answers with
//! scripted changes) and [`FakeImages`] (an [`ImageSource`] over an OCI layout in a temporary
//! directory, standing in for registries, with failures on demand).
//!
//! Compiled for this crate's tests and, with the `testing` feature, for other crates' tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;

use archway_client::{Client, ClientError, ClientOptions, Location};
use archway_oci::config::{ImageConfig, RuntimeConfig};
use archway_oci::layer::{EntryData, LayerEntry, LayerOptions, layer_from_entries};
use archway_oci::layout::ImageLayout;
use archway_oci::{Descriptor, Digest, ImageManifest, Index, Platform, Reference, media_type};
use futures_util::FutureExt;

use crate::builder::{BindMount, RunOutput, RunRequest, StepRunner};
use crate::error::BuildError;
use crate::images::{BoxFuture, ImageSource};

/// One RUN as the runner saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRun {
    pub platform: Platform,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub mounts: Vec<BindMount>,
    pub tmpfs: Vec<String>,
    pub network_host: bool,
}

type Respond = dyn Fn(&RunRequest<'_>) -> RunOutput + Send + Sync;

/// A [`StepRunner`] that records RUN steps instead of running them. By default every step
/// "writes" `/ran` containing its command line (so identical steps make identical layers) and
/// exits 0.
pub struct RecordingRunner {
    runs: Mutex<Vec<RecordedRun>>,
    respond: Box<Respond>,
}

impl std::fmt::Debug for RecordingRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingRunner")
            .field("runs", &self.runs())
            .finish_non_exhaustive()
    }
}

impl Default for RecordingRunner {
    fn default() -> Self {
        RecordingRunner::with_response(|req| RunOutput {
            exit_code: 0,
            output: String::new(),
            changes: BTreeMap::from([(
                "ran".to_owned(),
                LayerEntry {
                    data: EntryData::Bytes(format!("{}\n", req.argv.join(" ")).into_bytes()),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime: None,
                },
            )]),
        })
    }
}

impl RecordingRunner {
    /// A runner answering every step with `respond`.
    pub fn with_response(
        respond: impl Fn(&RunRequest<'_>) -> RunOutput + Send + Sync + 'static,
    ) -> RecordingRunner {
        RecordingRunner {
            runs: Mutex::default(),
            respond: Box::new(respond),
        }
    }

    /// Every step run so far, in order.
    pub fn runs(&self) -> Vec<RecordedRun> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl StepRunner for RecordingRunner {
    fn run(
        &self,
        req: &RunRequest<'_>,
        _on_output: &(dyn Fn(&str) + Sync),
    ) -> Result<RunOutput, Box<dyn std::error::Error + Send + Sync>> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(RecordedRun {
                platform: req.platform.clone(),
                argv: req.argv.clone(),
                env: req.env.clone(),
                cwd: req.cwd.clone(),
                user: req.user.clone(),
                mounts: req.mounts.clone(),
                tmpfs: req.tmpfs.clone(),
                network_host: req.network_host,
            });
        Ok((self.respond)(req))
    }
}

/// What [`FakeImages`] can be told to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Copy,
    Exists,
    Push,
}

/// An [`ImageSource`] standing in for registries: images live in an OCI layout in a temporary
/// directory, tagged by reference. Records every call; fails the operations it is told to.
#[derive(Debug)]
pub struct FakeImages {
    dir: tempfile::TempDir,
    layout: ImageLayout,
    client: Client,
    calls: Mutex<Vec<String>>,
    failing: Mutex<BTreeSet<Operation>>,
}

impl FakeImages {
    pub fn new() -> Result<FakeImages, BuildError> {
        let dir = tempfile::tempdir().map_err(crate::error::io("a temporary directory"))?;
        let layout = ImageLayout::create(dir.path().join("registry"))?;
        Ok(FakeImages {
            dir,
            layout,
            client: Client::new(ClientOptions::default())?,
            calls: Mutex::default(),
            failing: Mutex::default(),
        })
    }

    /// Adds an image under `reference`: for each platform, one layer holding `files` (path,
    /// content) plus `/platform` (naming the platform), in an index. Returns the index digest.
    pub fn add_image(
        &self,
        reference: &str,
        platforms: &[Platform],
        files: &[(&str, &str)],
    ) -> Result<Digest, BuildError> {
        let mut index = Index::new_oci();
        for p in platforms {
            let mut entries: BTreeMap<String, LayerEntry> = files
                .iter()
                .map(|(path, content)| ((*path).to_owned(), file(content)))
                .collect();
            entries.insert("platform".into(), file(&p.to_string()));
            let mut tar = Vec::new();
            let digests = layer_from_entries(&entries, &LayerOptions::default(), &mut tar)?;
            self.layout.write_blob(&tar)?;
            let mut config = ImageConfig::for_platform(p);
            config.rootfs.diff_ids.push(digests.diff_id);
            config.config = Some(RuntimeConfig {
                cmd: Some(vec!["sh".into()]),
                ..RuntimeConfig::default()
            });
            let config = config.to_json();
            let manifest = ImageManifest {
                schema_version: 2,
                media_type: media_type::OCI_MANIFEST.to_owned(),
                artifact_type: None,
                config: Descriptor::new(
                    media_type::OCI_CONFIG,
                    self.layout.write_blob(&config)?,
                    config.len() as u64,
                ),
                layers: vec![Descriptor::new(
                    media_type::OCI_LAYER_GZIP,
                    digests.digest,
                    digests.size,
                )],
                subject: None,
                annotations: None,
            };
            let bytes = manifest.to_json();
            let mut d = Descriptor::new(
                media_type::OCI_MANIFEST,
                self.layout.write_blob(&bytes)?,
                bytes.len() as u64,
            );
            d.platform = Some(p.clone());
            index.manifests.push(d);
        }
        let bytes = index.to_json();
        let digest = self.layout.write_blob(&bytes)?;
        let r: Reference = reference.parse().map_err(ClientError::from)?;
        self.layout.set_ref(
            &tag_for(&r),
            &Descriptor::new(media_type::OCI_INDEX, digest.clone(), bytes.len() as u64),
        )?;
        Ok(digest)
    }

    /// Every later call of `operation` fails as an unreachable registry would.
    pub fn fail(&self, operation: Operation) {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(operation);
    }

    /// Calls so far: `copy REF`, `exists REF`, `push REF`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The directory the fake keeps its images in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn enter(&self, operation: Operation, what: String) -> Result<(), BuildError> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
        if self
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&operation)
        {
            return Err(BuildError::Client(ClientError::Unreachable {
                registry: "fake".into(),
                message: format!("{operation:?} is failing"),
                hint: "",
            }));
        }
        Ok(())
    }

    fn location(&self, r: &Reference) -> Location {
        Location::Layout {
            path: self.layout.root().to_owned(),
            tag: Some(tag_for(r)),
        }
    }

    async fn copy(
        &self,
        from: &Location,
        to: &Location,
        platform: Option<&Platform>,
    ) -> Result<(), BuildError> {
        let opts = archway_client::CopyOptions {
            selection: platform.map_or(archway_client::Selection::All, |p| {
                archway_client::Selection::Platform(p.clone())
            }),
            ..archway_client::CopyOptions::default()
        };
        archway_client::copy(&self.client, from, to, &opts).await?;
        Ok(())
    }
}

fn file(content: &str) -> LayerEntry {
    LayerEntry {
        data: EntryData::Bytes(content.as_bytes().to_vec()),
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: None,
    }
}

/// The layout tag standing for a reference.
fn tag_for(r: &Reference) -> String {
    crate::store::hash_parts(&[&r.to_string()]).hex().to_owned()
}

impl ImageSource for FakeImages {
    fn copy_into<'a>(
        &'a self,
        from: &'a Location,
        platform: Option<&'a Platform>,
        layout: &'a Path,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), BuildError>> {
        async move {
            self.enter(Operation::Copy, format!("copy {from}"))?;
            let from = match from {
                Location::Registry(r) => self.location(r),
                other => other.clone(),
            };
            let to = Location::Layout {
                path: layout.to_owned(),
                tag: Some(tag.to_owned()),
            };
            self.copy(&from, &to, platform).await
        }
        .boxed()
    }

    fn exists<'a>(&'a self, reference: &'a Reference) -> BoxFuture<'a, Result<bool, BuildError>> {
        async move {
            self.enter(Operation::Exists, format!("exists {reference}"))?;
            Ok(self.layout.resolve(Some(&tag_for(reference))).is_ok())
        }
        .boxed()
    }

    fn push<'a>(
        &'a self,
        layout: &'a Path,
        tag: &'a str,
        to: &'a Reference,
    ) -> BoxFuture<'a, Result<(), BuildError>> {
        async move {
            self.enter(Operation::Push, format!("push {to}"))?;
            let from = Location::Layout {
                path: layout.to_owned(),
                tag: Some(tag.to_owned()),
            };
            self.copy(&from, &self.location(to), None).await
        }
        .boxed()
    }
}
