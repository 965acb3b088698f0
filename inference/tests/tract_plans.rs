//! tract's plans for a concrete batch (tract_backend.rs): the one-image plan alone, and with
//! the 16-image chunk plan (whole chunks on it, what is left image by image), and the old
//! symbolic-batch plan kept for before/after benchmarks, all give
//! Python onnxruntime's logits at batch sizes leaving every kind of remainder, on 1-3
//! threads. Within one plan the batch size and thread count change nothing but kernel tiling;
//! the two plans are two optimisations of one graph and may differ by a little more. One test
//! in this binary: it sets INFER_TRACT_CHUNK, which nothing else then reads.

mod common;

use common::{fixture, max_abs_diff, reference_images, N_REF};
use data::Dataset;
use inference::{predict, BackendKind, Model, TRACT_CHUNK_ENV};

/// As in backends.rs: float32 kernels differ in summation order, nothing more.
const TOL_VS_ONNXRUNTIME: f32 = 1e-4;
/// One plan at other batch sizes or thread counts (as TOL_SAME_BACKEND in backends.rs).
const TOL_SAME_PLAN: f32 = 1e-5;
/// The one-image plan against the chunk plan, image by image (see backends.rs).
const TOL_TWO_PLANS: f32 = 5e-5;

fn load(name: &str, mode: &str, threads: usize) -> Model {
    std::env::set_var(TRACT_CHUNK_ENV, mode);
    Model::load(&fixture().model(name), BackendKind::Tract, threads).unwrap()
}

fn logits(model: &Model, images: &Dataset, batch: usize) -> Vec<f32> {
    predict(model, images, batch).unwrap().logits
}

/// Each image's logits within `tol` of one of `plans`' logits for that image.
fn each_image_matches_a_plan(got: &[f32], plans: &[&[f32]], tol: f32, what: &str) {
    let classes = got.len() / N_REF;
    for i in 0..N_REF {
        let row = |l: &[f32]| l[i * classes..(i + 1) * classes].to_vec();
        let best = plans.iter().map(|p| max_abs_diff(&row(got), &row(p))).fold(f32::INFINITY, f32::min);
        assert!(best <= tol, "{what}: image {i} is {best} from every plan's logits");
    }
}

#[test]
fn one_image_and_chunk_plans_give_onnxruntime_logits_at_every_batch_size() {
    let fx = fixture();
    let images = reference_images();
    for name in ["cnn_a", "tiny_maps"] {
        // Every image on the one-image plan; every image on the chunk plan (64 = 4 chunks).
        let one = logits(&load(name, "off", 1), &images, 1);
        let chunk = logits(&load(name, "on", 1), &images, 64);
        let symbolic = logits(&load(name, "symbolic", 1), &images, 64);
        let d = max_abs_diff(&one, &chunk);
        assert!(d <= TOL_TWO_PLANS, "{name}: one-image plan vs chunk plan: max |diff| {d}");
        for mode in ["off", "on", "symbolic"] {
            for threads in [1, 2, 3] {
                let model = load(name, mode, threads);
                // 16 and 32 fill chunks exactly, 17 and 33 leave one image, 5 none to chunk.
                for batch in [1, 5, 16, 17, 33, 64] {
                    let got = logits(&model, &images, batch);
                    let what = format!("{TRACT_CHUNK_ENV}={mode} {name} threads={threads} batch={batch}");
                    let d = max_abs_diff(&got, fx.expected(name));
                    assert!(d <= TOL_VS_ONNXRUNTIME, "{what}: max |diff| {d}");
                    let plans: &[&[f32]] = match mode {
                        "off" => &[&one],
                        "on" => &[&one, &chunk],
                        _ => &[&symbolic],
                    };
                    each_image_matches_a_plan(&got, plans, TOL_SAME_PLAN, &what);
                }
            }
        }
    }
    std::env::remove_var(TRACT_CHUNK_ENV);
}
