//! The HTTP API route by route, in process (`tower::ServiceExt::oneshot` on the axum
//! router): answers checked against Python onnxruntime's logits for the same models
//! (the shared fixture), every error status, dynamic batching's merge and split, the
//! bounded queue, the body limit, the bearer token and the timeout.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use common::{fixture, reference_images, MEMBERS, N_REF};
use inference::serve::{BatchWait, ServeConfig, Server};
use inference::{BackendKind, Model};
use serde_json::{json, Value};
use tower::ServiceExt;

/// Python onnxruntime vs our backends, as in the backend tests.
const TOL: f32 = 1e-4;

fn server(config: ServeConfig) -> Server {
    let fx = fixture();
    let models =
        MEMBERS.iter().map(|m| (m.to_string(), Model::load(&fx.model(m), BackendKind::Tract, 1).unwrap())).collect();
    Server::new(models, config).unwrap()
}

fn app(config: ServeConfig) -> Router {
    server(config).router()
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// An error reply: the status asked for and `{"error": "...needle..."}`.
    fn assert_error(&self, status: StatusCode, needle: &str) {
        let v = self.json();
        assert_eq!(self.status, status, "{v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("no error message: {v}"));
        assert!(msg.contains(needle), "error {msg:?} does not mention {needle:?}");
    }
}

async fn call(app: &Router, req: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap().to_vec();
    Reply { status, headers, body }
}

async fn get(app: &Router, uri: &str) -> Reply {
    call(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn post(app: &Router, uri: &str, content_type: &str, body: impl Into<Body>) -> Reply {
    call(app, Request::post(uri).header(header::CONTENT_TYPE, content_type).body(body.into()).unwrap()).await
}

async fn post_json(app: &Router, uri: &str, v: &Value) -> Reply {
    post(app, uri, "application/json", v.to_string()).await
}

/// Raw pixels of reference images `range`.
fn pixels(range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    let data = reference_images();
    range.map(|i| data.image(i).to_vec()).collect()
}

fn v2_fp32(images: &[Vec<u8>]) -> Value {
    let data: Vec<f32> = images.iter().flatten().map(|&p| f32::from(p) / 255.0).collect();
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [images.len(), 1, 28, 28], "data": data}]})
}

/// Labels offline: each member's argmax of Python onnxruntime's logits, or their majority vote.
fn expected_labels(model: &str, range: std::ops::Range<usize>) -> Vec<u8> {
    let fx = fixture();
    let rows = |m: &str| fx.expected(m)[range.start * fx.classes..range.end * fx.classes].to_vec();
    if model == "ensemble" {
        let logits: Vec<Vec<f32>> = MEMBERS.iter().map(|m| rows(m)).collect();
        inference::majority_vote(&logits, range.len(), fx.classes)
    } else {
        inference::labels_from_logits(&rows(model), range.len(), fx.classes)
    }
}

fn expected_probabilities(model: &str, range: std::ops::Range<usize>) -> Vec<f32> {
    let fx = fixture();
    let members: Vec<&str> = if model == "ensemble" { MEMBERS.to_vec() } else { vec![model] };
    let mut out = vec![0f64; range.len() * fx.classes];
    for m in &members {
        let l = &fx.expected(m)[range.start * fx.classes..range.end * fx.classes];
        for (row, o) in l.chunks_exact(fx.classes).zip(out.chunks_exact_mut(fx.classes)) {
            for (o, p) in o.iter_mut().zip(inference::softmax(row)) {
                *o += p / members.len() as f64;
            }
        }
    }
    out.iter().map(|&p| p as f32).collect()
}

fn output<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap_or_else(|| panic!("no {name}: {v}"))
}

fn labels_of(v: &Value) -> Vec<u8> {
    output(v, "label")["data"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u8).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// NaN or infinite values fail here, naming the value (`f32::max` would drop NaN).
#[track_caller]
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    common::max_abs_diff(a, b)
}

