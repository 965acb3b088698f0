//! The tract backend: pure Rust, always compiled in.
//!
//! Speed notes (a 2-core machine, resnet18 at 28x28):
//! * tract runs a plan on one thread, so a batch is split into one slice per thread, run
//!   on persistent worker threads that each keep their own plan state (tract's per-session
//!   scratch) and input tensor from batch to batch: no thread start, no state or input
//!   allocation per batch. A batch smaller than the thread count runs on one worker with
//!   tract's own multithreaded matrix products instead.
//! * Convolutions whose kernel overhangs a small feature map (3x3 on 1x1, or stride 2 on
//!   2x2, as resnet's last stage at 28x28) are cropped to the taps that can touch real
//!   input: the other taps only ever multiply padding zeros, so the result is the same
//!   and up to 9x fewer weights are streamed per image.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{Conv, PaddingSpec};
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

use crate::error::{panic_message, BoxError};
use crate::model::{check_input_dims, check_output_dims};
use crate::{BackendKind, InferError, IMAGE_SIDE, PIXELS};
use models::contract::OUTPUT_NAME;

type Plan = Arc<TypedRunnableModel>;

pub(crate) struct TractEngine {
    plan: Plan,
    output_index: usize,
    classes: usize,
    threads: usize,
    // `run` takes `&self`; runs on one model are serialised (each already uses every
    // thread), which also lets the workers' buffers be reused without more locking.
    pool: Mutex<Pool>,
}

fn contract(path: &Path, message: impl Into<String>) -> InferError {
    InferError::Contract { path: path.to_path_buf(), message: message.into() }
}

