//! Image signatures that cosign and containers/image (skopeo, podman, CRI-O) verify with a
//! public key, made and checked without network access.
//!
//! # Keys
//!
//! ECDSA P-256. The private key is written as **unencrypted PKCS#8 PEM**
//! (`-----BEGIN PRIVATE KEY-----`, what `openssl genpkey -algorithm EC -pkeyopt
//! ec_paramgen_curve:P-256` writes); SEC1 (`-----BEGIN EC PRIVATE KEY-----`) is read as well.
//! This is not cosign's own password-encrypted `ENCRYPTED SIGSTORE PRIVATE KEY` format: keep
//! the file secret, or run `cosign import-key-pair --key archway.key` to get a cosign key from
//! it. The public key is PKIX PEM (`-----BEGIN PUBLIC KEY-----`), exactly what
//! `cosign verify --key` and a containers-policy.json `sigstoreSigned` `keyPath` read.
//!
//! # Payload
//!
//! The "simple signing" payload of `sigstore/sigstore`'s `pkg/signature/payload` (what cosign
//! signs), parsed as strictly as containers/image's `signature/internal/sigstore_payload.go`:
//!
//! ```json
//! {"critical":{"identity":{"docker-reference":"registry/repo:tag"},"image":{"docker-manifest-digest":"sha256:…"},"type":"cosign container image signature"},"optional":null}
//! ```
//!
//! The signature is ECDSA over the SHA-256 of those bytes, ASN.1 DER, base64 in the
//! `dev.cosignproject.cosign/signature` annotation.
//!
//! # Attachment
//!
//! As cosign writes it and containers/image reads and writes it with
//! `use-sigstore-attachments: true` (`docker/docker_image_dest.go`,
//! `putSignaturesToSigstoreAttachments`): an OCI image manifest tagged `sha256-<hex>.sig` in
//! the image's repository, whose layers are payloads of media type
//! `application/vnd.dev.cosign.simplesigning.v1+json` with the signature annotation, and whose
//! config is an image config listing the layer digests as `rootfs.diff_ids`. Signing again
//! appends a layer and keeps the earlier ones (an identical layer is not added twice).
//!
//! # Identity
//!
//! The payload names the image. cosign writes the repository alone (`registry/repo`);
//! containers/image writes it with the tag. Under policy.json's default `signedIdentity`
//! (`matchRepoDigestOrExact`) a repository-only identity is refused, so [`sign_image`] keeps the
//! tag of the reference it is given; verify cosign-made signatures with
//! [`IdentityRule::MatchRepository`].

use std::collections::BTreeMap;
use std::fmt;

use archway_oci::media_type::{OCI_CONFIG, OCI_MANIFEST};
use archway_oci::{Descriptor, Digest, ImageManifest, ManifestKind, ParsedManifest, Reference};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::attach::Blob;
use crate::error::RuleName;

/// Media type of a simple-signing payload layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of a cosign payload.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";

/// An ECDSA P-256 private key.
#[derive(Clone)]
pub struct SigningKey {
    inner: p256::ecdsa::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key (from the operating system's generator).
    pub fn generate() -> Self {
        SigningKey {
            inner: p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng),
        }
    }

    /// Reads an unencrypted PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`) PEM.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        if let Ok(inner) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(SigningKey { inner });
        }
        let secret = p256::SecretKey::from_sec1_pem(pem).map_err(|_| Error::PrivateKey)?;
        Ok(SigningKey {
            inner: p256::ecdsa::SigningKey::from(&secret),
        })
    }

    /// The key as unencrypted PKCS#8 PEM (zeroed when dropped).
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        self.inner
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap_or_else(|e| unreachable!("a P-256 key encodes as PKCS#8: {e}"))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            inner: *self.inner.verifying_key(),
        }
    }

    /// Signs `payload`: ECDSA P-256 over its SHA-256 (RFC 6979 nonces, so the same payload
    /// and key give the same signature), ASN.1 DER.
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let signature: p256::ecdsa::Signature = self.inner.sign(payload);
        signature.to_der().as_bytes().to_vec()
    }
}

