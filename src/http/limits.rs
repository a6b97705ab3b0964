//! What bounds one client: the cap on open connections, the deadline of a
//! whole request (head and body), and the body's size.
//!
//! Rules:
//! - At most `max_connections` connections are open. One over the cap is
//!   answered `503` with `Connection: close` as soon as its first bytes
//!   arrive (its request is not parsed) and closed, all within 2 s; as many
//!   again may be being refused so, beyond that a connection is closed at
//!   once. Both count in `http_connections_refused_total`. A client learns
//!   at once to go elsewhere instead of waiting in a backlog that probes
//!   would wait in too.
//! - A request's clock starts with its first byte ([`RequestClock`]): hyper's
//!   header read timeout bounds the head, and the body must be complete by
//!   the same deadline, else `408` with `Connection: close`.
//! - Bodies are read only after the route's credentials were checked.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH};
use hyper::{HeaderMap, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::response::{error, Body};

/// When the request being read on a connection started arriving: the first
/// read that returned bytes after the last response was written (or after
/// the connection opened). Shared between the connection's IO and its
/// handler.
#[derive(Clone, Default)]
pub(crate) struct RequestClock(Arc<Mutex<ClockState>>);

#[derive(Default)]
struct ClockState {
    started: Option<Instant>,
    /// Set by every write (a response, or `100 Continue`): the next bytes
    /// read begin a new request.
    wrote: bool,
}

impl RequestClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The deadline by which the current request must have been read whole.
    pub(crate) fn deadline(&self, timeout: Duration) -> Instant {
        self.lock().started.unwrap_or_else(Instant::now) + timeout
    }

    fn read_some(&self) {
        let mut state = self.lock();
        if state.started.is_none() || state.wrote {
            state.started = Some(Instant::now());
            state.wrote = false;
        }
    }

    fn wrote(&self) {
        self.lock().wrote = true;
    }
}

/// A connection's stream, telling its [`RequestClock`] when requests start.
pub(crate) struct ClockedIo {
    stream: TcpStream,
    clock: RequestClock,
}

impl ClockedIo {
    pub(crate) fn new(stream: TcpStream, clock: RequestClock) -> ClockedIo {
        ClockedIo { stream, clock }
    }
}

impl AsyncRead for ClockedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read_some();
        }
        polled
    }
}

impl AsyncWrite for ClockedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.clock.wrote();
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.clock.wrote();
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The answer to a connection over the cap.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
connection: close\r\n\
content-length: 32\r\n\r\n\
{\"error\":\"too many connections\"}";

/// Answers a connection over the cap with 503 and closes it. The answer
/// waits for the client's first bytes (at most a second: clients take an
/// answer before their request for a broken server), and what the client
/// sent is drained for a moment after our FIN, so the close is not a reset
/// that could discard the answer before the client reads it.
pub(crate) async fn refuse(mut stream: TcpStream, _place: OwnedSemaphorePermit) {
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut sink)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(REFUSAL).await?;
        stream.shutdown().await?;
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Reads the body, refusing more than `limit` bytes (first by the declared
/// Content-Length, then while streaming: chunked bodies declare nothing) and
/// a body still arriving at `deadline` (408, connection closed).
pub(crate) async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
    deadline: Instant,
) -> Result<Bytes, Response<Body>> {
    let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let collected =
        tokio::time::timeout_at(deadline.into(), Limited::new(body, limit).collect()).await;
    match collected {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "reading request body failed");
            Err(error(
                StatusCode::BAD_REQUEST,
                "could not read request body",
            ))
        }
        Err(_elapsed) => Err(closing(error(
            StatusCode::REQUEST_TIMEOUT,
            "request not received in time",
        ))),
    }
}

/// `response` with `Connection: close`: hyper closes the connection after
/// writing it, so an unread body is never read.
pub(crate) fn closing(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_declares_its_body_length() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }

    #[test]
    fn a_request_starts_with_its_first_bytes_after_a_response() {
        let clock = RequestClock::default();
        let timeout = Duration::from_secs(10);
        clock.read_some();
        let first = clock.deadline(timeout);
        std::thread::sleep(Duration::from_millis(5));
        clock.read_some();
        assert_eq!(clock.deadline(timeout), first, "the same request goes on");
        clock.wrote();
        clock.read_some();
        assert!(
            clock.deadline(timeout) > first,
            "a new request after a response"
        );
    }
}
