//! Jobs side by side in lanes: each of N worker threads claims the next job no lane has taken,
//! so lanes stay busy when jobs differ in cost (a long training next to several short ones).
//! After a failure no lane claims another job; the ones running finish.

use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::{fmt, thread};

use anyhow::{Context, Result};

/// Lines of a failed job's log that are reported.
const TAIL_LINES: usize = 20;

/// One failed job: its index and its error (which ends with its log's last lines when the job
/// ran through [`logged`]).
#[derive(Debug)]
pub struct JobFailed {
    pub job: usize,
    pub error: anyhow::Error,
}

impl JobFailed {
    /// What failed, without the log's tail.
    fn summary(&self) -> String {
        self.error.downcast_ref::<LogTail>().map_or_else(|| format!("{:#}", self.error), |t| t.summary.clone())
    }
}

/// The error of a job run by [`logged`]: what failed, then the end of its log.
#[derive(Debug)]
pub struct LogTail {
    pub summary: String,
    pub tail: String,
}

impl fmt::Display for LogTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; its log ends:\n{}", self.summary, self.tail)
    }
}

impl std::error::Error for LogTail {}

/// The jobs that failed (more than one when lanes failed at once).
#[derive(Debug)]
pub struct Failed(pub Vec<JobFailed>);

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Summaries only: the tails were printed as the jobs failed.
        let summaries: Vec<String> = self.0.iter().map(JobFailed::summary).collect();
        f.write_str(&summaries.join("; "))
    }
}

impl std::error::Error for Failed {}

/// Runs `job(i, lane)` for every `i` in `0..count`, `lanes` at a time. A failed job's error is
/// printed when it happens (other lanes may run on for a while) and returned with the others.
pub fn run<F>(lanes: usize, count: usize, job: F) -> Result<(), Failed>
where
    F: Fn(usize, usize) -> Result<()> + Sync,
{
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::new());
    thread::scope(|s| {
        for lane in 0..lanes.max(1) {
            let (next, stop, failures, job) = (&next, &stop, &failures, &job);
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= count {
                        break;
                    }
                    if let Err(e) = job(i, lane) {
                        stop.store(true, Ordering::SeqCst);
                        eprintln!("error: {e:#}");
                        failures.lock().unwrap_or_else(|p| p.into_inner()).push(JobFailed { job: i, error: e });
                        break;
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    if failures.is_empty() {
        return Ok(());
    }
    failures.sort_by_key(|f| f.job);
    Err(Failed(failures))
}

/// Runs `commands` one after another with all their output in `log` (truncated first), stopping
/// at the first that fails. The error names `name` and the command and ends with the log's tail.
pub fn logged(name: &str, log: &Path, commands: &mut [Command]) -> Result<()> {
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let status = |cmd: &mut Command| -> std::io::Result<ExitStatus> {
        cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file.try_clone()?).status()
    };
    for cmd in commands {
        let why = match status(cmd) {
            Ok(s) if s.success() => continue,
            Ok(s) => format!("{}: {s}", program(cmd)),
            Err(e) => format!("{} did not start: {e}", program(cmd)),
        };
        return Err(LogTail { summary: format!("{name} failed ({why})"), tail: tail(log, TAIL_LINES) }.into());
    }
    Ok(())
}

fn program(cmd: &Command) -> String {
    Path::new(cmd.get_program()).file_name().unwrap_or(cmd.get_program()).to_string_lossy().into_owned()
}

/// The last `n` lines of a file (what `tail -n` prints), or why it could not be read.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({} could not be read: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn three_jobs_on_two_lanes_all_run_once() {
        let dir = tempfile::tempdir().unwrap();
        let ran = Mutex::new(Vec::new());
        run(2, 3, |i, lane| {
            let log = dir.path().join(format!("{i}.log"));
            logged(&format!("job {i}"), &log, &mut [sh(&format!("echo job {i}; sleep 0.1"))])?;
            ran.lock().unwrap().push((i, lane));
            Ok(())
        })
        .unwrap();
        let mut ran = ran.into_inner().unwrap();
        ran.sort();
        assert_eq!(ran.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1, 2], "every job once: {ran:?}");
        assert!(ran.iter().all(|r| r.1 < 2), "only lanes 0 and 1: {ran:?}");
        for i in 0..3 {
            assert_eq!(std::fs::read_to_string(dir.path().join(format!("{i}.log"))).unwrap(), format!("job {i}\n"));
        }
    }

    #[test]
    fn a_failure_stops_new_claims_and_reports_its_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let started = AtomicUsize::new(0);
        let err = run(2, 4, |i, _| {
            started.fetch_add(1, Ordering::SeqCst);
            // Job 0 fails only once job 1 runs, however loaded the machine: otherwise lane 1
            // may see the failure before it ever claims job 1.
            let deadline = Instant::now() + Duration::from_secs(30);
            while i == 0 && started.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            let script = match i {
                // Fails at once, with more lines than the tail keeps.
                0 => "for n in $(seq 1 25); do echo line $n; done; echo boom >&2; exit 3",
                // Still running when job 0 fails; the lane must not take job 2 afterwards.
                1 => "sleep 2",
                _ => "true",
            };
            logged(&format!("job {i}"), &dir.path().join(format!("{i}.log")), &mut [sh(script)])
        })
        .unwrap_err();
        assert_eq!(started.load(Ordering::SeqCst), 2, "jobs 2 and 3 must not be claimed");
        assert_eq!(err.0.len(), 1);
        let message = &format!("{:#}", err.0[0].error);
        assert_eq!(err.0[0].job, 0);
        assert!(message.starts_with("job 0 failed (sh: exit status: 3); its log ends:\n"), "{message}");
        assert!(message.ends_with("line 25\nboom"), "{message}");
        assert!(message.contains("line 7\n") && !message.contains("line 6\n"), "20 lines: {message}");
        assert_eq!(err.to_string(), "job 0 failed (sh: exit status: 3)");
    }

    #[test]
    fn a_job_stops_at_its_first_failing_command() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("j.log");
        let err = logged("j", &log, &mut [sh("echo one"), sh("echo two; exit 1"), sh("echo three")]).unwrap_err();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\ntwo\n");
        assert!(format!("{err:#}").ends_with("its log ends:\none\ntwo"), "{err:#}");
        let err = logged("k", &log, &mut [Command::new("/nonexistent/trainer")]).unwrap_err();
        assert!(format!("{err:#}").starts_with("k failed (trainer did not start: "), "{err:#}");
    }
}