/// An ECDSA P-256 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    inner: p256::ecdsa::VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// Reads a PKIX PEM public key (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        p256::ecdsa::VerifyingKey::from_public_key_pem(pem.trim())
            .map(|inner| PublicKey { inner })
            .map_err(|_| Error::PublicKey)
    }

    /// The key as PKIX PEM, what `cosign verify --key` and policy.json's `keyPath` read.
    pub fn to_pem(&self) -> String {
        self.inner
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_else(|e| unreachable!("a P-256 key encodes as PKIX: {e}"))
    }

    /// The sha256 of the key's PKIX DER encoding.
    pub fn fingerprint(&self) -> Digest {
        let der = self
            .inner
            .to_public_key_der()
            .unwrap_or_else(|e| unreachable!("a P-256 key encodes as PKIX: {e}"));
        Digest::sha256(der.as_bytes())
    }

    /// Checks a DER ECDSA signature over `payload` (hashed with SHA-256).
    pub fn verify(&self, payload: &[u8], signature_der: &[u8]) -> Result<(), Error> {
        let signature =
            p256::ecdsa::Signature::from_der(signature_der).map_err(|_| Error::BadSignature)?;
        self.inner
            .verify(payload, &signature)
            .map_err(|_| Error::BadSignature)
    }
}

/// A simple-signing payload: which manifest, under which name.
#[derive(Clone, Debug, PartialEq)]
pub struct SimpleSigningPayload {
    /// `critical.identity.docker-reference`: `registry/repo` (cosign) or `registry/repo:tag`.
    pub docker_reference: String,
    /// `critical.image.docker-manifest-digest`, as signed.
    pub docker_manifest_digest: String,
    /// `optional`: `None` is written as `null`, as cosign does without annotations.
    pub optional: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPayload {
    critical: RawCritical,
    // No `default`: a payload without `optional` is refused, as containers/image does.
    #[serde(deserialize_with = "deserialize_present")]
    optional: Option<BTreeMap<String, serde_json::Value>>,
}

fn deserialize_present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, serde_json::Value>>, D::Error> {
    Option::deserialize(d)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCritical {
    identity: RawIdentity,
    image: RawImage,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

impl SimpleSigningPayload {
    /// The payload for `digest` under `docker_reference`, with `optional: null`.
    pub fn new(docker_reference: impl Into<String>, digest: &Digest) -> Self {
        SimpleSigningPayload {
            docker_reference: docker_reference.into(),
            docker_manifest_digest: digest.to_string(),
            optional: None,
        }
    }

    /// The payload bytes: compact JSON, keys in Go's (sorted) order.
    pub fn to_json(&self) -> Vec<u8> {
        let raw = RawPayload {
            critical: RawCritical {
                identity: RawIdentity {
                    docker_reference: self.docker_reference.clone(),
                },
                image: RawImage {
                    docker_manifest_digest: self.docker_manifest_digest.clone(),
                },
                kind: SIGNATURE_TYPE.to_owned(),
            },
            optional: self.optional.clone(),
        };
        serde_json::to_vec(&raw).unwrap_or_else(|e| unreachable!("a payload serialises: {e}"))
    }

    /// Parses a payload with containers/image's rules: exactly `critical` and `optional` at
    /// the top, exactly `identity`, `image` and `type` in `critical` (`type` being
    /// [`SIGNATURE_TYPE`]), one field each in `identity` and `image`, a valid digest, and in
    /// `optional` (an object or null) a string `creator` and an integer `timestamp` if present.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let raw: RawPayload =
            serde_json::from_slice(bytes).map_err(|e| Error::InvalidPayload(e.to_string()))?;
        if raw.critical.kind != SIGNATURE_TYPE {
            return Err(Error::InvalidPayload(format!(
                "unrecognised signature type `{}`",
                raw.critical.kind
            )));
        }
        if let Some(optional) = &raw.optional {
            if optional.get("creator").is_some_and(|c| !c.is_string()) {
                return Err(Error::InvalidPayload(
                    "optional.creator is not a string".to_owned(),
                ));
            }
            if optional.get("timestamp").is_some_and(|t| {
                t.as_i64().is_none() && t.as_f64().is_none_or(|f| f.fract() != 0.0)
            }) {
                return Err(Error::InvalidPayload(
                    "optional.timestamp is not an integer".to_owned(),
                ));
            }
        }
        let digest = &raw.critical.image.docker_manifest_digest;
        if digest.parse::<Digest>().is_err() {
            return Err(Error::InvalidPayload(format!(
                "invalid docker-manifest-digest `{digest}`"
            )));
        }
        Ok(SimpleSigningPayload {
            docker_reference: raw.critical.identity.docker_reference,
            docker_manifest_digest: raw.critical.image.docker_manifest_digest,
            optional: raw.optional,
        })
    }
}

/// The identity a signature must name, as policy.json's `signedIdentity` (containers/image's
/// `signature/policy_reference_match.go`). References are compared after docker's
/// normalisation (`busybox` is `docker.io/library/busybox`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum IdentityRule {
    /// The default: an image pulled by tag needs a signature for exactly that
    /// `repository:tag`; an image pulled by digest needs a signature for the same repository
    /// with some tag (or digest). A repository-only identity is refused.
    #[default]
    MatchRepoDigestOrExact,
    /// Any signature for the same repository, with or without a tag (use it for cosign).
    MatchRepository,
    /// Exactly the reference the image was pulled by; both need a tag or digest.
    MatchExact,
    /// Exactly this reference (with tag or digest), whatever the image was pulled by.
    ExactReference(String),
    /// This repository, whatever the image was pulled by.
    ExactRepository(String),
}

fn name_only(r: &Reference) -> bool {
    r.tag.is_none() && r.digest.is_none()
}

impl IdentityRule {
    /// The rule's `type` in policy.json.
    pub fn policy_name(&self) -> &'static str {
        match self {
            IdentityRule::MatchRepoDigestOrExact => "matchRepoDigestOrExact",
            IdentityRule::MatchRepository => "matchRepository",
            IdentityRule::MatchExact => "matchExact",
            IdentityRule::ExactReference(_) => "exactReference",
            IdentityRule::ExactRepository(_) => "exactRepository",
        }
    }

