//! The faults of a run: a schedule drawn from the seed, and the injector that follows it,
//! one fault at a time, printing each as it happens.
//!
//! Every process is killed with SIGKILL at least once, and every fault the servers offer is
//! injected at least once; when the window leaves room, more faults drawn from the same kinds
//! follow. A killed process is started again after a pause of one to two seconds (drawn from
//! the seed too). Between faults the injector also watches for processes that exit by
//! themselves: such an exit is a finding, reported, and the process is started again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use super::processes::{Cluster, Hap};
use super::services::{ServiceFault, Services};

/// Faults are this far apart on average when the window has room for more than the required
/// ones.
const MEAN_GAP: Duration = Duration::from_secs(4);
/// How long a killed process or a stopped server stays down, at least and at most, in ms.
const PAUSE_MS: std::ops::RangeInclusive<u64> = 1_000..=2_000;
/// How often the injector looks for processes that exited by themselves.
const WATCH: Duration = Duration::from_secs(1);
/// Attempts to start a killed process again before the run fails.
const RESTART_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the cluster's process at this index, then a restart.
    Kill(usize),
    Service(ServiceFault),
}

/// A fault with when it is due (from the start of the workload) and how long what it stops
/// stays down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub at: Duration,
    pub fault: Fault,
    pub pause: Duration,
    /// One of the faults every run injects (each process killed, each server fault); the
    /// others fill the window, and are left out when the run falls behind its schedule.
    pub required: bool,
}

/// The schedule for `seed`: every process of `processes` killed once and every one of
/// `services` injected once, in an order drawn from the seed, then as many more drawn faults
/// as fit `window` at [`MEAN_GAP`]; spread over the window, each at a drawn point of its share
/// of it.
pub fn plan(
    seed: u64,
    processes: usize,
    services: &[ServiceFault],
    window: std::ops::Range<Duration>,
) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let kinds: Vec<Fault> = (0..processes)
        .map(Fault::Kill)
        .chain(services.iter().copied().map(Fault::Service))
        .collect();
    let mut faults = kinds.clone();
    faults.shuffle(&mut rng);
    let required = faults.len();
    let length = window.end.saturating_sub(window.start);
    let room = (length.as_millis() / MEAN_GAP.as_millis().max(1)) as usize;
    while faults.len() < room {
        faults.push(kinds[rng.random_range(0..kinds.len())]);
    }
    let share = length / u32::try_from(faults.len().max(1)).unwrap_or(u32::MAX);
    faults
        .into_iter()
        .enumerate()
        .map(|(i, fault)| {
            let offset_ms = rng.random_range(0..=(share.as_millis() as u64 / 2));
            Planned {
                at: window.start + share * i as u32 + Duration::from_millis(offset_ms),
                fault,
                pause: Duration::from_millis(rng.random_range(PAUSE_MS)),
                required: i < required,
            }
        })
        .collect()
}

/// What the injector did, for the report.
#[derive(Debug, Default)]
pub struct Injected {
    /// Faults injected, by kind (`kill -9 saga`, a server fault's name).
    pub by_kind: BTreeMap<String, u64>,
    /// Processes that exited without being killed, with how they exited.
    pub unexpected_exits: Vec<String>,
}

/// Follows a schedule on a running cluster.
pub struct Injector<'a> {
    pub cluster: &'a mut Cluster,
    pub hap: &'a Hap,
    pub services: &'a Services,
    /// The run's database and exchange prefix, which the server faults aim at.
    pub database: &'a str,
    pub prefix: &'a str,
    /// When the workload started: the schedule's zero, and the clock of the printed log.
    pub started: Instant,
}

