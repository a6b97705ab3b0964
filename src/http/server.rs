//! The accept loop, one HTTP/1 connection per task, and what wraps every
//! request: its span, its metrics and a panic guard.
//!
//! Rules: at most `max_connections` are open (more are refused, see
//! `limits`); a request must arrive whole within `request_timeout` of its
//! first byte (hyper's header read timeout for the head, `limits::read_body`
//! for the body); on shutdown the listener is closed at once (new connections are refused),
//! idle keep-alive connections are closed, and requests in flight get
//! `shutdown_grace` to finish before their connections are dropped. A
//! panicking handler answers 500 and the server goes on.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::jwks::JwksVerifier;
use super::limits::{refuse, ClockedIo, RequestClock};
use super::response::{error, Body};
use super::routes::{dispatch, AppState, Route};
use super::{Backend, HttpSettings};
use crate::metrics::Metrics;

/// Serves HTTP on `listener` until `shutdown` is cancelled, then lets
/// requests in flight finish (up to `settings.shutdown_grace`) and returns.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    settings: HttpSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let server = HttpServer::new(listener, backend, settings, metrics)?;
    Arc::new(server).run(shutdown).await;
    Ok(())
}

/// The HTTP server on its bound listener, checked once (its JWKS client
/// built) and run as often as its supervisor starts it again.
pub struct HttpServer<B> {
    /// Taken (and so closed) at shutdown: new connections are refused
    /// while the ones open drain.
    listener: std::sync::Mutex<Option<Arc<TcpListener>>>,
    state: Arc<AppState<B>>,
}

impl<B: Backend> HttpServer<B> {
    pub fn new(
        listener: TcpListener,
        backend: Arc<B>,
        settings: HttpSettings,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let jwks = settings.jwks.clone().map(JwksVerifier::new).transpose()?;
        let state = Arc::new(AppState {
            backend,
            settings,
            jwks,
            metrics,
        });
        Ok(Self {
            listener: std::sync::Mutex::new(Some(Arc::new(listener))),
            state,
        })
    }

    /// Accepts connections until `shutdown`, then drains them. A run that
    /// panicked drops its connections; the next run accepts on the same
    /// listener.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let state = &self.state;
        let Some(listener) = self.listener() else {
            return;
        };
        let grace = state.settings.shutdown_grace;
        let gate = Gate::new(state.settings.max_connections);
        tracing::info!(addr = ?listener.local_addr().ok(), "HTTP server listening");
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => gate.admit(stream, state, &shutdown, &mut connections),
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather
                        // than spin on an error that repeats at once.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(finished) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = finished {
                        tracing::error!(error = %e, "HTTP connection task failed");
                    }
                }
            }
        }
        drop((listener, self.close_listener()));
        drain(connections, grace).await;
        tracing::info!("HTTP server stopped");
    }

    /// The listener; `None` once shut down.
    fn listener(&self) -> Option<Arc<TcpListener>> {
        self.held_listener().clone()
    }

    /// Takes the listener for good: it closes once the last run drops it.
    fn close_listener(&self) -> Option<Arc<TcpListener>> {
        self.held_listener().take()
    }

    fn held_listener(&self) -> std::sync::MutexGuard<'_, Option<Arc<TcpListener>>> {
        self.listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Lets the connections finish for up to `grace`, then drops the rest.
async fn drain(mut connections: JoinSet<()>, grace: Duration) {
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "HTTP requests still running after the shutdown grace; dropping them"
        );
        connections.shutdown().await;
    }
}

/// The cap on open connections, and on connections being refused.
struct Gate {
    open: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
}

impl Gate {
    fn new(max_connections: usize) -> Gate {
        Gate {
            open: Arc::new(Semaphore::new(max_connections.max(1))),
            refusing: Arc::new(Semaphore::new(max_connections.max(1))),
        }
    }

    /// Serves `stream` if a place is free, else refuses it (see `limits`).
    fn admit<B: Backend>(
        &self,
        stream: TcpStream,
        state: &Arc<AppState<B>>,
        shutdown: &CancellationToken,
        connections: &mut JoinSet<()>,
    ) {
        match self.open.clone().try_acquire_owned() {
            Ok(permit) => {
                let open = Open::new(permit, &state.metrics);
                connections.spawn(connection(stream, state.clone(), shutdown.clone(), open));
            }
            Err(_) => {
                state.metrics.http_connections_refused.inc();
                // Beyond as many refusals again: closed at once.
                if let Ok(place) = self.refusing.clone().try_acquire_owned() {
                    connections.spawn(refuse(stream, place));
                }
            }
        }
    }
}

/// One open connection's place under the cap, given back when dropped.
struct Open {
    _permit: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Open {
    fn new(permit: OwnedSemaphorePermit, metrics: &Metrics) -> Open {
        let gauge = metrics.http_connections_open.clone();
        gauge.inc();
        Open {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// One client connection, closed gracefully (after the request in flight)
/// when `shutdown` fires.
async fn connection<B: Backend>(
    stream: TcpStream,
    state: Arc<AppState<B>>,
    shutdown: CancellationToken,
    _open: Open,
) {
    // Responses are small and written whole: don't wait to coalesce them.
    let _ = stream.set_nodelay(true);
    let settings = &state.settings;
    let header_read_timeout = settings.header_read_timeout.min(settings.request_timeout);
    let clock = RequestClock::default();
    let io = TokioIo::new(ClockedIo::new(stream, clock.clone()));
    let service = service_fn(move |req| {
        let state = state.clone();
        let deadline = clock.deadline(state.settings.request_timeout);
        async move { Ok::<_, Infallible>(handle(&state, req, deadline).await) }
    });
    let mut conn = pin!(http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(io, service));
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Timeouts, resets, malformed requests: the client's problem.
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Routes one request inside its span and records it in the metrics.
async fn handle<B: Backend>(
    state: &AppState<B>,
    req: Request<Incoming>,
    deadline: Instant,
) -> Response<Body> {
    let started = Instant::now();
    let route = Route::recognise(req.uri().path());
    let template = route.template();
    let method = method_label(req.method());
    let span = tracing::info_span!(
        "http_request",
        method,
        route = template,
        status = tracing::field::Empty
    );
    let response = AssertUnwindSafe(dispatch(state, route, req, deadline))
        .catch_unwind()
        .instrument(span.clone())
        .await
        .unwrap_or_else(|_| {
            tracing::error!(parent: &span, "HTTP handler panicked");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        });
    let status = response.status();
    span.record("status", status.as_u16());
    let labels = [method, template, status.as_str()];
    state.metrics.http_requests.with_label_values(&labels).inc();
    state
        .metrics
        .http_request_duration
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(parent: &span, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "HTTP request");
    response
}

/// The method as a metric label; anything unusual becomes `other` so clients
/// can't mint label values.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
