//! Building responses: JSON bodies, `{"error": ...}`, the metrics text.
//! A leaf of `http`: the routes, the limits and the server all answer
//! through it.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// Every response body: whole, in memory.
pub(crate) type Body = Full<Bytes>;

/// A JSON response.
pub(crate) fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => respond(status, "application/json", bytes.into()),
        Err(e) => {
            tracing::error!(error = %e, "serialising a response failed");
            respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application/json",
                Bytes::from_static(br#"{"error":"internal error"}"#),
            )
        }
    }
}

/// `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

pub(crate) fn unauthorized_bearer(message: &str) -> Response<Body> {
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

pub(crate) fn text(body: String) -> Response<Body> {
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        body.into(),
    )
}

pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
