//! The tract backend: pure Rust, always compiled in.
//!
//! Speed notes (a 2-core machine, 28x28 images):
//! * Plans are optimised for a concrete batch, never for the symbolic `N` the model
//!   declares: tract 0.23 picks its `DepthWise` kernel (and lazy im2col) only for a fully
//!   concrete input shape, and with `N` symbolic every depthwise convolution of MobileNet,
//!   EfficientNet and MnasNet fell back to grouped im2col, 10-30x slower. The model is
//!   decluttered once with `N`, then `N` is set and it is optimised twice: a plan for one
//!   image (batch 1, and what a chunk leaves over) and one for [`CHUNK`] images, which is
//!   kept only if it measured faster per image at load. Two plans at most, so memory is
//!   bounded whatever batch sizes come (a server's merged batches vary).
//! * The worker threads (and tract's matrix-product pool) flush denormals to zero: random
//!   and undertrained weights leave denormal activations (MNASNet: 4x slower on real
//!   images than on blank ones), which x86 computes with microcode assists.
//! * tract runs a plan on one thread, so a batch is split into one slice per thread, run
//!   on persistent worker threads that each keep their own plan states (tract's
//!   per-session scratch) and input tensors from batch to batch: no thread start, no state
//!   or input allocation per batch. A batch smaller than the thread count runs on one
//!   worker with tract's own multithreaded matrix products instead.
//! * A model with depthwise convolutions runs channels-last, on an AVX depthwise kernel
//!   registered with tract ([`crate::tract_depthwise`]): MobileNetV2 3x, MNASNet 3.2x.
//! * Convolutions whose kernel overhangs a small feature map (3x3 on 1x1, or stride 2 on
//!   2x2, as resnet's last stage at 28x28) are cropped to the taps that can touch real
//!   input: the other taps only ever multiply padding zeros, so the result is the same
//!   and up to 9x fewer weights are streamed per image.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{Conv, PaddingSpec};
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

use crate::contract::{check_input_dims, check_output_dims, contract_error as contract};
use crate::error::{panic_message, BoxError};
use crate::tract_depthwise::{has_depthwise, to_channels_last};
use crate::{BackendKind, InferError, IMAGE_SIDE, PIXELS};
use models::contract::OUTPUT_NAME;
use models::graph::crop_axis;

type Plan = Arc<TypedRunnableModel>;

/// Images per run of the batched plan. At 28x28 batching pays on weight-heavy nets
/// (resnet18 streams 44 MB of weights per run) and loses where lazy im2col, which tract
/// uses only for one image, wins (the digit nets, the depthwise nets): hence measured.
pub(crate) const CHUNK: usize = 16;

/// `INFER_TRACT_CHUNK`: `auto` (default: measured at load), `on` or `off` (always or never
/// use the [`CHUNK`]-image plan), for benchmarks and the tests of both paths; `symbolic`:
/// the one plan for the symbolic batch this backend used before, for before/after figures
/// in one benchmark run.
pub const TRACT_CHUNK_ENV: &str = "INFER_TRACT_CHUNK";

/// `INFER_TRACT_LAYOUT`: `auto` (default: a model with depthwise convolutions is made
/// channels-last throughout, see [`crate::tract_depthwise`], others stay NCHW), `nhwc`
/// (every model channels-last) or `nchw` (none: tract chooses layer by layer), to compare
/// them in one benchmark run.
pub const TRACT_LAYOUT_ENV: &str = "INFER_TRACT_LAYOUT";

/// The optimised plans of one model (see the module notes).
struct Plans {
    one: Plan,
    chunk: Option<Plan>,
    /// `one` is the symbolic-batch plan and runs a whole slice at once (`symbolic` above).
    symbolic: bool,
}

pub(crate) struct TractEngine {
    plans: Arc<Plans>,
    output_index: usize,
    classes: usize,
    threads: usize,
    // `run` takes `&self`; runs on one model are serialised (each already uses every
    // thread), which also lets the workers' buffers be reused without more locking.
    pool: Mutex<Pool>,
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

