//! The builder: executes an evaluated Dockerfile for every platform (in parallel) into a
//! content-addressed [`Store`], and assembles the images and the index.
//!
//! * Every step has a cache key: the parent's key plus what the step does and reads (file
//!   contents for COPY, command and environment for RUN). A hit reuses the layer.
//! * COPY layers depend only on their inputs, never on the platform: identical COPYs of two
//!   platforms produce one layer, computed once and shared byte for byte.
//! * Everything is reproducible: fixed timestamps (`SOURCE_DATE_EPOCH`, default 0), sorted
//!   entries, normalised owners, fixed compression.
//! * RUN steps go to a [`StepRunner`] (the sandbox; [`crate::testing::RecordingRunner`] in
//!   tests); base images come from an [`ImageSource`] (the registry client; a fake in tests).
//!   The builder itself never executes code.
//!
//! [`Builder::build`] is async and safe to call from async code (a runner): the per-platform
//! work runs on blocking threads, never on the caller's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use archway_diag::{Diagnostic, Severity, Span};
use archway_oci::layer::LayerEntry;
use archway_oci::{Descriptor, Digest, Index, Platform, Reference, media_type};
use tokio::runtime::Handle;

use crate::context::Tree;
use crate::dockerfile::{CopySource, Dockerfile, MountKind};
use crate::error::BuildError;
use crate::eval::{Base, CopyFrom, EvalOptions, EvalStep, Evaluated, evaluate};
use crate::gc::GcPolicy;
use crate::images::{ImageSource, ImageStore};
use crate::remote::Fetcher;
use crate::stage::PlatformBuild;
use crate::store::Store;

/// A bind mount for a RUN step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub host: PathBuf,
    pub target: String,
    pub readonly: bool,
}

/// What the sandbox is asked to run.
#[derive(Debug)]
pub struct RunRequest<'a> {
    pub platform: &'a Platform,
    /// The root filesystem before the step (read-only: changes go elsewhere).
    pub rootfs: &'a Path,
    /// A scratch directory the runner may use (and put the changes in).
    pub work: &'a Path,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub mounts: Vec<BindMount>,
    /// tmpfs mounts (paths).
    pub tmpfs: Vec<String>,
    pub network_host: bool,
}

/// The result of a RUN.
#[derive(Debug)]
pub struct RunOutput {
    pub exit_code: i32,
    /// Combined stdout/stderr (for errors).
    pub output: String,
    /// What changed, as layer entries (deletions as `.wh.` whiteout entries).
    pub changes: BTreeMap<String, LayerEntry>,
}

/// Executes RUN steps (implemented by the sandbox; [`crate::testing::RecordingRunner`] records
/// calls in tests). Called from the builder's blocking threads.
pub trait StepRunner: Send + Sync {
    /// Whether steps for `platform` can run here (checked before any work); the error says
    /// how to make them run.
    fn check(&self, _platform: &Platform) -> Result<(), String> {
        Ok(())
    }

    /// Runs one step; an `Err` is the sandbox failing, a non-zero `exit_code` the step.
    fn run(
        &self,
        req: &RunRequest<'_>,
        on_output: &(dyn Fn(&str) + Sync),
    ) -> Result<RunOutput, Box<dyn std::error::Error + Send + Sync>>;
}

/// Progress of a build.
#[derive(Clone, Debug)]
pub enum BuildEvent {
    Step {
        platform: String,
        stage: String,
        text: String,
        cached: bool,
    },
    Output {
        platform: String,
        line: String,
    },
    Pulled {
        reference: String,
        platform: String,
    },
    /// Something went wrong that does not stop the build (e.g. the registry cache).
    Warning(String),
    /// Step cache entries exported to the `--cache-repo`.
    CacheExported {
        repository: String,
        entries: usize,
    },
    /// The store was pruned to its size cap after the build.
    Pruned {
        items: usize,
        bytes: u64,
    },
}

/// Receives [`BuildEvent`]s (from several threads).
pub type ProgressSink = Arc<dyn Fn(BuildEvent) + Send + Sync>;

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    pub context: PathBuf,
    pub dockerfile: Dockerfile,
    pub platforms: Vec<Platform>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub no_cache: bool,
    /// `--secret id=…,src=…`
    pub secrets: BTreeMap<String, PathBuf>,
    /// Timestamps of everything written (seconds since the epoch).
    pub source_date_epoch: u64,
}

