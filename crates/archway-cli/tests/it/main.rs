//! Integration tests: one binary, real `archway` processes on loopback, real peer clients.
#![allow(clippy::print_stderr, clippy::unwrap_used)]

#[macro_use]
mod support;

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
mod object_storage;
mod pipeline;
mod registry_abuse;
mod sandbox;
mod seeds;
mod sign;
mod spec;
mod tls;
