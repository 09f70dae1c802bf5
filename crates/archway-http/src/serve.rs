//! The accept loop: one hyper connection per accepted socket, each in its own task, with the
//! limits of [`ServeConfig`]. Plain TCP speaks HTTP/1.1; with [`ServeConfig::tls`] the
//! handshake offers HTTP/2 and HTTP/1.1 through ALPN and the client's choice is served.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::HeaderValue;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::request_id::{REQUEST_ID_HEADER, RequestId};
use crate::timeouts::{ReadProgress, WriteProgress};
use crate::tls::{ALPN_H2, ReloadableCert, TlsConfig};

/// The limits a server enforces on every connection.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// A client must send its request headers within this time; it is also how long an idle
    /// keep-alive connection stays open (an HTTP/2 connection with no request in flight), and
    /// how long a TLS handshake may take.
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
    /// Serve HTTPS with this certificate and key (reloaded on `SIGHUP`); plain HTTP without.
    pub tls: Option<TlsConfig>,
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
            tls: None,
        }
    }
}

/// Requests one HTTP/2 connection may have in flight at once (hyper's default is 200).
const H2_MAX_STREAMS: u32 = 128;
/// Largest request header block over HTTP/2 (bearer tokens are up to 64 KiB).
const H2_MAX_HEADER_LIST: u32 = 128 * 1024;

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (for at most [`ServeConfig::shutdown_grace`]), and returns.
///
/// Every request carries `ConnectInfo<SocketAddr>` and a [`RequestId`] in its extensions, runs
/// with that id as [`RequestId::current`], and its response carries the id in `x-request-id`.
///
/// With [`ServeConfig::tls`], the certificate and key are read before the first connection
/// (an unusable pair is an `InvalidInput` error) and again on every `SIGHUP`: connections
/// already open keep going, new handshakes get the new certificate, and a pair that fails
/// to load is logged and leaves the old one in use.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let tls = match &config.tls {
        None => None,
        Some(tls) => {
            let cert = Arc::new(
                ReloadableCert::new(tls.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            );
            let server = crate::tls::server_config(cert.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            spawn_reload_on_hangup(cert)?;
            Some(tokio_rustls::TlsAcceptor::from(server))
        }
    };
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .max_buf_size(config.max_read_buffer)
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        // A peer that stops answering pings is gone: drop it instead of keeping its slot.
        .keep_alive_interval(config.header_read_timeout)
        .keep_alive_timeout(Duration::from_secs(20));
    let server = Arc::new(ConnectionServer {
        http1,
        http2,
        router,
        config: config.clone(),
    });
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let connections = TaskTracker::new();
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
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
        let stream = WriteProgress::new(stream, config.write_timeout);
        let (server, tls, stopping) = (server.clone(), tls.clone(), stopping.clone());
        connections.spawn(async move {
            let _slot = permit;
            let result = match tls {
                None => server.http1(stream, remote, stopping).await,
                Some(acceptor) => {
                    // The handshake is bounded like request headers are.
                    let handshake = tokio::time::timeout(
                        server.config.header_read_timeout,
                        acceptor.accept(stream),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(tls)) => {
                            let h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
                            if h2 {
                                server.http2(tls, remote, stopping).await
                            } else {
                                server.http1(tls, remote, stopping).await
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %remote, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    connections.close();
    if tokio::time::timeout(config.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?config.shutdown_grace, "requests still running at the end of the shutdown grace period were cut off");
    }
    Ok(())
}

/// Reloads the certificate and key on every `SIGHUP` while the process lives.
fn spawn_reload_on_hangup(cert: Arc<ReloadableCert>) -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let files = cert.config().clone();
            let reloaded = {
                let cert = cert.clone();
                tokio::task::spawn_blocking(move || cert.reload()).await
            };
            match reloaded {
                Ok(Ok(())) => {
                    tracing::info!(cert = %files.cert.display(), key = %files.key.display(), "reloaded the TLS certificate")
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "SIGHUP: the TLS certificate was not reloaded; the previous one stays in use")
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: reloading the TLS certificate failed")
                }
            }
        }
    });
    Ok(())
}

/// Serves one connection with the shared protocol settings.
struct ConnectionServer {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    router: Router,
    config: ServeConfig,
}

