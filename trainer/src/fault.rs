//! Fault injection for the crash tests (`tests/crash_resume.rs`): with
//! `TRAINER_FAULT_POINT=<name>:<n>` in the environment the process kills itself with SIGKILL
//! the `n`-th time (1-based) it reaches [`point`]`(name)`. Random kill times rarely land in
//! the narrow windows that matter (between a checkpoint folder's renames, between the
//! checkpoint and the epoch's metrics), so the tests aim at them by name. Unset, every
//! point is one comparison against a value read once.
//!
//! Points: `<folder>/filled` (a checkpoint folder written under its temporary name),
//! `<folder>/before_swap` (the stale backup removed), `<folder>/between_renames` (the old
//! folder moved aside, the new one not yet in place), `<folder>/renamed` (the new one in
//! place, the backup not yet removed), with `<folder>` `last` or `best`;
//! `checkpoint/between_files` (weights written, config.json not yet); `before_metrics` (the
//! epoch checkpointed, its metrics not yet logged).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The environment variable holding `<name>:<n>`.
pub const ENV: &str = "TRAINER_FAULT_POINT";

static TARGET: OnceLock<Option<(String, usize)>> = OnceLock::new();
static HITS: AtomicUsize = AtomicUsize::new(0);

fn target() -> &'static Option<(String, usize)> {
    TARGET.get_or_init(|| {
        let spec = std::env::var(ENV).ok()?;
        let parsed = spec.rsplit_once(':').and_then(|(name, n)| Some((name.to_string(), n.parse().ok()?)));
        if parsed.is_none() {
            // A typo must not silently turn a crash test into a plain run.
            eprintln!("{ENV}={spec:?} is not <name>:<n>; aborting");
            std::process::abort();
        }
        parsed
    })
}

/// Dies by SIGKILL (as `kill -9` from outside would) on the configured hit of `name`.
pub fn point(name: &str) {
    let Some((want, n)) = target() else { return };
    if want != name || HITS.fetch_add(1, Ordering::SeqCst) + 1 != *n {
        return;
    }
    eprintln!("fault point {name} (hit {n}): SIGKILL");
    // No libc binding here: `kill` does it; abort (no destructors, no flushing either) if not.
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
    std::thread::sleep(std::time::Duration::from_secs(5));
    std::process::abort();
}
