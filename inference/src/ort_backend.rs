//! The ONNX Runtime backend (cargo feature `ort`): libonnxruntime is loaded at run time,
//! so the binary builds and runs (with tract) on machines without it.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::contract::{check_input_dims, check_output_dims};
use crate::error::{error_chain, panic_message, BoxError};
use crate::{BackendKind, InferError, IMAGE_SIDE};
use models::contract::OUTPUT_NAME;

/// Oldest ONNX Runtime minor version (`1.x`) the `ort` crate accepts.
pub const ORT_MIN_MINOR: u32 = ort::MINOR_VERSION;

/// Environment variable naming the libonnxruntime to load (as ort itself reads it).
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

struct Runtime {
    env: Environment,
    library: PathBuf,
}

/// Result of the one-time initialisation: the library is process-global in ort, so the
/// outcome (success or the paths tried and why they failed) is computed once and reused.
static RUNTIME: OnceLock<Result<Runtime, (Vec<PathBuf>, String)>> = OnceLock::new();

/// Where libonnxruntime is looked for, in order.
///
/// If `ORT_DYLIB_PATH` is set (and not empty) only that path is used: a user who names a
/// library must not silently get another one. Otherwise, relative to the current folder
/// and to every ancestor of the executable (so `target/release/infer` finds the repo's
/// `.venv`): `.venv/libonnxruntime.so` (the link scripts/setup.sh makes), then
/// `.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`.
pub fn ort_library_candidates() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os(ORT_DYLIB_ENV).filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut bases: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        bases.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        bases.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    let mut out: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    for base in bases {
        let venv = base.join(".venv");
        push(venv.join("libonnxruntime.so"));
        for capi in python_capi_dirs(&venv) {
            let Ok(entries) = std::fs::read_dir(&capi) else { continue };
            let mut libs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("libonnxruntime.so"))
                .map(|e| e.path())
                .collect();
            libs.sort();
            libs.into_iter().for_each(&mut push);
        }
    }
    out
}

/// `venv/lib/python3*/site-packages/onnxruntime/capi` folders that exist.
fn python_capi_dirs(venv: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(venv.join("lib")) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/onnxruntime/capi"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// The file a library path names, links resolved. ONNX Runtime finds its execution-provider
/// libraries (`libonnxruntime_providers_cuda.so`...) beside the path it was opened by, so
/// opening it through a link elsewhere (setup.sh's `.venv/libonnxruntime.so`) loses them.
fn real_path(lib: &Path) -> PathBuf {
    std::fs::canonicalize(lib).unwrap_or_else(|_| lib.to_path_buf())
}

fn init_runtime() -> Result<Runtime, (Vec<PathBuf>, String)> {
    let candidates = ort_library_candidates();
    let mut tried = Vec::new();
    let mut reason = "no candidate library path".to_string();
    for lib in candidates {
        tried.push(lib.clone());
        if !lib.exists() {
            reason = format!("{}: no such file", lib.display());
            continue;
        }
        let lib = real_path(&lib);
        // ort panics on some load failures (e.g. a library without the expected API);
        // the user should get an error naming the library, not a backtrace.
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let builder = ort::init_from(&lib).map_err(|e| match &e {
                // Its Display says only "dlopen failed"; dlerror's text is the source.
                ort::LoadDynamicError::Dlopen { error, path } => {
                    format!("{}: {}", path.display(), error_chain(error))
                }
                other => other.to_string(),
            })?;
            builder.with_name("infer").build().map_err(|e| error_chain(&e))
        }));
        match attempt {
            Ok(Ok(env)) => return Ok(Runtime { env, library: lib }),
            Ok(Err(e)) => reason = e,
            Err(p) => reason = format!("{}: loading panicked: {}", lib.display(), panic_message(&*p)),
        }
    }
    Err((tried, reason))
}

