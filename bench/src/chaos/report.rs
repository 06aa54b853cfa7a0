//! The printed report: the run (requests, failed attempts, faults, duplicates absorbed, how
//! the consultations ended), then the invariants, each with its count and verdict, then every
//! breach.

use std::collections::BTreeMap;

use super::faults::Injected;
use super::invariants::Check;
use super::ledger::{Kind, Ledger};
use crate::report::Table;

/// Breaches printed per invariant; the rest are counted.
const SHOWN_BREACHES: usize = 20;

/// What the duplicates table says, from HAP's metrics and the store.
pub struct Duplicates {
    /// `hap_publisher_published_total` over every publisher incarnation.
    pub published: u64,
    pub events: u64,
    /// `hap_saga_steps_total{outcome="retried"}`.
    pub saga_steps_retried: u64,
    /// `hap_messages_retried_total`.
    pub messages_retried: u64,
}

pub struct Report<'a> {
    pub ledger: &'a Ledger,
    pub attempt_failures: &'a BTreeMap<String, u64>,
    pub injected: &'a Injected,
    pub duplicates: Duplicates,
    /// Consultations by final status (`failed` split by reason).
    pub outcomes: BTreeMap<String, usize>,
    pub checks: &'a [Check],
}

impl Report<'_> {
    pub fn print(&self) {
        self.requests();
        self.faults();
        self.duplicates();
        let mut outcomes = Table::new(["consultations (from the store)", "count"]);
        for (status, count) in &self.outcomes {
            outcomes.row(vec![status.clone(), count.to_string()]);
        }
        println!();
        print!("{outcomes}");
        self.invariants();
    }

    fn requests(&self) {
        let mut table = Table::new([
            "request",
            "sent",
            "2xx",
            "refused (status × count)",
            "retried",
            "unanswered",
        ]);
        for kind in Kind::ALL {
            let Some(stats) = self.ledger.by_kind.get(&kind) else {
                continue;
            };
            let refused: Vec<String> = stats
                .refused
                .iter()
                .map(|(status, count)| format!("{status}×{count}"))
                .collect();
            table.row(vec![
                kind.route().to_owned(),
                stats.requests.to_string(),
                stats.accepted.to_string(),
                if refused.is_empty() {
                    "-".to_owned()
                } else {
                    refused.join(" ")
                },
                stats.retried.to_string(),
                stats.unanswered.to_string(),
            ]);
        }
        let polls: Vec<String> = self
            .ledger
            .queries
            .iter()
            .map(|(status, count)| format!("{status}×{count}"))
            .collect();
        table.row(vec![
            "GET /consultations?status=scheduled".to_owned(),
            self.ledger.queries.values().sum::<u64>().to_string(),
            self.ledger
                .queries
                .get("200")
                .copied()
                .unwrap_or(0)
                .to_string(),
            polls.join(" "),
            "-".to_owned(),
            "-".to_owned(),
        ]);
        println!();
        print!("{table}");
        let mut failures = Table::new(["failed attempt (sent again, same key)", "count"]);
        for (why, count) in self.attempt_failures {
            failures.row(vec![why.clone(), count.to_string()]);
        }
        println!();
        print!("{failures}");
    }

    fn faults(&self) {
        let mut table = Table::new(["fault injected", "count"]);
        for (kind, count) in &self.injected.by_kind {
            table.row(vec![kind.clone(), count.to_string()]);
        }
        table.row(vec![
            "processes that exited by themselves".to_owned(),
            self.injected.unexpected_exits.len().to_string(),
        ]);
        println!();
        print!("{table}");
        for exit in &self.injected.unexpected_exits {
            println!("  {exit}");
        }
    }

    fn duplicates(&self) {
        let d = &self.duplicates;
        let resent: u64 = self.ledger.by_kind.values().map(|k| k.retried).sum();
        let mut table = Table::new(["duplicates absorbed", "count"]);
        table.row(vec![
            "commands sent again with their key after no answer or a 5xx".to_owned(),
            resent.to_string(),
        ]);
        table.row(vec![
            "accepted commands repeated with their key (answered from the stored response)"
                .to_owned(),
            self.ledger.replays.to_string(),
        ]);
        table.row(vec![
            "messages published again (confirmed ≥ published − stored events)".to_owned(),
            format!("≥ {}", d.published.saturating_sub(d.events)),
        ]);
        table.row(vec![
            "saga steps retried (hap_saga_steps_total, outcome retried)".to_owned(),
            format!("≥ {}", d.saga_steps_retried),
        ]);
        table.row(vec![
            "messages sent to a retry queue (hap_messages_retried_total)".to_owned(),
            format!("≥ {}", d.messages_retried),
        ]);
        println!();
        print!("{table}");
        println!(
            "(≥: HAP's counters summed over every process run; a killed process's last second \
             is lost)"
        );
    }

    fn invariants(&self) {
        let mut table = Table::new(["invariant", "checked", "violations", "result"]);
        for check in self.checks {
            table.row(vec![
                check.name.clone(),
                check.checked.to_string(),
                check.breaches.len().to_string(),
                if check.holds() { "ok" } else { "VIOLATED" }.to_owned(),
            ]);
        }
        println!();
        print!("{table}");
        for check in self.checks.iter().filter(|c| !c.holds()) {
            println!();
            println!("VIOLATED: {}", check.name);
            for breach in check.breaches.iter().take(SHOWN_BREACHES) {
                println!("  {breach}");
            }
            if check.breaches.len() > SHOWN_BREACHES {
                println!("  … and {} more", check.breaches.len() - SHOWN_BREACHES);
            }
        }
    }
}