impl ConnectionServer {
    async fn http1<S>(
        &self,
        stream: S,
        remote: SocketAddr,
        mut stopping: watch::Receiver<bool>,
    ) -> Result<(), hyper::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = request_service(self.router(), remote, self.config.body_read_timeout, None);
        let mut conn = pin!(self.http1.serve_connection(TokioIo::new(stream), service));
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = stopping.wait_for(|s| *s) => {}
        }
        conn.as_mut().graceful_shutdown();
        conn.await
    }

    /// HTTP/2: many requests on one connection. hyper has no idle timeout for it, so a
    /// connection with no request in flight for [`ServeConfig::header_read_timeout`] is shut
    /// down gracefully, as an idle HTTP/1.1 keep-alive connection would be.
    async fn http2<S>(
        &self,
        stream: S,
        remote: SocketAddr,
        mut stopping: watch::Receiver<bool>,
    ) -> Result<(), hyper::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (active_tx, mut active) = watch::channel(0usize);
        let service = request_service(
            self.router(),
            remote,
            self.config.body_read_timeout,
            Some(Arc::new(active_tx)),
        );
        let mut conn = pin!(self.http2.serve_connection(TokioIo::new(stream), service));
        let idle_limit = self.config.header_read_timeout;
        let idle = async {
            loop {
                let _ = active.wait_for(|n| *n == 0).await;
                match tokio::time::timeout(idle_limit, active.changed()).await {
                    // Nothing started or ended for the whole limit, and nothing is in flight.
                    Err(_) if *active.borrow() == 0 => return,
                    Err(_) | Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                }
            }
        };
        tokio::select! {
            r = conn.as_mut() => return r,
            () = idle => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
        conn.as_mut().graceful_shutdown();
        conn.await
    }

    fn router(&self) -> Router {
        self.router.clone()
    }
}

/// Counts a connection's requests in flight while a request (and its response body) lives.
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn start(counter: Arc<watch::Sender<usize>>) -> InFlight {
        counter.send_modify(|n| *n += 1);
        InFlight(counter)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// HTTP/2 requests carry the host in the `:authority` pseudo-header (the URI), not in a
/// `Host` header: give them one, so handlers that read `Host` (token realms, redirects) see
/// the same thing over HTTP/1.1 and HTTP/2. A `Host` header a client sent is kept.
fn ensure_host<B>(req: &mut http::Request<B>) {
    if req.headers().contains_key(http::header::HOST) {
        return;
    }
    if let Some(v) = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(http::header::HOST, v);
    }
}

/// The per-connection hyper service: request id, peer address and body timeout around the
/// router; with `in_flight`, requests are counted while they run.
fn request_service(
    router: Router,
    remote: SocketAddr,
    body_read_timeout: Duration,
    in_flight: Option<Arc<watch::Sender<usize>>>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future: Send + 'static,
> + Clone {
    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let id = RequestId::generate();
        let counted = in_flight.clone().map(InFlight::start);
        let mut req = req.map(|b| Body::new(ReadProgress::new(b, body_read_timeout)));
        ensure_host(&mut req);
        req.extensions_mut().insert(ConnectInfo(remote));
        req.extensions_mut().insert(id);
        let call = router.clone().oneshot(req);
        id.scope(async move {
            let mut resp = call.await?;
            if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
                resp.headers_mut().insert(REQUEST_ID_HEADER, v);
            }
            // A streamed response keeps the request counted until its body is done.
            Ok(match counted {
                None => resp,
                Some(counted) => resp.map(|b| {
                    Body::new(CountedBody {
                        inner: b,
                        _in_flight: counted,
                    })
                }),
            })
        })
    })
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct CountedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_requests_get_a_host_header_from_their_authority() {
        let mut r = http::Request::builder()
            .uri("https://reg.example:5000/v2/")
            .body(())
            .unwrap();
        ensure_host(&mut r);
        assert_eq!(r.headers()[http::header::HOST], "reg.example:5000");
        let mut r = http::Request::builder()
            .uri("https://reg.example:5000/v2/")
            .header(http::header::HOST, "other:1")
            .body(())
            .unwrap();
        ensure_host(&mut r);
        assert_eq!(r.headers()[http::header::HOST], "other:1");
        let mut r = http::Request::builder().uri("/v2/").body(()).unwrap();
        ensure_host(&mut r);
        assert!(!r.headers().contains_key(http::header::HOST));
    }
}
