//! URLs of a tracking server: checking the tracking URI, resolving a run's
//! `mlflow-artifacts:` URI to the server's artifact proxy and percent-encoding
//! artifact paths below it (with the `url` and `percent-encoding` crates).

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use url::Url;

use crate::error::{Result, TrackingError};

/// Where the artifact proxy lives below the tracking URI.
const ARTIFACTS_API: &str = "/api/2.0/mlflow-artifacts/artifacts";

/// What stays unencoded in an artifact path besides ASCII letters and digits: RFC 3986's
/// unreserved characters and the `/` between segments.
const ARTIFACT_PATH_KEEP: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// Accepts `http(s)://host[:port][/prefix]`, refusing credentials, a query or a fragment
/// (and `https://` in a build without TLS).
pub(super) fn check_tracking_uri(uri: &str) -> Result<()> {
    let unsupported = |reason: &str| TrackingError::UnsupportedUri { uri: uri.to_string(), reason: reason.to_string() };
    let rest = if let Some(r) = uri.strip_prefix("http://") {
        r
    } else if let Some(r) = uri.strip_prefix("https://") {
        if !cfg!(feature = "https") {
            return Err(unsupported(
                "this build has no TLS support; enable the `https` feature of the `tracking` crate",
            ));
        }
        r
    } else {
        return Err(unsupported("the REST backend needs an http:// or https:// URI"));
    };
    let shape = || {
        unsupported(
            "expected scheme://host[:port][/prefix] without credentials, query or fragment \
             (credentials go in MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD)",
        )
    };
    let url = Url::parse(uri).map_err(|_| shape())?;
    // `url` drops an empty user (`http://@host`): look at the authority as written too.
    let authority = rest.split('/').next().unwrap_or_default();
    if url.host_str().is_none_or(str::is_empty)
        || authority.contains('@')
        || !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(shape());
    }
    Ok(())
}

/// MLflow's `MlflowArtifactsRepository.resolve_uri` (and plain http(s) artifact
/// roots, which `HttpArtifactRepository` uses as they are): the URL under which
/// the run's artifacts are PUT and GET, without a trailing slash.
pub(crate) fn resolve_artifact_uri(artifact_uri: &str, tracking_uri: &str) -> Result<String> {
    let unsupported =
        |reason: &str| TrackingError::UnsupportedUri { uri: artifact_uri.to_string(), reason: reason.to_string() };
    if artifact_uri.starts_with("http://") || artifact_uri.starts_with("https://") {
        return Ok(artifact_uri.trim_end_matches('/').to_string());
    }
    if !artifact_uri.starts_with("mlflow-artifacts:") {
        return Err(unsupported(
            "the run's artifacts are not served by the tracking server (start it with \
             --serve-artifacts, the default, to upload through it)",
        ));
    }
    let artifact = Url::parse(artifact_uri).map_err(|e| unsupported(&format!("not a URI: {e}")))?;
    let mut url = Url::parse(tracking_uri)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| unsupported("tracking URI is not http(s)"))?;
    // `mlflow-artifacts://host:port/path` names its own server; `mlflow-artifacts:/path` uses ours.
    if let Some(host) = artifact.host_str().filter(|h| !h.is_empty()) {
        url.set_host(Some(host))
            .and_then(|()| url.set_port(artifact.port()).map_err(|()| url::ParseError::InvalidPort))
            .map_err(|e| unsupported(&format!("bad server in artifact URI: {e}")))?;
    }
    // The tracking URI's path prefix, the proxy's path, then the artifact path; empty
    // segments (doubled or trailing slashes) dropped.
    let path = format!("{}/{ARTIFACTS_API}/{}", url.path(), artifact.path());
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    url.set_path(&format!("/{}", segments.join("/")));
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Percent-encodes each segment of an artifact path (keeps `/`).
pub(crate) fn encode_path(path: &str) -> String {
    utf8_percent_encode(path, ARTIFACT_PATH_KEEP).to_string()
}

/// The URL of the artifact `path` below an artifact root URL.
pub(crate) fn artifact_url(root: &str, path: &str) -> String {
    format!("{root}/{}", encode_path(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_uris_resolve_like_mlflow() {
        let t = "http://127.0.0.1:5000";
        assert_eq!(
            resolve_artifact_uri("mlflow-artifacts:/1/abc/artifacts", t).unwrap(),
            "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts"
        );
        assert_eq!(
            resolve_artifact_uri("mlflow-artifacts:/1/abc/artifacts", "https://h/prefix").unwrap(),
            "https://h/prefix/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts"
        );
        assert_eq!(
            resolve_artifact_uri("mlflow-artifacts://other:81/1/abc/artifacts", t).unwrap(),
            "http://other:81/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts"
        );
        assert_eq!(
            resolve_artifact_uri("mlflow-artifacts:///1/abc/artifacts", t).unwrap(),
            "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts"
        );
        assert_eq!(
            resolve_artifact_uri("mlflow-artifacts://other/1/abc", "http://h:5000/p/").unwrap(),
            "http://other/p/api/2.0/mlflow-artifacts/artifacts/1/abc"
        );
        assert_eq!(resolve_artifact_uri("http://h/x/artifacts/", t).unwrap(), "http://h/x/artifacts");
        assert!(matches!(
            resolve_artifact_uri("/srv/mlruns/1/abc/artifacts", t),
            Err(TrackingError::UnsupportedUri { .. })
        ));
        assert!(resolve_artifact_uri("s3://b/1/abc/artifacts", t).is_err());
        assert_eq!(encode_path("ckpt dir/a+b=1.bin"), "ckpt%20dir/a%2Bb%3D1.bin");
        assert_eq!(encode_path("ü~-._/x%"), "%C3%BC~-._/x%25");
        assert_eq!(artifact_url("http://h/r", "a b"), "http://h/r/a%20b");
    }

    #[test]
    fn tracking_uris() {
        for good in ["http://127.0.0.1:5000", "http://h/prefix/", "http://localhost"] {
            assert!(check_tracking_uri(good).is_ok(), "{good}");
        }
        for bad in ["ftp://h", "http://", "http://user:pw@h", "http://@h", "http://h/?x=1", "http://h#f", "HTTP://h"] {
            assert!(check_tracking_uri(bad).is_err(), "{bad}");
        }
    }
}
