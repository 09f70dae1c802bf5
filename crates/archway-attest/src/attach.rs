//! OCI 1.1 referrers: an SBOM or a provenance statement as an artifact manifest whose
//! `subject` is the image, so `GET /v2/<name>/referrers/<digest>` (or the
//! `sha256-<hex>` fallback tag) finds it — the layout `oras attach`, `regctl artifact put` and
//! `cosign attach sbom --registry-referrers-mode oci-1-1` produce.
//!
//! Each artifact is an image manifest with an `artifactType`, the empty config
//! (`application/vnd.oci.empty.v1+json`, the 2 bytes `{}` inlined as `data`), one layer with
//! the document, the image as `subject`, and `org.opencontainers.image.created`. A provenance
//! statement also carries `in-toto.io/predicate-type` (on the manifest and on its layer) as
//! BuildKit's attestation manifests do. Nothing here reads the clock: the same inputs give the
//! same manifest bytes and digest.

use std::collections::BTreeMap;

use archway_oci::media_type::{OCI_EMPTY, OCI_MANIFEST};
use archway_oci::{Descriptor, ImageManifest};

use crate::provenance::SLSA_PROVENANCE_V1;

/// Artifact and layer type of an SPDX JSON document.
pub const SPDX_JSON: &str = "application/spdx+json";
/// Artifact and layer type of an in-toto statement.
pub const IN_TOTO_JSON: &str = "application/vnd.in-toto+json";
/// Annotation naming the predicate type of an in-toto layer (BuildKit's convention).
pub const PREDICATE_TYPE_ANNOTATION: &str = "in-toto.io/predicate-type";
/// The OCI annotation for a creation time (RFC 3339).
pub const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";

/// The empty JSON object, the config of every artifact manifest.
pub const EMPTY_JSON: &[u8] = b"{}";

/// A blob to upload, with its descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub descriptor: Descriptor,
    pub data: Vec<u8>,
}

impl Blob {
    /// A blob of `data` with the given media type (sha256).
    pub fn new(media_type: &str, data: Vec<u8>) -> Self {
        Blob {
            descriptor: Descriptor::for_bytes(media_type, &data),
            data,
        }
    }
}

/// A manifest to push and the blobs it needs, in upload order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// The manifest bytes (media type [`OCI_MANIFEST`]).
    pub manifest: Vec<u8>,
    /// The manifest's descriptor as a referrers index lists it: media type, digest, size,
    /// `artifactType` and the manifest's annotations.
    pub descriptor: Descriptor,
    /// Config first, then the layer.
    pub blobs: Vec<Blob>,
}

/// The descriptor of the empty config, with its content inlined as the spec recommends.
pub fn empty_config_descriptor() -> Descriptor {
    let mut d = Descriptor::for_bytes(OCI_EMPTY, EMPTY_JSON);
    d.data = Some("e30=".to_owned());
    d
}

/// An artifact manifest for `document` referring to `subject`. Only the subject's media type,
/// digest and size are kept (its annotations or platform would only change the bytes).
pub fn referrer(
    subject: &Descriptor,
    artifact_type: &str,
    document: Vec<u8>,
    manifest_annotations: BTreeMap<String, String>,
    layer_annotations: BTreeMap<String, String>,
) -> Artifact {
    let config = Blob {
        descriptor: empty_config_descriptor(),
        data: EMPTY_JSON.to_vec(),
    };
    let mut layer = Blob::new(artifact_type, document);
    if !layer_annotations.is_empty() {
        layer.descriptor.annotations = Some(layer_annotations);
    }
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST.to_owned(),
        artifact_type: Some(artifact_type.to_owned()),
        config: config.descriptor.clone(),
        layers: vec![layer.descriptor.clone()],
        subject: Some(Descriptor::new(
            subject.media_type.clone(),
            subject.digest.clone(),
            subject.size,
        )),
        annotations: (!manifest_annotations.is_empty()).then_some(manifest_annotations),
    };
    let bytes = manifest.to_json();
    let mut descriptor = Descriptor::for_bytes(OCI_MANIFEST, &bytes);
    descriptor.artifact_type = manifest.artifact_type.clone();
    descriptor.annotations = manifest.annotations.clone();
    Artifact {
        manifest: bytes,
        descriptor,
        blobs: vec![config, layer],
    }
}

/// The referrer for an SPDX JSON document (see [`crate::sbom::spdx_json`]); `created` in
/// seconds since the epoch.
pub fn sbom_referrer(subject: &Descriptor, spdx_json: Vec<u8>, created: u64) -> Artifact {
    let annotations = BTreeMap::from([(
        CREATED_ANNOTATION.to_owned(),
        archway_oci::config::rfc3339(created),
    )]);
    referrer(subject, SPDX_JSON, spdx_json, annotations, BTreeMap::new())
}

/// The referrer for an in-toto provenance statement (see
/// [`crate::provenance::statement_json`]); `created` in seconds since the epoch.
pub fn provenance_referrer(subject: &Descriptor, statement: Vec<u8>, created: u64) -> Artifact {
    let predicate = (
        PREDICATE_TYPE_ANNOTATION.to_owned(),
        SLSA_PROVENANCE_V1.to_owned(),
    );
    let manifest_annotations = BTreeMap::from([
        (
            CREATED_ANNOTATION.to_owned(),
            archway_oci::config::rfc3339(created),
        ),
        predicate.clone(),
    ]);
    referrer(
        subject,
        IN_TOTO_JSON,
        statement,
        manifest_annotations,
        BTreeMap::from([predicate]),
    )
}

#[cfg(test)]
mod tests {
    use archway_oci::{Digest, ManifestKind, ParsedManifest};

    use super::*;

    #[test]
    fn empty_descriptor_is_the_specs() {
        let d = empty_config_descriptor();
        assert_eq!(
            d.digest.to_string(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(d.size, 2);
        assert_eq!(d.data.as_deref(), Some("e30="));
    }

    #[test]
    fn referrer_parses_back_with_subject_and_type() {
        let mut subject = Descriptor::for_bytes(OCI_MANIFEST, b"{\"image\":1}");
        subject.annotations = Some(BTreeMap::from([("x".into(), "y".into())]));
        let a = provenance_referrer(&subject, b"{}\n".to_vec(), 0);
        let parsed = ParsedManifest::parse(&a.manifest, Some(OCI_MANIFEST)).unwrap();
        assert_eq!(parsed.kind, ManifestKind::Image);
        assert_eq!(parsed.artifact_type.as_deref(), Some(IN_TOTO_JSON));
        let s = parsed.subject.unwrap();
        assert_eq!(s.digest, subject.digest);
        assert!(s.annotations.is_none(), "subject annotations dropped");
        assert_eq!(
            parsed.layers[0].annotation(PREDICATE_TYPE_ANNOTATION),
            Some(SLSA_PROVENANCE_V1)
        );
        assert_eq!(a.descriptor.digest, Digest::sha256(&a.manifest));
        assert_eq!(
            a.descriptor.annotation(CREATED_ANNOTATION),
            Some("1970-01-01T00:00:00Z")
        );
        assert_eq!(a.blobs.len(), 2);
        for b in &a.blobs {
            b.descriptor.digest.verify(&b.data).unwrap();
        }
    }
}
