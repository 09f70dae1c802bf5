//! The integration tests, one binary: the data-driven corpus and the robustness loop.

#![allow(clippy::unwrap_used)]

mod corpus;
mod robustness;
