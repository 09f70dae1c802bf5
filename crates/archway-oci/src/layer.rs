//! Reproducible layer tarballs: the same input always produces the same bytes, hence the same
//! digests, on any machine.
//!
//! From a directory, entries are written in byte-wise sorted path order; from a tar stream,
//! in the stream's order. Either way every header is normalised: modification times are set to
//! one timestamp (`SOURCE_DATE_EPOCH` by convention), owners to root unless asked to keep them,
//! user and group names are dropped, and no extended attributes or access times are written.
//! Compression is gzip with fixed settings and an empty gzip header.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::pgzip::ParallelGzEncoder;

use crate::digest::{Algorithm, Digest, HashingWriter};

/// How to normalise entries.
#[derive(Clone, Debug, Default)]
pub struct LayerOptions {
    /// Modification time of every entry (seconds since the epoch).
    pub mtime: u64,
    /// Keep numeric owners instead of making everything root-owned.
    pub keep_owners: bool,
}

/// A written layer: digests of the uncompressed (`diff_id`) and compressed (`digest`) streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDigests {
    pub diff_id: Digest,
    pub digest: Digest,
    pub size: u64,
}

/// Errors building a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: not a directory or tar archive")]
    NotARootfs(PathBuf),
    #[error(
        "{0}: zstd-compressed tarballs are not supported here; decompress it first (`zstd -d`)"
    )]
    Zstd(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Wraps `out` in the gzip + hashing pipeline and hands a tar builder to `fill`.
fn write_layer<W: Write>(
    out: W,
    what: &Path,
    fill: impl FnOnce(
        &mut tar::Builder<HashingWriter<ParallelGzEncoder<HashingWriter<W>>>>,
    ) -> Result<(), LayerError>,
) -> Result<LayerDigests, LayerError> {
    let compressed = HashingWriter::new(out, Algorithm::Sha256);
    let gz = ParallelGzEncoder::new(compressed, 6);
    let uncompressed = HashingWriter::new(gz, Algorithm::Sha256);
    let mut builder = tar::Builder::new(uncompressed);
    builder.mode(tar::HeaderMode::Deterministic);
    fill(&mut builder)?;
    let uncompressed = builder.into_inner().map_err(io_err(what))?;
    let (gz, diff_id, _) = uncompressed.finish();
    let compressed = gz.finish().map_err(io_err(what))?;
    let (mut out, digest, size) = compressed.finish();
    out.flush().map_err(io_err(what))?;
    Ok(LayerDigests {
        diff_id,
        digest,
        size,
    })
}

fn base_header(
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    opts: &LayerOptions,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_mtime(opts.mtime);
    let (uid, gid) = if opts.keep_owners { (uid, gid) } else { (0, 0) };
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_size(0);
    h
}

/// Builds a layer from the contents of `dir` (which itself becomes the layer's root).
pub fn layer_from_dir<W: Write>(
    dir: &Path,
    opts: &LayerOptions,
    out: W,
) -> Result<LayerDigests, LayerError> {
    if !dir.is_dir() {
        return Err(LayerError::NotARootfs(dir.to_owned()));
    }
    write_layer(out, dir, |builder| {
        let mut hardlinks: HashMap<(u64, u64), PathBuf> = HashMap::new();
        append_dir_contents(builder, dir, Path::new(""), opts, &mut hardlinks)
    })
}

/// Appends the entries under `dir/rel`, depth first, each directory's children in byte order.
fn append_dir_contents<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    opts: &LayerOptions,
    hardlinks: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), LayerError> {
    let abs = dir.join(rel);
    let mut names: Vec<_> = fs::read_dir(&abs)
        .map_err(io_err(&abs))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err(&abs))?;
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    for name in names {
        let rel_child = rel.join(&name);
        let abs_child = dir.join(&rel_child);
        let meta = fs::symlink_metadata(&abs_child).map_err(io_err(&abs_child))?;
        append_entry(builder, &rel_child, &abs_child, &meta, opts, hardlinks)?;
        if meta.is_dir() {
            append_dir_contents(builder, dir, &rel_child, opts, hardlinks)?;
        }
    }
    Ok(())
}

