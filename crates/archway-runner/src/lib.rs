//! The runner behind `archway runner`: takes jobs from the coordinator over a long poll,
//! runs each in an executor, streams masked logs, renews its leases, drains gracefully.
//!
//! * [`agent`]: the main loop, job tasks and log uploaders;
//! * [`artifacts`]: which files `artifacts:` keeps, their archive, dotenv reports;
//! * [`cache`]: `cache:` keys, where each runner keeps caches, when they are restored and saved;
//! * [`executor`]: the `Executor` trait, its I/O, and the no-op and recording executors;
//! * [`sandbox`]: the real executor (the job's image in an ephemeral sandbox);
//! * [`toolbox`]: Kaniko, docker, podman, buildah and manifest-tool served by Archway;
//! * [`mask`]: streaming secret masking;
//! * [`config`]: `runner.json` and platform detection;
//! * [`control`]: the local socket `archway runner drain` talks to.
//!
//! The library never prints: it reports through [`agent::AgentEvent`]s and `tracing`.

pub mod agent;
pub mod artifacts;
pub mod cache;
pub mod config;
pub mod control;
pub mod executor;
pub mod junit;
pub mod mask;
pub mod sandbox;
pub mod toolbox;

pub use agent::{Agent, AgentEvent, AgentOptions, DrainHandle};
pub use config::RunnerConfig;
pub use executor::{Act, ExecResult, Executor, JobIo, NoopExecutor, RecordingExecutor};
