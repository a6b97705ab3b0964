//! Routing and the handlers of each route.
//!
//! Rules: a path is matched to a route template first (unknown: 404), then
//! the method (wrong: 405 with `Allow`), then credentials from the head alone
//! (401/503; a body is never read for a refused request, whose connection
//! closes after the answer), then the body is read under the size cap (413)
//! and the request's deadline (408) even where a route ignores it, then the
//! request's own parameters. Every response but `/metrics` is JSON.
//!
//! `GET /api/v1/me/ai-audit` answers `{"entries": [AuditEntry, ...]}` (an
//! object, so fields can be added later without breaking clients).

use std::sync::Arc;
use std::time::Instant;

use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};

use super::auth::{bearer_matches, bearer_token, service_key_matches};
use super::jwks::JwksVerifier;
use super::jwks::TokenError;
use super::limits::{closing, read_body};
use super::params::{percent_decode, ListQuery};
use super::response::{error, json, text, unauthorized_bearer, Body};
use super::{Backend, HttpSettings, TickError};
use crate::metrics::Metrics;

/// What every connection shares.
pub(crate) struct AppState<B> {
    pub(crate) backend: Arc<B>,
    pub(crate) settings: HttpSettings,
    /// `None` when no JWKS URL is configured: the audit API answers 503.
    pub(crate) jwks: Option<JwksVerifier>,
    pub(crate) metrics: Arc<Metrics>,
}

/// A recognised route; `UserMissions` carries the raw (still encoded) id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Health,
    Metrics,
    Tick,
    UserMissions(String),
    DeadChanges,
    Audit,
    Other,
}

impl Route {
    pub(crate) fn recognise(path: &str) -> Route {
        match path {
            "/health" => Route::Health,
            "/metrics" => Route::Metrics,
            "/internal/tick" => Route::Tick,
            "/internal/dead-changes" => Route::DeadChanges,
            "/api/v1/me/ai-audit" => Route::Audit,
            _ => match path.strip_prefix("/internal/missions/") {
                Some(id) if !id.contains('/') => Route::UserMissions(id.to_owned()),
                _ => Route::Other,
            },
        }
    }

    /// The label used in metrics and spans: never the raw path.
    pub(crate) fn template(&self) -> &'static str {
        match self {
            Route::Health => "/health",
            Route::Metrics => "/metrics",
            Route::Tick => "/internal/tick",
            Route::UserMissions(_) => "/internal/missions/{userId}",
            Route::DeadChanges => "/internal/dead-changes",
            Route::Audit => "/api/v1/me/ai-audit",
            Route::Other => "other",
        }
    }

    /// The one method each route answers; `None` for unknown paths.
    fn method(&self) -> Option<Method> {
        match self {
            Route::Tick => Some(Method::POST),
            Route::Other => None,
            _ => Some(Method::GET),
        }
    }
}

/// Who a request was authorised as.
enum Caller {
    /// A route without credentials, or `/metrics` with its token.
    Anyone,
    /// `X-Service-Key` matched.
    Service,
    /// The audit API: the verified token's `sub`.
    User(String),
}

pub(crate) async fn dispatch<B: Backend>(
    state: &AppState<B>,
    route: Route,
    req: Request<Incoming>,
    deadline: Instant,
) -> Response<Body> {
    let Some(allowed) = route.method() else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    if req.method() != allowed {
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        let allow = HeaderValue::from_str(allowed.as_str()).expect("a method is a header value");
        response.headers_mut().insert(ALLOW, allow);
        return response;
    }
    let (parts, body) = req.into_parts();
    let caller = match authorize(state, &route, &parts.headers).await {
        Ok(caller) => caller,
        // Refused before a byte of the body is read; a body still coming
        // is not read at all: the connection closes after the answer.
        Err(response) if body.is_end_stream() => return response,
        Err(response) => return closing(response),
    };
    let limit = state.settings.max_body_bytes;
    if let Err(response) = read_body(body, &parts.headers, limit, deadline).await {
        return response;
    }
    let query = parts.uri.query();
    match (route, caller) {
        (Route::Health, _) => {
            let health = state.backend.health().await;
            let status = if health.ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, &health)
        }
        (Route::Metrics, _) => text(state.backend.metrics_text().await),
        (Route::Tick, Caller::Service) => tick(state).await,
        (Route::UserMissions(raw_id), Caller::Service) => user_missions(state, &raw_id).await,
        (Route::DeadChanges, Caller::Service) => dead_changes(state, query).await,
        (Route::Audit, Caller::User(user_id)) => audit(state, &user_id, query).await,
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Checks the route's credentials from the request head alone.
async fn authorize<B: Backend>(
    state: &AppState<B>,
    route: &Route,
    headers: &HeaderMap,
) -> Result<Caller, Response<Body>> {
    match route {
        Route::Tick | Route::UserMissions(_) | Route::DeadChanges => {
            if service_key_matches(&state.settings.internal_key, headers) {
                Ok(Caller::Service)
            } else {
                Err(error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong service key",
                ))
            }
        }
        Route::Audit => verify_user(state, headers).await.map(Caller::User),
        Route::Metrics => match &state.settings.metrics_token {
            Some(token) if !bearer_matches(token, headers) => {
                Err(unauthorized_bearer("missing or wrong metrics token"))
            }
            _ => Ok(Caller::Anyone),
        },
        Route::Health | Route::Other => Ok(Caller::Anyone),
    }
}

