//! The HTTP side of [`RestStore`]: credentials and timeouts, one blocking request per
//! call (no retries: [`crate::BufferedTracker`] retries), MLflow's JSON error bodies
//! mapped to [`TrackingError::Http`] and transport failures to
//! [`TrackingError::Unreachable`] / [`TrackingError::Request`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::wire::ErrorBody;
use super::RestStore;
use crate::error::{io_err, Result, TrackingError};

/// Largest response body read (artifact downloads, long histories).
const MAX_RESPONSE_BYTES: u64 = 4 << 30;
/// Where MLflow's REST API lives below the tracking URI.
pub(super) const API: &str = "/api/2.0/mlflow";

/// How requests authenticate, as MLflow's `MlflowHostCreds`.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Auth {
    #[default]
    None,
    /// `Authorization: Bearer <token>` (`MLFLOW_TRACKING_TOKEN`).
    Bearer(String),
    /// HTTP basic auth (`MLFLOW_TRACKING_USERNAME` + `MLFLOW_TRACKING_PASSWORD`).
    Basic { username: String, password: String },
}

impl fmt::Debug for Auth {
    // Never print secrets, not even in a debug dump of the tracker.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Auth::Basic { username, .. } => write!(f, "Basic({username:?}, <redacted>)"),
        }
    }
}

impl Auth {
    /// MLflow's precedence: a token wins over username/password. Errors when only
    /// one of username and password is set, as MLflow does.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(token) = var("MLFLOW_TRACKING_TOKEN") {
            return Ok(Auth::Bearer(token));
        }
        match (var("MLFLOW_TRACKING_USERNAME"), var("MLFLOW_TRACKING_PASSWORD")) {
            (Some(username), Some(password)) => Ok(Auth::Basic { username, password }),
            (None, None) => Ok(Auth::None),
            _ => Err(TrackingError::InvalidValue {
                what: "MLflow credentials".into(),
                reason: "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD must be set together".into(),
            }),
        }
    }

    /// The `Authorization` header value, if any.
    pub(super) fn header(&self) -> Option<String> {
        match self {
            Auth::None => None,
            Auth::Bearer(t) => Some(format!("Bearer {t}")),
            Auth::Basic { username, password } => {
                Some(format!("Basic {}", BASE64.encode(format!("{username}:{password}"))))
            }
        }
    }
}

/// Connection settings of a [`RestStore`].
#[derive(Debug, Clone)]
pub struct RestOptions {
    pub auth: Auth,
    /// Limit for one whole request (connect, send, answer, body). MLflow's
    /// `MLFLOW_HTTP_REQUEST_TIMEOUT` (seconds), default 120.
    pub request_timeout: Duration,
    /// Limit for opening the connection; short, so that a dead host is noticed
    /// quickly. Default 10 s.
    pub connect_timeout: Duration,
    /// Parent of the local folders that [`crate::RunHandle::artifact_dir`] returns for
    /// runs of this store (`<staging_dir>/<run id>/artifacts`). Files written
    /// there are not uploaded by themselves: pass them to `log_artifact(s)`.
    pub staging_dir: PathBuf,
}

impl Default for RestOptions {
    fn default() -> Self {
        RestOptions {
            auth: Auth::None,
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            staging_dir: std::env::temp_dir().join("mlflow-artifact-staging"),
        }
    }
}

impl RestOptions {
    /// Defaults plus `MLFLOW_TRACKING_TOKEN` / `MLFLOW_TRACKING_USERNAME` +
    /// `MLFLOW_TRACKING_PASSWORD` and `MLFLOW_HTTP_REQUEST_TIMEOUT`.
    pub fn from_env() -> Result<Self> {
        let mut opts = RestOptions { auth: Auth::from_env()?, ..RestOptions::default() };
        if let Ok(v) = std::env::var("MLFLOW_HTTP_REQUEST_TIMEOUT") {
            let secs: f64 = v.trim().parse().ok().filter(|s: &f64| s.is_finite() && *s > 0.0).ok_or_else(|| {
                TrackingError::InvalidValue {
                    what: "MLFLOW_HTTP_REQUEST_TIMEOUT".into(),
                    reason: format!("{v:?} is not a positive number of seconds"),
                }
            })?;
            opts.request_timeout = Duration::from_secs_f64(secs);
        }
        Ok(opts)
    }
}

