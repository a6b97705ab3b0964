//! A tiny HTTP/1 server on `127.0.0.1:0` for tests and the demo.
//!
//! [`TestServer`] serves any async handler, records every request (method,
//! path, headers, whole body) before handing it over, and stops on drop:
//! the accept loop and every open connection, including ones a handler is
//! still delaying, are aborted. [`FakeReply`] and [`Script`] are the building
//! blocks the fakes use to answer from a list.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Response body type of every handler.
pub type TestBody = BoxBody<Bytes, Infallible>;

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    /// Path and query, e.g. `/v1/chat/completions`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RecordedRequest {
    /// The body as JSON, or `None` when it is not JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A header value as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A server on loopback; stops when dropped.
pub struct TestServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    // Owns the JoinSet of connections, so aborting it ends them all.
    accept_loop: JoinHandle<()>,
}

impl TestServer {
    /// Binds `127.0.0.1:0` and serves `handler` on every request.
    pub async fn start<H, Fut>(handler: H) -> std::io::Result<TestServer>
    where
        H: Fn(RecordedRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let recorded = Arc::clone(&requests);
        let accept_loop = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let handler = Arc::clone(&handler);
                let recorded = Arc::clone(&recorded);
                connections.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let handler = Arc::clone(&handler);
                        let recorded = Arc::clone(&recorded);
                        async move {
                            let request = record(req).await?;
                            lock(&recorded).push(request.clone());
                            Ok::<_, hyper::Error>(handler(request).await)
                        }
                    });
                    // A client that hangs up mid-answer is normal here (timeouts, size limits).
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(TestServer {
            addr,
            requests,
            accept_loop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// A URL on loopback where nothing listens: connections are refused at once.
pub async fn refused_url() -> std::io::Result<String> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(format!("http://{addr}"))
}

async fn record(req: Request<Incoming>) -> Result<RecordedRequest, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string());
    Ok(RecordedRequest {
        method: parts.method,
        path,
        headers: parts.headers,
        body,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread must not hide the requests from the next assertion.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One scripted answer: status, headers, body, and a delay before answering.
#[derive(Debug, Clone)]
pub struct FakeReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
    /// Waited before the status line is sent (slow peers, client timeouts).
    pub delay: Duration,
}

/// How the body goes over the wire.
#[derive(Debug, Clone)]
pub enum ReplyBody {
    /// Sent whole, with `Content-Length`.
    Whole(Bytes),
    /// `chunk` sent `count` times with chunked encoding: no length up front.
    Chunked { chunk: Bytes, count: usize },
}

impl FakeReply {
    pub fn json(status: u16, value: &Value) -> FakeReply {
        FakeReply::raw(status, value.to_string()).header("content-type", "application/json")
    }

    pub fn raw(status: u16, body: impl Into<Bytes>) -> FakeReply {
        FakeReply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Whole(body.into()),
            delay: Duration::ZERO,
        }
    }

    /// A body of `count` copies of `chunk`, streamed without a length.
    pub fn chunked(status: u16, chunk: impl Into<Bytes>, count: usize) -> FakeReply {
        let body = ReplyBody::Chunked {
            chunk: chunk.into(),
            count,
        };
        FakeReply {
            status,
            headers: Vec::new(),
            body,
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> FakeReply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> FakeReply {
        self.delay = delay;
        self
    }

    /// Waits the delay, then builds the response.
    pub async fn into_response(self) -> Response<TestBody> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let body = match self.body {
            ReplyBody::Whole(bytes) => Full::new(bytes).boxed(),
            ReplyBody::Chunked { chunk, count } => {
                let frames = std::iter::repeat_n(chunk, count).map(|c| Ok(Frame::data(c)));
                StreamBody::new(futures_util::stream::iter(frames)).boxed()
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) =
                (name.parse::<hyper::header::HeaderName>(), value.parse())
            {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}

/// Replies handed out in order; the last one repeats, so a one-entry script
/// is a constant answer and a script never runs dry.
#[derive(Debug)]
pub struct Script(Mutex<VecDeque<FakeReply>>);

impl Script {
    /// Panics on an empty script: a fake with nothing to say is a test bug.
    pub fn new(replies: Vec<FakeReply>) -> Script {
        assert!(!replies.is_empty(), "a fake needs at least one reply");
        Script(Mutex::new(replies.into()))
    }

    pub fn next_reply(&self) -> FakeReply {
        let mut queue = lock(&self.0);
        if queue.len() > 1 {
            queue.pop_front().expect("checked non-empty")
        } else {
            queue.front().cloned().expect("never empty")
        }
    }
}