/// The build's result, in the store's layout.
#[derive(Clone, Debug)]
pub struct BuildResult {
    pub layout: PathBuf,
    /// The name of the result in the layout's `index.json`.
    pub tag: String,
    /// The index (several platforms) or the manifest (one).
    pub descriptor: Descriptor,
    pub images: Vec<(Platform, Descriptor)>,
    /// Every image the build pulled (`FROM`, `COPY --from`), per platform, by digest.
    pub bases: Vec<BaseImage>,
    pub steps: usize,
    pub cached_steps: usize,
    pub warnings: Vec<Diagnostic>,
}

/// One platform's part of a build.
pub(crate) struct PlatformResult {
    pub(crate) platform: Platform,
    pub(crate) descriptor: Descriptor,
    pub(crate) steps: usize,
    pub(crate) cached: usize,
    /// Cache keys of the steps that made layers (exported with `--cache-repo`).
    pub(crate) used: BTreeSet<Digest>,
    pub(crate) bases: Vec<BaseImage>,
}

/// An image a build pulled, pinned by the digest of the manifest it used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseImage {
    /// As the Dockerfile named it, normalised (`docker.io/library/debian:12`).
    pub reference: Reference,
    /// The platform's manifest the build read.
    pub digest: Digest,
    /// The platform pulled (`FROM --platform=$BUILDPLATFORM` pulls the build machine's).
    pub platform: Platform,
    /// The platform of the image being built that used it.
    pub target: Platform,
}

/// The builder. Cheap to clone (clones share the store and the source).
#[derive(Clone)]
pub struct Builder {
    images: ImageStore,
    runner: Option<Arc<dyn StepRunner>>,
    progress: Option<ProgressSink>,
    cache_repo: Option<Reference>,
    /// The size cap applied to the store after each build.
    gc: Option<GcPolicy>,
    /// Downloads and clones for `ADD` (made on first use).
    fetcher: Arc<std::sync::OnceLock<Fetcher>>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("store", &self.images.store().root())
            .field("cache_repo", &self.cache_repo)
            .field("runner", &self.runner.is_some())
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// A builder over `store`, pulling base images (and cache entries) through `source`. Without
    /// a runner, a Dockerfile with RUN steps is refused before any work.
    pub fn new(store: Arc<Store>, source: Arc<dyn ImageSource>) -> Builder {
        Builder {
            images: ImageStore::new(store, source),
            runner: None,
            progress: None,
            cache_repo: None,
            gc: None,
            fetcher: Arc::default(),
        }
    }

    /// After each build, prune the store down to `policy` (BuildKit's GC policy; see
    /// [`crate::gc`]). What the build used stays.
    pub fn with_gc(mut self, policy: GcPolicy) -> Builder {
        self.gc = Some(policy);
        self
    }

    /// RUN steps go to `runner` (the sandbox).
    pub fn with_runner(mut self, runner: Arc<dyn StepRunner>) -> Builder {
        self.runner = Some(runner);
        self
    }

    /// Progress and warnings go to `progress`.
    pub fn with_progress(mut self, progress: ProgressSink) -> Builder {
        self.progress = Some(progress);
        self
    }

    /// Share the step cache through this repository (`--cache-repo`): each entry is a small
    /// OCI artifact tagged with its cache key.
    pub fn with_cache_repo(mut self, repository: Reference) -> Builder {
        self.cache_repo = Some(repository);
        self
    }

    /// Whether the sandbox runs as (namespaced) root: devices and setuid bits are kept.
    pub fn with_privileged(mut self, privileged: bool) -> Builder {
        self.images = self.images.with_privileged(privileged);
        self
    }

    /// How much of a layer's ownership unpacking keeps (see [`crate::store::Unpacking`]).
    pub fn with_unpacking(mut self, unpacking: crate::store::Unpacking) -> Builder {
        self.images = self.images.with_unpacking(unpacking);
        self
    }

