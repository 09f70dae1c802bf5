//! The HTTP server layer shared by every Archway endpoint (the registry today, the
//! coordinator's API on the same port tomorrow), so that each of them gets the same
//! protections without thinking about them:
//!
//! * [`serve`]: the accept loop, with the limits of [`ServeConfig`] (header, body-read and
//!   write progress timeouts, a bounded read buffer, a connection cap) and a request id on
//!   every request; HTTPS with [`TlsConfig`] (rustls, HTTP/2 through ALPN, the certificate
//!   reloaded on `SIGHUP`);
//! * [`labels`]: metric label values from fixed sets, so that no client-controlled value
//!   (an invented HTTP method, a path) ever becomes a label;
//! * [`internal_error`]: a failure the client cannot act on is logged with the request id and
//!   answered with a generic message carrying that id (never a server path);
//! * [`BlockingPool`]: CPU-heavy work (bcrypt) on a bounded number of blocking threads with a
//!   bounded queue, never on the async worker threads;
//! * [`raise_nofile_limit`]: the soft `RLIMIT_NOFILE` raised to the hard limit at start.
//!
//! The crate never prints; it emits `tracing` events.

pub mod labels;
mod pool;
mod request_id;
mod rlimit;
mod serve;
mod timeouts;
mod tls;

pub use pool::{BlockingPool, PoolError};
pub use request_id::{InternalError, REQUEST_ID_HEADER, RequestId, internal_error};
pub use rlimit::raise_nofile_limit;
pub use serve::{ServeConfig, serve};
pub use tls::{TlsConfig, TlsError};