impl Injector<'_> {
    /// Injects the `plan`'s faults at their times, then keeps watching the processes until
    /// `until` (from the start). A fault that is not required is left out when the run is
    /// behind its schedule (some faults, a broker node's restart, take seconds) or it would
    /// reach into the calm from `calm_from` on.
    pub async fn run(
        &mut self,
        plan: &[Planned],
        calm_from: Duration,
        until: Duration,
    ) -> anyhow::Result<Injected> {
        let mut injected = Injected::default();
        let mut left_out = 0;
        for planned in plan {
            let now = self.started.elapsed();
            if !planned.required && (now > planned.at + MEAN_GAP || now + planned.pause > calm_from)
            {
                left_out += 1;
                continue;
            }
            self.watch_until(planned.at, &mut injected).await?;
            let kind = self.inject(planned).await?;
            *injected.by_kind.entry(kind).or_default() += 1;
        }
        if left_out > 0 {
            say(
                self.started,
                &format!("left out {left_out} of the extra faults: the run fell behind"),
            );
        }
        if self.started.elapsed() > calm_from {
            say(
                self.started,
                "the required faults ran into the calm: it is shorter than asked",
            );
        }
        self.watch_until(until, &mut injected).await?;
        Ok(injected)
    }

    /// Injects one fault and undoes it after its pause; returns its kind.
    async fn inject(&mut self, planned: &Planned) -> anyhow::Result<String> {
        match planned.fault {
            Fault::Kill(index) => {
                let process = &mut self.cluster.processes[index];
                let pid = process.pid().unwrap_or(0);
                let kind = format!("kill -9 {}", process.role);
                process.kill().await?;
                let name = process.name.clone();
                say(self.started, &format!("kill -9 {name} (pid {pid})"));
                tokio::time::sleep(planned.pause).await;
                self.restart(index).await?;
                Ok(kind)
            }
            Fault::Service(fault) => {
                // Printed with the time it began: some faults take a while to inject.
                let began = self.started.elapsed();
                let done = self
                    .services
                    .inject(fault, self.database, self.prefix)
                    .await
                    .with_context(|| format!("Failed to inject: {}", fault.name()))?;
                eprintln!("[{:6.1} s] {}: {done}", began.as_secs_f64(), fault.name());
                tokio::time::sleep(planned.pause).await;
                if let Some(done) = self.services.recover(fault).await? {
                    say(self.started, &done);
                }
                Ok(fault.name())
            }
        }
    }

    /// Starts the process at `index` again, trying a few times.
    async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let mut attempt = 1;
        loop {
            let process = &mut self.cluster.processes[index];
            match process.start(self.hap).await {
                Ok(address) => {
                    let (name, pid) = (process.name.clone(), process.pid().unwrap_or(0));
                    say(
                        self.started,
                        &format!("{name} started again on {address} (pid {pid})"),
                    );
                    return Ok(());
                }
                Err(error) if attempt < RESTART_ATTEMPTS => {
                    say(
                        self.started,
                        &format!("{} did not start: {error:#}", process.name),
                    );
                    attempt += 1;
                    tokio::time::sleep(WATCH).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Until `at` (from the start), checks every [`WATCH`] for processes that exited by
    /// themselves, and starts them again.
    async fn watch_until(&mut self, at: Duration, injected: &mut Injected) -> anyhow::Result<()> {
        loop {
            for index in 0..self.cluster.processes.len() {
                let process = &mut self.cluster.processes[index];
                if let Some(status) = process.exited() {
                    let what = format!("{} exited by itself ({status})", process.name);
                    say(self.started, &what);
                    injected.unexpected_exits.push(what);
                    self.cluster.processes[index].kill().await?;
                    self.restart(index).await?;
                }
            }
            let left = at.saturating_sub(self.started.elapsed());
            if left.is_zero() {
                return Ok(());
            }
            tokio::time::sleep(left.min(WATCH)).await;
        }
    }
}

/// Prints `what` with the time since `started`.
fn say(started: Instant, what: &str) {
    eprintln!("[{:6.1} s] {what}", started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: std::ops::Range<Duration> = Duration::from_secs(2)..Duration::from_secs(30);

    #[test]
    fn a_plan_kills_every_process_and_injects_every_server_fault_within_the_window() {
        let services = [
            ServiceFault::DatabaseConnectionsDropped,
            ServiceFault::BrokerConnectionsDropped,
        ];
        let plan = plan(7, 8, &services, WINDOW);
        for index in 0..8 {
            assert!(plan.iter().any(|p| p.fault == Fault::Kill(index)));
        }
        for fault in services {
            assert!(plan.iter().any(|p| p.fault == Fault::Service(fault)));
        }
        assert!(plan.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(plan.iter().all(|p| WINDOW.contains(&p.at)));
        // The required ones come first, so that falling behind leaves out only extras.
        let required = plan.iter().take_while(|p| p.required).count();
        assert_eq!(required, 8 + services.len());
        assert!(plan[required..].iter().all(|p| !p.required));
    }

    #[test]
    fn the_same_seed_gives_the_same_plan_and_another_seed_another() {
        let services = [ServiceFault::BrokerConnectionsDropped];
        assert_eq!(plan(1, 8, &services, WINDOW), plan(1, 8, &services, WINDOW));
        assert_ne!(plan(1, 8, &services, WINDOW), plan(2, 8, &services, WINDOW));
    }
}