    /// Whether a signature for `signed` (its `docker-reference`) is accepted for `image`, the
    /// reference the image was pulled by.
    pub fn matches(&self, image: &Reference, signed: &str) -> bool {
        let Ok(signature) = signed.parse::<Reference>() else {
            return false;
        };
        match self {
            IdentityRule::MatchRepoDigestOrExact => {
                if name_only(&signature) {
                    false
                } else if image.tag.is_some() {
                    signature.to_string() == image.to_string()
                } else if image.digest.is_some() {
                    signature.name() == image.name()
                } else {
                    false
                }
            }
            IdentityRule::MatchRepository => signature.name() == image.name(),
            IdentityRule::MatchExact => {
                !name_only(image)
                    && !name_only(&signature)
                    && signature.to_string() == image.to_string()
            }
            IdentityRule::ExactReference(r) => r.parse::<Reference>().is_ok_and(|r| {
                !name_only(&r) && !name_only(&signature) && signature.to_string() == r.to_string()
            }),
            IdentityRule::ExactRepository(r) => r
                .parse::<Reference>()
                .is_ok_and(|r| signature.name() == r.name()),
        }
    }
}

/// The tag of an image's signature manifest: `sha256-<hex>.sig`.
pub fn attachment_tag(manifest_digest: &Digest) -> String {
    format!(
        "{}-{}.sig",
        manifest_digest.algorithm(),
        manifest_digest.hex()
    )
}

/// The `docker-reference` [`sign_image`] writes: `registry/repository`, with `:tag` when the
/// reference has one (the digest is never part of it).
pub fn docker_reference(image: &Reference) -> String {
    match &image.tag {
        Some(tag) => format!("{}:{tag}", image.name()),
        None => image.name(),
    }
}

/// A signature manifest to push at [`SignatureAttachment::tag`] in the image's repository,
/// and the blobs it needs that may not be there yet (its config and the new payload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureAttachment {
    pub tag: String,
    /// An OCI image manifest (`application/vnd.oci.image.manifest.v1+json`).
    pub manifest: Vec<u8>,
    pub blobs: Vec<Blob>,
}

