//! The daemonless multi-platform image builder.
//!
//! * [`dockerfile`]: the Dockerfile front end (pure: text → [`dockerfile::Dockerfile`] +
//!   positioned diagnostics);
//! * [`expand`]: BuildKit's quoting and variable-expansion rules.

pub mod builder;
pub mod context;
pub mod dockerfile;
pub mod eval;
pub mod expand;