/// A request body.
pub(super) enum Body<'a> {
    Empty,
    Json(Value),
    Bytes(&'a [u8]),
    File(&'a Path),
}

impl RestStore {
    /// The URL of an MLflow REST endpoint, e.g. `runs/get`.
    pub(super) fn endpoint_url(&self, endpoint: &str) -> String {
        format!("{}{API}/{endpoint}", self.inner.base)
    }

    /// `GET url` (a full URL, e.g. below an artifact root): the body on 2xx.
    pub(crate) fn get_bytes(&self, url: &str) -> Result<Vec<u8>> {
        self.send("GET", url, &[], Body::Empty)
    }

    /// One request; the response body on 2xx, [`TrackingError::Http`] otherwise.
    pub(super) fn send(
        &self,
        method: &'static str,
        url: &str,
        query: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<Vec<u8>> {
        let agent = &self.inner.agent;
        let auth = self.inner.auth_header.as_deref();
        macro_rules! prepare {
            ($rb:expr) => {{
                let mut rb = $rb;
                for (k, v) in query {
                    rb = rb.query(*k, *v);
                }
                if let Some(a) = auth {
                    rb = rb.header("Authorization", a);
                }
                rb
            }};
        }
        let res = match (method, body) {
            ("GET", Body::Empty) => prepare!(agent.get(url)).call(),
            (_, body) => {
                let rb = match method {
                    "POST" => prepare!(agent.post(url)),
                    "PUT" => prepare!(agent.put(url)),
                    other => unreachable!("unsupported method {other}"),
                };
                match body {
                    Body::Empty => rb.send_empty(),
                    Body::Json(v) => rb.send_json(&v),
                    Body::Bytes(b) => rb.content_type("application/octet-stream").send(b),
                    Body::File(p) => {
                        let f = std::fs::File::open(p).map_err(io_err(p))?;
                        rb.content_type("application/octet-stream").send(f)
                    }
                }
            }
        };
        let mut resp = res.map_err(|e| transport_error(method, url, e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(|e| transport_error(method, url, e))?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let (error_code, message) = error_details(&bytes);
        Err(TrackingError::Http { method, url: url.to_string(), status, error_code, message })
    }

    /// One call of MLflow's REST API, its JSON answer decoded as `T` (an empty body
    /// reads as `{}`).
    fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        endpoint: &str,
        query: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<T> {
        let url = self.endpoint_url(endpoint);
        let bytes = self.send(method, &url, query, body)?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        serde_json::from_slice(bytes).map_err(|e| TrackingError::BadResponse {
            url,
            reason: if e.is_data() { format!("unexpected JSON: {e}") } else { format!("not JSON: {e}") },
        })
    }

    pub(super) fn get<T: DeserializeOwned>(&self, endpoint: &str, query: &[(&str, &str)]) -> Result<T> {
        self.call("GET", endpoint, query, Body::Empty)
    }

    pub(super) fn post<T: DeserializeOwned>(&self, endpoint: &str, body: &impl Serialize) -> Result<T> {
        let json = serde_json::to_value(body).map_err(|e| TrackingError::InvalidValue {
            what: format!("request body for {endpoint}"),
            reason: e.to_string(),
        })?;
        self.call("POST", endpoint, &[], Body::Json(json))
    }
}

/// MLflow's `error_code` and `message` from an error body; for anything else (a
/// proxy's HTML page) no code and the start of the body.
fn error_details(bytes: &[u8]) -> (Option<String>, String) {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(ErrorBody { error_code, message }) if error_code.is_some() || message.is_some() => {
            (error_code, message.unwrap_or_default())
        }
        _ => {
            let text = String::from_utf8_lossy(bytes);
            let text = text.trim();
            let mut msg: String = text.chars().take(500).collect();
            if msg.len() < text.len() {
                msg.push_str("...");
            }
            if msg.is_empty() {
                msg = "(empty body)".into();
            }
            (None, msg)
        }
    }
}

/// Maps a transport failure: network-level ones are [`TrackingError::Unreachable`]
/// (retry later), the rest [`TrackingError::Request`].
fn transport_error(method: &'static str, url: &str, e: ureq::Error) -> TrackingError {
    use ureq::Error as E;
    let transient =
        matches!(e, E::Io(_) | E::Timeout(_) | E::HostNotFound | E::ConnectionFailed | E::Protocol(_) | E::BodyStalled);
    let url = url.to_string();
    if transient {
        TrackingError::Unreachable { method, url, source: Box::new(e) }
    } else {
        TrackingError::Request { method, url, source: Box::new(e) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("user:pässword", "dXNlcjpww6Rzc3dvcmQ="),
        ] {
            assert_eq!(BASE64.encode(i.as_bytes()), o, "{i:?}");
        }
        assert_eq!(Auth::Basic { username: "u".into(), password: "p".into() }.header().unwrap(), "Basic dTpw");
        assert_eq!(Auth::Bearer("t".into()).header().unwrap(), "Bearer t");
        assert!(!format!("{:?}", Auth::Bearer("secret".into())).contains("secret"));
    }

    #[test]
    fn error_bodies() {
        let (code, msg) = error_details(br#"{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}"#);
        assert_eq!((code.as_deref(), msg.as_str()), (Some("RESOURCE_DOES_NOT_EXIST"), "no run"));
        assert_eq!(error_details(b"  <html>bad gateway</html> "), (None, "<html>bad gateway</html>".into()));
        assert_eq!(error_details(b""), (None, "(empty body)".into()));
        assert_eq!(error_details(b"{}"), (None, "{}".into()));
    }
}