fn append_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    rel: &Path,
    abs: &Path,
    meta: &fs::Metadata,
    opts: &LayerOptions,
    hardlinks: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), LayerError> {
    let ft = meta.file_type();
    let (mode, uid, gid) = (meta.mode(), u64::from(meta.uid()), u64::from(meta.gid()));
    if ft.is_dir() {
        let mut h = base_header(tar::EntryType::Directory, mode, uid, gid, opts);
        let mut name = rel.as_os_str().to_owned();
        name.push("/");
        builder
            .append_data(&mut h, Path::new(&name), io::empty())
            .map_err(io_err(abs))
    } else if ft.is_symlink() {
        let target = fs::read_link(abs).map_err(io_err(abs))?;
        let mut h = base_header(tar::EntryType::Symlink, mode, uid, gid, opts);
        builder
            .append_link(&mut h, rel, &target)
            .map_err(io_err(abs))
    } else if ft.is_file() {
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = hardlinks.get(&key) {
                let mut h = base_header(tar::EntryType::Link, mode, uid, gid, opts);
                return builder.append_link(&mut h, rel, first).map_err(io_err(abs));
            }
            hardlinks.insert(key, rel.to_owned());
        }
        let mut h = base_header(tar::EntryType::Regular, mode, uid, gid, opts);
        h.set_size(meta.len());
        let f = fs::File::open(abs).map_err(io_err(abs))?;
        builder.append_data(&mut h, rel, f).map_err(io_err(abs))
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        let kind = if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else {
            tar::EntryType::Fifo
        };
        let mut h = base_header(kind, mode, uid, gid, opts);
        let rdev = meta.rdev();
        let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff);
        let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff);
        h.set_device_major(major as u32).map_err(io_err(abs))?;
        h.set_device_minor(minor as u32).map_err(io_err(abs))?;
        builder
            .append_data(&mut h, rel, io::empty())
            .map_err(io_err(abs))
    } else {
        // Sockets cannot be archived; like tar, leave them out.
        Ok(())
    }
}

/// The tar inside `input`: gzip (detected by its magic number) is decompressed, plain tar is
/// read as is, zstd is refused with [`LayerError::Zstd`].
pub fn tar_reader<'a, R: Read + 'a>(
    input: R,
    what: &Path,
) -> Result<Box<dyn Read + 'a>, LayerError> {
    let mut input = io::BufReader::new(input);
    let magic = {
        use io::BufRead;
        input
            .fill_buf()
            .map_err(io_err(what))?
            .get(..4)
            .map(<[u8]>::to_vec)
    };
    Ok(match magic.as_deref() {
        Some([0x1f, 0x8b, ..]) => Box::new(flate2::read::GzDecoder::new(input)),
        Some([0x28, 0xb5, 0x2f, 0xfd]) => return Err(LayerError::Zstd(what.to_owned())),
        _ => Box::new(input),
    })
}

/// Re-writes a tar stream (plain or gzip, detected) as a normalised layer.
pub fn layer_from_tar<R: Read, W: Write>(
    input: R,
    what: &Path,
    opts: &LayerOptions,
    out: W,
) -> Result<LayerDigests, LayerError> {
    let reader = tar_reader(input, what)?;
    let mut archive = tar::Archive::new(reader);
    write_layer(out, what, |builder| {
        for entry in archive.entries().map_err(io_err(what))? {
            let mut entry = entry.map_err(io_err(what))?;
            let path = entry.path().map_err(io_err(what))?.into_owned();
            let src = entry.header().clone();
            let kind = src.entry_type();
            if matches!(
                kind,
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
            ) {
                continue;
            }
            let mode = src.mode().map_err(io_err(what))?;
            let uid = src.uid().map_err(io_err(what))?;
            let gid = src.gid().map_err(io_err(what))?;
            let mut h = base_header(kind, mode, uid, gid, opts);
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(io_err(what))?
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    builder
                        .append_link(&mut h, &path, &target)
                        .map_err(io_err(what))?;
                }
                tar::EntryType::Char | tar::EntryType::Block => {
                    if let (Ok(Some(maj)), Ok(Some(min))) = (src.device_major(), src.device_minor())
                    {
                        h.set_device_major(maj).map_err(io_err(what))?;
                        h.set_device_minor(min).map_err(io_err(what))?;
                    }
                    builder
                        .append_data(&mut h, &path, io::empty())
                        .map_err(io_err(what))?;
                }
                _ => {
                    h.set_size(entry.size());
                    builder
                        .append_data(&mut h, &path, &mut entry)
                        .map_err(io_err(what))?;
                }
            }
        }
        Ok(())
    })
}

