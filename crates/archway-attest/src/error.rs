//! The one error type of this crate.

use std::fmt;
use std::path::PathBuf;

use archway_oci::Digest;

/// Why reading a root filesystem, loading a key, or verifying a signature failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A package database or `os-release` of the scanned root filesystem could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file of the scanned root filesystem is too large to be a package database.
    #[error("{} is {size} bytes, more than the {limit} a package database may have", path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },

    /// The private key PEM is not a P-256 key in PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1
    /// (`BEGIN EC PRIVATE KEY`) form.
    #[error(
        "the private key is not an unencrypted ECDSA P-256 key in PKCS#8 (`-----BEGIN PRIVATE KEY-----`) or SEC1 (`-----BEGIN EC PRIVATE KEY-----`) PEM; cosign's encrypted keys must be exported first"
    )]
    PrivateKey,
    /// The public key PEM is not a P-256 key in PKIX form.
    #[error(
        "the public key is not an ECDSA P-256 key in PKIX PEM (`-----BEGIN PUBLIC KEY-----`); only P-256 keys are supported"
    )]
    PublicKey,

    /// The signature manifest (`sha256-….sig`) is not an image manifest.
    #[error("the signature manifest is not a valid image manifest")]
    SignatureManifest(#[source] archway_oci::ManifestError),
    /// The `.sig` manifest holds no simple-signing layer.
    #[error(
        "no signature found for {digest}: its signature manifest `{tag}` has no `application/vnd.dev.cosign.simplesigning.v1+json` layer; sign the image first"
    )]
    NoSignatures { digest: Digest, tag: String },
    /// A signature layer's blob was not handed to the verifier.
    #[error("the blob {0} of a signature layer was not provided")]
    MissingBlob(Digest),
    /// A signature layer's blob does not hash to the digest its descriptor names.
    #[error("a signature layer's blob does not match its descriptor")]
    BlobMismatch(#[source] archway_oci::DigestError),
    /// A signature layer lacks the `dev.cosignproject.cosign/signature` annotation.
    #[error("a signature layer has no `dev.cosignproject.cosign/signature` annotation")]
    MissingSignatureAnnotation,
    /// The annotation is not base64 (standard alphabet, padded).
    #[error("the `dev.cosignproject.cosign/signature` annotation is not valid base64")]
    SignatureEncoding,
    /// The ECDSA signature does not verify over the payload with the given key.
    #[error(
        "the signature does not verify with the given public key: it was made with another key, or the payload was altered"
    )]
    BadSignature,
    /// The signed payload is not a simple-signing payload as containers/image accepts it.
    #[error("the signed payload is not a cosign simple-signing payload: {0}")]
    InvalidPayload(String),
    /// The signature is valid but for another manifest: the image (or its tag) changed.
    #[error(
        "the signature is for manifest {signed}, but the image's manifest is {expected}: the image was changed after signing, or the signature belongs to another image"
    )]
    DigestMismatch { signed: String, expected: Digest },
    /// The signature is valid but names another image.
    #[error("the signature is for `{signed}`, which does not match `{expected}` under {rule}")]
    IdentityMismatch {
        signed: String,
        expected: String,
        rule: RuleName,
    },
}

/// The name of an identity rule as policy.json spells it, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleName(pub &'static str);

impl fmt::Display for RuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "signedIdentity `{}`", self.0)
    }
}

impl Error {
    /// How far verification of one signature got before this error: when every signature of a
    /// `.sig` manifest is rejected, the one that got furthest explains the failure best (a
    /// valid signature for another digest says more than a signature by some other key).
    pub(crate) fn verification_progress(&self) -> u8 {
        match self {
            Error::InvalidPayload(_) => 1,
            Error::DigestMismatch { .. } => 2,
            Error::IdentityMismatch { .. } => 3,
            _ => 0,
        }
    }
}