/// The config of a signature manifest, as containers/image writes it (Go's serialisation of
/// an image-spec `Image` with only `rootfs` set): `{"architecture":"","os":"","config":{},
/// "rootfs":{"type":"layers","diff_ids":[…]}}`.
#[derive(Serialize)]
struct AttachmentConfig<'a> {
    architecture: &'static str,
    os: &'static str,
    config: BTreeMap<String, String>,
    rootfs: RootFs<'a>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<&'a Digest>,
}

/// Adds one signed payload to an image's signature manifest. `existing` is the manifest now
/// at the `.sig` tag, if any: its layers are kept, and a layer identical to the new one (same
/// media type, digest, size and annotations) is not added twice. The config is rebuilt from
/// the layers (`diff_ids` = the layer digests, as for uncompressed payloads they are), so the
/// earlier config need not be fetched; fields another tool put in it (cosign's `created`,
/// `history`) are not carried over, as containers/image does not carry unknown ones.
///
/// The returned blobs are the config and the new payload; the earlier layers' blobs are
/// already in the repository.
pub fn attach_signature(
    manifest_digest: &Digest,
    existing: Option<&[u8]>,
    payload: Vec<u8>,
    signature_der: &[u8],
) -> Result<SignatureAttachment, Error> {
    let mut layers = match existing {
        Some(bytes) => {
            let parsed = ParsedManifest::parse(bytes, None).map_err(Error::SignatureManifest)?;
            if parsed.kind != ManifestKind::Image {
                return Err(Error::SignatureManifest(
                    archway_oci::ManifestError::UnsupportedMediaType(parsed.media_type),
                ));
            }
            parsed.layers
        }
        None => Vec::new(),
    };
    let mut layer = Blob::new(SIMPLE_SIGNING_MEDIA_TYPE, payload);
    layer.descriptor.annotations = Some(BTreeMap::from([(
        SIGNATURE_ANNOTATION.to_owned(),
        BASE64.encode(signature_der),
    )]));
    let mut blobs = Vec::new();
    if !layers.contains(&layer.descriptor) {
        layers.push(layer.descriptor.clone());
        blobs.push(layer);
    }
    let config = AttachmentConfig {
        architecture: "",
        os: "",
        config: BTreeMap::new(),
        rootfs: RootFs {
            kind: "layers",
            diff_ids: layers.iter().map(|l| &l.digest).collect(),
        },
    };
    let config = Blob::new(
        OCI_CONFIG,
        serde_json::to_vec(&config).unwrap_or_else(|e| unreachable!("config serialises: {e}")),
    );
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST.to_owned(),
        artifact_type: None,
        config: config.descriptor.clone(),
        layers,
        subject: None,
        annotations: None,
    };
    blobs.insert(0, config);
    Ok(SignatureAttachment {
        tag: attachment_tag(manifest_digest),
        manifest: manifest.to_json(),
        blobs,
    })
}

/// Signs the image `manifest_digest` as `image` (see [`docker_reference`]) and adds the
/// signature to `existing`, the current `.sig` manifest if there is one.
pub fn sign_image(
    key: &SigningKey,
    image: &Reference,
    manifest_digest: &Digest,
    existing: Option<&[u8]>,
) -> Result<SignatureAttachment, Error> {
    let payload = SimpleSigningPayload::new(docker_reference(image), manifest_digest).to_json();
    let signature = key.sign(&payload);
    attach_signature(manifest_digest, existing, payload, &signature)
}

/// A signature that verified.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedSignature {
    pub payload: SimpleSigningPayload,
    /// The layer of the `.sig` manifest it came from.
    pub layer: Descriptor,
}

