//! The HTTP surface: health, metrics, the internal operator routes and the
//! user's audit API, on hyper 1 without a web framework.
//!
//! Rules:
//! - The server knows nothing of the database: everything it answers comes
//!   from a [`Backend`], so it is tested with a fake and wired to the service
//!   elsewhere.
//! - `/internal/*` is gated by `X-Service-Key`, compared in constant time; an
//!   empty configured key refuses every request. `/metrics` is open unless a
//!   metrics token is configured, then gated by it as a bearer token (also
//!   in constant time). Credentials are checked from the request head,
//!   before any body is read.
//! - Open connections are capped and a whole request has one deadline
//!   (`limits`); `/health` and `/metrics` read state the backend keeps
//!   fresh on its own, never a table per request.
//! - The audit API trusts only a JWT verified against mana-auth's JWKS; the
//!   user id handed to the backend comes from the token's `sub` and from
//!   nothing the client can otherwise choose.
//! - Every response except `/metrics` is JSON with a content type; errors are
//!   `{"error": "<message>"}` and never echo a key, a token or an internal
//!   error.
//! - Metrics and spans are labelled by route template
//!   (`/internal/missions/{userId}`), unknown paths as `other`: never the raw
//!   path, so a user id can't leak into a label or explode cardinality.

mod auth;
mod jwks;
mod limits;
mod params;
mod response;
mod routes;
mod server;

use std::future::Future;
use std::time::Duration;

use serde::Serialize;

use crate::audit::AuditEntry;
use crate::config::{Config, Secret};
use crate::run::TickStats;

pub use server::{serve, HttpServer};

/// What the HTTP layer asks of the running service.
pub trait Backend: Send + Sync + 'static {
    /// The health document; `ok == false` answers 503 with the same body.
    fn health(&self) -> impl Future<Output = Health> + Send;
    /// Prometheus text format 0.0.4, rendered from the registry: the queue
    /// gauges are the backend's last refresh (every 5 s, never a query per
    /// scrape), `seconds_since_last_notification` is set as it renders.
    fn metrics_text(&self) -> impl Future<Output = String> + Send;
    /// Runs every due mission now (`POST /internal/tick`).
    fn tick(&self) -> impl Future<Output = Result<TickStats, TickError>> + Send;
    /// The operator's read-only view of one user's missions.
    fn user_missions(
        &self,
        user_id: &str,
    ) -> impl Future<Output = anyhow::Result<serde_json::Value>> + Send;
    /// Changes set aside as poison (`mana_ai.dead_changes`), newest first,
    /// optionally of one user: `{total, deadChanges: [...]}`. Ids, reasons
    /// and value-free details only. `limit` is already clamped to 1..=1000.
    fn dead_changes(
        &self,
        user_id: Option<&str>,
        limit: i64,
    ) -> impl Future<Output = anyhow::Result<serde_json::Value>> + Send;
    /// The user's own decrypt audit rows, newest first; `limit` is already
    /// clamped to 1..=1000.
    fn audit(
        &self,
        user_id: &str,
        mission_id: Option<&str>,
        limit: i64,
    ) -> impl Future<Output = anyhow::Result<Vec<AuditEntry>>> + Send;
}

/// Why `POST /internal/tick` ran nothing. The first two are the operator's
/// to act on and are answered with their reason; a failure is logged and
/// answered without detail.
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    /// Another instance leads; this one runs no missions (503: try the leader).
    #[error("this instance is a standby; POST /internal/tick to the leader")]
    Standby,
    /// `TICK_ENABLED=false` (409: this instance never runs missions).
    #[error("TICK_ENABLED=false: this instance runs no missions")]
    Disabled,
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Whether this instance holds the leader lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Standby,
}

/// `GET /health`: what is running, for people and orchestrator probes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// False while the database is unreachable, the listener has been down
    /// past its grace period, or a reactor task is down: the route then
    /// answers 503.
    pub ok: bool,
    /// Always `mana-ai`.
    pub service: &'static str,
    /// The crate version.
    pub version: &'static str,
    pub role: Role,
    pub tick: TickHealth,
    pub listener: ListenerHealth,
    /// Rows waiting in `mana_ai.change_queue`; `None` when it couldn't be read.
    pub queue_depth: Option<i64>,
    /// The generation of `public.sync_changes` found at start and its
    /// columns, e.g. `v0.6 (field_timestamps)`.
    pub sync_log: Option<String>,
    /// The tool catalog in force: `built-in v0.6`, `built-in current` or `file`.
    pub tool_catalog: Option<String>,
    pub armed_missions: i64,
    pub runs_in_flight: i64,
    /// The leader's supervised tasks (`listener`, `applier`, `wheel`, `retention`) that are
    /// down, waiting for their restart; any makes the route answer 503.
    pub tasks_down: Vec<&'static str>,
}