/// What an entry of a layer built from a list holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryData {
    /// A regular file's content, read from this path.
    File(PathBuf),
    /// A regular file's content.
    Bytes(Vec<u8>),
    Dir,
    Symlink(PathBuf),
}

/// One entry of a layer built from a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    pub data: EntryData,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Its own modification time (seconds since the epoch); `None` takes the layer's
    /// [`LayerOptions::mtime`]. (A downloaded file keeps its `Last-Modified`, as in BuildKit.)
    pub mtime: Option<u64>,
}

/// A header for an entry of a list: its own time if it has one, else the layer's.
fn entry_header(kind: tar::EntryType, e: &LayerEntry, opts: &LayerOptions) -> tar::Header {
    let mut h = base_header(kind, e.mode, e.uid, e.gid, opts);
    if let Some(t) = e.mtime {
        h.set_mtime(t);
    }
    h
}

/// Builds a layer from entries keyed by their path in the layer (no leading `/`). Entries are
/// written in path order; times are `opts.mtime` (or the entry's own), owners as given.
pub fn layer_from_entries<W: Write>(
    entries: &std::collections::BTreeMap<String, LayerEntry>,
    opts: &LayerOptions,
    out: W,
) -> Result<LayerDigests, LayerError> {
    let keep = LayerOptions {
        keep_owners: true,
        ..opts.clone()
    };
    write_layer(out, Path::new("layer"), |builder| {
        for (path, e) in entries {
            let p = Path::new(path);
            match &e.data {
                EntryData::Dir => {
                    let mut h = entry_header(tar::EntryType::Directory, e, &keep);
                    builder
                        .append_data(&mut h, Path::new(&format!("{path}/")), io::empty())
                        .map_err(io_err(p))?;
                }
                EntryData::Symlink(target) => {
                    let mut h = entry_header(tar::EntryType::Symlink, e, &keep);
                    builder.append_link(&mut h, p, target).map_err(io_err(p))?;
                }
                EntryData::Bytes(b) => {
                    let mut h = entry_header(tar::EntryType::Regular, e, &keep);
                    h.set_size(b.len() as u64);
                    builder.append_data(&mut h, p, &b[..]).map_err(io_err(p))?;
                }
                EntryData::File(src) => {
                    let f = fs::File::open(src).map_err(io_err(src))?;
                    let len = f.metadata().map_err(io_err(src))?.len();
                    let mut h = entry_header(tar::EntryType::Regular, e, &keep);
                    h.set_size(len);
                    builder.append_data(&mut h, p, f).map_err(io_err(src))?;
                }
            }
        }
        Ok(())
    })
}

/// How much to trust a layer being extracted.
#[derive(Clone, Debug, Default)]
pub struct ExtractOptions {
    /// Running as (namespaced) root: create device nodes, keep setuid/setgid bits, set owners.
    pub privileged: bool,
    /// Set owners and keep setuid/setgid bits without creating devices: root of a user
    /// namespace with subordinate ids. Owners the namespace does not map stay the caller's
    /// (counted in [`ExtractReport::unmapped_owners`]).
    pub keep_owners: bool,
    /// Keep whiteouts as empty `.wh.*` files instead of applying them (an exploded layer, to
    /// be merged onto a root filesystem later with [`merge_exploded`]).
    pub keep_whiteouts: bool,
}

/// What an extraction did besides writing files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractReport {
    /// With `keep_whiteouts`: directories the layer has no entry for (made only to hold what
    /// is inside them), relative to the root. [`merge_exploded`] resolves these through the
    /// destination's symlinks, as extraction does, instead of replacing them.
    pub implicit_dirs: Vec<PathBuf>,
    pub entries: u64,
    pub whiteouts: u64,
    pub skipped_devices: u64,
    pub stripped_setuid: u64,
    /// With [`ExtractOptions::keep_owners`]: entries whose owner the user namespace does not map.
    pub unmapped_owners: u64,
}

