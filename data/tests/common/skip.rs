//! A check that cannot run (a prerequisite is missing) says so instead of passing silently.
//!
//! `#[path]`-included by the tests that may skip (data, tracking, exporter): cargo captures a
//! passing test's output, so the skip is also appended to the file `$SKIP_LOG`, which
//! scripts/test.sh sets and lists at the end; and under CI (`CI=true`) a skip fails the test,
//! since CI must run every check.

use std::io::Write as _;

/// Records that `test` skipped its check for `reason`; the caller then returns. Panics instead
/// under CI.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED: {test} ({reason})");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{line}: CI=true runs every check, so a missing prerequisite fails"
    );
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("SKIP_LOG") {
        // One append of the whole line: test binaries may write at the same time.
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        appended.unwrap_or_else(|e| panic!("{line}; writing it to SKIP_LOG={}: {e}", path.to_string_lossy()));
    }
}
