//! Supply-chain metadata for images, in the formats existing tools verify.
//!
//! * [`sbom`]: the packages of an unpacked root filesystem (dpkg, distroless `status.d`, apk,
//!   a bare busybox) as an SPDX 2.3 JSON document;
//! * [`provenance`]: an in-toto Statement v1 carrying SLSA Provenance v1 for a build;
//! * [`attach`]: OCI 1.1 referrer manifests that attach such a document to an image;
//! * [`sign`]: cosign-compatible ECDSA P-256 signatures — keys, the simple-signing payload,
//!   the `sha256-<hex>.sig` attachment manifest, and verification with containers/image's
//!   identity rules.
//!
//! The crate is pure: functions take bytes (and, for the SBOM, a directory to read) and
//! return bytes; pushing and fetching is the caller's. Outputs are deterministic: timestamps
//! are inputs, maps are sorted, fields are in a fixed order.

pub mod attach;
mod error;
pub mod provenance;
mod purl;
pub mod sbom;
pub mod sign;

pub use error::{Error, RuleName};

/// This crate's version, for `Tool: archway-<version>` and the provenance builder version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