/// The mission runner's state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TickHealth {
    /// `TICK_ENABLED`: whether due missions are run at all.
    pub enabled: bool,
    /// Whether the runner is up on this instance (a standby's is not).
    pub running: bool,
}

/// The LISTEN connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerHealth {
    pub connected: bool,
    /// `None` before the first notification.
    pub seconds_since_notification: Option<f64>,
}

impl Health {
    /// A healthy document for `role` with nothing running yet; the backend
    /// fills in the rest.
    pub fn new(role: Role) -> Health {
        Health {
            ok: true,
            service: "mana-ai",
            version: env!("CARGO_PKG_VERSION"),
            role,
            tick: TickHealth {
                enabled: false,
                running: false,
            },
            listener: ListenerHealth {
                connected: false,
                seconds_since_notification: None,
            },
            queue_depth: None,
            sync_log: None,
            tool_catalog: None,
            armed_missions: 0,
            runs_in_flight: 0,
            tasks_down: Vec::new(),
        }
    }
}

/// How the server behaves; [`HttpSettings::from_config`] gives production values.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The `X-Service-Key` `/internal/*` accepts: `MANA_AI_INTERNAL_KEY`, else
    /// `MANA_SERVICE_KEY`; empty refuses every `/internal/*` request.
    pub internal_key: Secret,
    /// `MANA_AI_METRICS_TOKEN`: when set, `/metrics` answers only a request
    /// with `Authorization: Bearer <token>` (else 401); `None`: open.
    pub metrics_token: Option<Secret>,
    /// mana-auth's JWKS; `None` answers the audit API with 503.
    pub jwks: Option<JwksSettings>,
    /// Request bodies above this many bytes answer 413.
    pub max_body_bytes: usize,
    /// A client that hasn't sent its whole request head within this time is
    /// disconnected (slowloris).
    pub header_read_timeout: Duration,
    /// A request (head and body) must arrive whole within this of its first
    /// byte: a head still arriving is disconnected, a body answered 408 and
    /// its connection closed (`MANA_AI_HTTP_REQUEST_TIMEOUT_SECS`).
    pub request_timeout: Duration,
    /// Connections open at once; one more is answered 503 and closed
    /// (`MANA_AI_HTTP_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// On shutdown, how long requests in flight may take to finish before
    /// their connections are dropped.
    pub shutdown_grace: Duration,
}

/// Where and how JWTs for the audit API are verified.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// `MANA_AUTH_JWKS_URL`.
    pub url: String,
    /// `MANA_AUTH_ISSUER`: when set, `iss` must equal it.
    pub issuer: Option<String>,
    /// `MANA_AUTH_AUDIENCE`: when set, `aud` must contain it.
    pub audience: Option<String>,
    /// A token with an unknown `kid` re-fetches the set at most this often,
    /// so garbage kids can't make us hammer mana-auth.
    pub refresh_min_interval: Duration,
    /// Keys older than this are re-fetched before use, so a key mana-auth
    /// withdrew stops being accepted.
    pub max_age: Duration,
    /// Timeout of one JWKS fetch.
    pub fetch_timeout: Duration,
    /// How long after the last successful fetch the keys are still used
    /// while refreshes fail; past it tokens are answered 503
    /// (`MANA_AUTH_JWKS_MAX_STALE_SECS`).
    pub max_stale: Duration,
}

impl JwksSettings {
    /// Production defaults for `url`: refresh at most every 30 s, keys kept
    /// 10 min and used up to an hour while refreshes fail, 5 s fetch timeout.
    pub fn new(url: impl Into<String>) -> JwksSettings {
        JwksSettings {
            url: url.into(),
            issuer: None,
            audience: None,
            refresh_min_interval: Duration::from_secs(30),
            max_age: Duration::from_secs(600),
            fetch_timeout: Duration::from_secs(5),
            max_stale: Duration::from_secs(3600),
        }
    }
}

impl HttpSettings {
    /// Settings from the process configuration with production limits
    /// (64 KiB bodies, 10 s shutdown grace; the request deadline, which also
    /// bounds the head, and the connection cap as configured).
    pub fn from_config(config: &Config) -> HttpSettings {
        HttpSettings {
            internal_key: config.http.internal_routes_key().clone(),
            metrics_token: config.http.metrics_token.clone(),
            jwks: config.http.jwks_url.as_ref().map(|url| JwksSettings {
                issuer: config.http.jwt_issuer.clone(),
                audience: config.http.jwt_audience.clone(),
                max_stale: config.http.jwks_max_stale,
                ..JwksSettings::new(url.clone())
            }),
            max_body_bytes: 64 * 1024,
            header_read_timeout: config.http.limits.request_timeout,
            request_timeout: config.http.limits.request_timeout,
            max_connections: config.http.limits.max_connections,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}
