//! Small helpers shared by the backends: ids, clocks, URIs, atomic files and
//! Python-compatible number formatting.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;

use percent_encoding::{percent_decode_str, percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{data_err, io_err, Result, TrackingError};

pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(TrackingError::Random)?;
    Ok(b)
}

/// 32 lowercase hex chars, the shape of MLflow's `uuid.uuid4().hex` run ids.
pub fn new_run_id() -> Result<String> {
    let b = random_bytes::<16>()?;
    let mut s = String::with_capacity(32);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    Ok(s)
}

/// MLflow's `_generate_unique_integer_id`: 18 decimal digits, no leading zero.
pub fn new_experiment_id() -> Result<String> {
    let b = random_bytes::<18>()?;
    let mut s = String::with_capacity(18);
    // Modulo bias is irrelevant for an id.
    s.push(char::from(b'1' + b[0] % 9));
    for x in &b[1..] {
        s.push(char::from(b'0' + x % 10));
    }
    Ok(s)
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// What `getpass.getuser()` returns, which is what MLflow records as the user.
pub fn current_user() -> String {
    ["LOGNAME", "USER", "LNAME", "USERNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".to_string())
}

/// The tags MLflow puts on a new run for its context - `mlflow.user`, `mlflow.source.name`
/// (this program) and `mlflow.source.type` - then the caller's `tags`, which win.
pub fn run_context_tags<'a>(
    user: &'a str,
    source: &'a str,
    tags: &'a [(String, String)],
) -> BTreeMap<&'a str, &'a str> {
    let mut all_tags: BTreeMap<&str, &str> = BTreeMap::new();
    all_tags.insert(crate::tags::USER, user);
    all_tags.insert(crate::tags::SOURCE_NAME, source);
    all_tags.insert(crate::tags::SOURCE_TYPE, "LOCAL");
    for (k, v) in tags {
        all_tags.insert(k, v);
    }
    all_tags
}

/// What MLflow records as a run's source: the program's path.
pub fn run_source() -> String {
    std::env::args().next().unwrap_or_else(|| "<console>".into())
}

/// `os.path.abspath`: absolute and lexically normalised, symlinks untouched, so
/// the URIs we store match the ones Python would compute for the same root.
pub fn abspath(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(io_err(p))?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    Ok(out)
}

/// What `pathlib.Path(p).as_uri()` leaves unencoded besides ASCII letters and digits.
#[cfg(unix)]
const FILE_URI_KEEP: &AsciiSet = &NON_ALPHANUMERIC.remove(b'_').remove(b'.').remove(b'-').remove(b'~').remove(b'/');
#[cfg(not(unix))]
const FILE_URI_KEEP: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'_').remove(b'.').remove(b'-').remove(b'~').remove(b'/').remove(b':');

/// `pathlib.Path(p).as_uri()`: percent-encodes everything but unreserved
/// characters and `/`. Encoding matters because MLflow unquotes every local
/// artifact location, so a raw `%` or `?` in a path would be misread.
pub fn path_to_file_uri(p: &Path) -> String {
    #[cfg(unix)]
    let bytes: Vec<u8> = {
        use std::os::unix::ffi::OsStrExt;
        p.as_os_str().as_bytes().to_vec()
    };
    #[cfg(not(unix))]
    let bytes: Vec<u8> = {
        let s = p.to_string_lossy().replace('\\', "/");
        if s.starts_with('/') {
            s.into_bytes()
        } else {
            format!("/{s}").into_bytes()
        }
    };
    format!("file://{}", percent_encode(&bytes, FILE_URI_KEEP))
}

/// `mlflow.utils.file_utils.local_file_uri_to_path`, restricted to URIs that
/// denote this machine; `None` for remote schemes (s3://, http://, ...).
pub fn file_uri_to_path(uri: &str) -> Option<PathBuf> {
    let path = if let Some(rest) = uri.strip_prefix("file:") {
        let path = match rest.strip_prefix("//") {
            Some(r) => {
                let slash = r.find('/').unwrap_or(r.len());
                let host = &r[..slash];
                if !host.is_empty() && host != "localhost" {
                    return None;
                }
                &r[slash..]
            }
            None => rest,
        };
        // urlparse would treat these as query / fragment.
        path.split(['?', '#']).next().unwrap_or("")
    } else if has_scheme(uri) {
        return None;
    } else {
        uri
    };
    Some(bytes_to_path(percent_decode_str(path).collect()))
}

fn has_scheme(uri: &str) -> bool {
    match uri.find(':') {
        // A single letter is a Windows drive, not a scheme.
        Some(i) if i > 1 => {
            let s = &uri[..i];
            s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        }
        _ => false,
    }
}

fn bytes_to_path(b: Vec<u8>) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        PathBuf::from(std::ffi::OsString::from_vec(b))
    }
    #[cfg(not(unix))]
    {
        let s = String::from_utf8_lossy(&b).into_owned();
        // "/C:/x" -> "C:/x"
        let s = match s.as_bytes() {
            [b'/', d, b':', ..] if d.is_ascii_alphabetic() => s[1..].to_string(),
            _ => s,
        };
        PathBuf::from(s)
    }
}

