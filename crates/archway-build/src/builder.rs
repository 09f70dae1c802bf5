//! The builder: executes an evaluated Dockerfile for every platform (in parallel) into a
//! content-addressed store, and assembles the images and the index.
//!
//! * Every step has a cache key: the parent's key plus what the step does and reads (file
//!   contents for COPY, command and environment for RUN). A hit reuses the layer.
//! * COPY layers depend only on their inputs, never on the platform: identical COPYs of two
//!   platforms produce one layer, computed once and shared byte for byte.
//! * Everything is reproducible: fixed timestamps (`SOURCE_DATE_EPOCH`, default 0), sorted
//!   entries, normalised owners, fixed compression.
//! * RUN steps go to a [`StepRunner`] (the sandbox); the builder itself never executes code.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use archway_client::copy::{CopyOptions as ImageCopyOptions, Selection};
use archway_client::{Client, Location};
use archway_diag::{Diagnostic, Span};
use archway_oci::config::{History, ImageConfig, RuntimeConfig, rfc3339};
use archway_oci::layer::{
    EntryData, ExtractOptions, LayerEntry, LayerOptions, extract_layer, layer_from_entries,
    merge_exploded,
};
use archway_oci::layout::ImageLayout;
use archway_oci::run_config::{DEFAULT_PATH, ensure_default_path};
use archway_oci::{
    Descriptor, Digest, Digester, ImageManifest, Index, ManifestKind, ParsedManifest, Platform,
    media_type,
};

use crate::context::{self, ContextError, Tree};
use crate::dockerfile::{CommandForm, CopySource, Dockerfile};
use crate::eval::{
    Base, CopyFrom, EvalCopy, EvalInstruction, EvalMount, EvalOptions, EvalStep, Evaluated,
    evaluate,
};

/// Errors of a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Problems in the Dockerfile or its inputs, found before any work.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    #[error("{span}: {message}")]
    Step { span: Span, message: String },
    #[error("{span}: `{command}` failed with exit code {code} on {platform}\n{output}")]
    RunFailed {
        span: Span,
        command: String,
        code: i32,
        platform: String,
        output: String,
    },
    /// A base or run image that cannot be used.
    #[error("{0}")]
    Image(String),
    #[error(transparent)]
    Client(#[from] archway_client::ClientError),
    #[error(transparent)]
    Layout(#[from] archway_oci::layout::LayoutError),
    #[error(transparent)]
    Layer(#[from] archway_oci::layer::LayerError),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

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

/// Executes RUN steps (implemented by the sandbox; a fake records calls in tests).
pub trait StepRunner: Send + Sync {
    /// Whether steps for `platform` can run here (checked before any work); the error says
    /// how to make them run.
    fn check(&self, _platform: &Platform) -> Result<(), String> {
        Ok(())
    }

    fn run(
        &self,
        req: &RunRequest<'_>,
        on_output: &(dyn Fn(&str) + Sync),
    ) -> Result<RunOutput, BuildError>;
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
}

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
    pub steps: usize,
    pub cached_steps: usize,
    pub warnings: Vec<Diagnostic>,
}

/// One layer of an image being built.
#[derive(Clone, Debug)]
pub struct Layer {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
}

#[derive(Clone, Debug)]
struct State {
    config: ImageConfig,
    layers: Vec<Layer>,
    /// Cache key of the state so far.
    key: Digest,
    shell: Vec<String>,
}

/// The artifact type of a step-cache entry in a registry.
pub const CACHE_ARTIFACT_TYPE: &str = "application/vnd.archway.build.cache.v1";
/// Its config: the [`CacheEntry`] JSON.
pub const CACHE_CONFIG_TYPE: &str = "application/vnd.archway.build.cache.config.v1+json";

/// A cached step result.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct CacheEntry {
    layer: Option<Descriptor>,
    diff_id: Option<Digest>,
}

/// The local store: blobs (an OCI layout), step cache, extracted root filesystems.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    layout: ImageLayout,
    /// Layers being computed by content key, so concurrent platforms compute each once.
    inflight: Mutex<HashMap<Digest, Arc<LayerCell>>>,
    /// Steps being run, by cache key, so platforms sharing a step run it once.
    running: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
    /// Digests of context files, kept between builds.
    file_hashes: context::FileHashCache,
}

/// One layer computation shared by every platform that needs it.
type LayerCell = OnceLock<Result<Layer, String>>;

impl Store {
    pub fn open(root: &Path) -> Result<Store, BuildError> {
        for d in ["keys", "snapshots", "tmp"] {
            std::fs::create_dir_all(root.join(d))
                .map_err(io(root.join(d).display().to_string()))?;
        }
        let store = Store {
            root: root.to_owned(),
            layout: ImageLayout::create(root.join("layout"))?,
            inflight: Mutex::default(),
            running: Mutex::default(),
            file_hashes: context::FileHashCache::load(&root.join("file-hashes.jsonl")),
        };
        store.remove_stale();
        Ok(store)
    }

