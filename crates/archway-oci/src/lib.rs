//! OCI core types shared by every Archway crate.
//!
//! * [`digest`]: content digests (sha256, sha512), streaming hashing and verification;
//! * [`media_type`]: the OCI and Docker media types Archway understands;
//! * [`manifest`]: lenient parsing of image manifests and indexes into the references a
//!   registry or a copier must follow (config, layers, children, subject);
//! * [`platform`]: `os/arch[/variant]` parsing and normalisation with the usual aliases;
//! * [`layout`]: reading and writing OCI image layouts (`oci-layout`, `index.json`, `blobs/`);
//! * [`reference`]: `[registry/]repository[:tag][@digest]` parsing with docker's normalisation;
//! * [`config`]: the image configuration, serialised deterministically;
//! * [`run_config`]: what a container runs (`docker run`'s rules over ENTRYPOINT, CMD, env,
//!   PATH, workdir and user);
//! * [`duration`]: durations as Dockerfiles (`1m30s`) and CI files (`1 hour 30 minutes`) write them;
//! * [`layer`]: reproducible layer tarballs from a directory or a tar stream.
//!
//! The serde types of the image specification itself come from the `oci-spec` crate and are
//! re-exported as [`spec`].

pub mod atomic_file;
pub mod config;
pub mod digest;
pub mod duration;
pub mod layer;
pub mod layout;
pub mod manifest;
pub mod media_type;
pub mod pgzip;
pub mod platform;
pub mod reference;
pub mod run_config;

pub use digest::{Algorithm, Digest, DigestError, Digester};
pub use manifest::{Descriptor, ImageManifest, Index, ManifestError, ManifestKind, ParsedManifest};
pub use platform::{Platform, PlatformError};
pub use reference::{Reference, ReferenceError};

/// The image specification's own types (manifests, indexes, configs), from `oci-spec`.
pub use oci_spec::image as spec;

/// An error with its causes on one line, `a: b: c`, for messages that travel as text (build
/// warnings) and for tests that look for a message wherever it sits in the chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}
