//! The build context: its files (minus `.dockerignore`), and turning COPY/ADD sources into the
//! entries of a reproducible layer.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use archway_oci::Digest;
use archway_oci::layer::{EntryData, LayerEntry};
use globset::{Glob, GlobBuilder, GlobMatcher};

/// Errors reading the context or resolving sources.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid .dockerignore pattern `{pattern}`: {message}")]
    Ignore { pattern: String, message: String },
    #[error("`{0}` is not in the build context (check the path, and .dockerignore)")]
    NotFound(String),
    #[error("no source files were specified: {} match nothing", .0.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "))]
    NoSources(Vec<String>),
    #[error("invalid pattern `{pattern}`: {message}")]
    Pattern { pattern: String, message: String },
    #[error("--chown={0}: expected user[:group], names or numeric ids")]
    Chown(String),
    #[error("--chown={spec}: {what} `{name}` is not in the destination's {file}")]
    ChownUnknown {
        spec: String,
        what: &'static str,
        name: String,
        file: &'static str,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ContextError + '_ {
    move |source| ContextError::Io {
        path: path.to_owned(),
        source,
    }
}

struct IgnoreRule {
    matcher: GlobMatcher,
    negate: bool,
}

/// `.dockerignore`: patterns in order, the last matching one decides; `!` re-includes.
#[derive(Default)]
pub struct Ignore {
    rules: Vec<IgnoreRule>,
}

impl std::fmt::Debug for Ignore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ignore({} rules)", self.rules.len())
    }
}

impl Ignore {
    pub fn parse(text: &str) -> Result<Ignore, ContextError> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negate, pat) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let pat = pat
                .trim_start_matches("./")
                .trim_start_matches('/')
                .trim_end_matches('/');
            if pat.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(pat)
                .literal_separator(true)
                .build()
                .map_err(|e| ContextError::Ignore {
                    pattern: line.to_owned(),
                    message: e.to_string(),
                })?;
            rules.push(IgnoreRule {
                matcher: glob.compile_matcher(),
                negate,
            });
        }
        Ok(Ignore { rules })
    }

    /// Whether `rel` (or one of its parent directories) is ignored.
    pub fn is_ignored(&self, rel: &str) -> bool {
        let mut ignored = false;
        for r in &self.rules {
            // A pattern matching a directory ignores everything below it.
            let hit = r.matcher.is_match(rel)
                || rel
                    .char_indices()
                    .filter(|(_, c)| *c == '/')
                    .any(|(i, _)| r.matcher.is_match(&rel[..i]));
            if hit {
                ignored = !r.negate;
            }
        }
        ignored
    }
}

/// One file of the context.
#[derive(Clone, Debug)]
pub struct ContextEntry {
    pub rel: String,
    pub abs: PathBuf,
    pub kind: Kind,
    pub mode: u32,
    pub size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// A directory tree files are copied from: the build context, or a stage's root filesystem.
#[derive(Debug)]
pub struct Tree {
    pub root: PathBuf,
    /// Sorted by path.
    pub entries: BTreeMap<String, ContextEntry>,
    /// Whether owners come from the files (a stage) or are root (the context).
    pub keep_owners: bool,
}

impl Tree {
    /// Scans a build context, honouring `.dockerignore`.
    pub fn context(root: &Path) -> Result<Tree, ContextError> {
        let ignore = match fs::read_to_string(root.join(".dockerignore")) {
            Ok(t) => Ignore::parse(&t)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ignore::default(),
            Err(e) => return Err(io(&root.join(".dockerignore"))(e)),
        };
        Self::scan(root, &ignore, false)
    }

    /// Scans a stage's extracted root filesystem.
    pub fn rootfs(root: &Path) -> Result<Tree, ContextError> {
        Self::scan(root, &Ignore::default(), true)
    }

    /// Scans a directory taken as it is, owned by root in the image (a git checkout).
    pub fn plain(root: &Path) -> Result<Tree, ContextError> {
        Self::scan(root, &Ignore::default(), false)
    }

