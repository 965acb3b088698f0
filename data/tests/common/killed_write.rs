//! Kill a process while it writes its output file; the final name must then be absent (or
//! still hold the previous file), or hold the complete output, never a part. Shared by
//! `exporter/tests/crash.rs` and `inference/tests/crash.rs` (included with `#[path]`), whose
//! binaries write through [`data::atomic_write`].
//!
//! Two kinds of kill: SIGKILL at seeded random moments, uniform over an uninterrupted run;
//! and, deterministically in the middle of the write, RLIMIT_FSIZE (bash's `ulimit -f`)
//! below the output's size: the kernel writes what fits, then stops the process with
//! SIGXFSZ, leaving a partial file wherever it was writing. `trainer/tests/crash_resume.rs`
//! uses [`run`].
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const SIGKILL: i32 = 9;
const SIGXFSZ: i32 = 25;

/// `bin args` run by bash, under `ulimit -f <kib>` when given, output discarded.
pub fn limited(bin: &str, ulimit_kib: Option<u64>) -> Command {
    let limit = ulimit_kib.map_or(String::new(), |k| format!("ulimit -f {k}; "));
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(format!("{limit}exec \"$0\" \"$@\"")).arg(bin);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

/// Runs `cmd`, SIGKILLing it after `kill_after` if it still runs.
pub fn run(mut cmd: Command, kill_after: Duration) -> ExitStatus {
    let mut child = cmd.spawn().expect("the binary starts");
    let deadline = Instant::now() + kill_after;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What the final path holds: "absent", "previous" or "complete" (byte-equal to `complete`
/// and accepted by `valid`); anything else fails the test.
fn check_final(out: &Path, complete: &[u8], previous: Option<&[u8]>, valid: &dyn Fn(&Path)) -> &'static str {
    match std::fs::read(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && previous.is_none() => "absent",
        Ok(b) if Some(b.as_slice()) == previous => "previous",
        Ok(b) => {
            assert!(
                b == complete,
                "{} holds {} bytes, not the complete {}-byte output",
                out.display(),
                b.len(),
                complete.len()
            );
            valid(out);
            "complete"
        }
        Err(e) => panic!("{}: {e}", out.display()),
    }
}

/// The test: `cmd(out, ulimit_kib)` writes `out`. One uninterrupted run gives the complete
/// output and the duration; then 6 runs cut mid-write (3 limits, with and without a previous
/// file), then `random_kills` SIGKILLs. Returns the summary line to print.
pub fn killed_writes(
    what: &str,
    dir: &Path,
    ext: &str,
    cmd: &dyn Fn(&Path, Option<u64>) -> Command,
    valid: &dyn Fn(&Path),
    random_kills: usize,
) -> String {
    let reference = dir.join(format!("reference.{ext}"));
    let started = Instant::now();
    let status = run(cmd(&reference, None), Duration::from_secs(300));
    let took = started.elapsed();
    assert!(status.success(), "{what}: uninterrupted run: {status:?}");
    let complete = std::fs::read(&reference).unwrap();
    valid(&reference);

    let size_kib = complete.len() as u64 / 1024;
    assert!(size_kib >= 4, "{what}: the output ({} bytes) is too small to cut", complete.len());
    let mut cut = 0;
    for (i, kib) in [1, size_kib / 2, size_kib].into_iter().enumerate() {
        for previous in [None, Some(&b"previous output\n"[..])] {
            let out = dir.join(format!("cut{i}{}.{ext}", previous.is_some()));
            if let Some(p) = previous {
                std::fs::write(&out, p).unwrap();
            }
            let status = run(cmd(&out, Some(kib)), Duration::from_secs(300));
            assert_eq!(
                status.signal(),
                Some(SIGXFSZ),
                "{what}: a {kib} KiB limit must stop it while it writes: {status:?}"
            );
            let found = check_final(&out, &complete, previous, valid);
            assert_ne!(found, "complete", "{what}: stopped before its output was whole");
            cut += 1;
        }
    }

    let mut rng = data::Rng::new(21);
    let mut seen = BTreeMap::new();
    for i in 0..random_kills {
        let out = dir.join(format!("random{i}.{ext}"));
        let status = run(cmd(&out, None), took.mul_f64(rng.next_f64()));
        let found = check_final(&out, &complete, None, valid);
        let killed = status.signal() == Some(SIGKILL);
        assert!(killed || status.success(), "{what}: {status:?}");
        *seen.entry((found, if killed { "killed" } else { "finished" })).or_insert(0) += 1;
    }
    format!(
        "{what}: {cut} kills in the middle of the write (SIGXFSZ): final name absent or previous; \
         {random_kills} random SIGKILLs over {:.2} s: (final name, process) -> runs {seen:?}",
        took.as_secs_f64()
    )
}
