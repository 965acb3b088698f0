//! A loaded model: one ONNX file on one backend, loaded once and run many times.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::contract::check_opset;
use crate::{tract_backend, InferError, PIXELS};

/// Which runtime executes the ONNX graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// ONNX Runtime on the CPU (libonnxruntime loaded at run time).
    Ort,
    /// ONNX Runtime with the CUDA execution provider; an error if CUDA cannot be used.
    OrtCuda,
    /// tract: pure Rust, always available, no shared library needed.
    Tract,
}

impl BackendKind {
    /// The name used on the command line (`ort`, `ort-cuda`, `tract`).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Ort => "ort",
            BackendKind::OrtCuda => "ort-cuda",
            BackendKind::Tract => "tract",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub(crate) enum Engine {
    Tract(tract_backend::TractEngine),
    #[cfg(feature = "ort")]
    Ort(crate::ort_backend::OrtEngine),
}

/// An ONNX digit classifier loaded on a backend.
///
/// Load it once with [`Model::load`] and call [`Model::run`] for every batch; `run`
/// takes `&self` and the model is `Send + Sync`, so ensemble members can run on
/// their own threads.
pub struct Model {
    path: PathBuf,
    backend: BackendKind,
    threads: usize,
    num_classes: usize,
    engine: Engine,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("backend", &self.backend)
            .field("threads", &self.threads)
            .field("num_classes", &self.num_classes)
            .finish_non_exhaustive()
    }
}

/// Number of cores to use when the caller says `0`.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Model {
    /// Loads the ONNX model at `path` on `backend`.
    ///
    /// `threads` is the parallelism of one `run` call (ONNX Runtime's intra-op threads;
    /// for tract, the number of persistent worker threads a batch is split across, or
    /// of tract's matrix-product pool for a batch smaller than that); `0` means all
    /// available cores.
    ///
    /// The model must follow the pipeline's contract: one input `[N,1,28,28]` float32
    /// with a dynamic batch `N`, and a `[N,classes]` output (`logits`). A missing,
    /// unreadable, truncated or non-ONNX file, or a model breaking the contract, is an
    /// error naming the file.
    pub fn load(path: &Path, backend: BackendKind, threads: usize) -> Result<Model, InferError> {
        let threads = if threads == 0 { default_threads() } else { threads };
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(InferError::ModelRead {
                    path: path.to_path_buf(),
                    source: std::io::Error::other("is not a regular file"),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(InferError::ModelNotFound { path: path.to_path_buf() })
            }
            Err(source) => return Err(InferError::ModelRead { path: path.to_path_buf(), source }),
        }
        check_opset(path)?;
        let (engine, num_classes) = match backend {
            BackendKind::Tract => {
                let e = tract_backend::TractEngine::load(path, threads)?;
                let c = e.num_classes();
                (Engine::Tract(e), c)
            }
            #[cfg(feature = "ort")]
            BackendKind::Ort | BackendKind::OrtCuda => {
                let e = crate::ort_backend::OrtEngine::load(path, backend == BackendKind::OrtCuda, threads)?;
                let c = e.num_classes();
                (Engine::Ort(e), c)
            }
            #[cfg(not(feature = "ort"))]
            BackendKind::Ort | BackendKind::OrtCuda => return Err(InferError::BackendNotCompiled { backend }),
        };
        Ok(Model { path: path.to_path_buf(), backend, threads, num_classes, engine })
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The backend running it.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Threads one `run` call uses.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Classes per image in the output (10 for digits).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Runs a batch: `input` holds `n` images `[n,1,28,28]` (row-major, `pixel / 255`);
    /// returns `n * num_classes()` logits, image after image.
    ///
    /// `n == 0` returns an empty vector without calling the backend.
    pub fn run(&self, input: &[f32], n: usize) -> Result<Vec<f32>, InferError> {
        let mut out = Vec::with_capacity(n * self.num_classes);
        self.run_into(input, n, &mut out)?;
        Ok(out)
    }

    /// Like [`Model::run`], but appends the `n * num_classes()` logits to `out`, so a
    /// caller running many batches allocates nothing per batch. On error `out` is left
    /// as it was.
    pub fn run_into(&self, input: &[f32], n: usize, out: &mut Vec<f32>) -> Result<(), InferError> {
        let expected = n.saturating_mul(PIXELS);
        if input.len() != expected {
            return Err(InferError::InputSize { n, expected, found: input.len() });
        }
        if n == 0 {
            return Ok(());
        }
        let before = out.len();
        let result = match &self.engine {
            Engine::Tract(e) => e.run_into(input, n, out),
            #[cfg(feature = "ort")]
            Engine::Ort(e) => e.run_into(input, n, out),
        };
        if let Err(source) = result {
            out.truncate(before);
            return Err(InferError::Run { path: self.path.clone(), backend: self.backend, source });
        }
        let expected = n * self.num_classes;
        let found = out.len() - before;
        if found != expected {
            out.truncate(before);
            return Err(InferError::OutputSize {
                path: self.path.clone(),
                n,
                classes: self.num_classes,
                expected,
                found,
            });
        }
        Ok(())
    }
}
