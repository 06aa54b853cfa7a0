//! `hap-bench`: measures HAP against the plainest thing that could do the same work, so the
//! README can quote a ratio rather than a bare number that only means something on one machine.
//!
//! Every subcommand runs against a scratch database it creates and drops itself, so runs never
//! see each other's data and never touch a real HAP database.
//!
//! # Layout
//! - [`append`]: `hap-bench append`, command-side throughput (`POST /patients`) against raw
//!   one-row inserts into a table shaped like `events`.
//! - [`database`]: the scratch database, shared by every subcommand.
//! - [`load`]: the closed-loop load driver and the pool sampler.
//! - [`report`]: machine facts and the plain-text table every subcommand prints.
//!
//! Later subcommands (`publish`, `project`, `e2e`, `rebuild`) are meant to be sibling modules
//! built from the same three pieces.
//!
//! Progress goes to stderr and the report to stdout, so `hap-bench append > result.txt` keeps
//! only what the README quotes. Exit status: 0 on success, 1 on failure (one line on stderr),
//! 2 on bad usage (clap's own).

mod append;
mod database;
mod load;
mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "hap-bench",
    about = "Benchmarks HAP against a raw PostgreSQL baseline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Command-side throughput: HAP's `POST /patients` against raw inserts into `events`' shape.
    Append(append::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Append(args) => append::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` puts the whole context chain on one line.
            eprintln!("hap-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr at `warn` unless `RUST_LOG` says otherwise. `hap serve` defaults to `info`,
/// which only adds HAP's per-request span, not log lines; `warn` keeps the bench's output to the
/// report while still showing anything that goes wrong inside HAP. Run with `RUST_LOG=info` to
/// include the span's cost.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    // Fails only if a subscriber is installed already, which nothing in this binary does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