    /// `$XDG_CACHE_HOME/archway/build`, else `~/.cache/archway/build`.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"))
            .join("archway/build")
    }

    pub fn layout(&self) -> &ImageLayout {
        &self.layout
    }

    /// A scratch directory under the store, removed when dropped (and, if this process is
    /// killed first, by the next [`Store::open`]).
    pub fn tmp_dir(&self) -> Result<WorkDir, BuildError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("step-{}-", std::process::id()))
            .tempdir_in(self.root.join("tmp"))
            .map_err(io("creating a temporary directory"))?;
        Ok(WorkDir(dir.keep()))
    }

    /// Removes scratch directories of processes that are gone (killed mid-build).
    fn remove_stale(&self) {
        let dirs = [
            self.root.join("tmp"),
            self.root.join("snapshots"),
            self.root.join("layers"),
        ];
        for d in dirs {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name
                    .strip_prefix("step-")
                    .and_then(|r| r.split('-').next())
                    .or_else(|| {
                        name.strip_prefix(".tmp-")
                            .and_then(|r| r.rsplit('-').next())
                    });
                if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok())
                    && pid != std::process::id()
                    && !Path::new("/proc").join(pid.to_string()).exists()
                {
                    remove_tree(&e.path());
                }
            }
        }
    }

    /// The lock for running the step with this cache key.
    fn step_lock(&self, key: &Digest) -> Arc<Mutex<()>> {
        let mut m = self.running.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key.clone()).or_default().clone()
    }

    fn cache_get(&self, key: &Digest) -> Option<CacheEntry> {
        let bytes = std::fs::read(self.root.join("keys").join(key.hex())).ok()?;
        let e: CacheEntry = serde_json::from_slice(&bytes).ok()?;
        match &e.layer {
            Some(l) if !self.layout.has_blob(&l.digest) => None,
            _ => Some(e),
        }
    }

    fn cache_put(&self, key: &Digest, e: &CacheEntry) -> Result<(), BuildError> {
        let path = self.root.join("keys").join(key.hex());
        let bytes = serde_json::to_vec(e).unwrap_or_default();
        archway_oci::atomic_file::write(&path, &bytes).map_err(io(path.display().to_string()))
    }

    /// Writes a layer from entries into the blob store.
    fn write_layer(
        &self,
        entries: &BTreeMap<String, LayerEntry>,
        mtime: u64,
    ) -> Result<Layer, BuildError> {
        let tmp = self.tmp_dir()?;
        let path = tmp.path().join("layer.tar.gz");
        let f = std::fs::File::create(&path).map_err(io(path.display().to_string()))?;
        let digests = layer_from_entries(
            entries,
            &LayerOptions {
                mtime,
                keep_owners: true,
            },
            std::io::BufWriter::new(f),
        )?;
        let mut f = std::fs::File::open(&path).map_err(io(path.display().to_string()))?;
        self.layout.write_blob_from(&mut f, Some(&digests.digest))?;
        Ok(Layer {
            descriptor: Descriptor::new(media_type::OCI_LAYER_GZIP, digests.digest, digests.size),
            diff_id: digests.diff_id,
        })
    }

    /// A layer computed once per content key, shared by concurrent builds.
    fn layer_once(
        &self,
        content: &Digest,
        make: impl FnOnce() -> Result<Layer, BuildError>,
    ) -> Result<Layer, BuildError> {
        let cell = {
            let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(content.clone()).or_default().clone()
        };
        cell.get_or_init(|| make().map_err(|e| e.to_string()))
            .clone()
            .map_err(|message| BuildError::Io {
                context: "building a layer".into(),
                source: std::io::Error::other(message),
            })
    }

    /// A layer unpacked on its own, with whiteouts kept as files, and its implicit directories.
    fn exploded(&self, l: &Layer, privileged: bool) -> Result<(PathBuf, Vec<PathBuf>), BuildError> {
        let base = self.root.join("layers");
        let dir = base.join(l.diff_id.hex());
        let meta = base.join(format!("{}.json", l.diff_id.hex()));
        let read_meta =
            || -> Option<Vec<PathBuf>> { serde_json::from_slice(&std::fs::read(&meta).ok()?).ok() };
        if dir.is_dir()
            && let Some(implicit) = read_meta()
        {
            return Ok((dir, implicit));
        }
        let lock = self.step_lock(&l.diff_id);
        let _unpacking = lock.lock().unwrap_or_else(|e| e.into_inner());
        if dir.is_dir()
            && let Some(implicit) = read_meta()
        {
            return Ok((dir, implicit));
        }
        std::fs::create_dir_all(&base).map_err(io(base.display().to_string()))?;
        let tmp = base.join(format!(".tmp-{}-{}", l.diff_id.hex(), std::process::id()));
        remove_tree(&tmp);
        let mut f = self
            .layout
            .open_blob(&l.descriptor.digest, Some(l.descriptor.size))?;
        let report = extract_layer(
            &mut f,
            Path::new(&l.descriptor.digest.to_string()),
            &tmp,
            &ExtractOptions {
                privileged,
                keep_whiteouts: true,
            },
        )?;
        let json = serde_json::to_vec(&report.implicit_dirs)
            .map_err(|e| BuildError::Image(e.to_string()))?;
        archway_oci::atomic_file::write(&meta, &json).map_err(io(meta.display().to_string()))?;
        remove_tree(&dir);
        std::fs::rename(&tmp, &dir).map_err(io(dir.display().to_string()))?;
        Ok((dir, report.implicit_dirs))
    }

    /// The root filesystem of a layer stack, extracted once and kept (read-only by contract).
    fn snapshot(&self, layers: &[Layer], privileged: bool) -> Result<PathBuf, BuildError> {
        let mut d = Digester::new(archway_oci::Algorithm::Sha256);
        for l in layers {
            d.update(l.diff_id.to_string().as_bytes());
        }
        let key = d.finish();
        let dir = self.root.join("snapshots").join(key.hex());
        if dir.is_dir() {
            return Ok(dir);
        }
        // One thread unpacks; the others wait for it and reuse the result.
        let lock = self.step_lock(&key);
        let _unpacking = lock.lock().unwrap_or_else(|e| e.into_inner());
        if dir.is_dir() {
            return Ok(dir);
        }
        // Start from the snapshot of all but the last layer when there is one (hard links:
        // cheap, and extraction replaces files instead of writing through the links).
        let tmp =
            self.root
                .join("snapshots")
                .join(format!(".tmp-{}-{}", key.hex(), std::process::id()));
        // (Unique per process; the lock above makes it unique per key within the process.)
        let _ = std::fs::remove_dir_all(&tmp);
        let (start, rest) = match layers.split_last() {
            Some((last, parent)) if !parent.is_empty() => {
                let parent_dir = self.snapshot(parent, privileged)?;
                let st = std::process::Command::new("cp")
                    .arg("-al")
                    .arg(&parent_dir)
                    .arg(&tmp)
                    .status()
                    .map_err(io("copying a snapshot (cp -al)"))?;
                if !st.success() {
                    return Err(BuildError::Io {
                        context: format!("cp -al {}", parent_dir.display()),
                        source: std::io::Error::other("failed"),
                    });
                }
                (true, std::slice::from_ref(last))
            }
            _ => (false, layers),
        };
        if !start {
            std::fs::create_dir_all(&tmp).map_err(io(tmp.display().to_string()))?;
        }
        // Each layer is unpacked once ("exploded", whiteouts kept as files) and hard-linked
        // into every snapshot that needs it: platforms sharing a layer share the unpacking.
        for l in rest {
            let (exploded, implicit) = self.exploded(l, privileged)?;
            merge_exploded(&exploded, &tmp, &implicit)
                .map_err(io(format!("merging layer {}", l.diff_id)))?;
        }
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => {}
            Err(_) if dir.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            Err(e) => return Err(io(dir.display().to_string())(e)),
        }
        Ok(dir)
    }
}