fn runtime() -> Result<&'static Runtime, InferError> {
    match RUNTIME.get_or_init(init_runtime) {
        Ok(rt) => Ok(rt),
        Err((tried, reason)) => Err(InferError::OrtUnavailable { tried: tried.clone(), reason: reason.clone() }),
    }
}

/// Loads ONNX Runtime (once per process) and returns the library file in use.
///
/// Errors with [`InferError::OrtUnavailable`] listing every path tried.
pub fn ort_library() -> Result<PathBuf, InferError> {
    runtime().map(|rt| rt.library.clone())
}

/// Builder errors carry the builder back; keep only code and message so the error is
/// `Send + Sync` like the rest.
fn builder_err(e: ort::Error<SessionBuilder>) -> ort::Error {
    ort::Error::new_with_code(e.code(), e.message())
}

/// The shared library ONNX Runtime said it could not open, if its message says so
/// (e.g. "Failed to load library libonnxruntime_providers_cuda.so with error:
/// libcublasLt.so.12: cannot open shared object file").
pub(crate) fn missing_library(message: &str) -> Option<String> {
    let token_before = |end: usize| {
        let head = &message[..end];
        let start = head.rfind(|c: char| c.is_whitespace()).map_or(0, |i| i + 1);
        Some(head[start..].trim_matches(|c| c == '\'' || c == '"').to_string()).filter(|s| !s.is_empty())
    };
    if let Some(i) = message.find(": cannot open shared object file") {
        return token_before(i);
    }
    let marker = "Failed to load library ";
    let i = message.find(marker)? + marker.len();
    let rest = &message[i..];
    let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
    Some(rest[..end].to_string()).filter(|s| !s.is_empty())
}

/// What to do about a library the CUDA provider could not open.
fn cuda_hint(missing: Option<&str>) -> &'static str {
    match missing {
        Some(lib) if lib.starts_with("libcuda.so") => "; the NVIDIA driver is not installed on this machine",
        Some(lib) if lib.starts_with("libcu") || lib.starts_with("libnv") => {
            "; put the CUDA runtime libraries on LD_LIBRARY_PATH: torch's wheels carry them in \
             .venv/lib/python3*/site-packages/nvidia/*/lib"
        }
        _ => "",
    }
}

fn dims_of(path: &Path, what: &str, name: &str, ty: &ValueType) -> Result<Vec<Option<i64>>, InferError> {
    match ty {
        ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } => {
            Ok(shape.iter().map(|&d| (d >= 0).then_some(d)).collect())
        }
        ValueType::Tensor { ty, .. } => Err(InferError::Contract {
            path: path.to_path_buf(),
            message: format!("{what} `{name}` is {ty}, expected float32"),
        }),
        other => Err(InferError::Contract {
            path: path.to_path_buf(),
            message: format!("{what} `{name}` is {other:?}, expected a float32 tensor"),
        }),
    }
}

pub(crate) struct OrtEngine {
    // `Session::run` needs `&mut` (its outputs borrow the session); runs on one model
    // are serialised, which costs nothing since each run already uses all its threads.
    session: Mutex<Session>,
    input_name: String,
    output_name: String,
    classes: usize,
}

impl OrtEngine {
    pub(crate) fn load(path: &Path, cuda: bool, threads: usize) -> Result<OrtEngine, InferError> {
        let rt = runtime()?;
        let backend = if cuda { BackendKind::OrtCuda } else { BackendKind::Ort };
        let invalid =
            |e: ort::Error| InferError::InvalidModel { path: path.to_path_buf(), backend, source: Box::new(e) };
        let mut builder = Session::builder(&rt.env)
            .map_err(invalid)?
            // ORT_ENABLE_ALL, as Python onnxruntime's default: every fusion and the NCHWc
            // layout (ort's Level3 is only ORT_ENABLE_LAYOUT, a subset in recent releases).
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| invalid(builder_err(e)))?
            .with_intra_threads(threads)
            .map_err(|e| invalid(builder_err(e)))?;
        if cuda {
            let cuda_ep = ort::ep::CUDA::default().build().error_on_failure();
            builder = builder.with_execution_providers([cuda_ep]).map_err(|e| {
                let e = builder_err(e);
                let missing = missing_library(e.message());
                let hint = if e.message().contains("not enabled in this build") {
                    "; this is a CPU-only build: install onnxruntime-gpu (SETUP_GPU=1 bash scripts/setup.sh) \
                     and point ORT_DYLIB_PATH at its libonnxruntime.so, or use --backend ort"
                } else {
                    cuda_hint(missing.as_deref())
                };
                InferError::CudaUnavailable {
                    path: path.to_path_buf(),
                    library: rt.library.clone(),
                    missing,
                    hint: hint.to_string(),
                    source: Box::new(e),
                }
            })?;
        }
        let session = builder.commit_from_file(path).map_err(invalid)?;