    fn scan(root: &Path, ignore: &Ignore, keep_owners: bool) -> Result<Tree, ContextError> {
        let mut entries = BTreeMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel_dir) = stack.pop() {
            let dir = root.join(&rel_dir);
            let rd = fs::read_dir(&dir).map_err(io(&dir))?;
            for e in rd {
                let e = e.map_err(io(&dir))?;
                let rel_path = rel_dir.join(e.file_name());
                let rel = rel_path.to_string_lossy().into_owned();
                if ignore.is_ignored(&rel) {
                    continue;
                }
                let meta = fs::symlink_metadata(e.path()).map_err(io(&e.path()))?;
                let kind = if meta.file_type().is_symlink() {
                    Kind::Symlink
                } else if meta.is_dir() {
                    stack.push(rel_path.clone());
                    Kind::Dir
                } else if meta.is_file() {
                    Kind::File
                } else {
                    continue; // sockets, devices: never part of a context
                };
                entries.insert(
                    rel.clone(),
                    ContextEntry {
                        rel,
                        abs: e.path(),
                        kind,
                        mode: meta.mode() & 0o7777,
                        size: meta.len(),
                    },
                );
            }
        }
        Ok(Tree {
            root: root.to_owned(),
            entries,
            keep_owners,
        })
    }

    /// The entries a COPY source names: an exact path, or a glob.
    ///
    /// BuildKit's rules: a source is relative to the root of the tree whatever the `WORKDIR`,
    /// and `..` cannot climb above it (`../x` is the tree's own `x`, see [`clamp_to_root`]). An
    /// exact path must exist. A glob may match nothing (an empty result) as long as the
    /// directory it searches exists; BuildKit stats that directory and fails without it.
    pub fn select(&self, source: &str) -> Result<Vec<&ContextEntry>, ContextError> {
        let clean = clamp_to_root(source);
        if clean.is_empty() {
            return Ok(self
                .entries
                .values()
                .filter(|e| !e.rel.contains('/'))
                .collect());
        }
        if clean.contains(['*', '?', '[']) {
            let g = Glob::new(&clean)
                .and_then(|_| GlobBuilder::new(&clean).literal_separator(true).build())
                .map_err(|e| ContextError::Pattern {
                    pattern: source.to_owned(),
                    message: e.to_string(),
                })?
                .compile_matcher();
            // The directory the glob searches: its components before the first wildcard.
            let literal: Vec<&str> = clean
                .split('/')
                .take_while(|c| !c.contains(['*', '?', '[']))
                .collect();
            let dir = literal.join("/");
            if !dir.is_empty() && !self.entries.get(&dir).is_some_and(|e| e.kind == Kind::Dir) {
                return Err(ContextError::NotFound(source.to_owned()));
            }
            return Ok(self
                .entries
                .values()
                .filter(|e| g.is_match(&e.rel))
                .collect());
        }
        self.entries
            .get(&clean)
            .map(|e| vec![e])
            .ok_or_else(|| ContextError::NotFound(source.to_owned()))
    }

    /// Everything below a directory entry.
    fn below<'a>(&'a self, dir: &str) -> impl Iterator<Item = &'a ContextEntry> + 'a {
        let prefix = format!("{dir}/");
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
    }
}

/// `a/./b/../c/` → `a/c`; leading `/` removed; `..` kept at the front (caller rejects).
pub fn clean_rel(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            x => out.push(x),
        }
    }
    out.join("/")
}

/// A source path as BuildKit reads it: relative to the tree's root (a leading `/` too), with
/// `..` stopping at the root (BuildKit joins the path onto `/` and cleans it), so `../x` and
/// `/x` both name the tree's `x` and nothing outside the tree is ever reached.
pub fn clamp_to_root(p: &str) -> String {
    let clean = clean_rel(p);
    let parts: Vec<&str> = clean.split('/').skip_while(|c| *c == "..").collect();
    parts.join("/")
}

/// Whether a source path climbs above the tree's root before [`clamp_to_root`] stops it.
pub fn climbs_above_root(p: &str) -> bool {
    clean_rel(p) == ".." || clean_rel(p).starts_with("../")
}