/// Python's `repr(float)`, which is what MLflow writes into metric files:
/// shortest round-trip digits, scientific below 1e-4 and from 1e16 up.
pub fn py_float_repr(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` yields the shortest digits that round-trip, like Python, but
    // breaks exact ties upwards where Python's dtoa rounds half to even
    // (2456630867240.03125 -> ...0312); the exact mode at the same precision
    // rounds half to even, so prefer it whenever it still round-trips.
    let shortest = format!("{v:e}");
    let n_digits = shortest.split('e').next().map_or(1, |m| m.chars().filter(char::is_ascii_digit).count());
    let even = format!("{:.*e}", n_digits.saturating_sub(1), v);
    let s = if even.parse::<f64>() == Ok(v) { even } else { shortest };
    let (mant, exp) = s.split_once('e').expect("LowerExp always has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if !(-4..16).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else if exp < 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat((-exp - 1) as usize));
        out.push_str(&digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(&digits);
            out.push_str(&"0".repeat(int_len - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
    out
}

/// Writes `bytes` to `dest` through a temporary file in `tmp_dir` (same file
/// system) and a rename ([`data::atomic_write_in`]: temp file, fsync, rename), so
/// readers - MLflow included - see the old file or the new one, never a torn one.
/// `tmp_dir` is separate from `dest`'s folder where MLflow lists that folder
/// (params/, tags/): a leftover temp file there would show up as a bogus key.
pub fn atomic_write(dest: &Path, bytes: &[u8], tmp_dir: &Path) -> Result<()> {
    data::atomic_write_in(dest, Some(tmp_dir), |w| w.write_all(bytes)).map_err(data_err)
}

/// As [`atomic_write`], copying from a file instead of memory.
pub fn atomic_copy(src: &Path, dest: &Path, tmp_dir: &Path) -> Result<()> {
    let mut input = fs::File::open(src).map_err(io_err(src))?;
    data::atomic_write_in(dest, Some(tmp_dir), |w| {
        // Either side may have failed; name the source too (the error names `dest`).
        std::io::copy(&mut input, w)
            .map(|_| ())
            .map_err(|e| std::io::Error::new(e.kind(), format!("copying from {}: {e}", src.display())))
    })
    .map_err(data_err)
}

/// The name an artifact file is logged under, after checking it is a regular file with a
/// UTF-8 name (shared by every store, so they refuse the same inputs).
pub fn artifact_file_name(local_file: &Path) -> Result<&str> {
    let meta = fs::metadata(local_file).map_err(io_err(local_file))?;
    if !meta.is_file() {
        return Err(TrackingError::InvalidValue {
            what: format!("artifact {}", local_file.display()),
            reason: "not a regular file".into(),
        });
    }
    local_file.file_name().and_then(|n| n.to_str()).ok_or_else(|| TrackingError::InvalidName {
        kind: "artifact file name",
        name: local_file.display().to_string(),
        reason: "missing or not UTF-8".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::excessive_precision)] // exact binary ties, written out in full on purpose
    fn float_repr_matches_python() {
        // Expected strings are Python 3.11's repr() of the same doubles.
        for (v, s) in [
            (0.5, "0.5"),
            (3.0, "3.0"),
            (1e-20, "1e-20"),
            (1e16, "1e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-1.5e-7, "-1.5e-07"),
            (123456.789, "123456.789"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (-0.0, "-0.0"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
            (100.0, "100.0"),
            (2.5e15, "2500000000000000.0"),
            (2456630867240.03125, "2456630867240.0312"),
            (1303729049456931.25, "1303729049456931.2"),
        ] {
            assert_eq!(py_float_repr(v), s);
        }
    }

    #[test]
    fn uris() {
        let p = Path::new("/tmp/a b%c/ü~!$&'()*+,;=:@");
        let uri = path_to_file_uri(p);
        assert_eq!(uri, "file:///tmp/a%20b%25c/%C3%BC~%21%24%26%27%28%29%2A%2B%2C%3B%3D%3A%40");
        assert_eq!(file_uri_to_path(&uri).unwrap(), p);
        assert_eq!(file_uri_to_path("file:///x/y").unwrap(), Path::new("/x/y"));
        assert_eq!(file_uri_to_path("file://localhost/x").unwrap(), Path::new("/x"));
        assert_eq!(file_uri_to_path("file:/x").unwrap(), Path::new("/x"));
        assert_eq!(file_uri_to_path("/plain/p%20q").unwrap(), Path::new("/plain/p q"));
        assert!(file_uri_to_path("s3://bucket/x").is_none());
        assert!(file_uri_to_path("mlflow-artifacts:/x").is_none());
        assert!(file_uri_to_path("file://otherhost/x").is_none());
    }

    #[test]
    fn ids() {
        let r = new_run_id().unwrap();
        assert_eq!(r.len(), 32);
        assert!(r.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let e = new_experiment_id().unwrap();
        assert_eq!(e.len(), 18);
        assert_ne!(&e[..1], "0");
    }

    #[test]
    fn atomic_files_keep_temp_files_out_of_the_target_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        // Keys may be 250 characters: the temporary file's name must still fit.
        let key = "k".repeat(crate::MAX_KEY_LEN);
        let dest = run.join("params").join(&key);
        atomic_write(&dest, b"v1", run).unwrap();
        atomic_write(&dest, b"v2", run).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"v2");
        let src = run.join("src.bin");
        fs::write(&src, b"copied").unwrap();
        let copy = run.join("artifacts").join("a.bin");
        atomic_copy(&src, &copy, run).unwrap();
        assert_eq!(fs::read(&copy).unwrap(), b"copied");
        assert!(matches!(atomic_copy(&run.join("missing"), &copy, run), Err(TrackingError::Io { .. })));
        let names = |d: &Path| -> Vec<String> {
            fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
        };
        assert_eq!(names(&run.join("params")), [key]);
        assert_eq!(names(&run.join("artifacts")), ["a.bin"]);
        assert!(names(run).iter().all(|n| !n.ends_with(".tmp")), "{:?}", names(run));
    }

    #[test]
    fn abspath_normalises() {
        assert_eq!(abspath(Path::new("/a/./b/../c")).unwrap(), Path::new("/a/c"));
        assert!(abspath(Path::new("rel")).unwrap().is_absolute());
    }
}
