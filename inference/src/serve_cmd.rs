//! `infer serve`: the HTTP server subcommand of the `infer` binary (cargo feature `serve`).
//! Its model flags are `infer`'s ([`inference::cli::ModelArgs`]).

use std::process::ExitCode;

use clap::ArgMatches;

/// Serve exported ONNX models over HTTP (this infer was built without the serve feature).
#[cfg(not(feature = "serve"))]
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _args: Vec<std::ffi::OsString>,
}

/// Runs `infer serve`.
#[cfg(not(feature = "serve"))]
pub fn main(_args: ServeArgs, _matches: &ArgMatches) -> ExitCode {
    inference::cli::print_error(
        Some("infer serve"),
        &anyhow::anyhow!(
            "this infer was built without the serve feature; rebuild with \
             `cargo build --release -p inference --features serve` (it is on by default)"
        ),
    );
    ExitCode::FAILURE
}

#[cfg(feature = "serve")]
pub use imp::ServeArgs;

/// Runs `infer serve`; `matches` are the subcommand's.
#[cfg(feature = "serve")]
pub fn main(args: ServeArgs, matches: &ArgMatches) -> ExitCode {
    match imp::run(args, matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            inference::cli::print_error(Some("infer serve"), &e);
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "serve")]
mod imp {
    use std::time::Duration;

    use anyhow::{bail, Context, Result};
    use clap::ArgMatches;
    use inference::cli::ModelArgs;
    use inference::serve::{BatchWait, ServeConfig, ServeError, Server};
    use inference::Model;

    /// Where the server listens unless --addr says otherwise.
    pub const DEFAULT_ADDR: &str = "127.0.0.1:8000";
    /// The environment variable a bearer token is read from when --token is not given.
    const TOKEN_ENV: &str = "INFER_SERVE_TOKEN";

    /// The server's own defaults, which the flags' defaults show.
    fn defaults() -> ServeConfig {
        ServeConfig::default()
    }

    /// Serve exported ONNX models over HTTP.
    ///
    /// Open Inference Protocol v2 (what Triton and KServe speak) for each model and for
    /// `ensemble` (all models, majority vote): GET /v2, /v2/health/live, /v2/health/ready,
    /// /v2/models/NAME[/ready], POST /v2/models/NAME/infer (input `input`, FP32 pixel/255 or
    /// UINT8, shape [N,784] or [N,1,28,28]; outputs `label` INT64 [N], `probabilities`
    /// FP32 [N,10]). Also POST /predict (JSON {"pixels": [[784 ints], ...]} or text/csv
    /// Kaggle rows; ?detail=true adds probabilities and each model's vote), GET /metrics
    /// (Prometheus) and GET / (draw a digit). SIGTERM or Ctrl-C drains in-flight requests
    /// and exits. Each model is served under its name, as `infer` names it (--model).
    ///
    /// Examples:
    ///   infer serve --ensemble resnet18,resnet34,mobilenet_v2
    ///   infer serve --model exported/resnet18.onnx --addr 127.0.0.1:9000 --max-batch 32
    ///   MLFLOW_TRACKING_URI=http://127.0.0.1:5000 infer serve --model models:/digits@champion
    #[derive(Debug, clap::Args)]
    #[command(verbatim_doc_comment)]
    pub struct ServeArgs {
        #[command(flatten)]
        models: ModelArgs,

        /// Address to listen on (port 0: any free port, printed at start).
        #[arg(long, default_value = DEFAULT_ADDR)]
        addr: String,

        /// Most images merged into one model call (dynamic batching); 1 turns it off.
        #[arg(long, default_value_t = defaults().max_batch as u64,
              value_parser = clap::value_parser!(u64).range(1..=65536))]
        max_batch: u64,

        /// Longest a request waits for others to join its batch, in microseconds.
        #[arg(long, default_value_t = defaults().max_delay.as_micros() as u64)]
        max_delay_us: u64,

        /// adaptive: a batch waits (up to --max-delay-us) only for as many images as the
        /// previous batch held, so a lone client never waits; fixed: for --max-batch images.
        #[arg(long, value_enum, default_value = "adaptive")]
        batch_wait: BatchWait,

        /// Most requests admitted at once; beyond it the answer is 503 with Retry-After.
        #[arg(long, default_value_t = defaults().queue as u64, value_parser = clap::value_parser!(u64).range(1..))]
        queue: u64,

        /// Require `Authorization: Bearer TOKEN` on every route but / and the health checks.
        /// Default: the INFER_SERVE_TOKEN environment variable, which, unlike an argument,
        /// other users cannot read in `ps`. An empty token is an error, not "no token".
        #[arg(long)]
        token: Option<String>,

        /// Per-request time limit in milliseconds (504 after it).
        #[arg(long, default_value_t = defaults().timeout.as_millis() as u64,
              value_parser = clap::value_parser!(u64).range(1..))]
        timeout_ms: u64,

        /// Largest request body in bytes (413 above it).
        #[arg(long, default_value_t = defaults().body_limit as u64, value_parser = clap::value_parser!(u64).range(1..))]
        max_body_bytes: u64,
    }

    pub fn run(cli: ServeArgs, matches: &ArgMatches) -> Result<()> {
        let members = cli.models.resolve(matches, "infer serve")?;
        let choice = inference::choose_backend(cli.models.backend);
        eprintln!("infer serve: backend {} ({})", choice.kind, choice.reason);
        let per_model = (cli.models.total_threads() / members.len()).max(1);
        let mut models = Vec::new();
        for (name, path) in members {
            let model = Model::load(&path, choice.kind, per_model)?;
            eprintln!("infer serve: loaded {name} from {}", path.display());
            models.push((name, model));
        }
        let config = ServeConfig {
            max_batch: cli.max_batch as usize,
            max_delay: Duration::from_micros(cli.max_delay_us),
            batch_wait: cli.batch_wait,
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
    /// (Read here rather than through clap's `env`, which answers a non-UTF-8 value with its own
    /// usage error.)
    fn token(flag: Option<String>) -> Result<Option<String>> {
        let (token, from) = match (flag, std::env::var(TOKEN_ENV)) {
            (Some(t), _) => (t, "--token"),
            (None, Ok(t)) => (t, TOKEN_ENV),
            (None, Err(std::env::VarError::NotPresent)) => return Ok(None),
            (None, Err(std::env::VarError::NotUnicode(_))) => bail!("{TOKEN_ENV} is not valid UTF-8"),
        };
        // The check trims what clients send, so trim this side too (a file's newline).
        let token = token.trim();
        if token.is_empty() {
            bail!("{from} is empty: give a token, or leave {from} out to serve without one");
        }
        Ok(Some(token.to_string()))
    }
}
