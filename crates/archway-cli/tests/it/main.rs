//! Integration tests: one binary, real `archway` processes on loopback, real peer clients.
#![allow(clippy::print_stderr, clippy::unwrap_used)]

mod auth;
mod build;
mod coordinator;
mod crash;
mod dev;
mod errors;
mod gc;
mod image;
mod interop;
mod local_run;
mod manifest;
mod pipeline;
mod registry_abuse;
mod sandbox;
mod seeds;
mod sign;
mod spec;
mod support;
mod tls;
