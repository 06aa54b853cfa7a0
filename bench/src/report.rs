//! What every subcommand prints: a header line of machine facts, so that a number pasted into
//! the README says where it was measured, and aligned plain-text tables.

use std::fmt::{self, Display};

use anyhow::Context;
use sqlx::PgPool;

use crate::load::{Drained, Outcome};

/// The facts a reader needs to judge a result measured elsewhere.
pub struct Facts {
    /// What `nproc` prints: CPUs this process may run on. The load generator, HAP and
    /// PostgreSQL all share them.
    pub nproc: usize,
    pub cpu: String,
    pub postgres: String,
    pub date: String,
}

impl Facts {
    pub async fn gather(pool: &PgPool) -> anyhow::Result<Self> {
        let postgres: String = sqlx::query_scalar("show server_version")
            .fetch_one(pool)
            .await
            .context("Failed to read PostgreSQL's version")?;
        Ok(Self {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu: cpu_model().unwrap_or_else(|| "unknown CPU".into()),
            postgres,
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        })
    }
}

impl Display for Facts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A debug build is several times slower; say so rather than let it be quoted.
        let build = if cfg!(debug_assertions) {
            "DEBUG build"
        } else {
            "release build"
        };
        write!(
            f,
            "nproc {} · {} · PostgreSQL {} · {} · {}",
            self.nproc, self.cpu, self.postgres, build, self.date
        )
    }
}

/// The CPU's model name on Linux; `None` elsewhere or when it cannot be read.
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
        .map(|(_, name)| name.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// A plain-text table: the first column left-aligned (names), the others right-aligned
/// (numbers), columns two spaces apart, so that it pastes into a Markdown code block as is.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<const N: usize>(header: [&str; N]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: vec![],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The usual row of a load run: rate, median and 99th percentile latency, errors.
    pub fn run_row(&mut self, name: &str, clients: usize, connections: u32, outcome: &Outcome) {
        self.row(vec![
            name.to_owned(),
            clients.to_string(),
            connections.to_string(),
            outcome.ok.to_string(),
            format!("{:.0}", outcome.rate()),
            format!("{:.2}", outcome.latency_ms(0.5)),
            format!("{:.2}", outcome.latency_ms(0.99)),
            outcome.errors.to_string(),
        ]);
    }

    /// The row of a run that worked off a backlog of `unit`s (see [`Table::drains`]).
    pub fn drain_row(&mut self, name: &str, drained: &Drained) {
        self.row(vec![
            name.to_owned(),
            drained.count.to_string(),
            format!("{:.2}", drained.elapsed.as_secs_f64()),
            format!("{:.0}", drained.rate()),
        ]);
    }

    /// The header of [`Table::drain_row`]'s rows, counting `unit`s (`events`, `messages`).
    pub fn drains(unit: &str) -> Self {
        let rate = format!("{unit}/s");
        Self::new(["run", unit, "seconds", &rate])
    }

    /// The row of a paced run: the rate asked for and achieved, latency, errors.
    pub fn paced_row(&mut self, name: &str, rate: u64, outcome: &Outcome) {
        self.row(vec![
            name.to_owned(),
            rate.to_string(),
            format!("{:.0}", outcome.rate()),
            outcome.ok.to_string(),
            format!("{:.2}", outcome.latency_ms(0.5)),
            format!("{:.2}", outcome.latency_ms(0.99)),
            format!("{:.2}", outcome.latency_ms(1.0)),
            outcome.errors.to_string(),
            outcome.cpu.map_or("?".to_owned(), |cpu| cpu.to_string()),
            outcome.cpu.map_or("?".to_owned(), |cpu| cpu.by_process()),
        ]);
    }

    /// The header of [`Table::paced_row`]'s rows.
    pub fn paced() -> Self {
        Self::new([
            "run",
            "rate/s",
            "achieved/s",
            "ok",
            "p50 ms",
            "p99 ms",
            "max ms",
            "errors",
            "CPU busy / steal %",
            "PostgreSQL / RabbitMQ / hap-bench %",
        ])
    }

    /// The header of [`Table::run_row`]'s rows.
    pub fn runs() -> Self {
        Self::new([
            "run", "clients", "conns", "ok", "ops/s", "p50 ms", "p99 ms", "errors",
        ])
    }
}

/// Prints `table` between blank lines, then HAP's rate over the raw baseline's beside the
/// design's `target` for it.
pub fn print_with_ratio(table: &Table, hap_rate: f64, raw_rate: f64, target: f64) {
    println!();
    print!("{table}");
    println!();
    println!(
        "ratio (HAP / raw): {:.2}   (target ≥ {target:.1})",
        hap_rate / raw_rate
    );
}

impl Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i == 0 {
                    line.push_str(&format!("{cell:<width$}"));
                } else {
                    line.push_str(&format!("  {cell:>width$}"));
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}