/// Resolves `rel` inside `root` the way the container will see it: symlinks are followed but
/// interpreted relative to `root`, and `..` never climbs above it, so nothing resolves outside.
/// With `follow_last` false the last component is not followed.
pub fn resolve_in_root(root: &Path, rel: &Path, follow_last: bool) -> io::Result<PathBuf> {
    use std::path::Component;
    let mut stack: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: Vec<std::ffi::OsString> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .rev()
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            stack.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&stack);
        candidate.push(&part);
        let is_last = pending.is_empty();
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() && (!is_last || follow_last) => {
                hops += 1;
                if hops > 40 {
                    return Err(io::Error::other(format!(
                        "too many symlinks resolving {}",
                        rel.display()
                    )));
                }
                let target = fs::read_link(&candidate)?;
                if target.is_absolute() {
                    stack.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => stack.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&stack);
    Ok(out)
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies a layer (plain or gzip tar) onto `dest`, as a container runtime would: whiteouts
/// delete what lower layers put there, entries can never land outside `dest` (`..`,
/// absolute paths and symlinked parents are resolved inside it), device nodes are skipped and
/// setuid bits dropped unless `privileged`.
pub fn extract_layer<R: Read>(
    input: R,
    what: &Path,
    dest: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractReport, LayerError> {
    use std::os::unix::fs::PermissionsExt;
    let reader = tar_reader(input, what)?;
    fs::create_dir_all(dest).map_err(io_err(dest))?;
    let mut report = ExtractReport::default();
    let mut ancestors = std::collections::BTreeSet::new();
    let mut explicit_dirs = std::collections::BTreeSet::new();
    let mut archive = tar::Archive::new(reader);
    let escape = |p: &Path| LayerError::Io {
        path: what.to_owned(),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("layer entry `{}` escapes the root filesystem", p.display()),
        ),
    };
    for entry in archive.entries().map_err(io_err(what))? {
        let mut entry = entry.map_err(io_err(what))?;
        let raw = entry.path().map_err(io_err(what))?.into_owned();
        if raw
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(escape(&raw));
        }
        let rel: PathBuf = raw
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        if rel.as_os_str().is_empty() {
            continue; // the root itself
        }
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let parent = resolve_in_root(dest, parent_rel, true).map_err(io_err(what))?;
        if !parent.starts_with(dest) {
            return Err(escape(&raw));
        }
        report.entries += 1;
        if opts.keep_whiteouts {
            let mut a = rel.parent();
            while let Some(p) = a.filter(|p| !p.as_os_str().is_empty()) {
                ancestors.insert(p.to_owned());
                a = p.parent();
            }
            if entry.header().entry_type() == tar::EntryType::Directory {
                explicit_dirs.insert(rel.clone());
            }
        }
        if opts.keep_whiteouts && name.starts_with(".wh.") {
            report.whiteouts += 1;
            fs::create_dir_all(&parent).map_err(io_err(&parent))?;
            fs::File::create(parent.join(&name)).map_err(io_err(&parent))?;
            continue;
        }
        if name == ".wh..wh..opq" {
            report.whiteouts += 1;
            if let Ok(rd) = fs::read_dir(&parent) {
                for child in rd.flatten() {
                    remove_any(&child.path()).map_err(io_err(&child.path()))?;
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            report.whiteouts += 1;
            remove_any(&parent.join(hidden)).map_err(io_err(&parent))?;
            continue;
        }
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let target = parent.join(&name);
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mut mode = header.mode().map_err(io_err(what))? & 0o7777;
        let set_owners = opts.privileged || opts.keep_owners;
        if !set_owners && mode & 0o6000 != 0 && kind != tar::EntryType::Symlink {
            mode &= !0o6000;
            report.stripped_setuid += 1;
        }
        let existing_dir = fs::symlink_metadata(&target)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if !(kind == tar::EntryType::Directory && existing_dir) {
            remove_any(&target).map_err(io_err(&target))?;
        }
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target).map_err(io_err(&target))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(io_err(&target))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut f = fs::File::create(&target).map_err(io_err(&target))?;
                io::copy(&mut entry, &mut f).map_err(io_err(&target))?;
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_err(&target))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(io_err(what))?
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                std::os::unix::fs::symlink(&link, &target).map_err(io_err(&target))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(io_err(what))?
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                if link
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(escape(&link));
                }
                let source = resolve_in_root(dest, &link, false).map_err(io_err(what))?;
                if !source.starts_with(dest) {
                    return Err(escape(&link));
                }
                fs::hard_link(&source, &target).map_err(io_err(&target))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                if kind != tar::EntryType::Fifo && !opts.privileged {
                    report.skipped_devices += 1;
                    continue;
                }
                let ft = match kind {
                    tar::EntryType::Char => rustix::fs::FileType::CharacterDevice,
                    tar::EntryType::Block => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::Fifo,
                };
                let dev = rustix::fs::makedev(
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &target,
                    ft,
                    rustix::fs::Mode::from_raw_mode(mode),
                    dev,
                )
                .map_err(|e| LayerError::Io {
                    path: target.clone(),
                    source: e.into(),
                })?;
            }
            _ => continue,
        }
        if set_owners {
            let uid = header.uid().ok().and_then(|u| u32::try_from(u).ok());
            let gid = header.gid().ok().and_then(|g| u32::try_from(g).ok());
            match std::os::unix::fs::lchown(&target, uid, gid) {
                Ok(()) => {}
                // An id outside the namespace's map (EINVAL): the file stays the caller's.
                Err(e)
                    if !opts.privileged
                        && e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
                {
                    report.unmapped_owners += 1;
                    continue;
                }
                Err(e) => return Err(io_err(&target)(e)),
            }
            if kind != tar::EntryType::Symlink && mode & 0o6000 != 0 {
                // chown clears setuid bits: put them back.
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(io_err(&target))?;
            }
        }
    }
    report.implicit_dirs = ancestors.difference(&explicit_dirs).cloned().collect();
    Ok(report)
}