/// The audit API's user: the `sub` of a bearer token verified against the
/// JWKS, the only source of the user id (a query or header can't name
/// another user).
async fn verify_user<B: Backend>(
    state: &AppState<B>,
    headers: &HeaderMap,
) -> Result<String, Response<Body>> {
    let Some(verifier) = &state.jwks else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit API not configured",
        ));
    };
    let Some(token) = bearer_token(headers) else {
        return Err(unauthorized_bearer("missing bearer token"));
    };
    match verifier.verify(token).await {
        Ok(sub) => Ok(sub),
        Err(TokenError::Invalid(reason)) => {
            tracing::debug!(reason, "bearer token refused");
            Err(unauthorized_bearer("invalid token"))
        }
        Err(e @ TokenError::Unavailable(_)) => {
            tracing::warn!(error = %e, "audit request without verification keys");
            Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "token verification unavailable",
            ))
        }
    }
}

async fn tick<B: Backend>(state: &AppState<B>) -> Response<Body> {
    match state.backend.tick().await {
        Ok(stats) => json(StatusCode::OK, &stats),
        Err(e @ TickError::Standby) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Err(e @ TickError::Disabled) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(TickError::Failed(e)) => {
            tracing::error!(error = format!("{e:#}"), "tick failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "tick failed")
        }
    }
}

async fn user_missions<B: Backend>(state: &AppState<B>, raw_id: &str) -> Response<Body> {
    let user_id = match percent_decode(raw_id, false) {
        Some(id) if !id.is_empty() => id,
        Some(_) => return error(StatusCode::BAD_REQUEST, "user id is empty"),
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "user id is not valid percent-encoded UTF-8",
            )
        }
    };
    match state.backend.user_missions(&user_id).await {
        Ok(view) => json(StatusCode::OK, &view),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "reading a user's missions failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "could not read missions")
        }
    }
}

async fn dead_changes<B: Backend>(state: &AppState<B>, query: Option<&str>) -> Response<Body> {
    let query = match ListQuery::parse(query, "userId") {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match state
        .backend
        .dead_changes(query.filter.as_deref(), query.limit)
        .await
    {
        Ok(view) => json(StatusCode::OK, &view),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "reading dead changes failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not read dead changes",
            )
        }
    }
}

async fn audit<B: Backend>(
    state: &AppState<B>,
    user_id: &str,
    query: Option<&str>,
) -> Response<Body> {
    let query = match ListQuery::parse(query, "missionId") {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match state
        .backend
        .audit(user_id, query.filter.as_deref(), query.limit)
        .await
    {
        Ok(entries) => {
            let mut response = json(StatusCode::OK, &serde_json::json!({ "entries": entries }));
            // A user's own audit trail: no shared cache may keep it.
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "reading the audit trail failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not read the audit trail",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_template() {
        assert_eq!(
            Route::recognise("/internal/missions/u%201"),
            Route::UserMissions("u%201".into())
        );
        assert_eq!(
            Route::recognise("/internal/missions/"),
            Route::UserMissions(String::new())
        );
        assert_eq!(Route::recognise("/internal/missions/a/b"), Route::Other);
        assert_eq!(Route::recognise("/internal/missions"), Route::Other);
        assert_eq!(Route::recognise("/health/"), Route::Other);
        assert_eq!(
            Route::UserMissions("x".into()).template(),
            "/internal/missions/{userId}"
        );
    }
}
