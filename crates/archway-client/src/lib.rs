//! Archway's registry client, shared by the image and manifest commands, the builder and the
//! runners.
//!
//! * [`credentials`]: Docker's `config.json` (`auths`, `credsStore`, `credHelpers`) and the
//!   `docker-credential-*` protocol;
//! * [`client`]: the HTTP client: scheme choice (plain HTTP for loopback, `--insecure`),
//!   anonymous/basic/bearer auth with multi-scope tokens, retries, the distribution API;
//! * [`location`]: `docker://REF` and `oci:DIR[:TAG]`;
//! * [`copy`]: digest-preserving copies with concurrency, mounts, verification and progress
//!   events;
//! * [`image`]: inspecting images, importing root filesystems, removing tags;
//! * [`manifest_list`]: local manifest lists (`archway manifest …`);
//! * [`mirror`]: registry mirrors (`docker.io=HOST/PREFIX`) for pulls.
//!
//! The library never prints; progress is reported through [`copy::Event`]s.

pub mod client;
pub mod copy;
pub mod credentials;
pub mod error;
pub mod image;
pub mod location;
pub mod manifest_list;
pub mod mirror;

pub use client::{Client, ClientOptions};
pub use copy::{CopyOptions, CopyReport, Event, Selection, copy};
pub use credentials::{Credentials, DockerConfig};
pub use error::{ClientError, Result};
pub use location::Location;
