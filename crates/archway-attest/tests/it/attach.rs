//! OCI 1.1 referrer manifests for SBOMs and provenance, compared with golden files.

use archway_attest::attach::{
    CREATED_ANNOTATION, IN_TOTO_JSON, PREDICATE_TYPE_ANNOTATION, SPDX_JSON, provenance_referrer,
    sbom_referrer,
};
use archway_oci::media_type::{OCI_EMPTY, OCI_MANIFEST};
use archway_oci::{Descriptor, ParsedManifest};

use crate::golden;

fn subject() -> Descriptor {
    Descriptor::for_bytes(OCI_MANIFEST, b"{\"schemaVersion\":2}")
}

#[test]
fn sbom_referrer_golden() {
    let doc = b"{\"spdxVersion\":\"SPDX-2.3\"}\n".to_vec();
    let a = sbom_referrer(&subject(), doc.clone(), 1_700_000_000);
    golden::check("sbom-referrer.manifest.json", &a.manifest);
    assert_eq!(a, sbom_referrer(&subject(), doc.clone(), 1_700_000_000));

    let m = ParsedManifest::parse(&a.manifest, Some(OCI_MANIFEST)).unwrap();
    assert_eq!(m.artifact_type.as_deref(), Some(SPDX_JSON));
    assert_eq!(m.config.as_ref().unwrap().media_type, OCI_EMPTY);
    assert_eq!(m.config.as_ref().unwrap().size, 2);
    assert_eq!(m.layers.len(), 1);
    assert_eq!(m.layers[0].media_type, SPDX_JSON);
    assert_eq!(m.subject.unwrap().digest, subject().digest);
    assert_eq!(
        m.annotations.unwrap()[CREATED_ANNOTATION],
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(a.blobs[0].data, b"{}");
    assert_eq!(a.blobs[1].data, doc);
    assert_eq!(a.descriptor.artifact_type.as_deref(), Some(SPDX_JSON));
}

#[test]
fn provenance_referrer_golden() {
    let statement = b"{\"_type\":\"https://in-toto.io/Statement/v1\"}\n".to_vec();
    let a = provenance_referrer(&subject(), statement, 1_700_000_000);
    golden::check("provenance-referrer.manifest.json", &a.manifest);
    let m = ParsedManifest::parse(&a.manifest, Some(OCI_MANIFEST)).unwrap();
    assert_eq!(m.artifact_type.as_deref(), Some(IN_TOTO_JSON));
    assert_eq!(
        m.layers[0].annotation(PREDICATE_TYPE_ANNOTATION),
        Some("https://slsa.dev/provenance/v1")
    );
    assert_eq!(
        a.descriptor.annotation(PREDICATE_TYPE_ANNOTATION),
        Some("https://slsa.dev/provenance/v1")
    );
}
