//! The bearer token check byte by byte: a token of the right length is refused wherever its
//! bytes differ, including differences that would cancel out if the constant-time comparison
//! combined them with XOR instead of OR.
#![cfg(feature = "serve")]

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use inference::serve::{ServeConfig, Server};
use inference::{BackendKind, Model};
use tower::ServiceExt;

fn app(token: &str) -> Router {
    let name = common::MEMBERS[0];
    let model = Model::load(&common::fixture().model(name), BackendKind::Tract, 1).unwrap();
    let config = ServeConfig { token: Some(token.into()), ..ServeConfig::default() };
    Server::new(vec![(name.to_string(), model)], config).unwrap().router()
}

/// Status of `GET /v2` (a guarded route that runs no model) with this Authorization header.
async fn status(app: &Router, authorization: &str) -> StatusCode {
    let req = Request::get("/v2").header(header::AUTHORIZATION, authorization).body(Body::empty()).unwrap();
    app.clone().oneshot(req).await.unwrap().status()
}

#[tokio::test]
async fn a_token_of_the_right_length_must_match_every_byte() {
    let app = app("s3cret");
    assert_eq!(status(&app, "Bearer s3cret").await, StatusCode::OK);
    // Last byte, first byte, a middle byte; then `s`/`3` swapped: 0x73 ^ 0x33 = 0x40 twice,
    // which XOR-accumulated would be 0 (equal).
    for wrong in ["s3cres", "t3cret", "s3Cret", "3scret"] {
        assert_eq!(status(&app, &format!("Bearer {wrong}")).await, StatusCode::UNAUTHORIZED, "{wrong}");
    }
}
