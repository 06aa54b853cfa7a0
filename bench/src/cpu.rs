//! How busy the machine was during a measured window, and which processes kept it busy: on
//! two cores, HAP shares the CPU with PostgreSQL, RabbitMQ and the load generator, and a run
//! whose machine is near 100 % busy measures queueing for a CPU more than HAP itself.
//!
//! Read from `/proc` (Linux); elsewhere the figures are left out.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How busy the whole machine was during a measured window, as fractions of all its cores:
/// every process on it, then the share of the processes that matter here. Near 1, the run was
/// limited by CPU and its latencies are mostly queueing; steal is time the hypervisor gave to
/// other machines, which shows a noisy neighbour.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    pub busy: f64,
    pub steal: f64,
    /// `None` for a group none of whose processes could be seen (PostgreSQL on another host,
    /// or a `/proc` that hides other users' processes).
    pub by_group: Groups<Option<f64>>,
}

impl std::fmt::Display for MachineCpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} / {:.0}", self.busy * 100.0, self.steal * 100.0)
    }
}

impl MachineCpu {
    /// The shares of PostgreSQL, RabbitMQ and this process (HAP and the load generator), in
    /// percent of the machine: `41 / 18 / 33`, with `?` for a group not seen.
    pub fn by_process(&self) -> String {
        let Groups {
            postgres,
            rabbitmq,
            bench,
        } = self.by_group;
        let percent =
            |share: Option<f64>| share.map_or("?".to_owned(), |s| format!("{:.0}", s * 100.0));
        format!(
            "{} / {} / {}",
            percent(postgres),
            percent(rabbitmq),
            percent(bench)
        )
    }
}

/// Something counted for each group of processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Groups<T> {
    pub postgres: T,
    pub rabbitmq: T,
    /// This process: HAP's pieces and the load generator, or the raw run's client.
    pub bench: T,
}

/// The machine's CPU counters from when a window opened; `None` where `/proc/stat` cannot be
/// read (not Linux).
pub struct CpuWindow(Option<Ticks>);

impl CpuWindow {
    pub fn open() -> Self {
        Self(Ticks::read())
    }

    /// How busy the machine was since the window opened.
    pub fn close(self) -> Option<MachineCpu> {
        let (before, after) = (self.0?, Ticks::read()?);
        let total = (after.machine.total - before.machine.total) as f64;
        let mut spent = Groups::<Option<u64>>::default();
        for (pid, (group, ticks)) in &after.processes {
            // A process started during the window counts from its start.
            let earlier = before.processes.get(pid).map_or(0, |(_, t)| *t);
            *spent.of(*group).get_or_insert(0) += ticks.saturating_sub(earlier);
        }
        // A process that ended during the window (a database connection closed) is in its
        // parent's children's time now, the whole of its life: take off what it had spent
        // before the window.
        for (pid, (group, ticks)) in &before.processes {
            if !after.processes.contains_key(pid) {
                let spent = spent.of(*group).get_or_insert(0);
                *spent = spent.saturating_sub(*ticks);
            }
        }
        let share = |ticks: u64| ticks as f64 / total;
        (total > 0.0).then(|| MachineCpu {
            busy: share(after.machine.busy - before.machine.busy),
            steal: share(after.machine.steal - before.machine.steal),
            by_group: Groups {
                postgres: spent.postgres.map(share),
                rabbitmq: spent.rabbitmq.map(share),
                bench: spent.bench.map(share),
            },
        })
    }
}

/// Machine busy below which it counts as quiet (the idle services' own ticking stays under it).
const QUIET: f64 = 0.15;
/// The window over which quiet is judged.
const QUIET_WINDOW: Duration = Duration::from_millis(500);
/// Quiet windows in a row that count as settled: the broker's flush may start a moment after
/// the publishing it follows ended.
const QUIET_WINDOWS: u32 = 4;
/// How long a run waits for quiet at most before it starts anyway, unless `--settle-limit`
/// says otherwise.
pub const SETTLE_LIMIT_SECS: u64 = 60;

/// `--settle-limit`, set once by `main` before any run.
static SETTLE_LIMIT_SET: OnceLock<Duration> = OnceLock::new();

/// Sets how long [`settle`] waits at most; zero starts every run at once (the bench's own
/// smoke tests, which run on a machine busy with the rest of the suite).
pub fn set_settle_limit(limit: Duration) {
    // Set once, by `main`; a second call would be a bug, and the first value stands.
    let _ = SETTLE_LIMIT_SET.set(limit);
}

