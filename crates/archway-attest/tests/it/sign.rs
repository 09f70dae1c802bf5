//! Signing and verification: round trips, every way a signature is refused, and signatures
//! made by cosign itself (copied from containers/image's test data, see tests/vectors/).

use std::collections::BTreeMap;

use archway_attest::Error;
use archway_attest::attach::Blob;
use archway_attest::sign::{
    IdentityRule, PublicKey, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, SignatureAttachment,
    SigningKey, SimpleSigningPayload, attach_signature, sign_image, verify_image,
};
use archway_oci::media_type::{OCI_CONFIG, OCI_MANIFEST};
use archway_oci::{Descriptor, Digest, ImageManifest, ParsedManifest, Reference};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::golden;

fn test_key() -> SigningKey {
    SigningKey::from_pem(std::str::from_utf8(&golden::vector("test-signing.key")).unwrap()).unwrap()
}

fn image() -> Reference {
    "127.0.0.1:5000/team/app:1.0".parse().unwrap()
}

fn image_digest() -> Digest {
    Digest::sha256(b"the image manifest")
}

fn blob_map(blobs: &[Blob]) -> BTreeMap<Digest, Vec<u8>> {
    blobs
        .iter()
        .map(|b| (b.descriptor.digest.clone(), b.data.clone()))
        .collect()
}

fn verify(
    key: &PublicKey,
    att: &SignatureAttachment,
    blobs: &BTreeMap<Digest, Vec<u8>>,
) -> Result<archway_attest::sign::VerifiedSignature, Error> {
    verify_image(
        key,
        &image(),
        &image_digest(),
        &att.manifest,
        blobs,
        &IdentityRule::default(),
    )
}

#[test]
fn sign_and_verify_round_trip() {
    let key = SigningKey::generate();
    let att = sign_image(&key, &image(), &image_digest(), None).unwrap();
    assert_eq!(att.tag, format!("sha256-{}.sig", image_digest().hex()));
    let ok = verify(&key.public_key(), &att, &blob_map(&att.blobs)).unwrap();
    assert_eq!(ok.payload.docker_reference, "127.0.0.1:5000/team/app:1.0");
    assert_eq!(
        ok.payload.docker_manifest_digest,
        image_digest().to_string()
    );
    assert_eq!(ok.payload.optional, None);
}

#[test]
fn attachment_layout_golden() {
    let att = sign_image(&test_key(), &image(), &image_digest(), None).unwrap();
    golden::check("signature.manifest.json", &att.manifest);
    golden::check("signature.config.json", &att.blobs[0].data);
    golden::check("signature.payload.json", &att.blobs[1].data);

    let m = ParsedManifest::parse(&att.manifest, Some(OCI_MANIFEST)).unwrap();
    assert_eq!(m.media_type, OCI_MANIFEST);
    let config = m.config.unwrap();
    assert_eq!(config.media_type, OCI_CONFIG);
    assert_eq!(config.digest, att.blobs[0].descriptor.digest);
    assert_eq!(m.layers.len(), 1);
    assert_eq!(m.layers[0].media_type, SIMPLE_SIGNING_MEDIA_TYPE);
    let sig = BASE64
        .decode(m.layers[0].annotation(SIGNATURE_ANNOTATION).unwrap())
        .unwrap();
    test_key()
        .public_key()
        .verify(&att.blobs[1].data, &sig)
        .unwrap();
    // The config lists the layers as diff_ids, as containers/image writes it.
    let c: serde_json::Value = serde_json::from_slice(&att.blobs[0].data).unwrap();
    assert_eq!(c["rootfs"]["type"], "layers");
    assert_eq!(c["rootfs"]["diff_ids"][0], m.layers[0].digest.to_string());
}

