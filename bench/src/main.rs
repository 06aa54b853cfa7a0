//! `hap-bench`: measures HAP against the plainest thing that could do the same work, so the
//! README can quote a ratio rather than a bare number that only means something on one machine.
//!
//! Every subcommand runs against a scratch database it creates and drops itself, so runs never
//! see each other's data and never touch a real HAP database; those that use RabbitMQ also
//! work under a scratch exchange prefix whose exchanges and queues they delete at the end. Each
//! runs HAP and its raw baseline one after the other in the same process.
//!
//! # Layout
//! - [`append`]: `hap-bench append`, command-side throughput (`POST /patients`) against raw
//!   one-row inserts into a table shaped like `events`.
//! - [`publish`]: `hap-bench publish`, the publisher draining the store against plain lapin
//!   publishing with confirms, and commit-to-delivery latency at a steady rate.
//! - [`project`]: `hap-bench project`, the projectors working off full queues against plain
//!   consuming with acks.
//! - [`e2e`]: `hap-bench e2e`, read-your-writes latency through the whole system at a steady
//!   rate, beside an INSERT-then-SELECT floor and the same trip through a broker in plain SQL
//!   and plain lapin.
//! - [`saga`]: `hap-bench saga`, consultations requested → scheduled by the scheduling saga,
//!   paced and saturated, beside e2e's one-trip floor at the same rate.
//! - [`rebuild`]: `hap-bench rebuild`, rebuilding the read model against a keyset scan of the
//!   store.
//! - [`chaos`]: `hap-bench chaos`, no benchmark but a trial: the clinic as separate `hap`
//!   processes under a workload while processes are killed and servers fail, then the books
//!   checked (exit status 1 if any invariant is violated).
//! - [`database`]: the scratch database, shared by every subcommand; [`scratch`]: the
//!   opening of every subcommand that also uses the broker.
//! - [`broker`]: the scratch exchange prefix, and HAP's pieces running in the background on it.
//! - [`system`]: HAP's pieces wired as `hap serve` wires them, and filling the store.
//! - [`raw`]: `raw_events`, the table of the raw baselines of `append` and `e2e`.
//! - [`load`]: the closed-loop and paced load drivers, backlog timing, and the samplers of the
//!   pool and the CPU over a measured window.
//! - [`cpu`]: how busy the machine was over a window, by process group, and waiting for it to
//!   settle before a run.
//! - [`profile`]: `--profile`, a CPU flame graph of each timed HAP run.
//! - [`report`]: machine facts and the plain-text tables every subcommand prints.
//!
//! Progress goes to stderr and the report to stdout, so `hap-bench append > result.txt` keeps
//! only what the README quotes. Exit status: 0 on success, 1 on failure (one line on stderr),
//! 2 on bad usage (clap's own).