/// Apply an exploded layer (see [`ExtractOptions::keep_whiteouts`]) onto `dest` without
/// copying data: files, symlinks and special files are hard-linked from the layer, directories
/// are made (or re-moded) and whiteouts remove what they hide. Both trees are then read-only by
/// contract; a later writer must replace a file, never write through it.
pub fn merge_exploded(layer: &Path, dest: &Path, implicit_dirs: &[PathBuf]) -> io::Result<()> {
    let implicit: std::collections::BTreeSet<&Path> =
        implicit_dirs.iter().map(PathBuf::as_path).collect();
    merge_dir(layer, dest, Path::new(""), &implicit, true)
}

/// Recreates the tree at `src` as `dest` (which must not exist yet): directories with `src`'s
/// modes (and owners, where we may set them), everything else hard-linked — what `cp -al`
/// does, without a subprocess. Names are taken literally (no whiteouts).
pub fn link_tree(src: &Path, dest: &Path) -> io::Result<()> {
    fs::create_dir(dest)?;
    copy_dir_attributes(&fs::symlink_metadata(src)?, dest)?;
    merge_dir(
        src,
        dest,
        Path::new(""),
        &std::collections::BTreeSet::new(),
        false,
    )
}

/// Gives `dst` the mode of the directory `meta` describes and, where we may (as root), its
/// owners.
fn copy_dir_attributes(meta: &fs::Metadata, dst: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    fs::set_permissions(
        dst,
        fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
    )?;
    let _ = rustix::fs::chown(
        dst,
        Some(rustix::fs::Uid::from_raw(meta.uid())),
        Some(rustix::fs::Gid::from_raw(meta.gid())),
    );
    Ok(())
}