    /// The image store the builder pulls and unpacks through.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub(crate) fn store(&self) -> &Store {
        self.images.store()
    }

    pub(crate) fn fetcher(&self) -> Result<&Fetcher, BuildError> {
        if let Some(f) = self.fetcher.get() {
            return Ok(f);
        }
        let f = Fetcher::new()?;
        Ok(self.fetcher.get_or_init(|| f))
    }

    pub(crate) fn runner(&self) -> Option<&Arc<dyn StepRunner>> {
        self.runner.as_ref()
    }

    pub(crate) fn progress(&self) -> Option<&ProgressSink> {
        self.progress.as_ref()
    }

    pub(crate) fn cache_repo(&self) -> Option<&Reference> {
        self.cache_repo.as_ref()
    }

    pub(crate) fn emit(&self, e: BuildEvent) {
        if let Some(p) = &self.progress {
            p(e);
        }
    }

    /// Validates everything that can be checked before work: every platform's evaluation and
    /// every COPY source in the context (a missing one is an error). Pure apart from reading
    /// `context`.
    pub fn check(req: &BuildRequest, context: Option<&Tree>) -> (Vec<Evaluated>, Vec<Diagnostic>) {
        Self::check_with(req, context, Severity::Error)
    }

    /// `archway build --check`: the Dockerfile judged alone, as BuildKit's frontend does
    /// (`docker build --check`): sources missing from the context are warnings (a lint job may
    /// have no context at all), and nothing is fetched.
    pub fn lint(req: &BuildRequest, context: Option<&Tree>) -> (Vec<Evaluated>, Vec<Diagnostic>) {
        Self::check_with(req, context, Severity::Warning)
    }

    fn check_with(
        req: &BuildRequest,
        context: Option<&Tree>,
        missing: Severity,
    ) -> (Vec<Evaluated>, Vec<Diagnostic>) {
        let mut out = Vec::new();
        let mut diags = Vec::new();
        let host = Platform::host();
        for p in &req.platforms {
            let (e, d) = evaluate(
                &req.dockerfile,
                &EvalOptions {
                    platform: p,
                    build_platform: &host,
                    build_args: &req.build_args,
                    target: req.target.as_deref(),
                },
            );
            for mut x in d {
                if req.platforms.len() > 1 && !x.message.contains(" (for ") {
                    x.message = format!("{} (for {p})", x.message);
                }
                if !diags.contains(&x) {
                    diags.push(x);
                }
            }
            let Some(e) = e else { continue };
            if let Some(tree) = context {
                check_inputs(req, &e, tree, missing, &mut diags);
            }
            for a in &e.unused_build_args {
                let d = Diagnostic::warning(
                    &Span::new(&req.dockerfile.file, 1, 1),
                    format!("build argument `{a}` is not declared by any ARG"),
                );
                if !diags.contains(&d) {
                    diags.push(d);
                }
            }
            out.push(e);
        }
        (out, diags)
    }

    /// Builds every platform and assembles the result in the store. The work runs on blocking
    /// threads, so this may be awaited from any task of a multi-threaded tokio runtime (or a
    /// current-thread one driven by `block_on`).
    pub async fn build(&self, req: &BuildRequest) -> Result<BuildResult, BuildError> {
        let (this, req) = (self.clone(), req.clone());
        let rt = Handle::current();
        tokio::task::spawn_blocking(move || this.build_blocking(&rt, &req))
            .await
            .map_err(|e| BuildError::Io {
                context: "the build thread".into(),
                source: std::io::Error::other(e),
            })?
    }

    fn build_blocking(&self, rt: &Handle, req: &BuildRequest) -> Result<BuildResult, BuildError> {
        // Whatever this build touches stays in the store until it ends (see `crate::gc`).
        let _lease = self.store().lease()?;
        let result = self.build_leased(rt, req)?;
        if let Some(policy) = &self.gc {
            match self.store().gc(policy) {
                Ok(r) if !r.removed.is_empty() => self.emit(BuildEvent::Pruned {
                    items: r.removed.len(),
                    bytes: r.bytes_freed,
                }),
                Ok(_) => {}
                Err(e) => self.emit(BuildEvent::Warning(format!(
                    "keeping the build store under its size cap failed: {}",
                    crate::error::with_causes(&e)
                ))),
            }
        }
        Ok(result)
    }

    fn build_leased(&self, rt: &Handle, req: &BuildRequest) -> Result<BuildResult, BuildError> {
        let context = Tree::context(&req.context)?;
        let (evaluated, diags) = Self::check(req, Some(&context));
        if diags.iter().any(Diagnostic::is_error) {
            return Err(BuildError::Invalid(diags));
        }
        self.check_runnable(&evaluated)?;
        let results: Vec<Result<PlatformResult, BuildError>> = std::thread::scope(|s| {
            let handles: Vec<_> = evaluated
                .into_iter()
                .map(|e| {
                    let ctx = &context;
                    s.spawn(move || PlatformBuild::new(self, rt, req, ctx, &e).build(&e))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(BuildError::Io {
                            context: "build thread".into(),
                            source: std::io::Error::other("panicked"),
                        })
                    })
                })
                .collect()
        });
        let mut images = Vec::new();
        let (mut steps, mut cached) = (0, 0);
        let mut used = BTreeSet::new();
        let mut bases = Vec::new();
        for r in results {
            let r = r?;
            bases.extend(r.bases);
            images.push((r.platform, r.descriptor));
            steps += r.steps;
            cached += r.cached;
            used.extend(r.used);
        }
        self.export_cache(rt, &used);
        if let Err(e) = self.store().save_file_hashes() {
            self.emit(BuildEvent::Warning(format!(
                "saving the context hash cache: {e}"
            )));
        }
        let layout = self.store().layout();
        let descriptor = if images.len() == 1 {
            images[0].1.clone()
        } else {
            let mut index = Index::new_oci();
            index.manifests = images
                .iter()
                .map(|(p, d)| {
                    let mut d = d.clone();
                    d.platform = Some(p.clone());
                    d
                })
                .collect();
            let bytes = index.to_json();
            let digest = self.store().write_blob(&bytes)?;
            Descriptor::new(media_type::OCI_INDEX, digest, bytes.len() as u64)
        };
        let tag = format!("build-{}", &descriptor.digest.hex()[..16]);
        layout.set_ref(&tag, &descriptor)?;
        Ok(BuildResult {
            layout: layout.root().to_owned(),
            tag,
            descriptor,
            images,
            bases,
            steps,
            cached_steps: cached,
            warnings: diags,
        })
    }

    /// Every RUN must be runnable before anything starts: a sandbox, and an emulator for the
    /// platform its stage runs on.
    fn check_runnable(&self, evaluated: &[Evaluated]) -> Result<(), BuildError> {
        for e in evaluated {
            let mut stage_platform: HashMap<usize, Platform> = HashMap::new();
            for stage in &e.stages {
                let platform = match &stage.base {
                    Base::Scratch => e.platform.clone(),
                    Base::Image { platform, .. } => platform.clone(),
                    Base::Stage(i) => stage_platform
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| e.platform.clone()),
                };
                if let Some(ins) = stage
                    .instructions
                    .iter()
                    .find(|i| matches!(i.step, EvalStep::Run { .. }))
                {
                    match &self.runner {
                        None => {
                            return Err(BuildError::Step {
                                span: ins.span.clone(),
                                message: "RUN needs a sandbox, and none is available (see `archway doctor`)".into(),
                            });
                        }
                        Some(r) => r.check(&platform).map_err(|message| BuildError::Step {
                            span: ins.span.clone(),
                            message,
                        })?,
                    }
                }
                stage_platform.insert(stage.index, platform);
            }
        }
        Ok(())
    }
}