#[test]
fn signing_again_appends_and_keeps_earlier_layers() {
    let (a, b) = (SigningKey::generate(), SigningKey::generate());
    let first = sign_image(&a, &image(), &image_digest(), None).unwrap();
    let second = sign_image(&b, &image(), &image_digest(), Some(&first.manifest)).unwrap();
    let m = ParsedManifest::parse(&second.manifest, None).unwrap();
    assert_eq!(m.layers.len(), 2);
    // Only the new payload (and the new config) need uploading.
    assert_eq!(second.blobs.len(), 2);
    let mut all = blob_map(&first.blobs);
    all.extend(blob_map(&second.blobs));
    verify(&a.public_key(), &second, &all).unwrap();
    verify(&b.public_key(), &second, &all).unwrap();
    let c: serde_json::Value = serde_json::from_slice(&second.blobs[0].data).unwrap();
    assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);

    // The same signature again (RFC 6979: same key, same payload, same bytes) is not repeated.
    let third = sign_image(&b, &image(), &image_digest(), Some(&second.manifest)).unwrap();
    assert_eq!(third.manifest, second.manifest);
    assert_eq!(third.blobs.len(), 1, "only the (unchanged) config");
}

#[test]
fn tampered_payload_is_a_bad_signature() {
    let key = SigningKey::generate();
    let att = sign_image(&key, &image(), &image_digest(), None).unwrap();
    let payload = &att.blobs[1];
    let forged = String::from_utf8(payload.data.clone())
        .unwrap()
        .replace("team/app", "team/evil")
        .into_bytes();

    // The forged payload under its own digest, the manifest rewritten to match.
    let mut m: ImageManifest = serde_json::from_slice(&att.manifest).unwrap();
    let annotations = m.layers[0].annotations.clone();
    m.layers[0] = Descriptor::for_bytes(SIMPLE_SIGNING_MEDIA_TYPE, &forged);
    m.layers[0].annotations = annotations;
    let forged_att = SignatureAttachment {
        tag: att.tag.clone(),
        manifest: m.to_json(),
        blobs: Vec::new(),
    };
    let blobs = BTreeMap::from([(m.layers[0].digest.clone(), forged.clone())]);
    assert!(matches!(
        verify(&key.public_key(), &forged_att, &blobs),
        Err(Error::BadSignature)
    ));

    // The forged payload served under the original digest.
    let blobs = BTreeMap::from([(payload.descriptor.digest.clone(), forged)]);
    assert!(matches!(
        verify(&key.public_key(), &att, &blobs),
        Err(Error::BlobMismatch(_))
    ));
}

#[test]
fn wrong_key_is_a_bad_signature() {
    let att = sign_image(&SigningKey::generate(), &image(), &image_digest(), None).unwrap();
    let err = verify(
        &SigningKey::generate().public_key(),
        &att,
        &blob_map(&att.blobs),
    )
    .unwrap_err();
    assert!(matches!(err, Error::BadSignature), "{err}");
}

#[test]
fn changed_image_is_a_digest_mismatch() {
    let key = SigningKey::generate();
    let att = sign_image(&key, &image(), &image_digest(), None).unwrap();
    let other = Digest::sha256(b"a different manifest");
    let err = verify_image(
        &key.public_key(),
        &image(),
        &other,
        &att.manifest,
        &blob_map(&att.blobs),
        &IdentityRule::default(),
    )
    .unwrap_err();
    match &err {
        Error::DigestMismatch { signed, expected } => {
            assert_eq!(signed, &image_digest().to_string());
            assert_eq!(expected, &other);
        }
        e => panic!("expected a digest mismatch, got {e:?}"),
    }
    assert!(err.to_string().contains("changed after signing"), "{err}");
}