mod append;
mod broker;
mod chaos;
mod cpu;
mod database;
mod e2e;
mod load;
mod patient;
mod profile;
mod project;
mod publish;
mod raw;
mod rebuild;
mod report;
mod saga;
mod scratch;
mod system;

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

    /// Seconds each timed run waits at most for a quiet machine before it starts anyway; 0
    /// starts at once.
    #[arg(long, global = true, default_value_t = cpu::SETTLE_LIMIT_SECS)]
    settle_limit: u64,

    /// Records each timed HAP run with `perf` and writes its CPU flame graph (an SVG) into
    /// `--profile-dir`, printing the path: of the bench's process (`--profile`, HAP's own
    /// time) or of every process on the machine (`--profile=machine`, PostgreSQL's and
    /// RabbitMQ's beside HAP's). Not for `chaos`.
    #[arg(
        long,
        global = true,
        value_enum,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "process",
        value_name = "SCOPE"
    )]
    profile: Option<profile::Scope>,

    /// Where `--profile` writes its flame graphs.
    #[arg(long, global = true, default_value = "target/hap-bench")]
    profile_dir: std::path::PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Command-side throughput: HAP's `POST /patients` against raw inserts into `events`' shape.
    Append(append::Args),
    /// Publisher throughput against plain lapin publishing, and commit-to-delivery latency.
    Publish(publish::Args),
    /// Projector throughput from a full queue against plain consuming with acks.
    Project(project::Args),
    /// Command-to-query latency through the whole system (read-your-writes) at a steady rate.
    E2e(e2e::Args),
    /// Consultations requested → scheduled through the scheduling saga, paced and saturated,
    /// against e2e's command → visible at the same rate.
    #[command(mut_arg("rate", |rate| rate.default_value(saga::DEFAULT_RATE)))]
    Saga(saga::Args),
    /// Rebuilding the read model from the store against a plain paged scan of the store.
    Rebuild(rebuild::Args),
    /// The clinic as separate processes under a workload, broken on purpose (processes
    /// killed, connections cut), then the books checked; exit status 1 on any violation.
    Chaos(chaos::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    cpu::set_settle_limit(std::time::Duration::from_secs(cli.settle_limit));
    let result = run(cli).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` puts the whole context chain on one line.
            eprintln!("hap-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(scope) = cli.profile {
        if matches!(cli.command, Command::Chaos(_)) {
            anyhow::bail!("--profile: chaos is a trial with no timed run to profile");
        }
        profile::enable(cli.command.name(), scope, cli.profile_dir).await?;
    }
    match cli.command {
        Command::Append(args) => append::run(args).await,
        Command::Publish(args) => scratch::run("publish", &args.servers, &args, publish::run).await,
        Command::Project(args) => scratch::run("project", &args.servers, &args, project::run).await,
        Command::E2e(args) => scratch::run("e2e", &args.servers, &args, e2e::run).await,
        Command::Saga(args) => scratch::run("saga", &args.servers, &args, saga::run).await,
        Command::Rebuild(args) => rebuild::run(args).await,
        Command::Chaos(args) => chaos::run(args).await,
    }
}

impl Command {
    /// The subcommand's name, as typed.
    fn name(&self) -> &'static str {
        match self {
            Self::Append(_) => "append",
            Self::Publish(_) => "publish",
            Self::Project(_) => "project",
            Self::E2e(_) => "e2e",
            Self::Saga(_) => "saga",
            Self::Rebuild(_) => "rebuild",
            Self::Chaos(_) => "chaos",
        }
    }
}

/// Logs to stderr at `warn` unless `RUST_LOG` says otherwise. `hap serve` defaults to `info`,
/// which only adds HAP's per-request span, not log lines; `warn` keeps the bench's output to the
/// report while still showing anything that goes wrong inside HAP. Run with `RUST_LOG=info` to
/// include the span's cost.
///
/// sqlx warns of every statement slower than a second (`sqlx::query`), and a saturated machine
/// is what the bench makes: those lines would interleave with the progress and the report, and
/// say nothing the latencies do not. Nor do the server's notices (`sqlx::postgres::notice`),
/// which `chaos` causes on purpose when it crashes its PostgreSQL. Only their errors are shown.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,sqlx::query=error,sqlx::postgres::notice=error"));
    // Fails only if a subscriber is installed already, which nothing in this binary does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// The paced runs share their options (`load::PaceArgs`), but not every default: `saga`
    /// sets its own rate.
    #[test]
    fn each_paced_subcommand_keeps_its_defaults() {
        for (subcommand, rate) in [("publish", 1000), ("e2e", 1000), ("saga", 100)] {
            let matches = Cli::command()
                .try_get_matches_from(["hap-bench", subcommand])
                .expect("the defaults parse");
            let args = matches
                .subcommand_matches(subcommand)
                .expect("the subcommand");
            assert_eq!(args.get_one::<u64>("rate"), Some(&rate), "{subcommand}");
            assert_eq!(args.get_one::<u64>("seconds"), Some(&10), "{subcommand}");
        }
    }
}