impl TractEngine {
    pub(crate) fn load(path: &Path, threads: usize) -> Result<TractEngine, InferError> {
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
        let dims: Vec<Option<i64>> = fact.shape.dims().map(|d| d.concretize().and_then(|d| d.to_i64().ok())).collect();
        check_input_dims(path, &input_name, &dims)?;
        match fact.datum_type.concretize() {
            Some(DatumType::F32) | None => {}
            Some(dt) => return Err(contract(path, format!("input `{input_name}` is {dt:?}, expected float32"))),
        }

        // A symbolic batch so one optimised plan serves every batch size.
        let batch = model.symbols.sym("N");
        let side = IMAGE_SIDE as i64;
        let shape: TVec<TDim> = tvec![batch.into(), 1.into(), side.into(), side.into()];
        let model = model.with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape)).map_err(invalid)?;
        let mut typed = model.into_typed().and_then(|m| m.into_decluttered()).map_err(invalid)?;
        crop_convolutions(&mut typed).map_err(invalid)?;
        let typed = typed.into_optimized().map_err(invalid)?;

        let outputs = typed.output_outlets().map_err(invalid)?.to_vec();
        let labelled = outputs.iter().position(|o| typed.outlet_label(*o) == Some(OUTPUT_NAME));
        let output_index = match (labelled, outputs.len()) {
            (Some(i), _) => i,
            (None, 1) => 0,
            (None, k) => return Err(contract(path, format!("has {k} outputs and none is named `{OUTPUT_NAME}`"))),
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
        Ok(TractEngine { plan, output_index, classes, threads: threads.max(1), pool: Mutex::new(Pool::default()) })
    }

    pub(crate) fn num_classes(&self) -> usize {
        self.classes
    }

    /// Runs `n` images and appends their logits to `out`.
    ///
    /// With `n >= threads` the batch is split into `threads` slices run concurrently on
    /// the same (shared, immutable) plan; a smaller batch runs whole on one worker with
    /// tract's matrix products spread over a `threads`-wide pool.
    pub(crate) fn run_into(&self, input: &[f32], n: usize, out: &mut Vec<f32>) -> Result<(), BoxError> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let threads = self.threads;
        let (slices, executor) = if n >= threads || threads == 1 {
            (threads.min(n.max(1)), None)
        } else {
            (1, Some(pool.executor(threads)?))
        };
        let per = n.div_ceil(slices);
        while pool.workers.len() < slices {
            let i = pool.workers.len();
            let w = Worker::spawn(i, Arc::clone(&self.plan), self.output_index)?;
            pool.workers.push(w);
        }

        // Hand out the slices, each in its worker's reused input tensor. After the first
        // send nothing may return early: every job sent must be answered and collected
        // below, or a stale answer would be read by the next run.
        let mut sent = 0;
        let mut first_err: Option<BoxError> = None;
        for (i, chunk) in input.chunks(per * PIXELS).enumerate() {
            let w = &mut pool.workers[i];
            let tensor = match fill_input(w.spare.take(), chunk) {
                Ok(t) => t,
                Err(e) => {
                    first_err = Some(e);
                    break;
                }
            };
            let job = Job { input: tensor, output: std::mem::take(&mut w.spare_out), executor: executor.clone() };
            if w.jobs.send(job).is_err() {
                first_err = Some(format!("tract worker {i} has exited").into());
                break;
            }
            sent += 1;
        }
        // Collect in order, whatever happens, so no worker is left holding an answer.
        out.reserve(n * self.classes);
        for i in 0..sent {
            let w = &mut pool.workers[i];
            match w.results.recv() {
                Ok(Done { input, output, result }) => {
                    w.spare = Some(input);
                    match result {
                        Ok(()) => out.extend_from_slice(&output),
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                    w.spare_out = output;
                }
                Err(_) => {
                    first_err.get_or_insert_with(|| format!("tract worker {i} exited without answering").into());
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Copies `chunk` (whole images) into `spare` when it has the right shape, else into a
/// new tensor (first batch, or a batch of another size such as the last one).
fn fill_input(spare: Option<Tensor>, chunk: &[f32]) -> Result<Tensor, BoxError> {
    let shape = [chunk.len() / PIXELS, 1, IMAGE_SIDE, IMAGE_SIDE];
    let mut tensor = match spare {
        Some(t) if t.shape() == shape => t,
        _ => Tensor::zero::<f32>(&shape)?,
    };
    let mut view = tensor.to_plain_array_view_mut::<f32>()?;
    view.as_slice_mut().ok_or("tract input tensor is not contiguous")?.copy_from_slice(chunk);
    drop(view);
    Ok(tensor)
}

/// The worker threads of one model, started on first use and kept until it is dropped.
#[derive(Default)]
struct Pool {
    workers: Vec<Worker>,
    /// tract's matrix-product thread pool, for batches smaller than the thread count.
    executor: Option<Executor>,
}

impl Pool {
    fn executor(&mut self, threads: usize) -> Result<Executor, BoxError> {
        if self.executor.is_none() {
            // rayon reports a failed thread start by panicking.
            let made = std::panic::catch_unwind(|| Executor::multithread_with_name(threads, "infer-tract-mm"));
            let ex = made.map_err(|p| format!("cannot start tract's thread pool: {}", panic_message(&*p)))?;
            self.executor = Some(ex);
        }
        Ok(self.executor.clone().unwrap_or_default())
    }
}

struct Job {
    input: Tensor,
    /// The worker's output buffer, handed back and forth so it is allocated once.
    output: Vec<f32>,
    executor: Option<Executor>,
}

struct Done {
    input: Tensor,
    output: Vec<f32>,
    result: Result<(), BoxError>,
}

struct Worker {
    jobs: Sender<Job>,
    results: Receiver<Done>,
    spare: Option<Tensor>,
    spare_out: Vec<f32>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    fn spawn(index: usize, plan: Plan, output_index: usize) -> Result<Worker, BoxError> {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (res_tx, res_rx) = mpsc::channel::<Done>();
        let handle = std::thread::Builder::new()
            .name(format!("infer-tract-{index}"))
            .spawn(move || worker_loop(&plan, output_index, job_rx, res_tx))
            .map_err(|e| format!("cannot start tract worker thread: {e}"))?;
        Ok(Worker { jobs: job_tx, results: res_rx, spare: None, spare_out: Vec::new(), handle: Some(handle) })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the job channel ends the loop; runs are complete by the time a model
        // is dropped, so the join does not wait on work.
        let (dead_tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, dead_tx));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn worker_loop(plan: &Plan, output_index: usize, jobs: Receiver<Job>, results: Sender<Done>) {
    // The state is created lazily and kept: tract keys its per-run scratch on it.
    let mut state: Option<TypedSimpleState> = None;
    for Job { input, mut output, executor } in jobs {
        let shared = Arc::new(input);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut go = || run_one(plan, &mut state, &shared, output_index, &mut output);
            match executor {
                Some(ex) => multithread_tract_scope(ex, go),
                None => go(),
            }
        }))
        .unwrap_or_else(|p| {
            // The state may be mid-run: start a fresh one next time.
            state = None;
            Err(format!("tract worker panicked: {}", panic_message(&*p)).into())
        });
        // tract has dropped its reference once the run returns; if not, copy it back.
        let input = Arc::try_unwrap(shared).unwrap_or_else(|a| (*a).clone());
        if results.send(Done { input, output, result }).is_err() {
            break;
        }
    }
}

fn run_one(
    plan: &Plan,
    state: &mut Option<TypedSimpleState>,
    input: &Arc<Tensor>,
    output_index: usize,
    output: &mut Vec<f32>,
) -> Result<(), BoxError> {
    let st = match state {
        Some(s) => s,
        None => state.insert(plan.spawn()?),
    };
    let outputs = st.run(tvec![Arc::clone(input).into_tvalue()])?;
    let out = outputs.get(output_index).ok_or_else(|| format!("plan returned {} outputs", outputs.len()))?;
    let view = out.to_plain_array_view::<f32>()?;
    output.clear();
    match view.as_slice() {
        Some(s) => output.extend_from_slice(s),
        None => output.extend(view.iter().copied()),
    }
    Ok(())
}

/// Crops every float convolution's kernel to the taps that can touch real input, given
/// the (concrete) spatial size of its input; returns how many were cropped.
///
/// A tap that only ever lands in the zero padding contributes exactly 0 to every output,
/// so removing it (and the padding it needed) leaves the results unchanged while the
/// matrix product shrinks: a 3x3 padded convolution on a 1x1 map becomes a 1x1 one.
pub(crate) fn crop_convolutions(model: &mut TypedModel) -> TractResult<usize> {
    let mut cropped = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = node.op_as::<Conv>() else { continue };
        // Quantized convolutions pad with the zero point, not 0.
        if op.q_params.is_some() || node.inputs.len() != 3 {
            continue;
        }
        let Some(kernel) = model.outlet_fact(node.inputs[1])?.konst.clone() else { continue };
        let x = model.outlet_fact(node.inputs[0])?;
        let Ok(geo) = op.pool_spec.data_format.shape(x.shape.to_tvec()) else { continue };
        let Some(hw) = geo.hw_dims().iter().map(|d| d.to_usize().ok()).collect::<Option<Vec<usize>>>() else {
            continue;
        };
        let ps = &op.pool_spec;
        if hw.len() != ps.kernel_shape.len() {
            continue;
        }
        let pads = ps.computed_padding(&hw);
        let mut plan = Vec::with_capacity(hw.len());
        for (ax, &len) in hw.iter().enumerate() {
            match crop_axis(
                len,
                ps.kernel_shape[ax],
                ps.stride(ax),
                ps.dilation(ax),
                pads[ax].pad_before,
                pads[ax].convoluted,
            ) {
                Some(c) => plan.push(c),
                None => break,
            }
        }
        if plan.len() != hw.len() || plan.iter().zip(&ps.kernel_shape).all(|(c, &k)| c.len == k) {
            continue;
        }
        let mut k = kernel.into_tensor();
        let h_axis = op.kernel_fmt.h_axis();
        for (ax, c) in plan.iter().enumerate() {
            if c.len != ps.kernel_shape[ax] {
                k = k.slice(h_axis + ax, c.first, c.first + c.len)?;
            }
        }
        let mut new_op = op.clone();
        new_op.pool_spec.kernel_shape = plan.iter().map(|c| c.len).collect();
        new_op.pool_spec.padding = PaddingSpec::Explicit(
            plan.iter().map(|c| c.pad_before).collect(),
            plan.iter().map(|c| c.pad_after).collect(),
        );
        let name = node.name.clone();
        let inputs = node.inputs.clone();
        let mut patch = TypedModelPatch::new("crop-convolution-kernel");
        let x = patch.tap_model(model, inputs[0])?;
        let k = patch.add_const(format!("{name}.cropped_kernel"), k)?;
        let b = patch.tap_model(model, inputs[2])?;
        let out = patch.wire_node(&name, new_op, &[x, k, b])?[0];
        patch.shunt_outside(model, id.into(), out)?;
        patch.apply(model)?;
        cropped += 1;
    }
    Ok(cropped)
}

/// The taps `first..first + len` of one axis that are kept, and the padding they need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AxisCrop {
    first: usize,
    len: usize,
    pad_before: usize,
    pad_after: usize,
}

