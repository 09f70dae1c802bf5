//! OCI image layouts (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`): the on-disk format
//! that skopeo (`oci:DIR:TAG`), umoci and buildah read and write.
//!
//! Blobs are written atomically and verified on read; `index.json` is replaced atomically.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::atomic_file;
use crate::digest::{Algorithm, Digest, DigestError, Digester, VerifyingReader};
use crate::manifest::{Descriptor, Index};

/// The annotation that names an entry of `index.json` (the `TAG` in `oci:DIR:TAG`).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

const LAYOUT_FILE: &str = "oci-layout";
const LAYOUT_VERSION: &str = "1.0.0";

/// Errors reading or writing an image layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not an OCI image layout (no `oci-layout` file)")]
    NotALayout(PathBuf),
    #[error("{path}: invalid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: unsupported imageLayoutVersion `{version}` (expected 1.0.0)")]
    Version { path: PathBuf, version: String },
    #[error("blob {digest} is not in the layout at {layout}")]
    BlobMissing { layout: PathBuf, digest: Digest },
    #[error("blob {0} in layout is corrupt: {1}")]
    Corrupt(Digest, DigestError),
    #[error("no image named `{name}` in {layout} (it has: {available})")]
    RefMissing {
        layout: PathBuf,
        name: String,
        available: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An OCI image layout directory.
#[derive(Clone, Debug)]
pub struct ImageLayout {
    root: PathBuf,
}

impl ImageLayout {
    /// Opens an existing layout, checking its `oci-layout` marker.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, LayoutError> {
        let root = root.into();
        let marker = root.join(LAYOUT_FILE);
        let bytes = match fs::read(&marker) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LayoutError::NotALayout(root));
            }
            Err(e) => return Err(io_err(&marker)(e)),
        };
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Marker {
            image_layout_version: String,
        }
        let m: Marker = serde_json::from_slice(&bytes).map_err(|source| LayoutError::Json {
            path: marker.clone(),
            source,
        })?;
        if m.image_layout_version != LAYOUT_VERSION {
            return Err(LayoutError::Version {
                path: marker,
                version: m.image_layout_version,
            });
        }
        Ok(ImageLayout { root })
    }

    /// Opens the layout at `root`, creating an empty one if the directory has none.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self, LayoutError> {
        let root = root.into();
        if root.join(LAYOUT_FILE).exists() {
            return Self::open(root);
        }
        fs::create_dir_all(root.join("blobs")).map_err(io_err(&root))?;
        let layout = ImageLayout { root };
        layout.write_index(&Index::new_oci())?;
        let marker = layout.root.join(LAYOUT_FILE);
        atomic_file::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(io_err(&marker))?;
        Ok(layout)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a blob inside the layout.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Reads a whole blob and verifies it against its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, LayoutError> {
        let mut out = Vec::new();
        let mut reader = self.open_blob(digest, None)?;
        reader.read_to_end(&mut out).map_err(|e| {
            match e.get_ref().and_then(|i| i.downcast_ref::<DigestError>()) {
                Some(d) => LayoutError::Corrupt(digest.clone(), d.clone()),
                None => io_err(&self.blob_path(digest))(e),
            }
        })?;
        Ok(out)
    }

    /// Opens a blob for streaming; the reader fails at end of stream if the content does not
    /// match `digest` (or `size`).
    pub fn open_blob(
        &self,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<VerifyingReader<File>, LayoutError> {
        let path = self.blob_path(digest);
        match File::open(&path) {
            Ok(f) => Ok(VerifyingReader::new(f, digest.clone(), size)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(LayoutError::BlobMissing {
                layout: self.root.clone(),
                digest: digest.clone(),
            }),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Writes bytes as a blob (sha256), atomically; returns its digest.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<Digest, LayoutError> {
        let digest = Digest::sha256(bytes);
        let path = self.blob_path(&digest);
        if !path.exists() {
            atomic_file::write(&path, bytes).map_err(io_err(&path))?;
        }
        Ok(digest)
    }

    /// Streams a blob into the layout. With `expected`, the content is verified before it
    /// becomes visible; without, it is hashed with `algorithm`.
    pub fn write_blob_from(
        &self,
        reader: &mut impl Read,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), LayoutError> {
        let algorithm = expected.map_or(Algorithm::Sha256, Digest::algorithm);
        let dir = self.root.join("blobs").join(algorithm.as_str());
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let tmp = atomic_file::temp_path_for(&dir.join("upload"));
        let result = (|| {
            let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
            let mut digester = Digester::new(algorithm);
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = reader.read(&mut buf).map_err(io_err(&tmp))?;
                if n == 0 {
                    break;
                }
                digester.update(&buf[..n]);
                file.write_all(&buf[..n]).map_err(io_err(&tmp))?;
            }
            file.sync_all().map_err(io_err(&tmp))?;
            let size = digester.len();
            let actual = digester.finish();
            if let Some(expected) = expected
                && &actual != expected
            {
                return Err(LayoutError::Corrupt(
                    expected.clone(),
                    DigestError::Mismatch {
                        expected: expected.clone(),
                        actual,
                    },
                ));
            }
            let target = self.blob_path(&actual);
            atomic_file::commit(&tmp, &target).map_err(io_err(&target))?;
            Ok((actual, size))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Reads `index.json`.
    pub fn index(&self) -> Result<Index, LayoutError> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|source| LayoutError::Json { path, source })
    }

    /// Replaces `index.json` atomically.
    pub fn write_index(&self, index: &Index) -> Result<(), LayoutError> {
        let path = self.root.join("index.json");
        atomic_file::write(&path, &index.to_json()).map_err(io_err(&path))
    }

    /// Finds the `index.json` entry named `name`; with no name, the only entry (if there is
    /// exactly one).
    pub fn resolve(&self, name: Option<&str>) -> Result<Descriptor, LayoutError> {
        let index = self.index()?;
        let found = match name {
            Some(name) => index
                .manifests
                .iter()
                .find(|d| d.annotation(REF_NAME_ANNOTATION) == Some(name)),
            None if index.manifests.len() == 1 => index.manifests.first(),
            None => None,
        };
        found.cloned().ok_or_else(|| {
            let names: Vec<&str> = index
                .manifests
                .iter()
                .filter_map(|d| d.annotation(REF_NAME_ANNOTATION))
                .collect();
            LayoutError::RefMissing {
                layout: self.root.clone(),
                name: name.unwrap_or("(no name given)").to_owned(),
                available: if names.is_empty() {
                    "no named images".to_owned()
                } else {
                    names.join(", ")
                },
            }
        })
    }

    /// Serialises read-modify-write of `index.json` between threads and processes: an
    /// exclusive `flock` on the layout directory itself (no extra file in the layout), released
    /// when the returned handle drops.
    fn lock_index(&self) -> Result<std::fs::File, LayoutError> {
        let dir = std::fs::File::open(&self.root).map_err(io_err(&self.root))?;
        rustix::fs::flock(&dir, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err(&self.root)(e.into()))?;
        Ok(dir)
    }

    /// Removes the entry named `name` from `index.json`; returns whether there was one. Blobs
    /// are left in place.
    pub fn remove_ref(&self, name: &str) -> Result<bool, LayoutError> {
        let _lock = self.lock_index()?;
        let mut index = self.index()?;
        let before = index.manifests.len();
        index
            .manifests
            .retain(|d| d.annotation(REF_NAME_ANNOTATION) != Some(name));
        if index.manifests.len() == before {
            return Ok(false);
        }
        self.write_index(&index)?;
        Ok(true)
    }

    /// Points `name` at `descriptor` in `index.json`, replacing an entry of the same name.
    pub fn set_ref(&self, name: &str, descriptor: &Descriptor) -> Result<(), LayoutError> {
        let _lock = self.lock_index()?;
        let mut index = self.index()?;
        index
            .manifests
            .retain(|d| d.annotation(REF_NAME_ANNOTATION) != Some(name));
        let mut entry = descriptor.clone();
        entry
            .annotations
            .get_or_insert_with(Default::default)
            .insert(REF_NAME_ANNOTATION.to_owned(), name.to_owned());
        index.manifests.push(entry);
        self.write_index(&index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media_type;

    #[test]
    fn writes_and_reads_a_layout() {
        let dir = tempfile::tempdir().unwrap();
        let layout = ImageLayout::create(dir.path().join("img")).unwrap();
        let digest = layout.write_blob(b"config").unwrap();
        assert_eq!(layout.read_blob(&digest).unwrap(), b"config");

        let (d2, size) = layout
            .write_blob_from(&mut &b"layer bytes"[..], None)
            .unwrap();
        assert_eq!(size, 11);
        assert!(layout.has_blob(&d2));

        let desc = Descriptor::new(media_type::OCI_MANIFEST, digest.clone(), 6);
        layout.set_ref("v1", &desc).unwrap();
        layout.set_ref("v1", &desc).unwrap();
        layout.set_ref("v2", &desc).unwrap();
        let reopened = ImageLayout::open(layout.root()).unwrap();
        assert_eq!(reopened.index().unwrap().manifests.len(), 2);
        assert_eq!(reopened.resolve(Some("v2")).unwrap().digest, digest);
        let err = reopened.resolve(Some("v3")).unwrap_err().to_string();
        assert!(err.contains("it has: v1, v2"), "{err}");
    }

    #[test]
    fn refuses_wrong_content_and_missing_layouts() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            ImageLayout::open(dir.path()),
            Err(LayoutError::NotALayout(_))
        ));
        let layout = ImageLayout::create(dir.path()).unwrap();
        let wrong = Digest::sha256(b"something else");
        let err = layout
            .write_blob_from(&mut &b"data"[..], Some(&wrong))
            .unwrap_err();
        assert!(err.to_string().contains("mismatch"), "{err}");
        assert!(!layout.has_blob(&wrong));

        // A blob whose bytes were altered on disk is detected on read.
        let d = layout.write_blob(b"good").unwrap();
        fs::write(layout.blob_path(&d), b"evil").unwrap();
        assert!(matches!(
            layout.read_blob(&d),
            Err(LayoutError::Corrupt(..))
        ));
    }

    #[test]
    fn reads_the_shared_busybox_fixture_when_present() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/busybox-oci");
        let layout = ImageLayout::open(&fixture).unwrap();
        let top = layout.resolve(Some("1.35")).unwrap();
        let index: Index = serde_json::from_slice(&layout.read_blob(&top.digest).unwrap()).unwrap();
        let arches: Vec<_> = index
            .manifests
            .iter()
            .map(|m| m.platform.as_ref().unwrap().to_string())
            .collect();
        assert_eq!(arches, vec!["linux/amd64", "linux/arm64"]);
    }
}
