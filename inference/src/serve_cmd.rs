//! `infer serve`: the HTTP server subcommand of the `infer` binary (cargo feature `serve`).

use std::process::ExitCode;

/// Runs `infer serve ARGS...` (`args` starts with `serve`).
#[cfg(not(feature = "serve"))]
pub fn main(_args: Vec<std::ffi::OsString>) -> ExitCode {
    eprintln!(
        "infer: error: this infer was built without the serve feature; rebuild with \
         `cargo build --release -p inference --features serve` (it is on by default)"
    );
    ExitCode::FAILURE
}

/// Runs `infer serve ARGS...` (`args` starts with `serve`).
#[cfg(feature = "serve")]
pub fn main(args: Vec<std::ffi::OsString>) -> ExitCode {
    use clap::Parser;
    let cli = imp::ServeCli::parse_from(args);
    match imp::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("infer serve: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "serve")]
mod imp {
    use std::path::PathBuf;
    use std::time::Duration;

    use anyhow::{bail, Context, Result};
    use clap::{ArgGroup, Parser};
    use inference::serve::{ServeConfig, ServeError, Server};
    use inference::{BackendKind, Model};

    /// Serve exported ONNX models over HTTP.
    ///
    /// Open Inference Protocol v2 (what Triton and KServe speak) for each model and for
    /// `ensemble` (all models, majority vote): GET /v2, /v2/health/live, /v2/health/ready,
    /// /v2/models/NAME[/ready], POST /v2/models/NAME/infer (input `input`, FP32 pixel/255 or
    /// UINT8, shape [N,784] or [N,1,28,28]; outputs `label` INT64 [N], `probabilities`
    /// FP32 [N,10]). Also POST /predict (JSON {"pixels": [[784 ints], ...]} or text/csv
    /// Kaggle rows; ?detail=true adds probabilities and each model's vote), GET /metrics
    /// (Prometheus) and GET / (draw a digit). SIGTERM or Ctrl-C drains in-flight requests
    /// and exits.
    ///
    /// Examples:
    ///   infer serve --ensemble resnet18,resnet34,mobilenet_v2
    ///   infer serve --model exported/resnet18.onnx --addr 127.0.0.1:9000 --max-batch 32
    ///   MLFLOW_TRACKING_URI=http://127.0.0.1:5000 infer serve --model models:/digits@champion
    #[derive(Debug, Parser)]
    #[command(name = "infer serve", version, verbatim_doc_comment)]
    #[command(group(ArgGroup::new("what").required(true).args(["model", "ensemble"])))]
    pub struct ServeCli {
        /// One model: an ONNX file (served under its file stem, or its folder's name for
        /// NAME/model.onnx), or a registry URI models:/NAME/<version> or models:/NAME@<alias>
        /// (served under NAME; needs MLFLOW_TRACKING_URI).
        #[arg(long, value_name = "MODEL.onnx|URI")]
        model: Option<String>,

        /// Comma-separated ensemble members, resolved as by offline `infer --ensemble`:
        /// models:/ URIs, paths, or names (a tracking server's registry, then NAME.onnx or
        /// NAME/model.onnx in --models-dir). Each is served under its name.
        #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
        ensemble: Option<Vec<String>>,

        /// Folder where member names are looked up. Default: ./models, then ./exported.
        #[arg(long, value_name = "DIR")]
        models_dir: Option<PathBuf>,

        /// Where models downloaded from a tracking server's registry are cached.
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,

        /// Address to listen on (port 0: any free port, printed at start).
        #[arg(long, default_value = "127.0.0.1:8000")]
        addr: String,

        /// Inference backend. Default: ort when libonnxruntime is found, else tract.
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,

        /// Threads for inference in total (default: all cores), split between members.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
        threads: Option<u64>,

        /// Most images merged into one model call (dynamic batching); 1 turns it off.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
        max_batch: u64,

        /// Longest a request waits for others to join its batch, in microseconds.
        #[arg(long, default_value_t = 2000)]
        max_delay_us: u64,

        /// Most requests admitted at once; beyond it the answer is 503 with Retry-After.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
        queue: u64,

        /// Require `Authorization: Bearer TOKEN` on every route but / and the health checks.
        /// Default: the INFER_SERVE_TOKEN environment variable, which, unlike an argument,
        /// other users cannot read in `ps`. An empty token is an error, not "no token".
        #[arg(long)]
        token: Option<String>,

        /// Per-request time limit in milliseconds (504 after it).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_ms: u64,

        /// Largest request body in bytes (413 above it).
        #[arg(long, default_value_t = 8 << 20, value_parser = clap::value_parser!(u64).range(1..))]
        max_body_bytes: u64,
    }

    pub fn run(cli: ServeCli) -> Result<()> {
        let specs: Vec<&str> = match (&cli.model, &cli.ensemble) {
            (Some(m), _) => vec![m.as_str()],
            (None, Some(names)) => names.iter().map(|m| m.trim()).filter(|m| !m.is_empty()).collect(),
            (None, None) => bail!("give --model or --ensemble"),
        };
        if specs.is_empty() {
            bail!("--ensemble needs at least one member name");
        }
        let mut resolve = inference::ResolveOptions::new(cli.models_dir.as_deref());
        if let Some(dir) = &cli.cache_dir {
            resolve.cache_dir = dir.clone();
        }
        let mut members: Vec<(String, PathBuf)> = Vec::new();
        for spec in specs {
            members.push((served_name(spec), crate::resolve_verbose(spec, &resolve)?));
        }
        let choice = inference::choose_backend(cli.backend);
        eprintln!("infer serve: backend {} ({})", choice.kind, choice.reason);
        let total = cli.threads.map_or_else(inference::default_threads, |t| t as usize);
        let per_model = (total / members.len()).max(1);
        let mut models = Vec::new();
        for (name, path) in members {
            let model = Model::load(&path, choice.kind, per_model)?;
            eprintln!("infer serve: loaded {name} from {}", path.display());
            models.push((name, model));
        }
        let config = ServeConfig {
            max_batch: cli.max_batch as usize,
            max_delay: Duration::from_micros(cli.max_delay_us),
            queue: cli.queue as usize,
            token: token(cli.token)?,
            timeout: Duration::from_millis(cli.timeout_ms),
            body_limit: usize::try_from(cli.max_body_bytes).context("--max-body-bytes is too large")?,
        };
        let server = Server::new(models, config)?;
        let served = inference::serve::run_blocking(&cli.addr, server, |addr| {
            eprintln!("infer serve: listening on http://{addr}");
        });
        if let Err(e @ ServeError::AddrInUse { .. }) = served {
            bail!("{e}; choose another --addr, or port 0 for any free one");
        }
        served?;
        eprintln!("infer serve: drained, exiting");
        Ok(())
    }

    /// The bearer token: `--token`, else INFER_SERVE_TOKEN, else none. A token that is given
    /// but empty or not UTF-8 is refused rather than ignored: ignoring it would serve every
    /// route without one (a script's `--token "$UNSET"`, a secret that failed to load).
    fn token(flag: Option<String>) -> Result<Option<String>> {
        const VAR: &str = "INFER_SERVE_TOKEN";
        let (token, from) = match (flag, std::env::var(VAR)) {
            (Some(t), _) => (t, "--token"),
            (None, Ok(t)) => (t, VAR),
            (None, Err(std::env::VarError::NotPresent)) => return Ok(None),
            (None, Err(std::env::VarError::NotUnicode(_))) => bail!("{VAR} is not valid UTF-8"),
        };
        // The check trims what clients send, so trim this side too (a file's newline).
        let token = token.trim();
        if token.is_empty() {
            bail!("{from} is empty: give a token, or leave {from} out to serve without one");
        }
        Ok(Some(token.to_string()))
    }

    /// The route name of a member: NAME of models:/NAME/1 or models:/NAME@alias (a `/` cannot
    /// be part of /v2/models/NAME), else the file stem or NAME of NAME/model.onnx.
    fn served_name(spec: &str) -> String {
        match spec.strip_prefix("models:/") {
            Some(rest) => rest.split(['/', '@']).next().unwrap_or(rest).to_string(),
            None => crate::display_name(std::path::Path::new(spec)),
        }
    }
}