/// COPY sources exist in the context (`missing` says how bad it is when one does not);
/// required secrets are given.
fn check_inputs(
    req: &BuildRequest,
    e: &Evaluated,
    tree: &Tree,
    missing: Severity,
    diags: &mut Vec<Diagnostic>,
) {
    let mut push = |d: Diagnostic| {
        if !diags.contains(&d) {
            diags.push(d);
        }
    };
    let judged = |span: &Span, message: String| match missing {
        Severity::Error => Diagnostic::error(span, message),
        Severity::Warning => Diagnostic::warning(span, message),
    };
    for stage in &e.stages {
        for ins in &stage.instructions {
            if let EvalStep::Copy(c) = &ins.step
                && c.from == CopyFrom::Context
            {
                let what = if c.add { "ADD" } else { "COPY" };
                let paths: Vec<String> = c
                    .sources
                    .iter()
                    .filter_map(|s| match s {
                        CopySource::Path(p) => Some(p.clone()),
                        CopySource::Heredoc(_) => None,
                    })
                    .collect();
                let mut matched = false;
                for p in &paths {
                    if crate::context::climbs_above_root(p) {
                        push(Diagnostic::warning(
                            &ins.span,
                            format!(
                                "{what} {p}: sources cannot leave the build context; this is the context's `{}` (as in BuildKit)",
                                crate::context::clamp_to_root(p)
                            ),
                        ));
                    }
                    match tree.select(p) {
                        Ok(found) => matched |= !found.is_empty(),
                        Err(err) => {
                            matched = true; // reported on its own
                            push(judged(&ins.span, format!("{what}: {err}")));
                        }
                    }
                }
                let others = c.remote.len()
                    + c.sources
                        .iter()
                        .filter(|s| matches!(s, CopySource::Heredoc(_)))
                        .count();
                if !paths.is_empty() && !matched && others == 0 {
                    let err = crate::context::ContextError::NoSources(paths.clone());
                    push(judged(&ins.span, format!("{what}: {err}")));
                }
            }
            if let EvalStep::Run { mounts, .. } = &ins.step {
                for m in mounts {
                    if m.kind == MountKind::Secret
                        && m.required
                        && !req.secrets.contains_key(m.id.as_deref().unwrap_or(""))
                    {
                        push(Diagnostic::error(
                            &ins.span,
                            format!(
                                "secret `{}` is required; pass --secret id={},src=FILE",
                                m.id.clone().unwrap_or_default(),
                                m.id.clone().unwrap_or_default()
                            ),
                        ));
                    }
                }
            }
        }
    }
}
