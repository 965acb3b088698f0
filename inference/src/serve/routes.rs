//! Routes and middleware.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::protocol::{decode_predict, decode_v2, encode_v2, HEADER_LENGTH};
use super::{ServeError, Server, Target, ENSEMBLE};
use crate::BackendKind;

const PAGE: &str = include_str!("page.html");

/// Routes reachable without the bearer token: the page and the health checks that load
/// balancers call.
const PUBLIC: [&str; 3] = ["/", "/v2/health/live", "/v2/health/ready"];

pub(super) fn router(server: Server) -> Router {
    let body_limit = server.shared.config.body_limit;
    Router::new()
        .route("/", get(page))
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata_v))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready_v))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
        .route("/predict", post(predict))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        // Outermost last: `track` sees every answer, including auth failures and timeouts.
        .layer(middleware::from_fn_with_state(server.clone(), timeout))
        .layer(middleware::from_fn_with_state(server.clone(), authorize))
        .layer(middleware::from_fn_with_state(server.clone(), track))
        .with_state(server)
}

async fn track(State(s): State<Server>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    s.shared.metrics.observe_request(&route, resp.status().as_u16(), start.elapsed());
    resp
}

/// Compares without stopping at the first difference, so timing does not leak the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(s): State<Server>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.shared.config.token {
        if !PUBLIC.contains(&req.uri().path()) {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !same(given.trim().as_bytes(), token.as_bytes()) {
                drain(req.into_body(), s.shared.config.body_limit).await;
                return ServeError::Unauthorized.into_response();
            }
        }
    }
    next.run(req).await
}

async fn timeout(State(s): State<Server>, req: Request, next: Next) -> Response {
    let limit = s.shared.config.timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ServeError::Timeout { ms: limit.as_millis() as u64 }.into_response(),
    }
}

/// Reads and drops a body the answer does not need: hyper closes a keep-alive connection
/// whose request body was left unread, and a client reusing it would see a reset.
async fn drain(body: axum::body::Body, limit: usize) {
    let _ = axum::body::to_bytes(body, limit).await;
}

async fn no_route(State(s): State<Server>, req: Request) -> ServeError {
    let e = ServeError::NoRoute { method: req.method().to_string(), path: req.uri().path().to_string() };
    drain(req.into_body(), s.shared.config.body_limit).await;
    e
}

async fn method_not_allowed(State(s): State<Server>, req: Request) -> ServeError {
    let e = ServeError::MethodNotAllowed { method: req.method().to_string(), path: req.uri().path().to_string() };
    drain(req.into_body(), s.shared.config.body_limit).await;
    e
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "digit-recognizer",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(s): State<Server>) -> Result<Json<Value>, ServeError> {
    if s.shared.ready.load(std::sync::atomic::Ordering::Acquire) {
        Ok(Json(json!({ "ready": true })))
    } else {
        Err(ServeError::ShuttingDown)
    }
}

fn platform(backend: BackendKind) -> &'static str {
    match backend {
        BackendKind::Ort | BackendKind::OrtCuda => "onnxruntime_onnx",
        BackendKind::Tract => "tract_onnx",
    }
}

fn check_version(s: &Server, name: &str, version: &str) -> Result<(), ServeError> {
    if version == "1" {
        return Ok(());
    }
    Err(ServeError::ModelNotFound {
        name: format!("{name} version {version}"),
        loaded: s.model_names().join(", ") + " (version 1)",
    })
}

async fn model_metadata(State(s): State<Server>, Path(name): Path<String>) -> Result<Json<Value>, ServeError> {
    let platform = match s.target(&name)? {
        Target::Ensemble => "ensemble",
        Target::Member(i) => platform(s.shared.members[i].backend),
    };
    Ok(Json(json!({
        "name": name,
        "versions": ["1"],
        "platform": platform,
        "inputs": [{ "name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28] }],
        "outputs": [
            { "name": "label", "datatype": "INT64", "shape": [-1] },
            { "name": "probabilities", "datatype": "FP32", "shape": [-1, s.shared.classes] },
        ],
    })))
}

async fn model_metadata_v(
    State(s): State<Server>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ServeError> {
    check_version(&s, &name, &version)?;
    model_metadata(State(s), Path(name)).await
}

async fn model_ready(State(s): State<Server>, Path(name): Path<String>) -> Result<Json<Value>, ServeError> {
    s.target(&name)?;
    Ok(Json(json!({ "name": name, "ready": true })))
}

async fn model_ready_v(
    State(s): State<Server>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ServeError> {
    check_version(&s, &name, &version)?;
    model_ready(State(s), Path(name)).await
}

fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ServeError> {
    match body {
        Ok(b) => Ok(b),
        Err(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))) => {
            Err(ServeError::PayloadTooLarge { limit })
        }
        Err(e) => Err(ServeError::BadRequest(format!("cannot read the request body: {}", e.body_text()))),
    }
}

async fn infer(
    State(s): State<Server>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ServeError> {
    let target = s.target(&name)?;
    let body = body_bytes(body, s.shared.config.body_limit)?;
    let header_length = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| ServeError::BadRequest(format!("{HEADER_LENGTH} must be a byte count, got {v:?}")))?,
        ),
    };
    let req = decode_v2(&body, header_length)?;
    let (answer, _) = s.run(target, req.images.clone()).await?;
    Ok(encode_v2(&name, &req, &answer))
}

async fn infer_v(
    State(s): State<Server>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ServeError> {
    check_version(&s, &name, &version)?;
    infer(State(s), Path(name), headers, body).await
}

#[derive(Debug, Deserialize)]
struct PredictQuery {
    #[serde(default)]
    detail: bool,
}

async fn predict(
    State(s): State<Server>,
    query: Result<Query<PredictQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ServeError> {
    let Query(query) = query.map_err(|e| ServeError::BadRequest(e.body_text()))?;
    let body = body_bytes(body, s.shared.config.body_limit)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let images = decode_predict(content_type, &body)?;
    let n = images.n;
    let (answer, members) = s.run(Target::Ensemble, images).await?;
    if !query.detail {
        return Ok(Json(json!({ "labels": answer.labels })));
    }
    let classes = answer.classes;
    let rows = |p: &[f32]| p.chunks_exact(classes).map(<[f32]>::to_vec).collect::<Vec<_>>();
    let models: Vec<Value> = members
        .iter()
        .map(|(i, logits)| {
            let one = super::combine(&[(*i, logits.clone())], n, classes);
            json!({
                "name": s.shared.members[*i].name,
                "labels": one.labels,
                "probabilities": rows(&one.probabilities),
            })
        })
        .collect();
    Ok(Json(json!({
        "model": ENSEMBLE,
        "labels": answer.labels,
        "probabilities": rows(&answer.probabilities),
        "models": models,
    })))
}

async fn metrics(State(s): State<Server>) -> Response {
    let gauges = super::metrics::Gauges {
        pending: s.shared.pending.load(std::sync::atomic::Ordering::Relaxed),
        queued: s.shared.members.iter().map(|m| (m.name.as_str(), m.batcher.queued())).collect(),
    };
    let mut resp = s.shared.metrics.render(&gauges).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    resp
}