/// Which taps of a `kernel`-wide window (stride, dilation, `pad_before`) over an input of
/// `len` producing `out` positions ever read real input. `None` when no crop is possible
/// without changing the output (or the geometry is degenerate).
fn crop_axis(
    len: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_before: usize,
    out: usize,
) -> Option<AxisCrop> {
    if len == 0 || kernel == 0 || out == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let touches = |t: usize| {
        (0..out).any(|o| {
            let p = (o * stride + t * dilation) as isize - pad_before as isize;
            p >= 0 && (p as usize) < len
        })
    };
    let first = (0..kernel).find(|&t| touches(t))?;
    let last = (0..kernel).rev().find(|&t| touches(t))?;
    // Keeping `first` as tap 0 shifts the window right by first * dilation.
    let pad_before = pad_before.checked_sub(first * dilation)?;
    let kept = last - first + 1;
    let span = (kept - 1) * dilation + 1;
    let pad_after = ((out - 1) * stride + span).saturating_sub(len + pad_before);
    let padded = len + pad_before + pad_after;
    // The cropped window must give exactly the same output positions.
    if padded < span || (padded - span) / stride + 1 != out {
        return None;
    }
    Some(AxisCrop { first, len: kept, pad_before, pad_after })
}

#[cfg(test)]
mod tests {
    use super::{crop_axis, AxisCrop};

