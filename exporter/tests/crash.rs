//! Faults survived (issue #21): the exporter killed while it runs never leaves a partial
//! `.onnx` under the final name: SIGKILL at random moments (loading, lowering, the
//! tract/ONNX Runtime self-check, the write), and kills in the middle of the write itself
//! (see `killed_write.rs`). A planted `std::fs::write` to the final name fails the cut runs:
//! "cut0false.onnx holds 1024 bytes, not the complete ...-byte output".

mod common;
#[path = "../../data/tests/common/killed_write.rs"]
mod killed_write;

use std::path::Path;

use common::{meta_for, write_checkpoint};
use exporter::onnx::ModelProto;
use models::{Arch, ModelConfig};
use prost::Message;

#[test]
fn killed_exporter_never_leaves_a_partial_onnx() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    write_checkpoint(&ckpt, &meta_for(ModelConfig::new(Arch::CnnDigits)), 21);
    let cmd = |out: &Path, ulimit_kib: Option<u64>| {
        let mut cmd = killed_write::limited(env!("CARGO_BIN_EXE_exporter"), ulimit_kib);
        cmd.arg("--checkpoint").arg(&ckpt).arg("-o").arg(out);
        // The self-check writes the model to a scratch file first, which the limit would
        // stop instead of the write under test.
        if ulimit_kib.is_some() {
            cmd.arg("--no-check");
        }
        cmd
    };
    let valid = |out: &Path| {
        let m = ModelProto::decode(std::fs::read(out).unwrap().as_slice()).expect("a complete model parses");
        assert_eq!(m.graph.unwrap().output[0].name.as_deref(), Some("logits"));
    };
    println!("{}", killed_write::killed_writes("exporter", tmp.path(), "onnx", &cmd, &valid, 30));
}