/// The value of one sample line of the metrics text, e.g. `digits_batch_size_count{model="cnn_a"}`.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{series} not in metrics:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_health_page_and_unknown_routes() {
    let app = app(ServeConfig::default());
    let v = get(&app, "/v2").await;
    assert_eq!(v.status, StatusCode::OK);
    assert_eq!(v.json()["name"], "digit-recognizer");
    assert_eq!(get(&app, "/v2/health/live").await.status, StatusCode::OK);
    assert_eq!(get(&app, "/v2/health/ready").await.json()["ready"], true);
    for (name, platform) in [("cnn_a", "tract_onnx"), ("cnn_c", "tract_onnx"), ("ensemble", "ensemble")] {
        let m = get(&app, &format!("/v2/models/{name}")).await;
        assert_eq!(m.status, StatusCode::OK);
        let m = m.json();
        assert_eq!(m["name"], name);
        assert_eq!(m["platform"], platform);
        assert_eq!(m["inputs"][0]["name"], "input");
        assert_eq!(m["outputs"][1]["shape"], json!([-1, 10]));
        assert_eq!(get(&app, &format!("/v2/models/{name}/ready")).await.json()["ready"], true);
        assert_eq!(get(&app, &format!("/v2/models/{name}/versions/1/ready")).await.status, StatusCode::OK);
        assert_eq!(get(&app, &format!("/v2/models/{name}/versions/1")).await.json()["name"], name);
    }
    get(&app, "/v2/models/resnet99").await.assert_error(StatusCode::NOT_FOUND, "cnn_a, cnn_b, cnn_c, ensemble");
    get(&app, "/v2/models/resnet99/ready").await.assert_error(StatusCode::NOT_FOUND, "resnet99");
    get(&app, "/v2/models/cnn_a/versions/2/ready").await.assert_error(StatusCode::NOT_FOUND, "version 2");
    get(&app, "/nowhere").await.assert_error(StatusCode::NOT_FOUND, "GET /nowhere");
    get(&app, "/v2/models/cnn_a/infer").await.assert_error(StatusCode::METHOD_NOT_ALLOWED, "GET");
    post(&app, "/v2", "application/json", "{}").await.assert_error(StatusCode::METHOD_NOT_ALLOWED, "POST");

    let page = get(&app, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("<canvas id=\"pad\"") && html.contains("/predict?detail=true"), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_infer_matches_python_onnxruntime_for_every_model_and_the_ensemble() {
    let app = app(ServeConfig::default());
    let images = pixels(0..N_REF);
    for name in MEMBERS.iter().copied().chain(["ensemble"]) {
        let uri = format!("/v2/models/{name}/infer");
        let mut req = v2_fp32(&images);
        req["id"] = json!("req-7");
        let r = post_json(&app, &uri, &req).await;
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert_eq!(v["model_name"], name);
        assert_eq!(v["id"], "req-7");
        assert_eq!(output(&v, "label")["datatype"], "INT64");
        assert_eq!(output(&v, "label")["shape"], json!([N_REF]));
        assert_eq!(labels_of(&v), expected_labels(name, 0..N_REF), "{name}");
        let p = output(&v, "probabilities");
        assert_eq!(p["shape"], json!([N_REF, 10]));
        let d = max_diff(&floats(&p["data"]), &expected_probabilities(name, 0..N_REF));
        assert!(d < TOL, "{name}: probabilities {d} from Python onnxruntime's softmax");

        // UINT8 raw pixels, [N,784], nested rows, only the label asked for.
        let req = json!({
            "inputs": [{"name": "input", "datatype": "UINT8", "shape": [N_REF, 784], "data": images}],
            "outputs": [{"name": "label"}],
        });
        let v = post_json(&app, &uri, &req).await.json();
        assert_eq!(v["outputs"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(labels_of(&v), expected_labels(name, 0..N_REF), "{name} UINT8");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_binary_tensor_extension_both_ways() {
    let app = app(ServeConfig::default());
    let images = pixels(0..8);
    let bytes: Vec<u8> = images.iter().flatten().flat_map(|&p| (f32::from(p) / 255.0).to_le_bytes()).collect();
    let head = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [8, 1, 28, 28],
                    "parameters": {"binary_data_size": bytes.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}, {"name": "label"}],
    })
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(&bytes);
    let req = Request::post("/v2/models/cnn_b/infer")
        .header("Inference-Header-Content-Length", head.len())
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(body))
        .unwrap();
    let r = call(&app, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let json_len: usize = r.headers["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let v: Value = serde_json::from_slice(&r.body[..json_len]).unwrap();
    assert_eq!(labels_of(&v), expected_labels("cnn_b", 0..8));
    let p = output(&v, "probabilities");
    assert_eq!(p["parameters"]["binary_data_size"], 8 * 10 * 4);
    let probs: Vec<f32> =
        r.body[json_len..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert!(max_diff(&probs, &expected_probabilities("cnn_b", 0..8)) < TOL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_infer_rejects_bad_requests_with_400_or_404() {
    let app = app(ServeConfig::default());
    let zeros = vec![0u8; 784];
    let tensor = |name: &str, datatype: &str, shape: Value, data: Value| json!({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]});
    // 784 zeros with value `v` at index 5.
    let one = |v: Value| {
        let mut d = vec![json!(0); 784];
        d[5] = v;
        Value::Array(d)
    };
    let cases: Vec<(String, &str)> = vec![
        ("{\"inputs\": [".to_string(), "invalid inference request"),
        ("[1, 2]".to_string(), "invalid inference request"),
        (json!({"inputs": []}).to_string(), "exactly one input"),
        (tensor("pixels", "UINT8", json!([1, 784]), json!(zeros)).to_string(), "unknown input `pixels`"),
        (tensor("input", "INT32", json!([1, 784]), json!(zeros)).to_string(), "datatype INT32"),
        (tensor("input", "UINT8", json!([1, 783]), json!(zeros)).to_string(), "shape [1, 783]"),
        (tensor("input", "UINT8", json!([1, 3, 28, 28]), json!(zeros)).to_string(), "expected [N,784]"),
        (tensor("input", "UINT8", json!([0, 784]), json!([])).to_string(), "N >= 1"),
        (tensor("input", "UINT8", json!([2, 784]), json!(zeros)).to_string(), "needs 1568"),
        (tensor("input", "UINT8", json!([1, 784]), json!(["a"])).to_string(), "invalid inference request"),
        (tensor("input", "UINT8", json!([1, 784]), json!({"x": 1})).to_string(), "invalid inference request"),
        (tensor("input", "UINT8", json!([1, 784]), one(json!(256))).to_string(), "256 at index 5"),
        (tensor("input", "UINT8", json!([1, 784]), one(json!(1.5))).to_string(), "1.5 at index 5"),
        (tensor("input", "FP32", json!([1, 784]), one(json!(2.0))).to_string(), "outside [0, 1]"),
        (tensor("input", "FP32", json!([1, 784]), one(json!(-0.1))).to_string(), "-0.1 at index 5"),
        (
            json!({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 784], "data": zeros}],
                   "outputs": [{"name": "logits"}]})
            .to_string(),
            "unknown output `logits`",
        ),
        (json!({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 784]}]}).to_string(), "no `data`"),
    ];
    for (body, needle) in &cases {
        post(&app, "/v2/models/ensemble/infer", "application/json", body.clone())
            .await
            .assert_error(StatusCode::BAD_REQUEST, needle);
    }
    post_json(&app, "/v2/models/nope/infer", &v2_fp32(&pixels(0..1)))
        .await
        .assert_error(StatusCode::NOT_FOUND, "`nope` is not loaded");
    // A binary header length longer than the body.
    let req = Request::post("/v2/models/cnn_a/infer")
        .header("Inference-Header-Content-Length", "999")
        .body(Body::from("{}"))
        .unwrap();
    call(&app, req).await.assert_error(StatusCode::BAD_REQUEST, "only 2 bytes");
    // Still healthy and correct afterwards.
    let v = post_json(&app, "/v2/models/ensemble/infer", &v2_fp32(&pixels(0..4))).await.json();
    assert_eq!(labels_of(&v), expected_labels("ensemble", 0..4));
}

