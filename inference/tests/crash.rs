//! Faults survived (issue #21): `infer` killed while it runs never leaves a partial
//! submission under the final name: SIGKILL at random moments, and kills in the middle of
//! the write itself (see `killed_write.rs`). A planted `std::fs::write` of the submission
//! fails the cut runs: "cut0false.csv holds 1024 bytes, not the complete ...-byte output".

mod common;
#[path = "../../data/tests/common/killed_write.rs"]
mod killed_write;

use std::path::Path;

use common::{fixture, sample_zip};

#[test]
fn killed_infer_never_leaves_a_partial_submission() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture().model("cnn_a");
    // tract: no runtime library to load, nothing else written.
    let cmd = |out: &Path, ulimit_kib: Option<u64>| {
        let mut cmd = killed_write::limited(env!("CARGO_BIN_EXE_infer"), ulimit_kib);
        cmd.arg("--model").arg(&model).arg(sample_zip()).arg("-o").arg(out).args(["--backend", "tract"]);
        cmd
    };
    let valid = |out: &Path| assert_eq!(data::read_submission(out).unwrap().len(), 1000);
    println!("{}", killed_write::killed_writes("infer", tmp.path(), "csv", &cmd, &valid, 30));
}