/// Absolute destination inside the image, from `dest` and the current working directory.
pub fn resolve_dest(dest: &str, workdir: &str) -> String {
    let joined = if dest.starts_with('/') {
        dest.to_owned()
    } else {
        format!("{}/{dest}", workdir.trim_end_matches('/'))
    };
    let trailing = dest.ends_with('/') || dest == "." || dest.ends_with("/.");
    let clean = clean_rel(&joined);
    let clean: String = clean.trim_start_matches("../").replace("../", "");
    if trailing {
        format!("/{clean}/")
    } else {
        format!("/{clean}")
    }
}

/// Parses `--chown=uid[:gid]` (numeric).
pub fn parse_chown(s: &str) -> Result<(u64, u64), ContextError> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    match (u.parse(), g.parse()) {
        (Ok(u), Ok(g)) => Ok((u, g)),
        _ => Err(ContextError::Chown(s.to_owned())),
    }
}

/// Whether `--chown=<s>` names a user or group (and so needs the destination's files).
pub fn chown_uses_names(s: &str) -> bool {
    let (u, g) = s.split_once(':').unwrap_or((s, ""));
    [u, g]
        .iter()
        .any(|p| !p.is_empty() && p.parse::<u64>().is_err())
}

/// Resolves `--chown=user[:group]` as BuildKit does (`readUser` in its file op): a numeric
/// uid alone is also the gid; a user name takes its uid and primary gid from `/etc/passwd` of
/// the destination `rootfs`; a group, by number or by name from its `/etc/group`, replaces
/// the gid. A name the files do not hold is an error (the Dockerfile reference: the build
/// fails on the COPY), never a silent root.
pub fn resolve_chown(s: &str, rootfs: &Path) -> Result<(u64, u64), ContextError> {
    let bad = || ContextError::Chown(s.to_owned());
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(bad());
    }
    let unknown = |what, name: &str, file| ContextError::ChownUnknown {
        spec: s.to_owned(),
        what,
        name: name.to_owned(),
        file,
    };
    let (uid, mut gid) = match user.parse::<u64>() {
        Ok(uid) => (uid, uid),
        Err(_) => {
            let passwd = read_in_root(rootfs, "etc/passwd")?;
            line_fields(&passwd, user)
                .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
                .ok_or_else(|| unknown("user", user, "/etc/passwd"))?
        }
    };
    if let Some(group) = group {
        gid = match group.parse::<u64>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read_in_root(rootfs, "etc/group")?;
                line_fields(&groups, group)
                    .and_then(|f| f.get(2)?.parse().ok())
                    .ok_or_else(|| unknown("group", group, "/etc/group"))?
            }
        };
    }
    Ok((uid, gid))
}

/// The fields of the first `name:…` line of a passwd or group file.
fn line_fields<'t>(text: &'t str, name: &str) -> Option<Vec<&'t str>> {
    text.lines()
        .map(|l| l.trim_end().split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
}

/// Reads `rel` inside `root`, following symlinks within the root (an absolute target is taken
/// from the root, `..` stops there), as a container would see it. Missing: empty.
fn read_in_root(root: &Path, rel: &str) -> Result<String, ContextError> {
    let mut parts: Vec<String> = Vec::new();
    let mut pending: Vec<String> = rel.split('/').rev().map(str::to_owned).collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                parts.pop();
                continue;
            }
            _ => {}
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&parts);
        candidate.push(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(ContextError::Io {
                        path: candidate,
                        source: std::io::Error::other("too many symbolic links"),
                    });
                }
                let target = std::fs::read_link(&candidate).map_err(io(&candidate))?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    parts.clear();
                }
                pending.extend(target.split('/').rev().map(str::to_owned));
            }
            Ok(_) => parts.push(part),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(e) => return Err(io(&candidate)(e)),
        }
    }
    let mut path = root.to_path_buf();
    path.extend(&parts);
    match std::fs::read(&path) {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Adds parent directories of `path` (not the root) as root-owned 0755 entries.
pub(crate) fn add_parents(entries: &mut BTreeMap<String, LayerEntry>, path: &str) {
    let mut acc = String::new();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for p in &parts[..parts.len().saturating_sub(1)] {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(p);
        entries.entry(acc.clone()).or_insert(LayerEntry {
            data: EntryData::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: None,
        });
    }
}

/// Settings of one COPY.
#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    pub chown: Option<(u64, u64)>,
    pub chmod: Option<u32>,
    /// ADD: unpack local tar archives into the destination.
    pub unpack_archives: bool,
    pub exclude: Vec<String>,
    /// Sources of the same instruction handled elsewhere (heredocs, URLs, git): with any, the
    /// destination is a directory, as with several sources here.
    pub other_sources: usize,
}