/// Waits until the machine has been quiet for a while, so that the work a setup leaves behind
/// is not charged to the run that follows it: RabbitMQ moves a backlog just published from its
/// log into its segment files for several seconds at a core's worth of CPU, and PostgreSQL
/// writes out what a bulk load dirtied. Says so when it waited longer than that, or gave up.
pub async fn settle() {
    let limit = SETTLE_LIMIT_SET
        .get()
        .copied()
        .unwrap_or(Duration::from_secs(SETTLE_LIMIT_SECS));
    if limit.is_zero() {
        return;
    }
    let started = Instant::now();
    let mut quiet = 0;
    while quiet < QUIET_WINDOWS {
        let window = CpuWindow::open();
        tokio::time::sleep(QUIET_WINDOW).await;
        let busy = window.close().map_or(0.0, |cpu| cpu.busy);
        quiet = if busy < QUIET { quiet + 1 } else { 0 };
        if started.elapsed() >= limit {
            eprintln!(
                "the machine is still {:.0} % busy after {} s: starting anyway",
                busy * 100.0,
                limit.as_secs()
            );
            return;
        }
    }
    let waited = started.elapsed();
    if waited > QUIET_WINDOW * (QUIET_WINDOWS + 1) {
        eprintln!(
            "waited {:.1} s for the machine to settle",
            waited.as_secs_f64()
        );
    }
}

/// One line saying how busy the machine was during a bench's HAP run and its raw run, and
/// who kept it busy.
pub fn machine_cpu(hap: Option<MachineCpu>, raw: Option<MachineCpu>) -> String {
    let shown = |cpu: Option<MachineCpu>| {
        cpu.map_or("?".to_owned(), |cpu| {
            format!(
                "{cpu} (PostgreSQL / RabbitMQ / hap-bench {})",
                cpu.by_process()
            )
        })
    };
    format!(
        "machine CPU busy / steal %: HAP run {}, raw run {} (busy near 100: the run was limited \
         by CPU; steal: the hypervisor gave CPU to other machines)",
        shown(hap),
        shown(raw)
    )
}

/// The counters at one moment: the machine's, and each process's CPU time.
struct Ticks {
    machine: MachineTicks,
    /// By process id: its group and its user + system time, in clock ticks.
    processes: HashMap<u32, (Group, u64)>,
}

impl Ticks {
    fn read() -> Option<Self> {
        Some(Self {
            machine: MachineTicks::read()?,
            processes: process_ticks(),
        })
    }
}

/// The machine-wide line of `/proc/stat`, in clock ticks since boot.
struct MachineTicks {
    busy: u64,
    steal: u64,
    total: u64,
}

impl MachineTicks {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        // user nice system idle iowait irq softirq steal (guest time is inside user already)
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks[..] else {
            return None;
        };
        Some(Self {
            busy: user + nice + system + irq + softirq,
            steal,
            total: user + nice + system + idle + iowait + irq + softirq + steal,
        })
    }
}

/// The group a process is counted in, if any.
#[derive(Debug, Clone, Copy)]
enum Group {
    Postgres,
    RabbitMq,
    Bench,
}

impl<T> Groups<T> {
    fn of(&mut self, group: Group) -> &mut T {
        match group {
            Group::Postgres => &mut self.postgres,
            Group::RabbitMq => &mut self.rabbitmq,
            Group::Bench => &mut self.bench,
        }
    }
}

/// The CPU time of every process of a group, by process id, with that of its children that
/// ended: PostgreSQL's server process collects each connection's backend as it ends, so a
/// backend that ended between two readings is still counted.
fn process_ticks() -> HashMap<u32, (Group, u64)> {
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state …`: the name may hold spaces and parentheses, so split at the
            // last one; utime and stime are the 14th and 15th fields.
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1;
            let group = if pid == own {
                Group::Bench
            } else if comm == "postgres" {
                Group::Postgres
            } else if matches!(
                comm,
                "beam.smp" | "erl_child_setup" | "epmd" | "inet_gethost"
            ) {
                Group::RabbitMq
            } else {
                return None;
            };
            let fields = rest.split_whitespace().skip(11);
            // utime, stime, then the same of the children waited for.
            let ticks = fields
                .take(4)
                .map(str::parse::<u64>)
                .sum::<Result<u64, _>>()
                .ok()?;
            Some((pid, (group, ticks)))
        })
        .collect()
}
