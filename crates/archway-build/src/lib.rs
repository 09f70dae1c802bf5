//! The daemonless multi-platform image builder.
//!
//! * [`dockerfile`]: the Dockerfile front end (pure: text → [`dockerfile::Dockerfile`] +
//!   positioned diagnostics);
//! * [`expand`]: BuildKit's quoting and variable-expansion rules;
//! * [`eval`]: one Dockerfile × one platform → the stages and steps to run (pure);
//! * [`context`]: the build context (`.dockerignore`, COPY sources, content keys);
//! * [`store`]: the local content store (blobs, step cache, snapshots, scratch, leases);
//! * [`gc`]: its housekeeping (`du`, `prune`, the size cap after each build);
//! * [`source`]: what an ADD source names (a path, a URL, a git repository), and `remote`,
//!   fetching URLs and repositories into the store;
//! * [`images`]: where images come from ([`ImageSource`]), pulling and unpacking them
//!   ([`ImageStore`], also what `archway run` and the runners use);
//! * [`builder`]: [`Builder`] (async), its requests, results and events, the [`StepRunner`]
//!   seam to the sandbox; `stage` executes one platform's steps, `cache` shares the step cache
//!   through a registry;
//! * [`testing`] (feature `testing`): a recording [`StepRunner`] and an in-memory
//!   [`ImageSource`], so builds are tested without root, runc, qemu or a registry.

pub mod builder;
mod cache;
pub mod context;
pub mod dockerfile;
mod error;
pub mod eval;
pub mod expand;
pub mod gc;
pub mod images;
mod remote;
pub mod source;
mod stage;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

pub use builder::{
    BaseImage, BindMount, BuildEvent, BuildRequest, BuildResult, Builder, ProgressSink, RunOutput,
    RunRequest, StepRunner,
};
pub use cache::{CACHE_ARTIFACT_TYPE, CACHE_CONFIG_TYPE};
pub use error::BuildError;
pub use gc::{GcPolicy, PruneOptions, PruneReport, Usage};
pub use images::{BoxFuture, ImageSource, ImageStore, PulledImage, RegistrySource};
pub use store::{Layer, Lease, ScratchDir, Store, Unpacking};