/// The layer entries one COPY produces, keyed by path inside the image (no leading `/`).
pub fn copy_entries(
    tree: &Tree,
    sources: &[String],
    dest: &str,
    opts: &CopyOptions,
) -> Result<BTreeMap<String, LayerEntry>, ContextError> {
    let mut out = BTreeMap::new();
    // (entry, selected as part of the root: `.` or `/`, whose directories keep their names)
    let mut selected = Vec::new();
    for s in sources {
        let root = clamp_to_root(s).is_empty();
        selected.extend(tree.select(s)?.into_iter().map(|e| (e, root)));
    }
    // Globs that match nothing are allowed beside other sources (BuildKit's empty wildcard);
    // an instruction whose sources all match nothing copies nothing, which is an error.
    if selected.is_empty() && !sources.is_empty() && opts.other_sources == 0 {
        return Err(ContextError::NoSources(sources.to_vec()));
    }
    let excluded: Vec<GlobMatcher> = opts
        .exclude
        .iter()
        .map(|p| {
            GlobBuilder::new(&clean_rel(p))
                .literal_separator(true)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| ContextError::Pattern {
                    pattern: p.clone(),
                    message: e.to_string(),
                })
        })
        .collect::<Result<_, _>>()?;
    let multiple = selected.len() > 1
        || sources.len() + opts.other_sources > 1
        || sources.iter().any(|s| s.contains(['*', '?', '[']));
    let dest_is_dir = dest.ends_with('/') || multiple;
    let dest_clean = clean_rel(dest);
    let owner = |e: &ContextEntry| -> (u64, u64) {
        if let Some(o) = opts.chown {
            return o;
        }
        if tree.keep_owners {
            // Rootless with one id, unpacked files are the caller's, who is root in the
            // sandbox: read them back as root's (as root, or with subordinate ids, the
            // caller is 0 already and owners are as unpacked).
            let (me_u, me_g) = (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            );
            fs::symlink_metadata(&e.abs)
                .map(|m| {
                    (
                        u64::from(if m.uid() == me_u { 0 } else { m.uid() }),
                        u64::from(if m.gid() == me_g { 0 } else { m.gid() }),
                    )
                })
                .unwrap_or((0, 0))
        } else {
            (0, 0)
        }
    };
    let put = |out: &mut BTreeMap<String, LayerEntry>, path: String, e: &ContextEntry| {
        let (uid, gid) = owner(e);
        let data = match e.kind {
            Kind::File => EntryData::File(e.abs.clone()),
            Kind::Dir => EntryData::Dir,
            Kind::Symlink => EntryData::Symlink(fs::read_link(&e.abs).unwrap_or_default()),
        };
        let mode = match (opts.chmod, e.kind) {
            (Some(m), Kind::File | Kind::Dir) => m,
            (_, Kind::Symlink) => 0o777,
            _ => e.mode,
        };
        add_parents(out, &path);
        out.insert(
            path,
            LayerEntry {
                data,
                mode,
                uid,
                gid,
                mtime: None,
            },
        );
    };
    for (e, from_root) in selected {
        if excluded.iter().any(|m| m.is_match(&e.rel)) {
            continue;
        }
        let name = e.rel.rsplit('/').next().unwrap_or(&e.rel).to_owned();
        match e.kind {
            Kind::Dir => {
                // A directory's contents go into the destination directory; the root's
                // directories (`COPY . /dest/`) keep their names below it.
                let base = if from_root {
                    if dest_clean.is_empty() {
                        name.clone()
                    } else {
                        format!("{dest_clean}/{name}")
                    }
                } else {
                    dest_clean.clone()
                };
                if from_root {
                    put(&mut out, base.clone(), e);
                }
                if !base.is_empty() {
                    let (uid, gid) = opts.chown.unwrap_or((0, 0));
                    add_parents(&mut out, &base);
                    out.entry(base.clone()).or_insert(LayerEntry {
                        data: EntryData::Dir,
                        mode: 0o755,
                        uid,
                        gid,
                        mtime: None,
                    });
                }
                for child in tree.below(&e.rel) {
                    if excluded.iter().any(|m| m.is_match(&child.rel)) {
                        continue;
                    }
                    let sub = &child.rel[e.rel.len() + 1..];
                    let path = if base.is_empty() {
                        sub.to_owned()
                    } else {
                        format!("{base}/{sub}")
                    };
                    put(&mut out, path, child);
                }
            }
            Kind::File if opts.unpack_archives && is_archive(&e.abs) => {
                unpack_into(&mut out, &e.abs, &dest_clean, opts)?;
            }
            _ => {
                let path = if dest_is_dir {
                    if dest_clean.is_empty() {
                        name
                    } else {
                        format!("{dest_clean}/{name}")
                    }
                } else {
                    dest_clean.clone()
                };
                if path.is_empty() {
                    return Err(ContextError::NotFound(format!(
                        "{} (copied to `/`, which is not a file)",
                        e.rel
                    )));
                }
                put(&mut out, path, e);
            }
        }
    }
    Ok(out)
}

