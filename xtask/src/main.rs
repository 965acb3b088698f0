//! `xtask`: the program logic of the repository's recipe scripts (issue #17). The scripts keep
//! the set-up and the build, then hand over: `scripts/accuracy.sh` runs `xtask accuracy`,
//! `scripts/results_table.sh` runs `xtask results-table`. The pipeline's binaries (trainer,
//! exporter, infer) run as child processes, taken from the folder this binary is in.

mod accuracy;
mod args;
mod bins;
mod lanes;
mod members;
mod results_table;
mod split;
mod submission;
mod test_binary;

use std::fmt;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "xtask", about = "The recipe scripts' logic: the accuracy recipe, the results table, checks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The accuracy recipe: an ensemble trained, exported, (FULL=0) scored, and voted into a submission
    Accuracy(accuracy::Args),
    /// Every architecture with the seed and the strong recipe: accuracies, parameters, ms/batch
    ResultsTable(results_table::Args),
    /// Whether a file is a Kaggle submission for a data set's test.csv
    CheckSubmission(submission::Args),
    /// Build an integration test without running it and print its executable's path
    TestBinary(test_binary::Args),
}

/// A wrong way of calling xtask that clap cannot see (settings that contradict each other):
/// exit status 2, as for clap's own usage errors and as the scripts had.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// 2 for a usage error anywhere in the chain, 1 for everything else.
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<Usage>()) {
        2
    } else {
        1
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Accuracy(args) => accuracy::run(args),
        Command::ResultsTable(args) => results_table::run(args),
        Command::CheckSubmission(args) => submission::run(args),
        Command::TestBinary(args) => test_binary::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn usage_errors_exit_2_even_under_context_others_1() {
        let usage = anyhow::Error::new(Usage("bad".into())).context("while planning");
        assert_eq!(exit_code(&usage), 2);
        let other = Err::<(), _>(std::io::Error::other("disk")).context("writing").unwrap_err();
        assert_eq!(exit_code(&other), 1);
    }

    #[test]
    fn bad_members_on_the_command_line_are_clap_errors_with_exit_2() {
        for members in ["cnn_digits", "cnn_digits:x", "cnn_digits:1:0", "nonet:1", "cnn_digits:1,,m5:2"] {
            let err = Cli::try_parse_from(["xtask", "accuracy", "data.zip", "1", members])
                .expect_err(&format!("{members:?} must be refused"));
            assert_eq!(err.exit_code(), 2, "{members:?}: {err}");
        }
        let cli = Cli::try_parse_from(["xtask", "accuracy", "data.zip", "3", "m5:1:2,cnn_digits:4"]).unwrap();
        let Command::Accuracy(args) = cli.command else { panic!("not accuracy") };
        assert_eq!(args.members.0.map(|m| m.0.len()), Some(2));
        assert_eq!(args.epochs.0.map(|e| e.get()), Some(3));
        // "" is the default, as the shell's `${2:-default}` made it.
        let cli = Cli::try_parse_from(["xtask", "accuracy", "data.zip", "", "m5:1"]).unwrap();
        let Command::Accuracy(args) = cli.command else { panic!("not accuracy") };
        assert_eq!((args.epochs.0, args.members.0.map(|m| m.0.len())), (None, Some(1)));
    }
}
