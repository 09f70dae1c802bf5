//! One module per top-level subcommand (plus `common`, shared by the registry clients).

pub mod attest;
pub mod build;
pub mod common;
pub mod dev;
pub mod image;
pub mod includes;
pub mod local;
pub mod login;
pub mod manifest;
pub mod pipeline;
pub mod registry;
pub mod remote;
pub mod runner;
pub mod sandbox;
pub mod server;
pub mod sign;
pub mod toolbox;