fn is_archive(path: &Path) -> bool {
    let mut head = [0u8; 262];
    let n = fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    if n >= 2 && head[..2] == [0x1f, 0x8b] {
        return true;
    }
    n >= 262 && &head[257..262] == b"ustar"
}

/// ADD's archive unpacking: entries of a (gzip) tar become entries under `dest`.
fn unpack_into(
    out: &mut BTreeMap<String, LayerEntry>,
    archive: &Path,
    dest: &str,
    opts: &CopyOptions,
) -> Result<(), ContextError> {
    let f = fs::File::open(archive).map_err(io(archive))?;
    let reader = archway_oci::layer::tar_reader(f, archive).map_err(|e| ContextError::Io {
        path: archive.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    })?;
    let mut a = tar::Archive::new(reader);
    for entry in a.entries().map_err(io(archive))? {
        let mut entry = entry.map_err(io(archive))?;
        let p = entry
            .path()
            .map_err(io(archive))?
            .to_string_lossy()
            .into_owned();
        let rel = clean_rel(&p);
        if rel.is_empty() || rel.starts_with("..") {
            continue;
        }
        let path = if dest.is_empty() {
            rel
        } else {
            format!("{dest}/{rel}")
        };
        let h = entry.header().clone();
        let (uid, gid) = opts
            .chown
            .unwrap_or((h.uid().unwrap_or(0), h.gid().unwrap_or(0)));
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let data = match h.entry_type() {
            tar::EntryType::Directory => EntryData::Dir,
            tar::EntryType::Symlink => EntryData::Symlink(
                entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|l| l.into_owned())
                    .unwrap_or_default(),
            ),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut v = Vec::new();
                entry.read_to_end(&mut v).map_err(io(archive))?;
                EntryData::Bytes(v)
            }
            _ => continue,
        };
        add_parents(out, &path);
        out.insert(
            path,
            LayerEntry {
                data,
                mode,
                uid,
                gid,
                mtime: None,
            },
        );
    }
    Ok(())
}

/// A digest of what a set of entries will put in a layer (paths, modes, owners, contents), so
/// identical COPYs share one layer whatever the platform.
pub fn entries_key(entries: &BTreeMap<String, LayerEntry>) -> Result<Digest, ContextError> {
    entries_key_cached(entries, &FileHashCache::default())
}