#[test]
fn other_repository_is_an_identity_mismatch() {
    let key = SigningKey::generate();
    let signed_as: Reference = "127.0.0.1:5000/team/other:1.0".parse().unwrap();
    let att = sign_image(&key, &signed_as, &image_digest(), None).unwrap();
    let blobs = blob_map(&att.blobs);
    for rule in [
        IdentityRule::MatchRepoDigestOrExact,
        IdentityRule::MatchRepository,
        IdentityRule::MatchExact,
    ] {
        let err = verify_image(
            &key.public_key(),
            &image(),
            &image_digest(),
            &att.manifest,
            &blobs,
            &rule,
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::IdentityMismatch { .. }),
            "{rule:?}: {err}"
        );
    }
    // Another tag of the same repository: only matchRepository accepts it.
    let other_tag: Reference = "127.0.0.1:5000/team/app:2.0".parse().unwrap();
    let att = sign_image(&key, &other_tag, &image_digest(), None).unwrap();
    let blobs = blob_map(&att.blobs);
    let check = |rule: IdentityRule| {
        verify_image(
            &key.public_key(),
            &image(),
            &image_digest(),
            &att.manifest,
            &blobs,
            &rule,
        )
    };
    assert!(check(IdentityRule::MatchRepository).is_ok());
    assert!(matches!(
        check(IdentityRule::MatchRepoDigestOrExact),
        Err(Error::IdentityMismatch { .. })
    ));
    // Pulled by digest, any tag of the repository is accepted by the default rule.
    let by_digest = image().with_digest(image_digest());
    assert!(
        verify_image(
            &key.public_key(),
            &by_digest,
            &image_digest(),
            &att.manifest,
            &blobs,
            &IdentityRule::default()
        )
        .is_ok()
    );
}

#[test]
fn manifest_without_signatures() {
    // A .sig manifest whose only layer is something else (an attestation, say).
    let att = attach_signature(&image_digest(), None, b"{}".to_vec(), b"x").unwrap();
    let mut m: ImageManifest = serde_json::from_slice(&att.manifest).unwrap();
    m.layers[0].media_type = "application/vnd.dsse.envelope.v1+json".to_owned();
    let err = verify_image(
        &SigningKey::generate().public_key(),
        &image(),
        &image_digest(),
        &m.to_json(),
        &blob_map(&att.blobs),
        &IdentityRule::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::NoSignatures { .. }), "{err}");
    assert!(err.to_string().contains("sign the image first"));
}

#[test]
fn missing_blob_and_bad_annotation() {
    let key = SigningKey::generate();
    let att = sign_image(&key, &image(), &image_digest(), None).unwrap();
    assert!(matches!(
        verify(&key.public_key(), &att, &BTreeMap::new()),
        Err(Error::MissingBlob(_))
    ));
    let mut m: ImageManifest = serde_json::from_slice(&att.manifest).unwrap();
    m.layers[0].annotations = Some(BTreeMap::from([(
        SIGNATURE_ANNOTATION.to_owned(),
        "not base64!".to_owned(),
    )]));
    let bad = SignatureAttachment {
        manifest: m.to_json(),
        ..att.clone()
    };
    assert!(matches!(
        verify(&key.public_key(), &bad, &blob_map(&att.blobs)),
        Err(Error::SignatureEncoding)
    ));
    m.layers[0].annotations = None;
    let bad = SignatureAttachment {
        manifest: m.to_json(),
        ..att.clone()
    };
    assert!(matches!(
        verify(&key.public_key(), &bad, &blob_map(&att.blobs)),
        Err(Error::MissingSignatureAnnotation)
    ));
    assert!(matches!(
        verify_image(
            &key.public_key(),
            &image(),
            &image_digest(),
            b"not json",
            &BTreeMap::new(),
            &IdentityRule::default()
        ),
        Err(Error::SignatureManifest(_))
    ));
}