/// Verifies an image against its signature manifest the way containers/image's
/// `sigstoreSigned` policy does: some simple-signing layer must carry a signature by `key`
/// over its payload, the payload's digest must be `manifest_digest`, and its identity must
/// satisfy `rule` for `image` (the reference the image was pulled by). Other layers are
/// ignored. `blobs` holds the layers' contents by digest.
///
/// When every signature is rejected, the error is that of the one that got furthest
/// (digest and identity mismatches are reported over signatures by other keys).
pub fn verify_image(
    key: &PublicKey,
    image: &Reference,
    manifest_digest: &Digest,
    signature_manifest: &[u8],
    blobs: &BTreeMap<Digest, Vec<u8>>,
    rule: &IdentityRule,
) -> Result<VerifiedSignature, Error> {
    let parsed =
        ParsedManifest::parse(signature_manifest, None).map_err(Error::SignatureManifest)?;
    let mut best: Option<Error> = None;
    for layer in parsed
        .layers
        .iter()
        .filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE)
    {
        match verify_layer(key, image, manifest_digest, layer, blobs, rule) {
            Ok(payload) => {
                return Ok(VerifiedSignature {
                    payload,
                    layer: layer.clone(),
                });
            }
            Err(e) => {
                if best
                    .as_ref()
                    .is_none_or(|b| e.verification_progress() > b.verification_progress())
                {
                    best = Some(e);
                }
            }
        }
    }
    Err(best.unwrap_or_else(|| Error::NoSignatures {
        digest: manifest_digest.clone(),
        tag: attachment_tag(manifest_digest),
    }))
}

