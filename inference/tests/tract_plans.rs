//! tract's plans for a concrete batch (tract_backend.rs): the one-image plan alone, and with
//! the 16-image chunk plan (whole chunks on it, what is left image by image), and the old
//! symbolic-batch plan kept for before/after benchmarks, all give
//! Python onnxruntime's logits at batch sizes leaving every kind of remainder, on 1-3
//! threads. One test in this binary: it sets INFER_TRACT_CHUNK, which nothing else then reads.

mod common;

use common::{fixture, max_abs_diff, reference_images};
use inference::{predict, BackendKind, Model, TRACT_CHUNK_ENV};

/// As in backends.rs: float32 kernels differ in summation order, nothing more.
const TOL_VS_ONNXRUNTIME: f32 = 1e-4;

#[test]
fn one_image_and_chunk_plans_give_onnxruntime_logits_at_every_batch_size() {
    let fx = fixture();
    let images = reference_images();
    for mode in ["off", "on", "symbolic"] {
        std::env::set_var(TRACT_CHUNK_ENV, mode);
        for name in ["cnn_a", "tiny_maps"] {
            for threads in [1, 2, 3] {
                let path = fx.model(name);
                let model = Model::load(&path, BackendKind::Tract, threads).unwrap();
                // 16 and 32 fill chunks exactly, 17 and 33 leave one image, 5 none to chunk.
                for batch in [1, 5, 16, 17, 33, 64] {
                    let p = predict(&model, &images, batch).unwrap();
                    let d = max_abs_diff(&p.logits, fx.expected(name));
                    let what = format!("{TRACT_CHUNK_ENV}={mode} {name} threads={threads} batch={batch}");
                    assert!(d <= TOL_VS_ONNXRUNTIME, "{what}: max |diff| {d}");
                }
            }
        }
    }
    std::env::remove_var(TRACT_CHUNK_ENV);
}