fn hash_parts(parts: &[&str]) -> Digest {
    let mut d = Digester::new(archway_oci::Algorithm::Sha256);
    for p in parts {
        d.update(p.as_bytes());
        d.update(b"\0");
    }
    d.finish()
}

/// A scratch directory, removed (however its contents' permissions were left) on drop.
#[derive(Debug)]
pub struct WorkDir(PathBuf);

impl WorkDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

/// Remove a tree, first making directories writable if a step left them read-only.
fn remove_tree(path: &Path) {
    if std::fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    fn open_up(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::symlink_metadata(p)
            && m.is_dir()
        {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(path);
    if let Err(e) = std::fs::remove_dir_all(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a scratch directory");
    }
}

struct PlatformResult {
    platform: Platform,
    descriptor: Descriptor,
    steps: usize,
    cached: usize,
    used: std::collections::BTreeSet<Digest>,
}

/// An image copied into the store.
#[derive(Clone, Debug)]
pub struct FetchedImage {
    pub manifest: Descriptor,
    pub layers: Vec<Layer>,
    pub config: ImageConfig,
}

/// The builder.
pub struct Builder {
    pub client: Client,
    /// Share the step cache through this repository (`--cache-repo`): each entry is a small
    /// OCI artifact tagged with its cache key.
    pub cache_repo: Option<archway_oci::Reference>,
    pub store: Arc<Store>,
    pub runner: Option<Arc<dyn StepRunner>>,
    pub progress: Option<ProgressSink>,
    pub runtime: tokio::runtime::Handle,
    /// Whether the sandbox runs as (namespaced) root: devices and setuid bits are kept.
    pub privileged: bool,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("store", &self.store.root)
            .finish_non_exhaustive()
    }
}

/// Per-platform build state shared with the step executor.
struct PlatformBuild<'a> {
    b: &'a Builder,
    req: &'a BuildRequest,
    platform: Platform,
    context: &'a Tree,
    states: HashMap<usize, State>,
    steps: usize,
    cached: usize,
    image_trees: Mutex<HashMap<String, (PathBuf, Vec<Layer>)>>,
    /// Cache keys of the layer steps of this build (exported with `--cache-repo`).
    used: std::collections::BTreeSet<Digest>,
}

impl Builder {
    fn emit(&self, e: BuildEvent) {
        if let Some(p) = &self.progress {
            p(e);
        }
    }

