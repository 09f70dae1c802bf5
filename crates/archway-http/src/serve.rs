//! The accept loop: one hyper HTTP/1.1 connection per accepted socket, each in its own task,
//! with the limits of [`ServeConfig`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::HeaderValue;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::request_id::{REQUEST_ID_HEADER, RequestId};
use crate::timeouts::{ReadProgress, WriteProgress};

/// The limits a server enforces on every connection.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// A client must send its request headers within this time; it is also how long an idle
    /// keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// A client that sends no request body data for this long, while the server waits for
    /// it, is dropped.
    pub body_read_timeout: Duration,
    /// A client that reads nothing of the response for this long, while the server has
    /// data to send, is dropped.
    pub write_timeout: Duration,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Per-connection read buffer cap. hyper's default (~400 KiB) costs memory with many
    /// concurrent pushes; 128 KiB keeps 32 concurrent 64 MiB pushes under distribution's
    /// memory with single-connection throughput unchanged (measured with `registry-bench`).
    pub max_read_buffer: usize,
    /// After shutdown starts, requests in flight get this long to finish (long polls and
    /// followed logs would otherwise hold the process up).
    pub shutdown_grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_read_buffer: 128 * 1024,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish, and returns.
///
/// Every request carries `ConnectInfo<SocketAddr>` and a [`RequestId`] in its extensions, runs
/// with that id as [`RequestId::current`], and its response carries the id in `x-request-id`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(config.max_read_buffer)
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(WriteProgress::new(stream, config.write_timeout));
        let service = request_service(router.clone(), remote, config.body_read_timeout);
        let conn = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            let _slot = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?config.shutdown_grace, "requests still running at the end of the shutdown grace period were cut off");
    }
    Ok(())
}

/// The per-connection hyper service: request id, peer address and body timeout around the
/// router.
fn request_service(
    router: Router,
    remote: SocketAddr,
    body_read_timeout: Duration,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future: Send + 'static,
> {
    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let id = RequestId::generate();
        let mut req = req.map(|b| Body::new(ReadProgress::new(b, body_read_timeout)));
        req.extensions_mut().insert(ConnectInfo(remote));
        req.extensions_mut().insert(id);
        let call = router.clone().oneshot(req);
        id.scope(async move {
            let mut resp = call.await?;
            if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
                resp.headers_mut().insert(REQUEST_ID_HEADER, v);
            }
            Ok(resp)
        })
    })
}
