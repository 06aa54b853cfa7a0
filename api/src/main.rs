//! `hap`: parses the command line and runs it. Exit status 0 on success, 1 on failure (one
//! line on stderr), 2 on bad usage (clap's own).

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    api::telemetry::init_logging();
    let cli = api::cli::Cli::parse();
    match api::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hap: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