    /// Validates everything that can be checked before work: every platform's evaluation and
    /// every COPY source in the context.
    pub fn check(req: &BuildRequest, context: Option<&Tree>) -> (Vec<Evaluated>, Vec<Diagnostic>) {
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
                for stage in &e.stages {
                    for ins in &stage.instructions {
                        if let EvalStep::Copy(c) = &ins.step
                            && c.from == CopyFrom::Context
                        {
                            for s in &c.sources {
                                if let CopySource::Path(p) = s
                                    && let Err(err) = tree.select(p)
                                {
                                    let d = Diagnostic::error(
                                        &ins.span,
                                        format!("{}: {err}", if c.add { "ADD" } else { "COPY" }),
                                    );
                                    if !diags.contains(&d) {
                                        diags.push(d);
                                    }
                                }
                            }
                        }
                        if let EvalStep::Run { mounts, .. } = &ins.step {
                            for m in mounts {
                                if m.kind == crate::dockerfile::MountKind::Secret
                                    && m.required
                                    && !req.secrets.contains_key(m.id.as_deref().unwrap_or(""))
                                {
                                    diags.push(Diagnostic::error(
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

    /// Builds every platform and assembles the result in the store.
    /// A step's result from the `--cache-repo`, copied into the local store.
    fn remote_cache_get(&self, key: &Digest) -> Option<CacheEntry> {
        let repo = self.cache_repo.as_ref()?;
        let remote = archway_oci::Reference {
            tag: Some(key.hex().to_owned()),
            digest: None,
            ..repo.clone()
        };
        let result: Result<Option<CacheEntry>, BuildError> = (|| {
            if self
                .runtime
                .block_on(self.client.manifest_exists(&remote))?
                .is_none()
            {
                return Ok(None);
            }
            let tag = format!("cache-{}", key.hex());
            let dest = Location::Layout {
                path: self.store.layout.root().to_owned(),
                tag: Some(tag.clone()),
            };
            self.runtime.block_on(archway_client::copy(
                &self.client,
                &Location::Registry(remote.clone()),
                &dest,
                &ImageCopyOptions::default(),
            ))?;
            let desc = self.store.layout.resolve(Some(&tag))?;
            let manifest: ImageManifest =
                serde_json::from_slice(&self.store.layout.read_blob(&desc.digest)?)
                    .map_err(|e| BuildError::Image(format!("{remote}: not a cache entry: {e}")))?;
            let entry: CacheEntry =
                serde_json::from_slice(&self.store.layout.read_blob(&manifest.config.digest)?)
                    .map_err(|e| BuildError::Image(format!("{remote}: not a cache entry: {e}")))?;
            if let Some(l) = &entry.layer
                && !self.store.layout.has_blob(&l.digest)
            {
                return Err(BuildError::Image(format!(
                    "{remote}: the cached layer {} is missing",
                    l.digest
                )));
            }
            self.store.cache_put(key, &entry)?;
            Ok(Some(entry))
        })();
        result.unwrap_or_else(|e| {
            self.emit(BuildEvent::Warning(format!(
                "cache {}: {e} (running the step instead)",
                remote
            )));
            None
        })
    }

    /// Push the cache entries of `keys` to the `--cache-repo` (the ones already there are
    /// only checked). Failures are warnings: the build itself succeeded.
    fn export_cache(&self, keys: &std::collections::BTreeSet<Digest>) {
        let Some(repo) = &self.cache_repo else { return };
        let mut pairs = Vec::new();
        for key in keys {
            let Some(entry) = self.store.cache_get(key) else {
                continue;
            };
            let made: Result<(Location, Location), BuildError> = (|| {
                let config =
                    serde_json::to_vec(&entry).map_err(|e| BuildError::Image(e.to_string()))?;
                let config_digest = self.store.layout.write_blob(&config)?;
                let manifest = ImageManifest {
                    schema_version: 2,
                    media_type: media_type::OCI_MANIFEST.to_owned(),
                    artifact_type: Some(CACHE_ARTIFACT_TYPE.to_owned()),
                    config: Descriptor::new(CACHE_CONFIG_TYPE, config_digest, config.len() as u64),
                    layers: entry.layer.iter().cloned().collect(),
                    subject: None,
                    annotations: None,
                };
                let bytes = manifest.to_json();
                let digest = self.store.layout.write_blob(&bytes)?;
                let tag = format!("cache-{}", key.hex());
                self.store.layout.set_ref(
                    &tag,
                    &Descriptor::new(media_type::OCI_MANIFEST, digest, bytes.len() as u64),
                )?;
                let remote = archway_oci::Reference {
                    tag: Some(key.hex().to_owned()),
                    digest: None,
                    ..repo.clone()
                };
                Ok((
                    Location::Layout {
                        path: self.store.layout.root().to_owned(),
                        tag: Some(tag),
                    },
                    Location::Registry(remote),
                ))
            })();
            match made {
                Ok(pair) => pairs.push(pair),
                Err(e) => self.emit(BuildEvent::Warning(format!("cache export: {e}"))),
            }
        }
        let opts = ImageCopyOptions::default();
        let results = self.runtime.block_on(futures_util::future::join_all(
            pairs
                .iter()
                .map(|(src, dst)| archway_client::copy(&self.client, src, dst, &opts)),
        ));
        let mut exported = 0;
        for ((_, dst), r) in pairs.iter().zip(results) {
            match r {
                Ok(_) => exported += 1,
                Err(e) => self.emit(BuildEvent::Warning(format!("cache export to {dst}: {e}"))),
            }
        }
        self.emit(BuildEvent::CacheExported {
            repository: repo.to_string(),
            entries: exported,
        });
    }

    /// Copies the image for `platform` from `source` (a registry or an OCI layout) into the
    /// store and reads its config and layers.
    pub fn fetch_image(
        &self,
        source: &Location,
        platform: &Platform,
    ) -> Result<FetchedImage, BuildError> {
        let tag = format!(
            "base-{}",
            hash_parts(&[&source.to_string(), &platform.to_string()]).hex()
        );
        let dest = Location::Layout {
            path: self.store.layout.root().to_owned(),
            tag: Some(tag.clone()),
        };
        let opts = ImageCopyOptions {
            selection: Selection::Platform(platform.clone()),
            ..ImageCopyOptions::default()
        };
        self.runtime
            .block_on(archway_client::copy(&self.client, source, &dest, &opts))?;
        let desc = self.store.layout.resolve(Some(&tag))?;
        let bytes = self.store.layout.read_blob(&desc.digest)?;
        let parsed =
            ParsedManifest::parse(&bytes, Some(&desc.media_type)).map_err(|source_err| {
                BuildError::Client(archway_client::ClientError::Manifest {
                    reference: source.to_string(),
                    source: source_err,
                })
            })?;
        if parsed.kind != ManifestKind::Image {
            return Err(BuildError::Image(format!(
                "{source} did not resolve to an image for {platform}"
            )));
        }
        let config_desc = parsed
            .config
            .clone()
            .unwrap_or_else(|| Descriptor::for_bytes(media_type::OCI_CONFIG, b"{}"));
        let config: ImageConfig = serde_json::from_slice(
            &self.store.layout.read_blob(&config_desc.digest)?,
        )
        .map_err(|e| BuildError::Image(format!("the config of {source} is invalid: {e}")))?;
        if let Some(p) = config.platform()
            && !p.matches(platform)
        {
            return Err(BuildError::Image(format!(
                "image {source} is {p} only; it has no image for {platform}"
            )));
        }
        if parsed.layers.len() != config.rootfs.diff_ids.len() {
            return Err(BuildError::Image(format!(
                "{source}: its manifest has {} layers but its config lists {} diff_ids",
                parsed.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let layers = parsed
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(d, diff)| Layer {
                descriptor: d.clone(),
                diff_id: diff.clone(),
            })
            .collect();
        Ok(FetchedImage {
            manifest: desc,
            layers,
            config,
        })
    }

    /// The root filesystem of an image's layers, unpacked once into the snapshot cache and
    /// reused (read-only: run on top of it through an overlay).
    pub fn rootfs(&self, image: &FetchedImage) -> Result<PathBuf, BuildError> {
        self.store.snapshot(&image.layers, self.privileged)
    }

    pub fn build(&self, req: &BuildRequest) -> Result<BuildResult, BuildError> {
        let context = Tree::context(&req.context)?;
        let (evaluated, diags) = Self::check(req, Some(&context));
        if diags.iter().any(Diagnostic::is_error) {
            return Err(BuildError::Invalid(diags));
        }
        // Every RUN must be runnable before anything starts: a sandbox, and an emulator for
        // the platform its stage runs on.
        for e in &evaluated {
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
        let results: Vec<Result<PlatformResult, BuildError>> = std::thread::scope(|s| {
            let handles: Vec<_> = evaluated
                .into_iter()
                .map(|e| {
                    let ctx = &context;
                    s.spawn(move || self.build_platform(req, ctx, e))
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
        let mut used = std::collections::BTreeSet::new();
        for r in results {
            let r = r?;
            images.push((r.platform, r.descriptor));
            steps += r.steps;
            cached += r.cached;
            used.extend(r.used);
        }
        self.export_cache(&used);
        if let Err(e) = self.store.file_hashes.save() {
            self.emit(BuildEvent::Warning(format!(
                "saving the context hash cache: {e}"
            )));
        }
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
            let digest = self.store.layout.write_blob(&bytes)?;
            Descriptor::new(media_type::OCI_INDEX, digest, bytes.len() as u64)
        };
        let tag = format!("build-{}", &descriptor.digest.hex()[..16]);
        self.store.layout.set_ref(&tag, &descriptor)?;
        Ok(BuildResult {
            layout: self.store.layout.root().to_owned(),
            tag,
            descriptor,
            images,
            steps,
            cached_steps: cached,
            warnings: diags,
        })
    }

    fn build_platform(
        &self,
        req: &BuildRequest,
        context: &Tree,
        e: Evaluated,
    ) -> Result<PlatformResult, BuildError> {
        let mut pb = PlatformBuild {
            b: self,
            req,
            platform: e.platform.clone(),
            context,
            states: HashMap::new(),
            steps: 0,
            cached: 0,
            image_trees: Mutex::default(),
            used: Default::default(),
        };
        for stage in &e.stages {
            let mut state = match &stage.base {
                Base::Scratch => pb.scratch(),
                Base::Stage(i) => pb.states.get(i).cloned().ok_or_else(|| BuildError::Step {
                    span: Span::new(&req.dockerfile.file, 1, 1),
                    message: format!("stage {i} was not built"),
                })?,
                Base::Image {
                    reference,
                    platform,
                } => pb.pull(reference, platform)?,
            };
            let stage_name = stage
                .name
                .clone()
                .unwrap_or_else(|| stage.index.to_string());
            if let Base::Image { reference, .. } = &stage.base {
                let from = req
                    .dockerfile
                    .stages
                    .get(stage.index)
                    .map(|s| s.span.clone())
                    .unwrap_or_else(|| Span::new(&req.dockerfile.file, 1, 1));
                pb.run_onbuild_triggers(&mut state, reference, &from, &stage_name)?;
            }
            for ins in &stage.instructions {
                pb.execute(&mut state, ins, &stage_name)?;
            }
            pb.states.insert(stage.index, state);
        }
        let final_state = pb
            .states
            .remove(&e.target)
            .ok_or_else(|| BuildError::Step {
                span: Span::new(&req.dockerfile.file, 1, 1),
                message: "target stage was not built".into(),
            })?;
        let desc = pb.write_image(final_state)?;
        Ok(PlatformResult {
            platform: e.platform,
            descriptor: desc,
            steps: pb.steps,
            cached: pb.cached,
            used: pb.used,
        })
    }
}

impl PlatformBuild<'_> {
    /// A cached result of the step with `key`: local, else from the `--cache-repo`.
    fn cache_lookup(&mut self, key: &Digest) -> Option<CacheEntry> {
        self.used.insert(key.clone());
        if self.req.no_cache {
            return None;
        }
        self.b
            .store
            .cache_get(key)
            .or_else(|| self.b.remote_cache_get(key))
    }

    /// A base image's `ONBUILD` triggers run first, as Docker runs them, and are not inherited.
    fn run_onbuild_triggers(
        &mut self,
        state: &mut State,
        image: &str,
        from: &Span,
        stage: &str,
    ) -> Result<(), BuildError> {
        let triggers: Vec<String> = state
            .config
            .config
            .as_mut()
            .and_then(|c| c.extra.remove("OnBuild"))
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        if triggers.is_empty() {
            return Ok(());
        }
        let text = format!("FROM scratch\n{}\n", triggers.join("\n"));
        let file = format!("ONBUILD of {image}");
        let fail = |message: String| BuildError::Step {
            span: from.clone(),
            message: format!("{image}'s ONBUILD triggers: {message}"),
        };
        let (df, diags) = crate::dockerfile::parse(&file, &text);
        if let Some(d) = diags.iter().find(|d| d.is_error()) {
            return Err(fail(d.to_string()));
        }
        let df = df.ok_or_else(|| fail("unparseable".into()))?;
        let host = Platform::host();
        let (e, diags) = evaluate(
            &df,
            &EvalOptions {
                platform: &self.platform,
                build_platform: &host,
                build_args: &self.req.build_args,
                target: None,
            },
        );
        if let Some(d) = diags.iter().find(|d| d.is_error()) {
            return Err(fail(d.to_string()));
        }
        let e = e.ok_or_else(|| fail("could not be evaluated".into()))?;
        for ins in e.stages.iter().flat_map(|s| &s.instructions) {
            self.execute(state, ins, stage)?;
        }
        Ok(())
    }

    fn epoch(&self) -> String {
        rfc3339(self.req.source_date_epoch)
    }

    fn scratch(&self) -> State {
        let mut config = ImageConfig::for_platform(&self.platform);
        config.config = Some(RuntimeConfig {
            env: Some(vec![format!("PATH={DEFAULT_PATH}")]),
            ..RuntimeConfig::default()
        });
        State {
            config,
            layers: Vec::new(),
            // The epoch is in every key: it sets the layers' timestamps.
            key: hash_parts(&[
                "scratch",
                &self.platform.to_string(),
                &self.req.source_date_epoch.to_string(),
            ]),
            shell: vec!["/bin/sh".into(), "-c".into()],
        }
    }

    /// Pulls a base image for a platform into the store.
    fn pull(&self, reference: &str, platform: &Platform) -> Result<State, BuildError> {
        let r: archway_oci::Reference = reference
            .parse()
            .map_err(archway_client::ClientError::from)?;
        let image = self
            .b
            .fetch_image(&Location::Registry(r.clone()), platform)
            .map_err(|e| match e {
                BuildError::Image(message) => BuildError::Step {
                    span: Span::new(&self.req.dockerfile.file, 1, 1),
                    message,
                },
                e => e,
            })?;
        self.b.emit(BuildEvent::Pulled {
            reference: r.to_string(),
            platform: platform.to_string(),
        });
        Ok(State {
            key: hash_parts(&[
                "image",
                &image.manifest.digest.to_string(),
                &self.req.source_date_epoch.to_string(),
            ]),
            shell: vec!["/bin/sh".into(), "-c".into()],
            layers: image.layers,
            config: image.config,
        })
    }

    fn runtime(state: &mut State) -> &mut RuntimeConfig {
        state
            .config
            .config
            .get_or_insert_with(RuntimeConfig::default)
    }

    fn history(&self, state: &mut State, text: &str, empty: bool) {
        state.config.history.push(History {
            created: Some(self.epoch()),
            created_by: Some(text.to_owned()),
            comment: None,
            empty_layer: empty.then_some(true),
        });
    }

    fn env_map(state: &State) -> Vec<String> {
        state
            .config
            .config
            .as_ref()
            .and_then(|c| c.env.clone())
            .unwrap_or_default()
    }

    fn set_env(state: &mut State, k: &str, v: &str) {
        let env = Self::runtime(state).env.get_or_insert_with(Vec::new);
        let prefix = format!("{k}=");
        match env.iter_mut().find(|e| e.starts_with(&prefix)) {
            Some(e) => *e = format!("{k}={v}"),
            None => env.push(format!("{k}={v}")),
        }
    }

    fn workdir(state: &State) -> String {
        state
            .config
            .config
            .as_ref()
            .and_then(|c| c.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_owned())
    }

    fn execute(
        &mut self,
        state: &mut State,
        ins: &EvalInstruction,
        stage: &str,
    ) -> Result<(), BuildError> {
        self.steps += 1;
        let step_text = format!("{:?}", ins.step);
        match &ins.step {
            EvalStep::Env(pairs) => {
                for (k, v) in pairs {
                    Self::set_env(state, k, v);
                }
                self.meta(state, ins, &step_text, stage);
            }
            EvalStep::Label(pairs) => {
                let labels = Self::runtime(state)
                    .labels
                    .get_or_insert_with(BTreeMap::new);
                for (k, v) in pairs {
                    labels.insert(k.clone(), v.clone());
                }
                self.meta(state, ins, &step_text, stage);
            }
            EvalStep::Workdir(w) => {
                let current = Self::workdir(state);
                let resolved = context::resolve_dest(w, &current);
                let resolved = if resolved.len() > 1 {
                    resolved.trim_end_matches('/').to_owned()
                } else {
                    resolved
                };
                Self::runtime(state).working_dir = Some(resolved);
                self.meta(state, ins, &step_text, stage);
            }
            EvalStep::User(u) => {
                Self::runtime(state).user = Some(u.clone());
                self.meta(state, ins, &step_text, stage);
            }
            EvalStep::Expose(ports) => {
                let ex = Self::runtime(state)
                    .exposed_ports
                    .get_or_insert_with(BTreeMap::new);
                for p in ports {
                    ex.insert(p.clone(), serde_json::json!({}));
                }
                self.meta(state, ins, &step_text, stage);
            }
            EvalStep::Volume(paths) => {
                let v = Self::runtime(state)
                    .volumes
                    .get_or_insert_with(BTreeMap::new);
                for p in paths {
                    v.insert(p.clone(), serde_json::json!({}));
                }
                self.meta(state, ins, &step_text, stage);
            }
            EvalStep::Cmd(c) => {
                let argv = self.argv(state, c);
                Self::runtime(state).cmd = Some(argv);
                self.meta(state, ins, &step_text, stage);
            }
            EvalStep::Entrypoint(c) => {
                let argv = self.argv(state, c);
                let rc = Self::runtime(state);
                rc.entrypoint = Some(argv);
                // As docker: a new ENTRYPOINT clears an inherited CMD.
                rc.cmd = None;
                self.meta(state, ins, &step_text, stage);
            }
            EvalStep::Shell(s) => {
                state.shell = s.clone();
                self.meta(state, ins, &step_text, stage);
            }
            EvalStep::Healthcheck(h) => {
                let value = match h {
                    None => serde_json::json!({ "Test": ["NONE"] }),
                    Some(h) => {
                        let test = match &h.test {
                            Some(CommandForm::Exec(v)) => {
                                let mut t = vec!["CMD".to_owned()];
                                t.extend(v.iter().cloned());
                                t
                            }
                            Some(CommandForm::Shell(s)) => vec!["CMD-SHELL".to_owned(), s.clone()],
                            None => vec!["NONE".to_owned()],
                        };
                        let mut m = serde_json::Map::new();
                        m.insert("Test".into(), serde_json::json!(test));
                        for (k, v) in [
                            ("Interval", &h.interval),
                            ("Timeout", &h.timeout),
                            ("StartPeriod", &h.start_period),
                        ] {
                            if let Some(v) = v
                                && let Some(ns) = duration_ns(v)
                            {
                                m.insert(k.into(), serde_json::json!(ns));
                            }
                        }
                        if let Some(r) = h.retries.as_deref().and_then(|r| r.parse::<u64>().ok()) {
                            m.insert("Retries".into(), serde_json::json!(r));
                        }
                        serde_json::Value::Object(m)
                    }
                };
                Self::runtime(state)
                    .extra
                    .insert("Healthcheck".into(), value);
                self.meta(state, ins, &step_text, stage);
            }
            EvalStep::Stopsignal(s) => {
                Self::runtime(state).stop_signal = Some(s.clone());
                self.meta(state, ins, &step_text, stage);
            }
            EvalStep::Onbuild(i) => {
                let rc = Self::runtime(state);
                let list = rc
                    .extra
                    .entry("OnBuild".to_owned())
                    .or_insert_with(|| serde_json::json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.push(serde_json::json!(i));
                }
                self.meta(state, ins, &step_text, stage);
            }
            EvalStep::Arg(_) => {
                state.key = hash_parts(&[&state.key.to_string(), &step_text]);
            }
            EvalStep::Copy(c) => self.copy(state, ins, c, stage)?,
            EvalStep::Run { .. } => self.run(state, ins, stage)?,
        }
        Ok(())
    }

    fn meta(&self, state: &mut State, ins: &EvalInstruction, step_text: &str, stage: &str) {
        state.key = hash_parts(&[&state.key.to_string(), step_text]);
        self.history(state, &ins.text, true);
        self.b.emit(BuildEvent::Step {
            platform: self.platform.to_string(),
            stage: stage.to_owned(),
            text: ins.text.clone(),
            cached: false,
        });
    }

    fn argv(&self, state: &State, c: &CommandForm) -> Vec<String> {
        match c {
            CommandForm::Exec(v) => v.clone(),
            CommandForm::Shell(s) => {
                let mut v = state.shell.clone();
                v.push(s.clone());
                v
            }
        }
    }

    fn add_layer(&self, state: &mut State, layer: Layer, text: &str) {
        state.config.rootfs.diff_ids.push(layer.diff_id.clone());
        state.layers.push(layer);
        self.history(state, text, false);
    }

    /// The tree a COPY reads from: the context, another stage's root filesystem, or an image's.
    fn source_tree(&self, from: &CopyFrom) -> Result<Option<(PathBuf, Tree)>, BuildError> {
        match from {
            CopyFrom::Context => Ok(None),
            CopyFrom::Stage(i) => {
                let state = self.states.get(i).ok_or_else(|| BuildError::Io {
                    context: format!("stage {i}"),
                    source: std::io::Error::other("not built"),
                })?;
                let dir = self.b.store.snapshot(&state.layers, self.b.privileged)?;
                Ok(Some((dir.clone(), Tree::rootfs(&dir)?)))
            }
            CopyFrom::Image(r) => {
                let cached = self
                    .image_trees
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(r)
                    .cloned();
                let (dir, _) = match cached {
                    Some(c) => c,
                    None => {
                        let st = self.pull(r, &self.platform)?;
                        let dir = self.b.store.snapshot(&st.layers, self.b.privileged)?;
                        self.image_trees
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(r.clone(), (dir.clone(), st.layers.clone()));
                        (dir, st.layers)
                    }
                };
                Ok(Some((dir.clone(), Tree::rootfs(&dir)?)))
            }
        }
    }

    fn copy(
        &mut self,
        state: &mut State,
        ins: &EvalInstruction,
        c: &EvalCopy,
        stage: &str,
    ) -> Result<(), BuildError> {
        let step_err = |e: ContextError| BuildError::Step {
            span: ins.span.clone(),
            message: format!("{}: {e}", if c.add { "ADD" } else { "COPY" }),
        };
        let dest = context::resolve_dest(&c.dest, &Self::workdir(state));
        let opts = context::CopyOptions {
            chown: c
                .chown
                .as_deref()
                .map(context::parse_chown)
                .transpose()
                .map_err(step_err)?,
            chmod: c.chmod,
            unpack_archives: c.add && c.from == CopyFrom::Context,
            exclude: c.exclude.clone(),
        };
        let mut entries = BTreeMap::new();
        let paths: Vec<String> = c
            .sources
            .iter()
            .filter_map(|s| match s {
                CopySource::Path(p) => Some(p.clone()),
                CopySource::Heredoc(_) => None,
            })
            .collect();
        if !paths.is_empty() {
            let from = self.source_tree(&c.from)?;
            let tree = match &from {
                Some((_, t)) => t,
                None => self.context,
            };
            entries = context::copy_entries(tree, &paths, &dest, &opts).map_err(step_err)?;
        }
        for s in &c.sources {
            if let CopySource::Heredoc(h) = s {
                let path = dest.trim_start_matches('/').to_owned();
                if path.is_empty() || dest.ends_with('/') {
                    return Err(BuildError::Step {
                        span: ins.span.clone(),
                        message: "COPY <<EOF needs a file destination, e.g. COPY <<EOF /etc/motd"
                            .into(),
                    });
                }
                let (uid, gid) = opts.chown.unwrap_or((0, 0));
                entries.insert(
                    path,
                    LayerEntry {
                        data: EntryData::Bytes(h.content.clone().into_bytes()),
                        mode: opts.chmod.unwrap_or(0o644),
                        uid,
                        gid,
                    },
                );
            }
        }
        let content =
            context::entries_key_cached(&entries, &self.b.store.file_hashes).map_err(step_err)?;
        state.key = hash_parts(&[&state.key.to_string(), "COPY", &content.to_string()]);
        let hit = self.cache_lookup(&state.key);
        let cached = hit.is_some();
        let layer = match hit {
            Some(CacheEntry {
                layer: Some(l),
                diff_id: Some(d),
            }) => Layer {
                descriptor: l,
                diff_id: d,
            },
            _ => {
                let store = &self.b.store;
                let mtime = self.req.source_date_epoch;
                let layer = store.layer_once(&content, || store.write_layer(&entries, mtime))?;
                store.cache_put(
                    &state.key,
                    &CacheEntry {
                        layer: Some(layer.descriptor.clone()),
                        diff_id: Some(layer.diff_id.clone()),
                    },
                )?;
                layer
            }
        };
        if cached {
            self.cached += 1;
        }
        self.add_layer(state, layer, &ins.text);
        self.b.emit(BuildEvent::Step {
            platform: self.platform.to_string(),
            stage: stage.to_owned(),
            text: ins.text.clone(),
            cached,
        });
        Ok(())
    }

    fn run(
        &mut self,
        state: &mut State,
        ins: &EvalInstruction,
        stage: &str,
    ) -> Result<(), BuildError> {
        let EvalStep::Run {
            command,
            heredocs,
            mounts,
            network,
            args,
        } = &ins.step
        else {
            return Ok(());
        };
        let mut env: Vec<String> = Self::env_map(state);
        ensure_default_path(&mut env);
        let env_keys: Vec<String> = env
            .iter()
            .filter_map(|e| e.split_once('=').map(|(k, _)| k.to_owned()))
            .collect();
        for (k, v) in args {
            if !env_keys.contains(k) {
                env.push(format!("{k}={v}"));
            }
        }
        env.sort();
        // Heredoc commands run through the shell with the heredoc as a script.
        let argv = match (command, heredocs.first()) {
            (CommandForm::Shell(s), Some(h)) if s.trim_start().starts_with("<<") => {
                let mut v = state.shell.clone();
                v.push(h.content.clone());
                v
            }
            (CommandForm::Shell(s), Some(h)) => {
                let mut v = state.shell.clone();
                v.push(format!("{s}\n{}", h.content));
                v
            }
            _ => self.argv(state, command),
        };
        let cwd = Self::workdir(state);
        let user = state
            .config
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .unwrap_or_default();
        let mounts_text = format!("{mounts:?}");
        // The step runs on its stage's platform (a `FROM --platform=$BUILDPLATFORM` stage runs
        // natively), so identical native steps of different targets share one key and one run.
        let run_platform = state
            .config
            .platform()
            .unwrap_or_else(|| self.platform.clone());
        state.key = hash_parts(&[
            &state.key.to_string(),
            "RUN",
            &argv.join("\0"),
            &env.join("\0"),
            &cwd,
            &user,
            &mounts_text,
            network,
            &run_platform.to_string(),
        ]);
        // Another platform's thread may be running this very step: wait for it, then reuse.
        let step_lock = self.b.store.step_lock(&state.key);
        let _running = step_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(CacheEntry { layer, diff_id }) = self.cache_lookup(&state.key) {
            self.cached += 1;
            match (layer, diff_id) {
                (Some(l), Some(d)) => self.add_layer(
                    state,
                    Layer {
                        descriptor: l,
                        diff_id: d,
                    },
                    &ins.text,
                ),
                _ => self.history(state, &ins.text, true),
            }
            self.b.emit(BuildEvent::Step {
                platform: self.platform.to_string(),
                stage: stage.to_owned(),
                text: ins.text.clone(),
                cached: true,
            });
            return Ok(());
        }
        self.b.emit(BuildEvent::Step {
            platform: self.platform.to_string(),
            stage: stage.to_owned(),
            text: ins.text.clone(),
            cached: false,
        });
        let rootfs = self.b.store.snapshot(&state.layers, self.b.privileged)?;
        if let Some(program) = argv.first().filter(|p| p.starts_with('/'))
            && archway_oci::layer::resolve_in_root(
                &rootfs,
                Path::new(program.trim_start_matches('/')),
                true,
            )
            .map(|p| !p.exists())
            .unwrap_or(true)
        {
            let hint = if matches!(command, CommandForm::Shell(_)) {
                format!(
                    "a shell-form RUN runs `{}`; set another with SHELL [\"...\"] or use the exec form RUN [\"program\", \"arg\"]",
                    state.shell.join(" ")
                )
            } else {
                "the exec form runs the program as written; give its full path in the image"
                    .to_owned()
            };
            return Err(BuildError::Step {
                span: ins.span.clone(),
                message: format!(
                    "`{program}` does not exist in the image (on {run_platform}): {hint}"
                ),
            });
        }
        let work = self.b.store.tmp_dir()?;
        let (binds, tmpfs) = self.mounts(mounts, &ins.span, &run_platform)?;
        let runner = self.b.runner.clone().ok_or_else(|| BuildError::Step {
            span: ins.span.clone(),
            message: "RUN needs a sandbox".into(),
        })?;
        let platform = self.platform.to_string();
        let progress = self.b.progress.clone();
        let on_output = move |line: &str| {
            if let Some(p) = &progress {
                p(BuildEvent::Output {
                    platform: platform.clone(),
                    line: line.to_owned(),
                });
            }
        };
        let out = runner
            .run(
                &RunRequest {
                    platform: &run_platform,
                    rootfs: &rootfs,
                    work: work.path(),
                    argv: argv.clone(),
                    env,
                    cwd,
                    user,
                    mounts: binds,
                    tmpfs,
                    // BuildKit's default network is the host's; only `--network=none` isolates.
                    network_host: network != "none",
                },
                &on_output,
            )
            .map_err(|e| BuildError::Step {
                span: ins.span.clone(),
                message: format!("{e} (running on {run_platform})"),
            })?;
        if out.exit_code != 0 {
            return Err(BuildError::RunFailed {
                span: ins.span.clone(),
                command: ins.text.clone(),
                code: out.exit_code,
                platform: run_platform.to_string(),
                output: out.output,
            });
        }
        if out.changes.is_empty() {
            self.b.store.cache_put(
                &state.key,
                &CacheEntry {
                    layer: None,
                    diff_id: None,
                },
            )?;
            self.history(state, &ins.text, true);
            return Ok(());
        }
        let layer = self
            .b
            .store
            .write_layer(&out.changes, self.req.source_date_epoch)?;
        self.b.store.cache_put(
            &state.key,
            &CacheEntry {
                layer: Some(layer.descriptor.clone()),
                diff_id: Some(layer.diff_id.clone()),
            },
        )?;
        self.add_layer(state, layer, &ins.text);
        Ok(())
    }

    /// Host directories for RUN --mount: caches (persistent per id), secrets, binds, tmpfs.
    fn mounts(
        &self,
        mounts: &[EvalMount],
        span: &Span,
        run_platform: &Platform,
    ) -> Result<(Vec<BindMount>, Vec<String>), BuildError> {
        use crate::dockerfile::MountKind;
        let mut binds = Vec::new();
        let mut tmpfs = Vec::new();
        for m in mounts {
            match m.kind {
                MountKind::Cache => {
                    let id = m.id.clone().unwrap_or_else(|| m.target.clone());
                    let dir = self
                        .b
                        .store
                        .root
                        .join("mounts")
                        .join(hash_parts(&[&id, &run_platform.to_string()]).hex());
                    std::fs::create_dir_all(&dir).map_err(io(dir.display().to_string()))?;
                    binds.push(BindMount {
                        host: dir,
                        target: m.target.clone(),
                        readonly: m.readonly,
                    });
                }
                MountKind::Secret => {
                    let id = m
                        .id
                        .clone()
                        .unwrap_or_else(|| m.target.rsplit('/').next().unwrap_or("").to_owned());
                    match self.req.secrets.get(&id) {
                        Some(src) => binds.push(BindMount {
                            host: src.clone(),
                            target: m.target.clone(),
                            readonly: true,
                        }),
                        None if m.required => {
                            return Err(BuildError::Step {
                                span: span.clone(),
                                message: format!(
                                    "secret `{id}` is required; pass --secret id={id},src=FILE"
                                ),
                            });
                        }
                        None => {}
                    }
                }
                MountKind::Bind => {
                    let source = m.source.clone().unwrap_or_default();
                    let host = match &m.from {
                        None | Some(CopyFrom::Context) => {
                            let rel = context::clean_rel(&source);
                            if rel.starts_with("..") {
                                return Err(BuildError::Step {
                                    span: span.clone(),
                                    message: format!(
                                        "bind mount source `{source}` is outside the context"
                                    ),
                                });
                            }
                            self.req.context.join(rel)
                        }
                        Some(from) => {
                            let (dir, _) =
                                self.source_tree(from)?.ok_or_else(|| BuildError::Step {
                                    span: span.clone(),
                                    message: "bind mount source".into(),
                                })?;
                            archway_oci::layer::resolve_in_root(&dir, Path::new(&source), true)
                                .map_err(io(source.clone()))?
                        }
                    };
                    binds.push(BindMount {
                        host,
                        target: m.target.clone(),
                        readonly: m.readonly,
                    });
                }
                MountKind::Tmpfs => tmpfs.push(m.target.clone()),
            }
        }
        Ok((binds, tmpfs))
    }

    fn write_image(&self, mut state: State) -> Result<Descriptor, BuildError> {
        if !self.req.labels.is_empty() {
            let labels = Self::runtime(&mut state)
                .labels
                .get_or_insert_with(BTreeMap::new);
            for (k, v) in &self.req.labels {
                labels.insert(k.clone(), v.clone());
            }
        }
        state.config.created = Some(self.epoch());
        state.config.architecture = self.platform.architecture.clone();
        state.config.os = self.platform.os.clone();
        state.config.variant = self.platform.variant.clone();
        let config_bytes = state.config.to_json();
        let config_digest = self.b.store.layout.write_blob(&config_bytes)?;
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: media_type::OCI_MANIFEST.to_owned(),
            artifact_type: None,
            config: Descriptor::new(
                media_type::OCI_CONFIG,
                config_digest,
                config_bytes.len() as u64,
            ),
            layers: state.layers.iter().map(|l| l.descriptor.clone()).collect(),
            subject: None,
            annotations: None,
        };
        let bytes = manifest.to_json();
        let digest = self.b.store.layout.write_blob(&bytes)?;
        Ok(Descriptor::new(
            media_type::OCI_MANIFEST,
            digest,
            bytes.len() as u64,
        ))
    }
}

/// `30s`, `1m30s`, `5m` → nanoseconds (HEALTHCHECK durations).
fn duration_ns(s: &str) -> Option<u64> {
    u64::try_from(archway_oci::duration::parse_duration(s)?.as_nanos()).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn healthcheck_durations() {
        assert_eq!(super::duration_ns("30s"), Some(30_000_000_000));
        assert_eq!(super::duration_ns("1m30s"), Some(90_000_000_000));
        assert_eq!(super::duration_ns("500ms"), Some(500_000_000));
        assert_eq!(super::duration_ns("x"), None);
    }
}