/// [`entries_key`], reusing file digests from `cache` when a file's size, times, inode and
/// device are unchanged (like BuildKit's content-hash cache), so an unchanged context is not
/// read again.
pub fn entries_key_cached(
    entries: &BTreeMap<String, LayerEntry>,
    cache: &FileHashCache,
) -> Result<Digest, ContextError> {
    let mut d = archway_oci::Digester::new(archway_oci::Algorithm::Sha256);
    for (path, e) in entries {
        d.update(path.as_bytes());
        d.update(format!("\0{:o}\0{}\0{}\0", e.mode, e.uid, e.gid).as_bytes());
        if let Some(t) = e.mtime {
            d.update(format!("mtime:{t}\0").as_bytes());
        }
        match &e.data {
            EntryData::Dir => d.update(b"dir"),
            EntryData::Symlink(t) => d.update(format!("symlink:{}", t.display()).as_bytes()),
            EntryData::Bytes(b) => d.update(Digest::sha256(b).to_string().as_bytes()),
            EntryData::File(p) => d.update(cache.digest(p)?.to_string().as_bytes()),
        }
        d.update(b"\n");
    }
    Ok(d.finish())
}

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

/// File digests by path and [`Stamp`], kept in a file between builds.
#[derive(Debug)]
pub struct FileHashCache {
    map: std::sync::Mutex<std::collections::HashMap<PathBuf, (Stamp, Digest)>>,
    file: Option<PathBuf>,
    /// Files changed more recently than this are not remembered (see [`FileHashCache::digest`]).
    racy_ns: i128,
}

impl Default for FileHashCache {
    /// An empty cache that is never saved.
    fn default() -> Self {
        FileHashCache {
            map: Default::default(),
            file: None,
            racy_ns: RACY_NS,
        }
    }
}

/// Two seconds: coarser than any timestamp granularity Archway runs on.
const RACY_NS: i128 = 2_000_000_000;

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheLine {
    path: PathBuf,
    stamp: Stamp,
    digest: Digest,
}

impl FileHashCache {
    /// Load from `file` (missing or unreadable: start empty).
    pub fn load(file: &Path) -> FileHashCache {
        let map = fs::read_to_string(file)
            .map(|t| {
                t.lines()
                    .filter_map(|l| serde_json::from_str::<CacheLine>(l).ok())
                    .map(|c| (c.path, (c.stamp, c.digest)))
                    .collect()
            })
            .unwrap_or_default();
        FileHashCache {
            map: std::sync::Mutex::new(map),
            file: Some(file.to_owned()),
            racy_ns: RACY_NS,
        }
    }

    /// The sha256 of the file at `p`.
    pub fn digest(&self, p: &Path) -> Result<Digest, ContextError> {
        let meta = fs::metadata(p).map_err(io(p))?;
        let stamp = Stamp::of(&meta);
        if let Some((s, d)) = self.map.lock().unwrap_or_else(|e| e.into_inner()).get(p)
            && *s == stamp
        {
            return Ok(d.clone());
        }
        let mut f = fs::File::open(p).map_err(io(p))?;
        let digest = archway_oci::Digester::new(archway_oci::Algorithm::Sha256)
            .read_all(&mut f)
            .map_err(io(p))?
            .finish();
        // A file changed in the last two seconds could change again within the timestamp's
        // granularity without its stamp changing ("racily clean"): do not remember it.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        if now - stamp.mtime_ns >= self.racy_ns && now - stamp.ctime_ns >= self.racy_ns {
            self.map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(p.to_owned(), (stamp, digest.clone()));
        }
        Ok(digest)
    }

    /// Write the cache back (atomically); entries for files that are gone are dropped.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::new();
        for (path, (stamp, digest)) in map.iter() {
            if path.exists()
                && let Ok(line) = serde_json::to_string(&CacheLine {
                    path: path.clone(),
                    stamp: *stamp,
                    digest: digest.clone(),
                })
            {
                text.push_str(&line);
                text.push('\n');
            }
        }
        archway_oci::atomic_file::write(file, text.as_bytes())
    }
}

