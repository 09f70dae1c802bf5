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

use flate2::Compression;
use flate2::write::GzEncoder;

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
    #[error("{path}: {source}")]
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
        &mut tar::Builder<HashingWriter<GzEncoder<HashingWriter<W>>>>,
    ) -> Result<(), LayerError>,
) -> Result<LayerDigests, LayerError> {
    let compressed = HashingWriter::new(out, Algorithm::Sha256);
    let gz = flate2::GzBuilder::new().write(compressed, Compression::new(6));
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

/// Re-writes a tar stream (plain or gzip, detected) as a normalised layer.
pub fn layer_from_tar<R: Read, W: Write>(
    input: R,
    what: &Path,
    opts: &LayerOptions,
    out: W,
) -> Result<LayerDigests, LayerError> {
    let mut input = io::BufReader::new(input);
    let magic = {
        use io::BufRead;
        input
            .fill_buf()
            .map_err(io_err(what))?
            .get(..4)
            .map(<[u8]>::to_vec)
    };
    let reader: Box<dyn Read> = match magic.as_deref() {
        Some([0x1f, 0x8b, ..]) => Box::new(flate2::read::GzDecoder::new(input)),
        Some([0x28, 0xb5, 0x2f, 0xfd]) => return Err(LayerError::Zstd(what.to_owned())),
        _ => Box::new(input),
    };
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
        std::thread::sleep(std::time::Duration::from_millis(20));
        tree(b.path());
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
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), Compression::fast());
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
}