fn merge_dir(
    layer_root: &Path,
    dest_root: &Path,
    rel: &Path,
    implicit: &std::collections::BTreeSet<&Path>,
    whiteouts: bool,
) -> io::Result<()> {
    let layer = layer_root.join(rel);
    // The directory to merge into: an implicit one is found through the destination's
    // symlinks (confined to the root), an explicit one is what the layer says.
    let dest = if implicit.contains(rel) {
        let d = resolve_in_root(dest_root, rel, true)?;
        fs::create_dir_all(&d)?;
        d
    } else {
        dest_root.join(rel)
    };
    let mut names: Vec<std::ffi::OsString> = fs::read_dir(&layer)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    // An opaque directory hides everything below it from lower layers.
    if whiteouts
        && names.iter().any(|n| n == ".wh..wh..opq")
        && let Ok(rd) = fs::read_dir(&dest)
    {
        for child in rd.flatten() {
            remove_any(&child.path())?;
        }
    }
    for name in names {
        let n = name.to_string_lossy();
        if whiteouts && n == ".wh..wh..opq" {
            continue;
        }
        if let Some(hidden) = n.strip_prefix(".wh.").filter(|_| whiteouts) {
            remove_any(&dest.join(hidden))?;
            continue;
        }
        let src = layer.join(&name);
        let child_rel = rel.join(&name);
        let meta = fs::symlink_metadata(&src)?;
        if meta.is_dir() {
            if !implicit.contains(child_rel.as_path()) {
                let dst = dest.join(&name);
                if !fs::symlink_metadata(&dst)
                    .map(|m| m.is_dir())
                    .unwrap_or(false)
                {
                    remove_any(&dst)?;
                    fs::create_dir(&dst)?;
                }
                // Owners follow the layer where we may set them (as root); else they stay ours.
                copy_dir_attributes(&meta, &dst)?;
            }
            merge_dir(layer_root, dest_root, &child_rel, implicit, whiteouts)?;
        } else {
            let dst = dest.join(&name);
            remove_any(&dst)?;
            fs::hard_link(&src, &dst)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("etc/ssl")).unwrap();
        fs::write(root.join("bin/busybox"), b"\x7fELF pretend").unwrap();
        fs::hard_link(root.join("bin/busybox"), root.join("bin/sh")).unwrap();
        symlink("busybox", root.join("bin/ls")).unwrap();
        fs::write(root.join("etc/ssl/cert.pem"), b"cert").unwrap();
        fs::write(root.join("etc/a"), b"a").unwrap();
    }

    fn listing(layer: &[u8]) -> Vec<(String, tar::EntryType, u64)> {
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(layer));
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type(),
                    h.mtime().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn same_tree_same_digest_whatever_the_timestamps() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        tree(a.path());
        tree(b.path());
        // Other timestamps in b: the layer must not see them.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        for f in ["bin/busybox", "etc/a", "etc/ssl/cert.pem"] {
            fs::File::options()
                .write(true)
                .open(b.path().join(f))
                .unwrap()
                .set_modified(later)
                .unwrap();
        }
        let mut out_a = Vec::new();
        let mut out_b = Vec::new();
        let da = layer_from_dir(a.path(), &LayerOptions::default(), &mut out_a).unwrap();
        let db = layer_from_dir(b.path(), &LayerOptions::default(), &mut out_b).unwrap();
        assert_eq!(da, db);
        assert_eq!(out_a, out_b);
        assert_eq!(da.digest, Digest::sha256(&out_a));
        assert_eq!(da.size, out_a.len() as u64);

        let entries = listing(&out_a);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin/",
                "bin/busybox",
                "bin/ls",
                "bin/sh",
                "etc/",
                "etc/a",
                "etc/ssl/",
                "etc/ssl/cert.pem"
            ]
        );
        assert_eq!(entries[3].1, tar::EntryType::Link);
        assert_eq!(entries[2].1, tar::EntryType::Symlink);
        assert!(entries.iter().all(|e| e.2 == 0));
    }

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o4755
            });
            h.set_size(data.len() as u64);
            match link {
                Some(l) => b.append_link(&mut h, path, l).unwrap(),
                None => {
                    // Bypass the tar crate's own path checks to craft hostile entries.
                    let name = path.as_bytes();
                    h.as_old_mut().name[..name.len()].copy_from_slice(name);
                    h.set_cksum();
                    b.append(&h, *data).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn extraction_applies_whiteouts_and_stays_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("rootfs");
        let lower = tar_of(&[
            ("etc/", tar::EntryType::Directory, b"", None),
            ("etc/keep", tar::EntryType::Regular, b"keep", None),
            ("etc/drop", tar::EntryType::Regular, b"drop", None),
            ("opaque/", tar::EntryType::Directory, b"", None),
            ("opaque/old", tar::EntryType::Regular, b"old", None),
            ("lib", tar::EntryType::Symlink, b"", Some("/usr/lib")),
            ("usr/lib/", tar::EntryType::Directory, b"", None),
        ]);
        let r = extract_layer(
            &lower[..],
            Path::new("lower"),
            &dest,
            &ExtractOptions::default(),
        )
        .unwrap();
        assert_eq!(r.stripped_setuid, 3, "setuid dropped when unprivileged");
        let upper = tar_of(&[
            ("etc/.wh.drop", tar::EntryType::Regular, b"", None),
            ("opaque/.wh..wh..opq", tar::EntryType::Regular, b"", None),
            ("opaque/new", tar::EntryType::Regular, b"new", None),
            // Through a symlinked parent: lands in usr/lib, inside the root.
            ("lib/libx.so", tar::EntryType::Regular, b"x", None),
        ]);
        extract_layer(
            &upper[..],
            Path::new("upper"),
            &dest,
            &ExtractOptions::default(),
        )
        .unwrap();
        assert!(dest.join("etc/keep").exists());
        assert!(!dest.join("etc/drop").exists());
        assert!(!dest.join("opaque/old").exists() && dest.join("opaque/new").exists());
        assert_eq!(fs::read(dest.join("usr/lib/libx.so")).unwrap(), b"x");

        // `..` is refused; a symlink pointing out of the root is resolved inside it.
        let evil = tar_of(&[("../escape", tar::EntryType::Regular, b"x", None)]);
        let err = extract_layer(
            &evil[..],
            Path::new("evil"),
            &dest,
            &ExtractOptions::default(),
        )
        .unwrap_err();
        let err = crate::error_chain(&err);
        assert!(err.contains("escapes the root"), "{err}");
        assert!(!root.path().join("escape").exists());
        let sneaky = tar_of(&[
            ("out", tar::EntryType::Symlink, b"", Some("../../..")),
            ("out/pwned", tar::EntryType::Regular, b"x", None),
        ]);
        extract_layer(
            &sneaky[..],
            Path::new("sneaky"),
            &dest,
            &ExtractOptions::default(),
        )
        .unwrap();
        assert!(
            dest.join("pwned").exists(),
            "resolved to the root, not above it"
        );
        assert!(!root.path().join("pwned").exists());
        // Devices are skipped unless privileged.
        let dev = tar_of(&[("dev/null", tar::EntryType::Char, b"", None)]);
        let r = extract_layer(
            &dev[..],
            Path::new("dev"),
            &dest,
            &ExtractOptions::default(),
        )
        .unwrap();
        assert_eq!(r.skipped_devices, 1);
    }

    /// Every path under `root` with its kind and content (for comparing trees).
    fn snapshot_of(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_owned()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                if m.is_dir() {
                    out.push(format!("{rel}/"));
                    stack.push(p);
                } else if m.is_symlink() {
                    out.push(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
                } else {
                    out.push(format!("{rel} = {:?}", fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn merging_exploded_layers_equals_extracting_them() {
        let lower = tar_of(&[
            ("etc/", tar::EntryType::Directory, b"", None),
            ("etc/keep", tar::EntryType::Regular, b"keep", None),
            ("etc/drop", tar::EntryType::Regular, b"drop", None),
            ("opaque/", tar::EntryType::Directory, b"", None),
            ("opaque/old", tar::EntryType::Regular, b"old", None),
            ("lib", tar::EntryType::Symlink, b"", Some("/usr/lib")),
            ("usr/lib/", tar::EntryType::Directory, b"", None),
        ]);
        let upper = tar_of(&[
            ("etc/.wh.drop", tar::EntryType::Regular, b"", None),
            ("etc/new", tar::EntryType::Regular, b"new", None),
            ("opaque/.wh..wh..opq", tar::EntryType::Regular, b"", None),
            ("opaque/new", tar::EntryType::Regular, b"new", None),
            ("lib/libx.so", tar::EntryType::Regular, b"x", None),
            ("srv/", tar::EntryType::Directory, b"", None),
            ("srv/www/index.html", tar::EntryType::Regular, b"<h1>", None),
        ]);
        let d = tempfile::tempdir().unwrap();
        let direct = d.path().join("direct");
        for (i, t) in [&lower, &upper].iter().enumerate() {
            extract_layer(
                &t[..],
                Path::new(&i.to_string()),
                &direct,
                &ExtractOptions::default(),
            )
            .unwrap();
        }
        let merged = d.path().join("merged");
        fs::create_dir_all(&merged).unwrap();
        for (i, t) in [&lower, &upper].iter().enumerate() {
            let exploded = d.path().join(format!("layer{i}"));
            let r = extract_layer(
                &t[..],
                Path::new("x"),
                &exploded,
                &ExtractOptions {
                    keep_whiteouts: true,
                    ..Default::default()
                },
            )
            .unwrap();
            if i == 1 {
                assert_eq!(
                    r.implicit_dirs,
                    ["etc", "lib", "opaque", "srv/www"].map(PathBuf::from)
                );
                assert!(
                    exploded.join("etc/.wh.drop").exists(),
                    "whiteouts kept as files"
                );
            }
            merge_exploded(&exploded, &merged, &r.implicit_dirs).unwrap();
        }
        assert_eq!(snapshot_of(&merged), snapshot_of(&direct));
        assert_eq!(fs::read(merged.join("usr/lib/libx.so")).unwrap(), b"x");
    }

    #[test]
    fn layers_from_entries_are_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"content").unwrap();
        let mut entries = std::collections::BTreeMap::new();
        entries.insert(
            "app".to_owned(),
            LayerEntry {
                data: EntryData::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: None,
            },
        );
        entries.insert(
            "app/f".to_owned(),
            LayerEntry {
                data: EntryData::File(dir.path().join("f")),
                mode: 0o644,
                uid: 1000,
                gid: 1000,
                mtime: None,
            },
        );
        entries.insert(
            "app/motd".to_owned(),
            LayerEntry {
                data: EntryData::Bytes(b"hi\n".to_vec()),
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: None,
            },
        );
        entries.insert(
            "app/link".to_owned(),
            LayerEntry {
                data: EntryData::Symlink("f".into()),
                mode: 0o777,
                uid: 0,
                gid: 0,
                mtime: None,
            },
        );
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let da = layer_from_entries(&entries, &LayerOptions::default(), &mut a).unwrap();
        let db = layer_from_entries(&entries, &LayerOptions::default(), &mut b).unwrap();
        assert_eq!((da, a.clone()), (db, b));
        let names: Vec<String> = listing(&a).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["app/", "app/f", "app/link", "app/motd"]);
        let dest = dir.path().join("out");
        extract_layer(&a[..], Path::new("a"), &dest, &ExtractOptions::default()).unwrap();
        assert_eq!(fs::read(dest.join("app/link")).unwrap(), b"content");
    }

    #[test]
    fn tar_input_is_normalised_the_same_way() {
        let a = tempfile::tempdir().unwrap();
        tree(a.path());
        let mut plain = tar::Builder::new(Vec::new());
        plain.append_dir_all(".", a.path()).unwrap();
        let plain = plain.into_inner().unwrap();
        let opts = LayerOptions {
            mtime: 1_700_000_000,
            keep_owners: false,
        };
        let mut out1 = Vec::new();
        let d1 = layer_from_tar(&plain[..], Path::new("x.tar"), &opts, &mut out1).unwrap();
        // The same archive gzip-compressed gives the same layer.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let mut out2 = Vec::new();
        let d2 = layer_from_tar(&gz[..], Path::new("x.tar.gz"), &opts, &mut out2).unwrap();
        assert_eq!(d1, d2);
        assert!(listing(&out1).iter().all(|e| e.2 == 1_700_000_000));
        let err = layer_from_tar(
            &[0x28u8, 0xb5, 0x2f, 0xfd, 0][..],
            Path::new("x.zst"),
            &opts,
            Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("zstd"), "{err}");
    }

    #[test]
    fn link_tree_hard_links_files_and_recreates_directories() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let src = tempfile::tempdir().unwrap();
        tree(src.path());
        fs::write(src.path().join("etc/.wh.literal"), b"not a whiteout here").unwrap();
        fs::set_permissions(src.path().join("etc"), fs::Permissions::from_mode(0o750)).unwrap();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("copy");
        link_tree(src.path(), &dest).unwrap();
        for f in [
            "bin/busybox",
            "bin/sh",
            "etc/ssl/cert.pem",
            "etc/.wh.literal",
        ] {
            let (a, b) = (
                fs::metadata(src.path().join(f)).unwrap(),
                fs::metadata(dest.join(f)).unwrap(),
            );
            assert_eq!(
                (a.dev(), a.ino()),
                (b.dev(), b.ino()),
                "{f} is not a hard link"
            );
        }
        assert_eq!(
            fs::read_link(dest.join("bin/ls")).unwrap(),
            Path::new("busybox")
        );
        let etc = fs::metadata(dest.join("etc")).unwrap();
        assert!(etc.is_dir() && etc.permissions().mode() & 0o7777 == 0o750);
        // The destination must be new: nothing is merged into an existing tree.
        assert!(link_tree(src.path(), &dest).is_err());
    }
}
