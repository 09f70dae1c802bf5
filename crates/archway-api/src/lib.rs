//! The coordinator's HTTP API (`/api/v1/…`): the JSON documents that clients, runners and the
//! server exchange ([`types`]), the conversion of a planned pipeline into submitted jobs
//! ([`plan`]), and an async [`client`].
//!
//! Server, runner and CLI all use these types, so the wire format is defined exactly once.

pub mod client;
pub mod plan;
pub mod types;

pub use client::{ApiClient, ApiError};
pub use types::*;
