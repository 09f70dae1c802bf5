//! Integration tests of archway-attest: one test binary, a module per area.
//!
//! Documents are compared with golden files under `tests/golden/`; run with `UPDATE_EXPECT=1`
//! to rewrite them, then review the diff.

#![allow(clippy::unwrap_used)]

mod attach;
mod golden;
mod provenance;
mod sbom;
mod sign;
