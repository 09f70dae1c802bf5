//! One platform's build: stage by stage, step by step, from scratch, a pulled image or an
//! earlier stage, into layers and finally the image manifest. Runs on a blocking thread of its
//! own; registry calls go through the builder's [`ImageSource`](crate::ImageSource) on the
//! caller's runtime.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use archway_client::Location;
use archway_diag::Span;
use archway_oci::config::{History, ImageConfig, RuntimeConfig, rfc3339};
use archway_oci::layer::{EntryData, LayerEntry};
use archway_oci::run_config::{DEFAULT_PATH, ensure_default_path};
use archway_oci::{Descriptor, Digest, ImageManifest, Platform, media_type};
use tokio::runtime::Handle;

use crate::builder::{
    BaseImage, BindMount, BuildEvent, BuildRequest, Builder, PlatformResult, RunRequest,
};
use crate::context::{self, ContextError, Tree};
use crate::dockerfile::{CommandForm, CopySource};
use crate::error::{BuildError, io};
use crate::eval::{
    Base, CopyFrom, EvalCopy, EvalInstruction, EvalMount, EvalOptions, EvalStep, Evaluated,
    evaluate,
};
use crate::source::RemoteSource;
use crate::store::{CacheEntry, Layer, hash_parts};

/// An image config being built, its layers and its cache key so far.
#[derive(Clone, Debug)]
struct State {
    config: ImageConfig,
    layers: Vec<Layer>,
    /// Cache key of the state so far.
    key: Digest,
    shell: Vec<String>,
}

/// Per-platform build state shared with the step executor.
pub(crate) struct PlatformBuild<'a> {
    b: &'a Builder,
    rt: &'a Handle,
    req: &'a BuildRequest,
    platform: Platform,
    context: &'a Tree,
    states: HashMap<usize, State>,
    steps: usize,
    cached: usize,
    image_trees: Mutex<HashMap<String, (PathBuf, Vec<Layer>)>>,
    /// Cache keys of the layer steps of this build (exported with `--cache-repo`).
    used: BTreeSet<Digest>,
    /// Images pulled for `FROM` and `COPY --from`, by digest (for provenance).
    bases: Mutex<Vec<BaseImage>>,
}