        // Decluttered once with a symbolic batch; each plan then sets it (module notes).
        let batch = model.symbols.sym("N");
        let side = IMAGE_SIDE as i64;
        let shape: TVec<TDim> = tvec![batch.clone().into(), 1.into(), side.into(), side.into()];
        let model = model.with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape)).map_err(invalid)?;
        let mut typed = model.into_typed().and_then(|m| m.into_decluttered()).map_err(invalid)?;
        crop_convolutions(&mut typed).map_err(invalid)?;

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

        let mode = std::env::var(TRACT_CHUNK_ENV).unwrap_or_default();
        if mode == "symbolic" {
            let one = typed.into_optimized().and_then(|m| m.into_runnable()).map_err(invalid)?;
            let plans = Arc::new(Plans { one, chunk: None, symbolic: true });
            return Ok(TractEngine { plans, output_index, classes, threads: threads.max(1), pool: Mutex::default() });
        }
        let channels_last = match std::env::var(TRACT_LAYOUT_ENV).unwrap_or_default().as_str() {
            "nhwc" => true,
            "nchw" => false,
            _ => has_depthwise(&typed),
        };
        let one = concrete_plan(&typed, &batch, 1, channels_last).map_err(invalid)?;
        let chunk = match mode.as_str() {
            "off" => None,
            "on" => Some(concrete_plan(&typed, &batch, CHUNK, channels_last).map_err(invalid)?),
            _ => {
                let chunk = concrete_plan(&typed, &batch, CHUNK, channels_last).map_err(invalid)?;
                chunk_is_faster(&one, &chunk).map_err(invalid)?.then_some(chunk)
            }
        };
        let plans = Arc::new(Plans { one, chunk, symbolic: false });
        Ok(TractEngine { plans, output_index, classes, threads: threads.max(1), pool: Mutex::new(Pool::default()) })
    }

    pub(crate) fn num_classes(&self) -> usize {
        self.classes
    }

    /// Runs `n` images and appends their logits to `out`.
    ///
    /// With `n >= threads` the batch is split into `threads` slices run concurrently on
    /// the same (shared, immutable) plans; a smaller batch runs whole on one worker with
    /// tract's matrix products spread over a `threads`-wide pool.
    pub(crate) fn run_into(&self, input: &[f32], n: usize, out: &mut Vec<f32>) -> Result<(), BoxError> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let threads = self.threads;
        let (slices, executor) = if n >= threads || threads == 1 {
            (threads.min(n.max(1)), None)
        } else {
            (1, Some(pool.executor(threads, !self.plans.symbolic)?))
        };
        let per = n.div_ceil(slices);
        while pool.workers.len() < slices {
            let i = pool.workers.len();
            let w = Worker::spawn(i, Arc::clone(&self.plans), self.output_index)?;
            pool.workers.push(w);
        }

        // Hand out the slices, each in its worker's reused input buffer. After the first
        // send nothing may return early: every job sent must be answered and collected
        // below, or a stale answer would be read by the next run.
        let mut sent = 0;
        let mut first_err: Option<BoxError> = None;
        for (i, chunk) in input.chunks(per * PIXELS).enumerate() {
            let w = &mut pool.workers[i];
            let mut images = std::mem::take(&mut w.spare_in);
            images.clear();
            images.extend_from_slice(chunk);
            let job = Job { images, output: std::mem::take(&mut w.spare_out), executor: executor.clone() };
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
                Ok(Done { images, output, result }) => {
                    w.spare_in = images;
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

/// `typed` (decluttered, batch `sym`) optimised for a batch of exactly `n`, channels-last
/// if asked (see [`to_channels_last`]).
fn concrete_plan(typed: &TypedModel, sym: &Symbol, n: usize, channels_last: bool) -> TractResult<Plan> {
    let subs = HashMap::from([(sym.clone(), TDim::from(n as i64))]);
    let mut model = typed.set_symbols(&subs)?;
    if channels_last {
        model = to_channels_last(model)?;
    }
    model.into_optimized()?.into_runnable()
}

/// Whether `chunk` ([`CHUNK`] images a run) beats `one` (one image a run) per image, on
/// zeros, one thread, best of two after a warm-up. Kept only when clearly faster: it costs
/// a second plan's memory and its leftover images still run one by one.
fn chunk_is_faster(one: &Plan, chunk: &Plan) -> TractResult<bool> {
    let time = |plan: &Plan, n: usize, runs: usize| -> TractResult<f64> {
        let mut state = plan.spawn()?;
        let input = Arc::new(Tensor::zero::<f32>(&[n, 1, IMAGE_SIDE, IMAGE_SIDE])?);
        let mut best = f64::MAX;
        for round in 0..3 {
            let t = Instant::now();
            for _ in 0..runs {
                state.run(tvec![Arc::clone(&input).into_tvalue()])?;
            }
            if round > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        Ok(best)
    };
    Ok(time(chunk, CHUNK, 1)? < 0.9 * time(one, 1, CHUNK)?)
}

/// The worker threads of one model, started on first use and kept until it is dropped.
#[derive(Default)]
struct Pool {
    workers: Vec<Worker>,
    /// tract's matrix-product thread pool, for batches smaller than the thread count.
    executor: Option<Executor>,
}

impl Pool {
    fn executor(&mut self, threads: usize, flush: bool) -> Result<Executor, BoxError> {
        if self.executor.is_none() {
            // rayon reports a failed thread start by panicking.
            let made = std::panic::catch_unwind(|| Executor::multithread_with_name(threads, "infer-tract-mm"));
            let ex = made.map_err(|p| format!("cannot start tract's thread pool: {}", panic_message(&*p)))?;
            if let (true, Executor::MultiThread(pool)) = (flush, &ex) {
                pool.broadcast(|_| flush_denormals());
            }
            self.executor = Some(ex);
        }
        Ok(self.executor.clone().unwrap_or_default())
    }
}

struct Job {
    /// The slice's images, `k * PIXELS` floats; the buffer goes back and forth.
    images: Vec<f32>,
    /// The worker's output buffer, handed back and forth so it is allocated once.
    output: Vec<f32>,
    executor: Option<Executor>,
}

struct Done {
    images: Vec<f32>,
    output: Vec<f32>,
    result: Result<(), BoxError>,
}

struct Worker {
    jobs: Sender<Job>,
    results: Receiver<Done>,
    spare_in: Vec<f32>,
    spare_out: Vec<f32>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    fn spawn(index: usize, plans: Arc<Plans>, output_index: usize) -> Result<Worker, BoxError> {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (res_tx, res_rx) = mpsc::channel::<Done>();
        let handle = std::thread::Builder::new()
            .name(format!("infer-tract-{index}"))
            .spawn(move || worker_loop(&plans, output_index, job_rx, res_tx))
            .map_err(|e| format!("cannot start tract worker thread: {e}"))?;
        Ok(Worker { jobs: job_tx, results: res_rx, spare_in: Vec::new(), spare_out: Vec::new(), handle: Some(handle) })
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

/// One plan as a worker runs it: its state (created lazily and kept: tract keys its
/// per-run scratch on it) and its input tensor, reused from run to run.
struct Runner {
    plan: Plan,
    state: Option<TypedSimpleState>,
    input: Option<Tensor>,
}

impl Runner {
    fn new(plan: &Plan) -> Runner {
        Runner { plan: Arc::clone(plan), state: None, input: None }
    }

    /// Runs the images (as many as the plan's batch; any number on the symbolic plan) and
    /// appends their logits to `output`.
    fn run(&mut self, images: &[f32], output_index: usize, output: &mut Vec<f32>) -> Result<(), BoxError> {
        let shape = [images.len() / PIXELS, 1, IMAGE_SIDE, IMAGE_SIDE];
        let mut tensor = match self.input.take() {
            Some(t) if t.shape() == shape => t,
            _ => Tensor::zero::<f32>(&shape)?,
        };
        let mut view = tensor.to_plain_array_view_mut::<f32>()?;
        view.as_slice_mut().ok_or("tract input tensor is not contiguous")?.copy_from_slice(images);
        drop(view);
        let shared = Arc::new(tensor);
        let st = match &mut self.state {
            Some(s) => s,
            None => self.state.insert(self.plan.spawn()?),
        };
        let result = st.run(tvec![Arc::clone(&shared).into_tvalue()]);
        // tract has dropped its reference once the run returns; if not, copy it back.
        self.input = Some(Arc::try_unwrap(shared).unwrap_or_else(|a| (*a).clone()));
        let outputs = result?;
        let out = outputs.get(output_index).ok_or_else(|| format!("plan returned {} outputs", outputs.len()))?;
        let view = out.to_plain_array_view::<f32>()?;
        match view.as_slice() {
            Some(s) => output.extend_from_slice(s),
            None => output.extend(view.iter().copied()),
        }
        Ok(())
    }
}

fn worker_loop(plans: &Plans, output_index: usize, jobs: Receiver<Job>, results: Sender<Done>) {
    // The `symbolic` mode stands for the backend as it was, denormals included.
    if !plans.symbolic {
        flush_denormals();
    }
    let mut one = Runner::new(&plans.one);
    let mut chunk = plans.chunk.as_ref().map(Runner::new);
    for Job { images, mut output, executor } in jobs {
        output.clear();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut go = || run_slice(plans.symbolic, &mut one, chunk.as_mut(), &images, output_index, &mut output);
            match executor {
                Some(ex) => multithread_tract_scope(ex, go),
                None => go(),
            }
        }))
        .unwrap_or_else(|p| {
            // A state may be mid-run: start fresh ones next time.
            one.state = None;
            if let Some(c) = chunk.as_mut() {
                c.state = None;
            }
            Err(format!("tract worker panicked: {}", panic_message(&*p)).into())
        });
        if results.send(Done { images, output, result }).is_err() {
            break;
        }
    }
}

/// Sets this thread's SSE flush-to-zero and denormals-are-zero flags. Random-weight and
/// undertrained nets (MNASNet especially) carry denormal activations, on which tract's
/// kernels ran several times slower; a denormal's contribution to a logit (< 1.2e-38) is
/// nothing float32 can show.
fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    #[allow(deprecated)] // _mm_setcsr: the one way std offers to set MXCSR
    // SAFETY: SSE is part of x86_64; only the FTZ (bit 15) and DAZ (bit 6) flags change.
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

/// Runs a slice: whole chunks on the chunk plan (when kept), the rest image by image.
fn run_slice(
    symbolic: bool,
    one: &mut Runner,
    chunk: Option<&mut Runner>,
    images: &[f32],
    output_index: usize,
    output: &mut Vec<f32>,
) -> Result<(), BoxError> {
    if symbolic {
        return one.run(images, output_index, output);
    }
    let mut rest = images;
    if let Some(c) = chunk {
        while rest.len() >= CHUNK * PIXELS {
            let (head, tail) = rest.split_at(CHUNK * PIXELS);
            c.run(head, output_index, output)?;
            rest = tail;
        }
    }
    for image in rest.chunks(PIXELS) {
        one.run(image, output_index, output)?;
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
