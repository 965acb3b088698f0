//! The tract backend: pure Rust, always compiled in.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::error::{panic_message, BoxError};
use crate::model::{check_input_dims, check_output_dims};
use crate::{BackendKind, InferError, IMAGE_SIDE, PIXELS};

/// The output the contract names; chosen by name when a model has several.
pub(crate) const OUTPUT_NAME: &str = "logits";

pub(crate) struct TractEngine {
    plan: Arc<TypedRunnableModel>,
    output_index: usize,
    classes: usize,
}

fn contract(path: &Path, message: impl Into<String>) -> InferError {
    InferError::Contract { path: path.to_path_buf(), message: message.into() }
}

impl TractEngine {
    pub(crate) fn load(path: &Path) -> Result<TractEngine, InferError> {
        let invalid = |e: TractError| InferError::InvalidModel {
            path: path.to_path_buf(),
            backend: BackendKind::Tract,
            source: e.into(),
        };
        let model = tract_onnx::onnx().model_for_path(path).map_err(invalid)?;

        let inputs = model.input_outlets().map_err(invalid)?.to_vec();
        if inputs.len() != 1 {
            return Err(contract(path, format!("has {} inputs, expected exactly one ([N,1,28,28])", inputs.len())));
        }
        let input_name = model.node(inputs[0].node).name.clone();
        let fact = model.input_fact(0).map_err(invalid)?;
        if fact.shape.is_open() {
            return Err(contract(path, format!("input `{input_name}` has no declared shape, expected [N,1,28,28]")));
        }
        // Unknown or symbolic dimensions become `None`: only the batch may be one.
        let dims: Vec<Option<i64>> = fact
            .shape
            .dims()
            .map(|d| d.concretize().and_then(|d| d.to_i64().ok()))
            .collect();
        check_input_dims(path, &input_name, &dims)?;
        match fact.datum_type.concretize() {
            Some(DatumType::F32) | None => {}
            Some(dt) => return Err(contract(path, format!("input `{input_name}` is {dt:?}, expected float32"))),
        }

        // A symbolic batch so one optimised plan serves every batch size.
        let batch = model.symbols.sym("N");
        let side = IMAGE_SIDE as i64;
        let shape: TVec<TDim> = tvec![batch.into(), 1.into(), side.into(), side.into()];
        let model = model
            .with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))
            .map_err(invalid)?;
        let typed = model.into_optimized().map_err(invalid)?;

        let outputs = typed.output_outlets().map_err(invalid)?.to_vec();
        let labelled = outputs
            .iter()
            .position(|o| typed.outlet_label(*o) == Some(OUTPUT_NAME));
        let output_index = match (labelled, outputs.len()) {
            (Some(i), _) => i,
            (None, 1) => 0,
            (None, k) => {
                return Err(contract(path, format!("has {k} outputs and none is named `{OUTPUT_NAME}`")))
            }
        };
        let out_fact = typed.output_fact(output_index).map_err(invalid)?;
        let out_dims: Vec<Option<i64>> = out_fact.shape.iter().map(|d| d.to_i64().ok()).collect();
        let out_name = typed
            .outlet_label(outputs[output_index])
            .map_or_else(|| typed.node(outputs[output_index].node).name.clone(), str::to_string);
        let classes = check_output_dims(path, &out_name, &out_dims)?;
        if out_fact.datum_type != DatumType::F32 {
            return Err(contract(path, format!("output `{out_name}` is {:?}, expected float32", out_fact.datum_type)));
        }

        let plan = typed.into_runnable().map_err(invalid)?;
        Ok(TractEngine { plan, output_index, classes })
    }

    pub(crate) fn num_classes(&self) -> usize {
        self.classes
    }

    /// tract runs a plan on one thread, so a batch is split into `threads` slices run
    /// concurrently on the same (shared, immutable) plan.
    pub(crate) fn run(&self, input: &[f32], n: usize, threads: usize) -> Result<Vec<f32>, BoxError> {
        let workers = threads.clamp(1, n.max(1));
        if workers == 1 {
            return self.run_chunk(input, n);
        }
        let per = n.div_ceil(workers);
        std::thread::scope(|s| {
            let handles: Vec<_> = input
                .chunks(per * PIXELS)
                .map(|chunk| s.spawn(move || self.run_chunk(chunk, chunk.len() / PIXELS)))
                .collect();
            let mut out = Vec::with_capacity(n * self.classes);
            for h in handles {
                match h.join() {
                    Ok(part) => out.extend(part?),
                    Err(p) => return Err(format!("tract worker panicked: {}", panic_message(&*p)).into()),
                }
            }
            Ok(out)
        })
    }

    fn run_chunk(&self, input: &[f32], n: usize) -> Result<Vec<f32>, BoxError> {
        let side = IMAGE_SIDE;
        let tensor = Tensor::from_shape(&[n, 1, side, side], input)?;
        let outputs = self.plan.run(tvec![tensor.into_tvalue()])?;
        let out = outputs
            .get(self.output_index)
            .ok_or_else(|| format!("plan returned {} outputs", outputs.len()))?;
        let view = out.to_plain_array_view::<f32>()?;
        Ok(view.iter().copied().collect())
    }
}
