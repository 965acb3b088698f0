//! Everything a request can fail with, and the HTTP status each maps to.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::InferError;

/// Why a request (or starting the server) failed.
///
/// Each variant has one status ([`ServeError::status`]); the response body is always
/// `{"error": "<message>"}`, as the Open Inference Protocol asks.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The body is not what the route expects (bad JSON, shape, datatype, values, CSV).
    #[error("{0}")]
    BadRequest(String),

    /// The request body is not UTF-8 JSON or CSV where it must be.
    #[error("unsupported content type {found:?}; send {expected}")]
    UnsupportedMediaType {
        /// The Content-Type header received (empty if none).
        found: String,
        /// What the route accepts.
        expected: &'static str,
    },

    /// No model of that name (or version) is loaded.
    #[error("model `{name}` is not loaded; loaded: {loaded}")]
    ModelNotFound {
        /// The name asked for.
        name: String,
        /// The names that exist, comma separated.
        loaded: String,
    },

    /// No such route.
    #[error("no route for {method} {path}")]
    NoRoute {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },

    /// The route exists but not with this method.
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },

    /// A `--token` is set and the request did not carry it as `Authorization: Bearer`.
    #[error("missing or wrong bearer token (send `Authorization: Bearer <token>`)")]
    Unauthorized,

    /// The body is larger than the server's limit.
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },

    /// Too many requests are already waiting; the client should retry later.
    #[error("server busy: {pending} requests already queued (limit {limit}); retry later")]
    QueueFull {
        /// Requests admitted when this one was refused.
        pending: usize,
        /// The `--queue` limit.
        limit: usize,
    },

    /// The request took longer than `--timeout-ms`.
    #[error("request timed out after {ms} ms")]
    Timeout {
        /// The limit that was hit.
        ms: u64,
    },

    /// The server is draining (SIGTERM) and takes no new work.
    #[error("server is shutting down")]
    ShuttingDown,

    /// A model failed while running a batch (a backend error, not the client's fault).
    #[error("model `{model}` failed")]
    Inference {
        /// The model.
        model: String,
        /// The backend's error, shared by every request of the failed batch.
        #[source]
        source: Arc<InferError>,
    },

    /// Models given to the server cannot be served together (startup error).
    #[error("{0}")]
    Config(String),

    /// The listening address is taken (startup error).
    #[error("{addr} is already in use (is another server listening there?)")]
    AddrInUse {
        /// The address.
        addr: String,
    },

    /// The listening socket could not be opened or the server failed (startup error).
    #[error("cannot serve on {addr}")]
    Io {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl ServeError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServeError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ServeError::ModelNotFound { .. } | ServeError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ServeError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ServeError::Unauthorized => StatusCode::UNAUTHORIZED,
            ServeError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::QueueFull { .. } | ServeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Inference { .. }
            | ServeError::Config(_)
            | ServeError::AddrInUse { .. }
            | ServeError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": crate::error::error_chain(&self) });
        let mut resp = (self.status(), axum::Json(body)).into_response();
        let h = resp.headers_mut();
        match self {
            ServeError::QueueFull { .. } | ServeError::ShuttingDown => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ServeError::Unauthorized => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of the body is never read: tell the client not to reuse the connection.
            ServeError::PayloadTooLarge { .. } => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}