        let contract = |message: String| InferError::Contract { path: path.to_path_buf(), message };
        let inputs = session.inputs();
        if inputs.len() != 1 {
            return Err(contract(format!("has {} inputs, expected exactly one ([N,1,28,28])", inputs.len())));
        }
        let input_name = inputs[0].name().to_string();
        let dims = dims_of(path, "input", &input_name, inputs[0].dtype())?;
        check_input_dims(path, &input_name, &dims)?;

        let outputs = session.outputs();
        let output = match outputs.iter().find(|o| o.name() == OUTPUT_NAME) {
            Some(o) => o,
            None if outputs.len() == 1 => &outputs[0],
            None => return Err(contract(format!("has {} outputs and none is named `{OUTPUT_NAME}`", outputs.len()))),
        };
        let output_name = output.name().to_string();
        let out_dims = dims_of(path, "output", &output_name, output.dtype())?;
        let classes = check_output_dims(path, &output_name, &out_dims)?;

        Ok(OrtEngine { session: Mutex::new(session), input_name, output_name, classes })
    }

    pub(crate) fn num_classes(&self) -> usize {
        self.classes
    }

    /// Runs `n` images and appends their logits to `out`. The input is handed to ONNX
    /// Runtime in place (a tensor view over the caller's slice, no copy); only the
    /// `n * classes` logits are copied out.
    pub(crate) fn run_into(&self, input: &[f32], n: usize, out: &mut Vec<f32>) -> Result<(), BoxError> {
        let tensor = TensorRef::from_array_view(([n, 1, IMAGE_SIDE, IMAGE_SIDE], input))?;
        // A panic while holding the lock cannot leave the session half-updated.
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run(ort::inputs![self.input_name.as_str() => tensor])?;
        let value = outputs
            .get(&self.output_name)
            .ok_or_else(|| format!("output `{}` missing from the results", self.output_name))?;
        let (_, data) = value.try_extract_tensor::<f32>()?;
        out.extend_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::missing_library;

    #[test]
    fn missing_library_is_read_from_ort_messages() {
        let m = "Failed to load library libonnxruntime_providers_cuda.so with error: \
                 libcublasLt.so.12: cannot open shared object file: No such file or directory";
        assert_eq!(missing_library(m).as_deref(), Some("libcublasLt.so.12"));
        let m = "Failed to load library libonnxruntime_providers_cuda.so with error: boom";
        assert_eq!(missing_library(m).as_deref(), Some("libonnxruntime_providers_cuda.so"));
        assert_eq!(missing_library("CUDA is not enabled in this build"), None);
    }

    #[test]
    fn a_missing_cuda_library_gets_a_hint_the_driver_another() {
        use super::cuda_hint;
        assert!(cuda_hint(Some("libcublasLt.so.13")).contains("LD_LIBRARY_PATH"));
        assert!(cuda_hint(Some("libcudnn.so.9")).contains("LD_LIBRARY_PATH"));
        assert!(cuda_hint(Some("libcuda.so.1")).contains("driver"));
        assert_eq!(cuda_hint(Some("libonnxruntime_providers_cuda.so")), "");
        assert_eq!(cuda_hint(None), "");
    }
}