impl<'a> PlatformBuild<'a> {
    pub(crate) fn new(
        b: &'a Builder,
        rt: &'a Handle,
        req: &'a BuildRequest,
        context: &'a Tree,
        e: &Evaluated,
    ) -> PlatformBuild<'a> {
        PlatformBuild {
            b,
            rt,
            req,
            platform: e.platform.clone(),
            context,
            states: HashMap::new(),
            steps: 0,
            cached: 0,
            image_trees: Mutex::default(),
            used: BTreeSet::new(),
            bases: Mutex::default(),
        }
    }

    /// Builds every stage `e` needs and writes the target's image.
    pub(crate) fn build(mut self, e: &Evaluated) -> Result<PlatformResult, BuildError> {
        let (req, pb) = (self.req, &mut self);
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
            platform: e.platform.clone(),
            descriptor: desc,
            steps: pb.steps,
            cached: pb.cached,
            used: std::mem::take(&mut pb.used),
            bases: std::mem::take(pb.bases.get_mut().unwrap_or_else(|e| e.into_inner())),
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
            .store()
            .cache_get(key)
            .or_else(|| self.b.remote_cache_get(self.rt, key))
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
            .images()
            .pull_blocking(self.rt, &Location::Registry(r.clone()), platform)
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
        {
            let mut bases = self.bases.lock().unwrap_or_else(|e| e.into_inner());
            let base = BaseImage {
                reference: r.clone(),
                digest: image.manifest.digest.clone(),
                platform: platform.clone(),
                target: self.platform.clone(),
            };
            if !bases.contains(&base) {
                bases.push(base);
            }
        }
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
                let dir = self
                    .b
                    .store()
                    .snapshot(&state.layers, self.b.images().unpacking())?;
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
                        let dir = self
                            .b
                            .store()
                            .snapshot(&st.layers, self.b.images().unpacking())?;
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
        let chown = match c.chown.as_deref() {
            None => None,
            // Names are looked up in the destination's /etc/passwd and /etc/group.
            Some(spec) if context::chown_uses_names(spec) => {
                let rootfs = self
                    .b
                    .store()
                    .snapshot(&state.layers, self.b.images().unpacking())?;
                Some(context::resolve_chown(spec, &rootfs).map_err(step_err)?)
            }
            Some(spec) => Some(context::parse_chown(spec).map_err(step_err)?),
        };
        let opts = context::CopyOptions {
            chown,
            chmod: c.chmod,
            unpack_archives: c.add && c.from == CopyFrom::Context,
            exclude: c.exclude.clone(),
            other_sources: c.remote.len(),
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
        let total_sources = paths.len() + c.remote.len();
        for r in &c.remote {
            self.remote_entries(&mut entries, r, &dest, c, &opts, total_sources)
                .map_err(|e| match e {
                    BuildError::Context(e) => step_err(e),
                    BuildError::Fetch {
                        source_name,
                        message,
                    } => BuildError::Step {
                        span: ins.span.clone(),
                        message: format!("ADD {source_name}: {message}"),
                    },
                    e => e,
                })?;
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
                        mtime: None,
                    },
                );
            }
        }
        let content =
            context::entries_key_cached(&entries, &self.b.store().file_hashes).map_err(step_err)?;
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
                let store = self.b.store();
                let mtime = self.req.source_date_epoch;
                let layer = store.layer_once(&content, || store.write_layer(&entries, mtime))?;
                store.cache_put(&state.key, &CacheEntry::of(Some(&layer)))?;
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

    /// The entries an ADD of a URL or a git repository puts under `dest`, fetched into the
    /// store (or found there). A URL is one file, never unpacked (BuildKit's rule for remote
    /// archives), mode 0600 unless `--chmod`, its `Last-Modified` as its time; a repository's
    /// files (or its `subdir`'s) go into `dest` as a directory's contents.
    fn remote_entries(
        &self,
        entries: &mut BTreeMap<String, LayerEntry>,
        remote: &RemoteSource,
        dest: &str,
        c: &EvalCopy,
        opts: &context::CopyOptions,
        total_sources: usize,
    ) -> Result<(), BuildError> {
        let store = self.b.store();
        let fetcher = self.b.fetcher()?;
        match remote {
            RemoteSource::Http(url) => {
                let checksum = c
                    .checksum
                    .as_deref()
                    .map(|s| {
                        s.parse::<archway_oci::Digest>()
                            .map_err(|e| BuildError::Fetch {
                                source_name: url.clone(),
                                message: format!("--checksum={s}: {e}"),
                            })
                    })
                    .transpose()?;
                let got = fetcher.download(store, self.rt, url, checksum.as_ref())?;
                let name = crate::source::url_file_name(url);
                let dest_clean = context::clean_rel(dest);
                let path = if dest.ends_with('/') || total_sources > 1 || dest_clean.is_empty() {
                    if dest_clean.is_empty() {
                        name
                    } else {
                        format!("{dest_clean}/{name}")
                    }
                } else {
                    dest_clean
                };
                let (uid, gid) = opts.chown.unwrap_or((0, 0));
                context::add_parents(entries, &path);
                entries.insert(
                    path,
                    LayerEntry {
                        data: EntryData::File(got.path),
                        mode: opts.chmod.unwrap_or(0o600),
                        uid,
                        gid,
                        mtime: got.modified,
                    },
                );
            }
            RemoteSource::Git(g) => {
                let checkout = fetcher.checkout(store, g, c.keep_git_dir)?;
                let tree = Tree::plain(&checkout)?;
                let source = g.subdir.clone().unwrap_or_else(|| ".".to_owned());
                let dir_dest = format!("{}/", dest.trim_end_matches('/'));
                let git_opts = context::CopyOptions {
                    unpack_archives: false,
                    other_sources: 1,
                    ..opts.clone()
                };
                entries.extend(context::copy_entries(
                    &tree,
                    &[source],
                    &dir_dest,
                    &git_opts,
                )?);
            }
        }
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
        let step_lock = self.b.store().key_lock(&state.key);
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
        let rootfs = self
            .b
            .store()
            .snapshot(&state.layers, self.b.images().unpacking())?;
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
        let work = self.b.store().scratch_dir()?;
        let (binds, tmpfs) = self.mounts(mounts, &ins.span, &run_platform)?;
        let runner = self.b.runner().cloned().ok_or_else(|| BuildError::Step {
            span: ins.span.clone(),
            message: "RUN needs a sandbox".into(),
        })?;
        let platform = self.platform.to_string();
        let progress = self.b.progress().cloned();
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
            .map_err(|source| BuildError::Runner {
                span: ins.span.clone(),
                platform: run_platform.to_string(),
                source,
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
            self.b
                .store()
                .cache_put(&state.key, &CacheEntry::of(None))?;
            self.history(state, &ins.text, true);
            return Ok(());
        }
        let layer = self
            .b
            .store()
            .write_layer(&out.changes, self.req.source_date_epoch)?;
        self.b
            .store()
            .cache_put(&state.key, &CacheEntry::of(Some(&layer)))?;
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
                        .store()
                        .mount_dir(&hash_parts(&[&id, &run_platform.to_string()]))?;
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
        let config_digest = self.b.store().write_blob(&config_bytes)?;
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
        let digest = self.b.store().write_blob(&bytes)?;
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