fn verify_layer(
    key: &PublicKey,
    image: &Reference,
    manifest_digest: &Digest,
    layer: &Descriptor,
    blobs: &BTreeMap<Digest, Vec<u8>>,
    rule: &IdentityRule,
) -> Result<SimpleSigningPayload, Error> {
    let payload = blobs
        .get(&layer.digest)
        .ok_or_else(|| Error::MissingBlob(layer.digest.clone()))?;
    layer.digest.verify(payload).map_err(Error::BlobMismatch)?;
    let encoded = layer
        .annotation(SIGNATURE_ANNOTATION)
        .ok_or(Error::MissingSignatureAnnotation)?;
    let signature = BASE64
        .decode(encoded)
        .map_err(|_| Error::SignatureEncoding)?;
    key.verify(payload, &signature)?;
    let parsed = SimpleSigningPayload::parse(payload)?;
    if parsed
        .docker_manifest_digest
        .parse::<Digest>()
        .ok()
        .as_ref()
        != Some(manifest_digest)
    {
        return Err(Error::DigestMismatch {
            signed: parsed.docker_manifest_digest,
            expected: manifest_digest.clone(),
        });
    }
    if !rule.matches(image, &parsed.docker_reference) {
        return Err(Error::IdentityMismatch {
            signed: parsed.docker_reference,
            expected: image.to_string(),
            rule: RuleName(rule.policy_name()),
        });
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn payload_bytes_match_cosign() {
        // sigstore/sigstore pkg/signature/payload/payload_test.go, "no claims".
        let d: Digest = "sha256:d34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33f"
            .parse()
            .unwrap();
        let p = SimpleSigningPayload::new("example.com/test/image", &d);
        assert_eq!(
            String::from_utf8(p.to_json()).unwrap(),
            r#"{"critical":{"identity":{"docker-reference":"example.com/test/image"},"image":{"docker-manifest-digest":"sha256:d34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33fd34db33f"},"type":"cosign container image signature"},"optional":null}"#
        );
        assert_eq!(SimpleSigningPayload::parse(&p.to_json()).unwrap(), p);
    }

    #[test]
    fn payload_parse_is_strict() {
        let good = SimpleSigningPayload::new("r/x:1", &Digest::sha256(b"m")).to_json();
        let v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        let broken = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = v.clone();
            f(&mut v);
            SimpleSigningPayload::parse(&serde_json::to_vec(&v).unwrap())
        };
        assert!(
            broken(&|v| {
                v.as_object_mut().unwrap().remove("optional");
            })
            .is_err()
        );
        assert!(broken(&|v| v["unexpected"] = 1.into()).is_err());
        assert!(broken(&|v| v["critical"]["unexpected"] = 1.into()).is_err());
        assert!(broken(&|v| v["critical"]["type"] = "atomic container signature".into()).is_err());
        assert!(
            broken(&|v| v["critical"]["image"]["docker-manifest-digest"] = "x".into()).is_err()
        );
        assert!(broken(&|v| v["critical"]["identity"]["extra"] = "x".into()).is_err());
        assert!(broken(&|v| v["optional"] = serde_json::json!({"timestamp": 0.5})).is_err());
        assert!(broken(&|v| v["optional"] = serde_json::json!({"creator": 1})).is_err());
        assert!(broken(&|v| v["optional"] = 1.into()).is_err());
        let ok = broken(&|v| {
            v["optional"] = serde_json::json!({"creator": "c", "timestamp": 1484683104, "x": [1]})
        })
        .unwrap();
        assert_eq!(ok.optional.unwrap()["timestamp"], 1484683104);
        assert!(SimpleSigningPayload::parse(b"&").is_err());
        assert!(SimpleSigningPayload::parse(b"{}").is_err());
    }

    #[test]
    fn keys_round_trip_through_pem() {
        let key = SigningKey::generate();
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let public = key.public_key().to_pem();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(PublicKey::from_pem(&public).unwrap(), key.public_key());
        assert!(matches!(
            SigningKey::from_pem(&public),
            Err(Error::PrivateKey)
        ));
        assert!(matches!(PublicKey::from_pem(&pem), Err(Error::PublicKey)));
        assert!(!format!("{key:?}").contains(pem.as_str()));
    }

    #[test]
    fn reads_sec1_private_keys() {
        let key = SigningKey::generate();
        let sec1 = p256::SecretKey::from(&key.inner)
            .to_sec1_pem(LineEnding::LF)
            .unwrap();
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        assert_eq!(
            SigningKey::from_pem(&sec1).unwrap().public_key(),
            key.public_key()
        );
    }

    #[test]
    fn identity_rules() {
        use IdentityRule::*;
        let by_tag = r("127.0.0.1:5000/team/app:1.0");
        let by_digest = r(&format!("127.0.0.1:5000/team/app@{}", Digest::sha256(b"m")));
        // matchRepoDigestOrExact
        assert!(MatchRepoDigestOrExact.matches(&by_tag, "127.0.0.1:5000/team/app:1.0"));
        assert!(!MatchRepoDigestOrExact.matches(&by_tag, "127.0.0.1:5000/team/app:2.0"));
        assert!(!MatchRepoDigestOrExact.matches(&by_tag, "127.0.0.1:5000/team/app"));
        assert!(MatchRepoDigestOrExact.matches(&by_digest, "127.0.0.1:5000/team/app:2.0"));
        assert!(!MatchRepoDigestOrExact.matches(&by_digest, "127.0.0.1:5000/team/app"));
        assert!(!MatchRepoDigestOrExact.matches(&by_digest, "127.0.0.1:5000/team/other:1"));
        // docker's normalisation applies to both sides.
        assert!(MatchRepoDigestOrExact.matches(&r("busybox:1"), "docker.io/library/busybox:1"));
        // matchRepository
        assert!(MatchRepository.matches(&by_tag, "127.0.0.1:5000/team/app"));
        assert!(!MatchRepository.matches(&by_tag, "127.0.0.1:5000/team/app2"));
        assert!(!MatchRepository.matches(&by_tag, "not a reference"));
        // matchExact
        assert!(MatchExact.matches(&by_tag, "127.0.0.1:5000/team/app:1.0"));
        assert!(!MatchExact.matches(&by_digest, "127.0.0.1:5000/team/app:1.0"));
        // exactReference / exactRepository
        assert!(ExactReference("other/app:9".into()).matches(&by_tag, "docker.io/other/app:9"));
        assert!(!ExactReference("other/app".into()).matches(&by_tag, "other/app"));
        assert!(ExactRepository("other/app".into()).matches(&by_tag, "other/app:3"));
    }

    #[test]
    fn tag_and_reference_forms() {
        let d = Digest::sha256(b"m");
        assert_eq!(attachment_tag(&d), format!("sha256-{}.sig", d.hex()));
        assert_eq!(docker_reference(&r("busybox")), "docker.io/library/busybox");
        assert_eq!(
            docker_reference(&r("busybox:1")),
            "docker.io/library/busybox:1"
        );
        assert_eq!(
            docker_reference(&r(&format!("h:5000/a:t@{d}"))),
            "h:5000/a:t"
        );
    }
}