#[test]
fn the_most_telling_rejection_is_reported() {
    // One signature by another key, one by the right key for another digest.
    let key = SigningKey::generate();
    let stranger = sign_image(&SigningKey::generate(), &image(), &image_digest(), None).unwrap();
    let old = sign_image(
        &key,
        &image(),
        &Digest::sha256(b"old manifest"),
        Some(&stranger.manifest),
    )
    .unwrap();
    let mut blobs = blob_map(&stranger.blobs);
    blobs.extend(blob_map(&old.blobs));
    let err = verify_image(
        &key.public_key(),
        &image(),
        &image_digest(),
        &old.manifest,
        &blobs,
        &IdentityRule::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}

/// Signatures made by cosign with the key of containers/image's `signature/fixtures/cosign.pub`,
/// from `signature/internal/sigstore_payload_test.go` (`TestVerifySigstorePayload`).
#[test]
fn verifies_cosign_signatures_of_containers_image_test_data() {
    let key = PublicKey::from_pem(
        std::str::from_utf8(&golden::vector("containers-image-cosign.pub")).unwrap(),
    )
    .unwrap();
    for (payload, signature) in [
        (
            &b"&"[..],
            "MEUCIARnnxZQPALBfqkB4aNAYXad79Qs6VehcrgIeZ8p7I2FAiEAzq2HXwXlz1iJeh+ucUR3L0zpjynQk6Rk0+/gXYp49RU=",
        ),
        (
            &b"{}"[..],
            "MEUCIQDkySOBGxastVP0+koTA33NH5hXjwosFau4rxTPN6g48QIgb7eWKkGqfEpHMM3aT4xiqyP/170jEkdFuciuwN4mux4=",
        ),
    ] {
        let der = BASE64.decode(signature).unwrap();
        key.verify(payload, &der).unwrap();
        assert!(matches!(
            key.verify(b"other", &der),
            Err(Error::BadSignature)
        ));
    }
}

/// A payload written and signed by `/usr/bin/cosign`, from containers/image's
/// `signature/internal/testdata/rekor-payload` and `rekor-sig`; the key is that of
/// `signature/fixtures/fulcio-cert` (see tests/vectors/README.md).
#[test]
fn verifies_a_real_cosign_signature_in_an_attachment() {
    let payload = golden::vector("containers-image-rekor-payload");
    let signature_b64 = golden::vector("containers-image-rekor-sig");
    let key = PublicKey::from_pem(
        std::str::from_utf8(&golden::vector("containers-image-fulcio-cert.pub")).unwrap(),
    )
    .unwrap();

    // Our payload writer produces cosign's bytes exactly.
    let parsed = SimpleSigningPayload::parse(&payload).unwrap();
    assert_eq!(
        parsed.docker_reference,
        "192.168.64.2:5000/test-repo-2100826901021538654/alpine"
    );
    assert_eq!(parsed.optional, None);
    let digest: Digest = parsed.docker_manifest_digest.parse().unwrap();
    assert_eq!(
        SimpleSigningPayload::new(parsed.docker_reference.clone(), &digest).to_json(),
        payload
    );

    let der = BASE64.decode(&signature_b64).unwrap();
    let att = attach_signature(&digest, None, payload.clone(), &der).unwrap();
    let blobs = blob_map(&att.blobs);
    let pulled: Reference = "192.168.64.2:5000/test-repo-2100826901021538654/alpine:latest"
        .parse()
        .unwrap();
    let check = |rule: IdentityRule, digest: &Digest| {
        verify_image(&key, &pulled, digest, &att.manifest, &blobs, &rule)
    };
    check(IdentityRule::MatchRepository, &digest).unwrap();
    // cosign signs the repository without a tag, which the default rule refuses (as
    // containers/image does: such signatures need `matchRepository`).
    assert!(matches!(
        check(IdentityRule::MatchRepoDigestOrExact, &digest),
        Err(Error::IdentityMismatch { .. })
    ));
    assert!(matches!(
        check(IdentityRule::MatchRepository, &Digest::sha256(b"x")),
        Err(Error::DigestMismatch { .. })
    ));
    // And another key refuses it.
    let stranger = PublicKey::from_pem(
        std::str::from_utf8(&golden::vector("containers-image-cosign.pub")).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        verify_image(
            &stranger,
            &pulled,
            &digest,
            &att.manifest,
            &blobs,
            &IdentityRule::MatchRepository
        ),
        Err(Error::BadSignature)
    ));
}

#[test]
fn public_key_pem_is_openssl_s() {
    // The PKIX PEM we write for a key equals what `openssl pkey -pubout` wrote for it.
    assert_eq!(
        test_key().public_key().to_pem().into_bytes(),
        golden::vector("test-signing.pub")
    );
}