fn csv_rows(images: &[Vec<u8>], labels: Option<&[u8]>) -> String {
    let mut s = String::new();
    for (i, img) in images.iter().enumerate() {
        if let Some(l) = labels {
            s.push_str(&format!("{},", l[i]));
        }
        s.push_str(&img.iter().map(u8::to_string).collect::<Vec<_>>().join(","));
        s.push('\n');
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_takes_json_and_csv_and_details_each_vote() {
    let app = app(ServeConfig::default());
    let images = pixels(0..N_REF);
    let want = expected_labels("ensemble", 0..N_REF);
    let labels =
        |v: &Value| -> Vec<u8> { v["labels"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u8).collect() };

    let r = post_json(&app, "/predict", &json!({"pixels": images})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(labels(&r.json()), want);

    let v = post_json(&app, "/predict?detail=true", &json!({"pixels": images})).await.json();
    assert_eq!(labels(&v), want);
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), MEMBERS.len());
    for (m, name) in models.iter().zip(MEMBERS) {
        assert_eq!(m["name"], name);
        assert_eq!(labels(m), expected_labels(name, 0..N_REF), "{name}'s votes");
    }
    let probs: Vec<f32> = v["probabilities"].as_array().unwrap().iter().flat_map(floats).collect();
    assert!(max_diff(&probs, &expected_probabilities("ensemble", 0..N_REF)) < TOL);

    // Kaggle CSV: with the test header, without a header, and train-shaped (labels ignored).
    let header: String = (0..784).map(|i| format!("pixel{i}")).collect::<Vec<_>>().join(",");
    let rows = csv_rows(&images, None);
    for body in [format!("{header}\n{rows}"), rows.clone(), csv_rows(&images, Some(&[7; N_REF]))] {
        let r = post(&app, "/predict", "text/csv", body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(labels(&r.json()), want);
    }

    let mut bad_row = images[0].iter().map(u8::to_string).collect::<Vec<_>>();
    bad_row[17] = "x".into();
    let bad_csv = format!("{header}\n{rows}{}\n", bad_row.join(","));
    post(&app, "/predict", "text/csv", bad_csv).await.assert_error(StatusCode::BAD_REQUEST, "request body:66");
    post(&app, "/predict", "text/csv", "1,2,3\n").await.assert_error(StatusCode::BAD_REQUEST, "3 fields");
    post(&app, "/predict", "application/xml", "<x/>").await.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "xml");
    let short = json!({"pixels": [vec![0; 783]]});
    post_json(&app, "/predict", &short).await.assert_error(StatusCode::BAD_REQUEST, "783 values");
    let mut big = vec![0i32; 784];
    big[5] = 300;
    post_json(&app, "/predict", &json!({"pixels": [big]}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "pixels[0][5] = 300");
    post_json(&app, "/predict", &json!({"pixels": []})).await.assert_error(StatusCode::BAD_REQUEST, "no images");
    post_json(&app, "/predict", &json!({"image": []})).await.assert_error(StatusCode::BAD_REQUEST, "pixels");
    post_json(&app, "/predict?detail=maybe", &json!({"pixels": [vec![0; 784]]}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "detail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413() {
    let app = app(ServeConfig { body_limit: 10_000, ..ServeConfig::default() });
    let big = v2_fp32(&pixels(0..4)).to_string();
    assert!(big.len() > 10_000);
    for uri in ["/v2/models/cnn_a/infer", "/predict"] {
        post(&app, uri, "application/json", big.clone())
            .await
            .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "10000 bytes");
    }
    // Under the limit still works.
    let small = json!({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 784], "data": pixels(0..1)}]});
    assert_eq!(post_json(&app, "/v2/models/cnn_a/infer", &small).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_guards_everything_but_the_page_and_health() {
    let app = app(ServeConfig { token: Some("s3cret".into()), ..ServeConfig::default() });
    let body = v2_fp32(&pixels(0..1)).to_string();
    let infer = |auth: Option<&str>| {
        let mut b = Request::post("/v2/models/cnn_a/infer").header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(Body::from(body.clone())).unwrap()
    };
    for auth in [None, Some("Bearer wrong"), Some("s3cret"), Some("Basic czNjcmV0"), Some("Bearer s3cre")] {
        let r = call(&app, infer(auth)).await;
        r.assert_error(StatusCode::UNAUTHORIZED, "bearer token");
        assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    assert_eq!(call(&app, infer(Some("Bearer s3cret"))).await.status, StatusCode::OK);
    for open in ["/", "/v2/health/live", "/v2/health/ready"] {
        assert_eq!(get(&app, open).await.status, StatusCode::OK, "{open}");
    }
    for guarded in ["/metrics", "/v2", "/v2/models/cnn_a"] {
        get(&app, guarded).await.assert_error(StatusCode::UNAUTHORIZED, "bearer");
    }
}

/// Sends requests of `sizes` images (distinct images each) to `model` all at once; checks
/// each answer against its own images; returns the metrics text afterwards.
async fn concurrent_requests(app: &Router, model: &str, sizes: &[usize]) -> String {
    let mut tasks = Vec::new();
    let mut start = 0;
    for &k in sizes {
        let range = start..start + k;
        start += k;
        let app = app.clone();
        let uri = format!("/v2/models/{model}/infer");
        let model = model.to_string();
        tasks.push(tokio::spawn(async move {
            let v = post_json(&app, &uri, &v2_fp32(&pixels(range.clone()))).await.json();
            assert_eq!(labels_of(&v), expected_labels(&model, range.clone()), "request for images {range:?}");
            let d = max_diff(&floats(&output(&v, "probabilities")["data"]), &expected_probabilities(&model, range));
            assert!(d < TOL);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    String::from_utf8(get(app, "/metrics").await.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_batching_merges_concurrent_requests_and_splits_the_answers() {
    // 20 requests of 1-4 images (50 in all) arrive within the 1 s window: fewer batches
    // than requests, every image counted once, each request gets its own rows back.
    let sizes: Vec<usize> = (0..20).map(|i| 1 + i % 4).collect();
    let total: usize = sizes.iter().sum();
    assert!(total <= N_REF);
    let app = app(ServeConfig {
        max_batch: 64,
        max_delay: Duration::from_secs(1),
        batch_wait: BatchWait::Fixed,
        ..ServeConfig::default()
    });
    let text = concurrent_requests(&app, "cnn_a", &sizes).await;
    let batches = metric(&text, "digits_batch_size_count{model=\"cnn_a\"}");
    assert_eq!(metric(&text, "digits_batch_size_sum{model=\"cnn_a\"}"), total as f64);
    assert!(batches < sizes.len() as f64, "{batches} batches for {} requests: nothing merged", sizes.len());
    // The ensemble runs each member on the merged batch.
    let text = concurrent_requests(&app, "ensemble", &sizes).await;
    assert_eq!(metric(&text, "digits_batch_size_sum{model=\"cnn_b\"}"), total as f64);

    // max_batch caps a merged batch; a request bigger than it still runs, alone and whole.
    let app = self::app(ServeConfig {
        max_batch: 4,
        max_delay: Duration::from_secs(1),
        batch_wait: BatchWait::Fixed,
        ..ServeConfig::default()
    });
    let text = concurrent_requests(&app, "cnn_c", &[3, 3, 9, 1]).await;
    assert_eq!(metric(&text, "digits_batch_size_sum{model=\"cnn_c\"}"), 16.0);
    assert_eq!(
        metric(&text, "digits_batch_size_bucket{model=\"cnn_c\",le=\"8\"}"),
        metric(&text, "digits_batch_size_count{model=\"cnn_c\"}") - 1.0
    );

    // Batching off: one model call per request.
    let app = self::app(ServeConfig { max_batch: 1, max_delay: Duration::ZERO, ..ServeConfig::default() });
    let text = concurrent_requests(&app, "cnn_a", &sizes).await;
    assert_eq!(metric(&text, "digits_batch_size_count{model=\"cnn_a\"}"), sizes.len() as f64);
    assert_eq!(metric(&text, "digits_batch_size_sum{model=\"cnn_a\"}"), total as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_batching_never_holds_a_lone_request_for_the_window() {
    // A 10-minute window outlasts the 5 s time limit: a lone request that waited for
    // batch-mates would be answered 504 (as it is with BatchWait::Fixed).
    let app = app(ServeConfig {
        max_delay: Duration::from_secs(600),
        timeout: Duration::from_secs(5),
        ..ServeConfig::default()
    });
    assert_eq!(ServeConfig::default().batch_wait, BatchWait::Adaptive);
    for i in 0..3 {
        let r = post_json(&app, "/v2/models/cnn_a/infer", &v2_fp32(&pixels(i..i + 1))).await;
        assert_eq!(r.status, StatusCode::OK, "lone request {i}");
        assert_eq!(labels_of(&r.json()), expected_labels("cnn_a", i..i + 1));
    }
    let text = String::from_utf8(get(&app, "/metrics").await.body).unwrap();
    assert_eq!(metric(&text, "digits_batch_size_count{model=\"cnn_a\"}"), 3.0, "one batch per lone request");

    // Concurrent requests come back whole and right, each image counted once. (The tail of
    // a burst may wait out the window for the previous batch's count, so a short one here.)
    let app = self::app(ServeConfig { max_delay: Duration::from_millis(20), ..ServeConfig::default() });
    let sizes: Vec<usize> = (0..20).map(|i| 1 + i % 3).collect();
    let text = concurrent_requests(&app, "cnn_b", &sizes).await;
    assert_eq!(metric(&text, "digits_batch_size_sum{model=\"cnn_b\"}"), sizes.iter().sum::<usize>() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_503_with_retry_after() {
    // Three requests wait in the batching window (5 s); the fourth finds the queue full.
    let app = app(ServeConfig {
        queue: 3,
        max_delay: Duration::from_secs(5),
        batch_wait: BatchWait::Fixed,
        ..ServeConfig::default()
    });
    let waiting: Vec<_> = (0..3)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move { post_json(&app, "/v2/models/cnn_a/infer", &v2_fp32(&pixels(i..i + 1))).await })
        })
        .collect();
    let mut polls = 0;
    loop {
        let text = String::from_utf8(get(&app, "/metrics").await.body).unwrap();
        if metric(&text, "digits_queue_depth") == 3.0 {
            break;
        }
        polls += 1;
        assert!(polls < 1000, "the three requests never queued:\n{text}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = post_json(&app, "/v2/models/cnn_a/infer", &v2_fp32(&pixels(3..4))).await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "limit 3");
    assert_eq!(r.headers[header::RETRY_AFTER], "1");
    for (i, w) in waiting.into_iter().enumerate() {
        let r = w.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(labels_of(&r.json()), expected_labels("cnn_a", i..i + 1));
    }
    let text = String::from_utf8(get(&app, "/metrics").await.body).unwrap();
    assert_eq!(metric(&text, "digits_queue_depth"), 0.0);
    assert_eq!(metric(&text, "digits_http_requests_total{route=\"/v2/models/{name}/infer\",status=\"503\"}"), 1.0);
    assert_eq!(metric(&text, "digits_http_requests_total{route=\"/v2/models/{name}/infer\",status=\"200\"}"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_over_the_time_limit_is_504_and_the_server_goes_on() {
    // The batching window (3 s) outlasts the time limit (100 ms).
    let app = app(ServeConfig {
        timeout: Duration::from_millis(100),
        max_delay: Duration::from_secs(3),
        batch_wait: BatchWait::Fixed,
        ..ServeConfig::default()
    });
    post_json(&app, "/v2/models/cnn_a/infer", &v2_fp32(&pixels(0..1)))
        .await
        .assert_error(StatusCode::GATEWAY_TIMEOUT, "100 ms");
    let text = String::from_utf8(get(&app, "/metrics").await.body).unwrap();
    assert_eq!(metric(&text, "digits_queue_depth"), 0.0, "the timed-out request still holds its queue place");
    assert_eq!(metric(&text, "digits_http_requests_total{route=\"/v2/models/{name}/infer\",status=\"504\"}"), 1.0);
}

#[test]
fn server_refuses_inconsistent_models() {
    let fx = fixture();
    let load = |m: &str| Model::load(&fx.model(m), BackendKind::Tract, 1).unwrap();
    let err = |models: Vec<(String, Model)>| Server::new(models, ServeConfig::default()).err().unwrap().to_string();
    assert!(err(vec![]).contains("no models"));
    assert!(err(vec![("a".into(), load("cnn_a")), ("a".into(), load("cnn_b"))]).contains("`a` is used twice"));
    assert!(err(vec![("ensemble".into(), load("cnn_a"))]).contains("reserved"));
    assert!(err(vec![("a/b".into(), load("cnn_a"))]).contains("must be"));
}
