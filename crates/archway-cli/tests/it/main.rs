//! Integration tests: one binary, real `archway` processes on loopback, real peer clients.
#![allow(clippy::print_stderr, clippy::unwrap_used)]

#[macro_use]
mod support;

mod auth;
mod build;
mod coordinator;
mod crash;
mod errors;
mod gc;
mod image;
mod interop;
mod manifest;
mod object_storage;
mod pipeline;
mod registry_abuse;
mod sandbox;
mod spec;
