//! Media types of the OCI image specification and of Docker's image manifest v2 schema 2.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_NONDIST_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_LAYER_NONDIST_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Signed schema 1 manifests: obsolete, recognised only to be refused clearly.
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// Manifest media types a registry stores and serves, in the order Archway prefers them
/// in an `Accept` header.
pub const MANIFEST_TYPES: [&str; 4] = [
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
];

/// True for single-platform image manifests (OCI or Docker schema 2).
pub fn is_image_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// True for multi-platform indexes (OCI index or Docker manifest list).
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// True for any manifest type in [`MANIFEST_TYPES`].
pub fn is_manifest(media_type: &str) -> bool {
    is_image_manifest(media_type) || is_index(media_type)
}

/// Compression of a layer media type, judged by its suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression a layer media type declares.
pub fn layer_compression(media_type: &str) -> Compression {
    if media_type.ends_with("+zstd") {
        Compression::Zstd
    } else if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
        Compression::Gzip
    } else {
        Compression::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_manifest_types() {
        assert!(is_index(OCI_INDEX) && is_index(DOCKER_MANIFEST_LIST));
        assert!(is_image_manifest(OCI_MANIFEST) && is_image_manifest(DOCKER_MANIFEST));
        assert!(!is_manifest(OCI_CONFIG));
        assert!(!is_manifest(DOCKER_MANIFEST_V1_SIGNED));
    }

    #[test]
    fn layer_compression_from_suffix() {
        assert_eq!(layer_compression(OCI_LAYER_ZSTD), Compression::Zstd);
        assert_eq!(layer_compression(OCI_LAYER_NONDIST_GZIP), Compression::Gzip);
        assert_eq!(layer_compression(DOCKER_LAYER_GZIP), Compression::Gzip);
        assert_eq!(layer_compression(OCI_LAYER_TAR), Compression::None);
    }
}
