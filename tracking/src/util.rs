//! Small helpers shared by the backends: ids, clocks, URIs, atomic files and
//! Python-compatible number formatting.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{io_err, Result, TrackingError};

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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What `getpass.getuser()` returns, which is what MLflow records as the user.
pub fn current_user() -> String {
    ["LOGNAME", "USER", "LNAME", "USERNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".to_string())
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

/// `pathlib.Path(p).as_uri()`: percent-encodes everything but unreserved
/// characters and `/`. Encoding matters because MLflow unquotes every local
/// artifact location, so a raw `%` or `?` in a path would be misread.
pub fn path_to_file_uri(p: &Path) -> String {
    let mut out = String::from("file://");
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
    for b in bytes {
        if b.is_ascii_alphanumeric() || b"_.-~/".contains(&b) || (cfg!(windows) && b == b':') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
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
    Some(bytes_to_path(percent_decode(path)))
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

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
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
/// system) and a rename, so readers - MLflow included - see the old file or the
/// new one, never a torn one. `tmp_dir` is separate from `dest`'s folder where
/// MLflow lists that folder (params/, tags/): a leftover temp file there would
/// show up as a bogus key.
pub fn atomic_write(dest: &Path, bytes: &[u8], tmp_dir: &Path) -> Result<()> {
    atomic_with(dest, tmp_dir, |f, tmp| f.write_all(bytes).map_err(io_err(tmp)))
}

/// As [`atomic_write`], copying from a file instead of memory.
pub fn atomic_copy(src: &Path, dest: &Path, tmp_dir: &Path) -> Result<()> {
    let mut input = fs::File::open(src).map_err(io_err(src))?;
    atomic_with(dest, tmp_dir, |f, tmp| {
        std::io::copy(&mut input, f).map(|_| ()).map_err(|e| {
            // Either side may have failed; name both.
            TrackingError::Io {
                path: PathBuf::from(format!("{} -> {}", src.display(), tmp.display())),
                source: e,
            }
        })
    })
}

fn atomic_with(
    dest: &Path,
    tmp_dir: &Path,
    fill: impl FnOnce(&mut fs::File, &Path) -> Result<()>,
) -> Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let rnd = random_bytes::<6>()?;
    let tmp = tmp_dir.join(format!(
        ".tmp-{}-{}",
        rnd.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }),
        name.chars().take(40).collect::<String>()
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        fill(&mut f, &tmp)?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        fs::rename(&tmp, dest).map_err(io_err(dest))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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
    fn abspath_normalises() {
        assert_eq!(abspath(Path::new("/a/./b/../c")).unwrap(), Path::new("/a/c"));
        assert!(abspath(Path::new("rel")).unwrap().is_absolute());
    }
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