#[cfg(test)]
mod chown_tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::create_dir_all(d.path().join("usr/share/base")).unwrap();
        std::fs::write(
            d.path().join("usr/share/base/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1001::/home/node:/bin/sh\n",
        )
        .unwrap();
        // An absolute link resolves inside the root, as in the container.
        std::os::unix::fs::symlink("/usr/share/base/passwd", d.path().join("etc/passwd")).unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:node\n").unwrap();
        d
    }

    #[test]
    fn names_resolve_in_the_destination_as_buildkit_does() {
        let r = rootfs();
        let cases = [
            ("node", (1000, 1001)),
            ("node:staff", (1000, 50)),
            ("node:7", (1000, 7)),
            ("5:staff", (5, 50)),
            ("5", (5, 5)),
            ("root:root", (0, 0)),
        ];
        for (spec, want) in cases {
            assert_eq!(resolve_chown(spec, r.path()).unwrap(), want, "{spec}");
            assert_eq!(
                chown_uses_names(spec),
                spec.chars().any(char::is_alphabetic)
            );
        }
    }

    #[test]
    fn unknown_names_and_missing_files_fail() {
        let r = rootfs();
        for (spec, msg) in [
            (
                "nobody",
                "--chown=nobody: user `nobody` is not in the destination's /etc/passwd",
            ),
            (
                "node:wheel",
                "--chown=node:wheel: group `wheel` is not in the destination's /etc/group",
            ),
            (
                "node:",
                "--chown=node:: expected user[:group], names or numeric ids",
            ),
        ] {
            assert_eq!(resolve_chown(spec, r.path()).unwrap_err().to_string(), msg);
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(resolve_chown("node", empty.path()).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("src/sub")).unwrap();
        fs::write(d.path().join("src/a.rs"), "a").unwrap();
        fs::write(d.path().join("src/sub/b.rs"), "b").unwrap();
        fs::write(d.path().join("index.html"), "<h1>hi</h1>").unwrap();
        fs::create_dir_all(d.path().join("target")).unwrap();
        fs::write(d.path().join("target/big"), "x").unwrap();
        fs::write(d.path().join("secret.key"), "k").unwrap();
        fs::write(d.path().join(".dockerignore"), "target\n*.key\n!keep.key\n").unwrap();
        d
    }

    #[test]
    fn dockerignore_and_selection() {
        let d = ctx();
        let t = Tree::context(d.path()).unwrap();
        assert!(!t.entries.contains_key("target") && !t.entries.contains_key("target/big"));
        assert!(!t.entries.contains_key("secret.key"));
        assert!(t.select("secret.key").is_err());
        assert_eq!(t.select("src/*.rs").unwrap().len(), 1);
        assert_eq!(t.select("./index.html").unwrap()[0].rel, "index.html");
        // `..` stops at the root, as in BuildKit: `../index.html` is the context's own.
        assert_eq!(t.select("../index.html").unwrap()[0].rel, "index.html");
        assert_eq!(
            t.select("/src/../../index.html").unwrap()[0].rel,
            "index.html"
        );
        assert!(climbs_above_root("../etc/passwd") && !climbs_above_root("a/../b"));
        assert!(matches!(
            t.select("../etc/passwd"),
            Err(ContextError::NotFound(_))
        ));
        // A glob may match nothing when its directory exists, not when it does not.
        assert!(t.select("src/*.nope").unwrap().is_empty());
        assert!(matches!(
            t.select("nodir/*.rs"),
            Err(ContextError::NotFound(_))
        ));
        assert!(matches!(
            t.select("index.html/*"),
            Err(ContextError::NotFound(_))
        ));
        let ig = Ignore::parse("**/*.log\n!important.log\n").unwrap();
        assert!(ig.is_ignored("a/b/c.log") && !ig.is_ignored("important.log"));
    }

    #[test]
    fn copy_semantics() {
        let d = ctx();
        let t = Tree::context(d.path()).unwrap();
        // A file to a file path.
        let e = copy_entries(
            &t,
            &["index.html".into()],
            "usr/local/apache2/htdocs/index.html",
            &CopyOptions::default(),
        )
        .unwrap();
        assert!(
            e.contains_key("usr/local/apache2/htdocs/index.html")
                && e.contains_key("usr")
                && e.contains_key("usr/local/apache2/htdocs")
        );
        // A file into a directory (trailing slash), as in the seed's `COPY ./index.html /usr/local/apache2/htdocs/`.
        let e = copy_entries(
            &t,
            &["./index.html".into()],
            "usr/local/apache2/htdocs/",
            &CopyOptions::default(),
        )
        .unwrap();
        assert!(e.contains_key("usr/local/apache2/htdocs/index.html"));
        // A directory's contents.
        let copy_src = |t: &Tree| {
            let opts = CopyOptions {
                chmod: Some(0o600),
                chown: Some((1000, 1000)),
                ..Default::default()
            };
            copy_entries(t, &["src".into()], "app", &opts).unwrap()
        };
        let e = copy_src(&t);
        let keys: Vec<&str> = e.keys().map(String::as_str).collect();
        assert_eq!(keys, ["app", "app/a.rs", "app/sub", "app/sub/b.rs"]);
        // The whole context (`COPY . /app/`): its directories keep their names.
        for root in [".", "/", "./"] {
            let e = copy_entries(&t, &[root.into()], "app/", &CopyOptions::default()).unwrap();
            let keys: Vec<&str> = e.keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                [
                    "app",
                    "app/.dockerignore",
                    "app/index.html",
                    "app/src",
                    "app/src/a.rs",
                    "app/src/sub",
                    "app/src/sub/b.rs"
                ],
                "COPY {root} /app/"
            );
        }
        assert_eq!((e["app/a.rs"].mode, e["app/a.rs"].uid), (0o600, 1000));
        // Identical copies have identical keys; a change changes it.
        let k1 = entries_key(&e).unwrap();
        assert_eq!(k1, entries_key(&copy_src(&t)).unwrap());
        fs::write(d.path().join("src/a.rs"), "changed").unwrap();
        let t = Tree::context(d.path()).unwrap();
        assert_ne!(k1, entries_key(&copy_src(&t)).unwrap());
    }

    #[test]
    fn file_hash_cache_reuses_unchanged_files_only() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("big.bin");
        let cache_file = d.path().join("hashes.jsonl");
        fs::write(&f, "one").unwrap();
        // A file written just now is hashed but not remembered (its stamp may not change yet).
        let c = FileHashCache::load(&cache_file);
        assert_eq!(c.digest(&f).unwrap(), Digest::sha256(b"one"));
        assert!(c.map.lock().unwrap().is_empty());
        // Without the racy window it is remembered, saved, and loaded by the next build.
        let c = FileHashCache {
            racy_ns: 0,
            ..FileHashCache::load(&cache_file)
        };
        c.digest(&f).unwrap();
        c.save().unwrap();
        let c = FileHashCache {
            racy_ns: 0,
            ..FileHashCache::load(&cache_file)
        };
        assert_eq!(c.map.lock().unwrap()[&f].1, Digest::sha256(b"one"));
        // An unchanged stamp is trusted (the file is not read again) ...
        let planted = Digest::sha256(b"planted");
        c.map.lock().unwrap().get_mut(&f).unwrap().1 = planted.clone();
        assert_eq!(c.digest(&f).unwrap(), planted);
        // ... and any change of size or times is seen.
        fs::write(&f, "two!").unwrap();
        assert_eq!(c.digest(&f).unwrap(), Digest::sha256(b"two!"));
    }

    #[test]
    fn destinations() {
        assert_eq!(resolve_dest("app/", "/srv"), "/srv/app/");
        assert_eq!(resolve_dest("/x/../y", "/srv"), "/y");
        assert_eq!(resolve_dest(".", "/srv"), "/srv/");
        assert_eq!(resolve_dest("../../etc", "/srv"), "/etc");
        assert_eq!(parse_chown("1000:100").unwrap(), (1000, 100));
        assert!(parse_chown("nobody").is_err());
    }
}
