//! The self-check refuses options it cannot honour before running anything: no images, or a
//! tolerance that is negative or NaN; each alone is enough (cargo mutants: requiring both
//! went unnoticed). And a 28x28 model is checked, not skipped.

mod common;

use common::*;
use exporter::check::{CheckData, CheckOptions};
use exporter::{export_checkpoint_checked, ExportError, ExportOptions};
use models::{Arch, ModelConfig};

#[test]
fn no_images_or_a_negative_or_nan_tolerance_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    write_checkpoint(&ckpt, &meta_for(ModelConfig::new(Arch::M5)), 4);
    let out = tmp.path().join("m5.onnx");
    let good = CheckOptions { data: CheckData::Synthetic, images: 2, ..CheckOptions::default() };
    // Boxed: ExportError carries a whole check report, too large for clippy's taste in a closure.
    let export = |check: &CheckOptions| {
        export_checkpoint_checked(&ckpt, &out, &ExportOptions::default(), Some(check)).map_err(Box::new)
    };
    for (bad, what) in [
        (CheckOptions { images: 0, ..good.clone() }, "no images"),
        (CheckOptions { max_rel_diff: -1e-5, ..good.clone() }, "negative tolerance"),
        (CheckOptions { max_rel_diff: f64::NAN, ..good.clone() }, "NaN tolerance"),
    ] {
        let err = export(&bad).unwrap_err();
        assert!(matches!(*err, ExportError::InvalidOptions(_)), "{what}: {err:?}");
        assert!(!out.exists(), "{what}: nothing is written");
    }
    // The same checkpoint exports with sound options: the refusals are about the options.
    let check = export(&good).unwrap().check.expect("a check report");
    assert!(check.passed() && !check.runtimes.is_empty(), "{check}");
}