    #[test]
    fn kernel_taps_outside_the_map_are_cropped() {
        // 3x3, pad 1 on a 1x1 map: only the centre tap reads input.
        assert_eq!(crop_axis(1, 3, 1, 1, 1, 1), Some(AxisCrop { first: 1, len: 1, pad_before: 0, pad_after: 0 }));
        // 3x3, stride 2, pad 1 on 2x2 -> 1x1: taps 1 and 2 read input 0 and 1.
        assert_eq!(crop_axis(2, 3, 2, 1, 1, 1), Some(AxisCrop { first: 1, len: 2, pad_before: 0, pad_after: 0 }));
        // Dilation 2, pad 2 on 1x1: the centre tap again.
        assert_eq!(crop_axis(1, 3, 1, 2, 2, 1), Some(AxisCrop { first: 1, len: 1, pad_before: 0, pad_after: 0 }));
        // 3x3, pad 1 on 2x2 -> 2x2: every tap reads input at some output.
        assert_eq!(crop_axis(2, 3, 1, 1, 1, 2), Some(AxisCrop { first: 0, len: 3, pad_before: 1, pad_after: 1 }));
        // 7x7, stride 2, pad 3 on 28 -> 14: nothing to crop; the last padding column is
        // never read, so the padding needed is one less (same output).
        assert_eq!(crop_axis(28, 7, 2, 1, 3, 14), Some(AxisCrop { first: 0, len: 7, pad_before: 3, pad_after: 2 }));
        assert_eq!(crop_axis(0, 3, 1, 1, 1, 1), None);
    }
}
