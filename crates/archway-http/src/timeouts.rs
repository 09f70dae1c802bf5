//! Progress timeouts for bodies: the server drops a client that makes it wait, not one that
//! is merely slow.
//!
//! * [`ReadProgress`] wraps a request body: while the handler waits for body data, a timer
//!   runs; any frame resets it; when it fires the body fails with `TimedOut`, the handler
//!   answers with an error and hyper closes the connection (the body was not read to its end).
//! * [`WriteProgress`] wraps the socket: while a write (or flush) cannot proceed because the
//!   client does not read, a timer runs; any progress resets it; when it fires the write
//!   fails and hyper drops the connection, and with it the response body (an open file).
//!
//! Neither timer runs while the server itself is busy (hashing, waiting for a lock), so a long
//! commit is never cut short. Idle keep-alive connections and slow request headers are
//! bounded by hyper's header read timeout.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A resettable deadline that only runs while armed.
#[derive(Debug)]
struct Stall {
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl Stall {
    fn new(limit: Duration) -> Self {
        Stall {
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            armed: false,
        }
    }

    /// Progress was made: stop the clock.
    fn progress(&mut self) {
        self.armed = false;
    }

    /// The operation is waiting on the peer: start the clock if it is not running, and
    /// tell whether it ran out.
    fn waiting(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            self.armed = true;
            let deadline = Instant::now() + self.limit;
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }
}

/// A request body that fails when no data arrives for its limit while it is being read.
#[derive(Debug)]
pub(crate) struct ReadProgress<B> {
    inner: B,
    stall: Stall,
}

impl<B> ReadProgress<B> {
    pub(crate) fn new(inner: B, limit: Duration) -> Self {
        ReadProgress {
            inner,
            stall: Stall::new(limit),
        }
    }
}

impl<B> Body for ReadProgress<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.stall.progress();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if this.stall.waiting(cx) {
                    let limit = this.stall.limit.as_secs_f64();
                    return Poll::Ready(Some(Err(Box::new(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client sent no request body data for {limit}s"),
                    )))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection whose writes fail when the peer reads nothing for the limit.
#[derive(Debug)]
pub(crate) struct WriteProgress<T> {
    inner: T,
    stall: Stall,
}

impl<T> WriteProgress<T> {
    pub(crate) fn new(inner: T, limit: Duration) -> Self {
        WriteProgress {
            inner,
            stall: Stall::new(limit),
        }
    }

    fn check<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(r) => {
                self.stall.progress();
                Poll::Ready(r)
            }
            Poll::Pending => {
                if self.stall.waiting(cx) {
                    let limit = self.stall.limit.as_secs_f64();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client read nothing for {limit}s"),
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteProgress<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteProgress<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
        Poll::Ready(polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use http_body_util::StreamBody;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_sending_fails_and_one_that_sends_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, io::Error>>(4);
        let stream = futures_stream(rx);
        let mut body = ReadProgress::new(StreamBody::new(stream), Duration::from_secs(10));
        // Data keeps arriving every 9 s: never times out.
        for _ in 0..3 {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(9)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await;
            });
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        // Then nothing: the read fails with TimedOut (the paused clock jumps ahead).
        let err = body.frame().await.unwrap().unwrap_err();
        let io = err.downcast_ref::<io::Error>().unwrap();
        assert_eq!(io.kind(), io::ErrorKind::TimedOut);
        drop(tx);
    }

    fn futures_stream(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_nothing_fails_the_write() {
        // A duplex pipe with a tiny buffer whose other end is never read.
        let (near, _far) = tokio::io::duplex(16);
        let mut w = WriteProgress::new(near, Duration::from_secs(5));
        let err = w.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
