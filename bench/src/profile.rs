//! `--profile`: a CPU flame graph of each timed HAP run (and, over the whole machine, of the
//! raw baselines), written as an SVG.
//!
//! Two scopes. `--profile` (the process) shows where HAP's own time goes;
//! `--profile=machine` shows what the whole machine did meanwhile (PostgreSQL, RabbitMQ, the
//! kernel, idle time), which is what tells whether a run was held back by HAP or by the
//! services it waits for.
//!
//! **The process.** Every subcommand but `chaos` runs HAP's pieces inside the bench's own
//! process (see [`crate::system`]), so the process to profile is this one. `perf record -p`
//! on it is used rather than an in-process sampler (pprof-rs): it records nothing outside the
//! window it is started and stopped around, costs the process nothing but the sampling itself,
//! and sees every thread, the blocking pool's included (where a rebuild decodes its pages).
//! Raw runs happen outside the window, so their baselines are not in the graph. What it does contain
//! beside HAP is the load driver of the same process (the HTTP client of `append` and `e2e`):
//! its frames are `reqwest`'s and `hap_bench`'s, and they are the part to look past.
//! PostgreSQL and RabbitMQ run in other processes and are not in the graph either.
//!
//! Stacks are unwound from DWARF call-frame information (`--call-graph dwarf`): Rust's
//! standard library and most crates are compiled without frame pointers, and a frame-pointer
//! walk through them gives truncated, misattributed stacks. The recording is folded with
//! `inferno`, `perf`'s own symbol names kept as they are (demangled Rust paths). Copying a
//! deep stack at every sample costs the process enough to slow a broker-bound run severalfold
//! (a publish ran at 0.32 of its baseline profiled, 0.91 not): read rates from runs without it.
//!
//! **The machine.** `perf record -a` samples every CPU at a lower rate, unwinding by frame
//! pointers, which costs the run little. Each stack's root is the process it ran in (its
//! name as `/proc` gives it, `postgres`, `beam.smp`, `hap-bench`, `swapper` for idle CPUs),
//! so the widths at the root are the machine's time per process. The leaf functions are
//! exact; call chains through code built without frame pointers (most Rust, PostgreSQL as
//! Debian builds it) are cut short. At this scope the raw baselines of `append`, `publish`,
//! `project` and `rebuild` are recorded too (`<subcommand>-raw-…`): side by side with HAP's,
//! the two graphs show what HAP's run kept busy that the baseline's did not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::load::Timeline;

/// Samples per second and thread: an odd rate, so it does not run in step with timers.
const FREQUENCY: &str = "999";
/// Samples per second and CPU over the whole machine: enough for a few thousand samples per
/// second on two cores, few enough not to weigh on the run.
const MACHINE_FREQUENCY: &str = "499";
/// Unwinding from DWARF with the most stack `perf` copies per sample (65,528 bytes). A
/// request's stack through axum, tower and tokio is deep, and with 32 KiB a debug build's
/// stacks were cut off before their thread's start in half the samples.
const STACK_UNWINDING: &str = "dwarf,65528";
/// How long `perf record` may take to attach before the run starts anyway.
const ATTACH_LIMIT: Duration = Duration::from_secs(5);

/// What `--profile` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    /// The bench's process, where HAP runs, with full call chains.
    Process,
    /// Every process of the machine, each stack under its process's name.
    Machine,
}

/// Where the flame graphs go, which subcommand they are of and what they record, set once by
/// `main` when `--profile` is given.
struct Settings {
    directory: PathBuf,
    subcommand: &'static str,
    scope: Scope,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Turns profiling of `scope` on for `subcommand`, writing into `directory`; fails at once,
/// before any setup, if `perf` cannot record here.
pub async fn enable(
    subcommand: &'static str,
    scope: Scope,
    directory: PathBuf,
) -> anyhow::Result<()> {
    check_perf(scope).await?;
    std::fs::create_dir_all(&directory)
        .with_context(|| format!("Failed to create {}", directory.display()))?;
    // Set once, by `main`; the first value stands.
    let _ = SETTINGS.set(Settings {
        directory,
        subcommand,
        scope,
    });
    Ok(())
}

impl Scope {
    /// What is recorded, for messages.
    fn what(self) -> &'static str {
        match self {
            Self::Process => "this process",
            Self::Machine => "the whole machine",
        }
    }

    /// What `perf record` is told to sample, and how to unwind each sample's stack.
    fn record_args(self) -> Vec<String> {
        let args: &[&str] = match self {
            Self::Process => &["-F", FREQUENCY, "--call-graph", STACK_UNWINDING, "-p"],
            // A clock, not `cycles`: an idle CPU is sampled too (as `swapper`), so the samples
            // add up to the machine's time, idle included, on a VM as on bare metal.
            Self::Machine => &["-e", "cpu-clock", "-F", MACHINE_FREQUENCY, "-a", "-g"],
        };
        let mut args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        if self == Self::Process {
            args.push(std::process::id().to_string());
        }
        args
    }

    /// The fields `perf script` prints beyond its defaults: the machine's folding needs each
    /// sample's pid, to name its process.
    fn script_args(self) -> &'static [&'static str] {
        match self {
            Self::Process => &[],
            Self::Machine => &["-F", "comm,pid,tid,time,event,ip,sym,dso"],
        }
    }

    /// The machine's processes by pid now, for naming the samples (none at process scope).
    fn process_names(self) -> HashMap<u32, String> {
        match self {
            Self::Process => HashMap::new(),
            Self::Machine => process_names(),
        }
    }

    /// The highest `kernel.perf_event_paranoid` at which a user other than root may record
    /// it: their own process's code, the kernel's side included, at 1; every CPU's events at 0.
    fn paranoid_limit(self) -> i32 {
        match self {
            Self::Process => 1,
            Self::Machine => 0,
        }
    }
}

/// Whether `perf` is installed and allowed to record `scope`.
async fn check_perf(scope: Scope) -> anyhow::Result<()> {
    let version = Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if !version.is_ok_and(|status| status.success()) {
        bail!(
            "--profile needs `perf`, which is not installed (Debian: apt-get install \
             linux-perf; Ubuntu: linux-tools-$(uname -r))"
        );
    }
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|level| level.trim().parse::<i32>().ok());
    // Root records whatever the level.
    let allowed = scope.paranoid_limit();
    if !nix::unistd::geteuid().is_root() && paranoid.is_some_and(|level| level > allowed) {
        bail!(
            "--profile: kernel.perf_event_paranoid is {}, which keeps `perf` from recording \
             {}; set it to {allowed} or lower (sudo sysctl kernel.perf_event_paranoid={allowed}) \
             or run as root",
            paranoid.unwrap_or_default(),
            scope.what()
        );
    }
    Ok(())
}

/// One timed run being recorded, or nothing when `--profile` was not given.
pub struct Profile(Option<Recording>);

struct Recording {
    perf: Child,
    scope: Scope,
    /// The machine's processes by pid when the recording started (`Scope::Machine`), for
    /// the ones that end before it does.
    names: HashMap<u32, String>,
    /// Holds `perf.data`: a directory of its own, since `perf` renames a file it would
    /// overwrite rather than reuse it.
    data: tempfile::TempDir,
    svg: PathBuf,
    title: String,
}

impl Profile {
    /// Starts recording the run `run` (a word for the file name, such as `hap`).
    pub async fn start(run: &str) -> anyhow::Result<Self> {
        let Some(settings) = SETTINGS.get() else {
            return Ok(Self(None));
        };
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
        let name = format!("{}-{run}-{stamp}", settings.subcommand);
        let data = tempfile::Builder::new()
            .prefix("hap-bench-perf-")
            .tempdir()
            .context("Failed to create the directory perf records into")?;
        let file = data.path().join("perf.data");
        let names = settings.scope.process_names();
        let mut perf = Command::new("perf")
            .args(["record", "--quiet"])
            .args(settings.scope.record_args())
            .arg("-o")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("Failed to start perf record")?;
        wait_attached(&mut perf, &file, settings.scope).await?;
        Ok(Self(Some(Recording {
            perf,
            scope: settings.scope,
            names,
            data,
            svg: settings.directory.join(format!("{name}.svg")),
            title: format!("hap-bench {} · {run}", settings.subcommand),
        })))
    }

    /// Stops recording and writes the flame graph; prints where.
    pub async fn finish(self) -> anyhow::Result<()> {
        let Some(recording) = self.0 else {
            return Ok(());
        };
        let pid = recording
            .perf
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .context("perf record ended before the run did")?;
        // SIGINT is how perf is told to stop and write out what it recorded.
        kill(Pid::from_raw(pid), Signal::SIGINT).context("Failed to stop perf record")?;
        let stopped = recording
            .perf
            .wait_with_output()
            .await
            .context("Failed to wait for perf record")?;
        // Once it has written its data, perf ends itself by the signal it was stopped with.
        let interrupted = {
            use std::os::unix::process::ExitStatusExt;
            stopped.status.signal() == Some(Signal::SIGINT as i32)
        };
        if !(stopped.status.success() || interrupted) {
            bail!(
                "perf record failed ({}): {}",
                stopped.status,
                String::from_utf8_lossy(&stopped.stderr).trim()
            );
        }
        eprintln!("profile: folding the recording into a flame graph…");
        let mut names = recording.names;
        names.extend(recording.scope.process_names());
        let script = Command::new("perf")
            // Inlined frames come from the line tables, which makes `perf script` many times
            // slower; the functions they are inlined into are shown all the same.
            .args(["script", "--no-inline"])
            .args(recording.scope.script_args())
            .arg("-i")
            .arg(recording.data.path().join("perf.data"))
            .stderr(Stdio::null())
            .output()
            .await
            .context("Failed to run perf script")?;
        if !script.status.success() {
            bail!("perf script failed on {}", recording.data.path().display());
        }
        let (svg, title, scope) = (recording.svg, recording.title, recording.scope);
        let written = svg.clone();
        let drawn = tokio::task::spawn_blocking(move || {
            let folded = match scope {
                Scope::Process => fold_process(&script.stdout)?,
                Scope::Machine => fold_machine(&String::from_utf8_lossy(&script.stdout), &names),
            };
            // A run over before the first sample (a raw drain of a few thousand messages) has
            // its figures all the same: no graph is no reason to fail it.
            if folded.is_empty() {
                return Ok(false);
            }
            flame_graph(&folded, &svg, title).map(|()| true)
        })
        .await
        .context("Folding the recording panicked")??;
        if drawn {
            eprintln!("profile: flame graph written to {}", written.display());
        } else {
            eprintln!(
                "profile: perf took no sample of so short a run; no flame graph for {}",
                written.display()
            );
        }
        Ok(())
    }

    /// Starts recording a raw baseline's run `run`: over the whole machine only, where its
    /// graph beside HAP's shows what each run kept busy (and what the baseline never does); a
    /// graph of the bench's process alone would hold nothing but its load driver.
    pub async fn start_baseline(run: &str) -> anyhow::Result<Self> {
        if SETTINGS.get().is_some_and(|s| s.scope == Scope::Machine) {
            Self::start(run).await
        } else {
            Ok(Self(None))
        }
    }

    /// Records the measured window of `timeline` (after its warm-up) in the background.
    pub fn over(run: &'static str, timeline: Timeline) -> Window {
        Self::window(run, timeline, false)
    }

    /// Records a raw baseline's measured window, as [`Self::start_baseline`] would.
    pub fn over_baseline(run: &'static str, timeline: Timeline) -> Window {
        Self::window(run, timeline, true)
    }

    fn window(run: &'static str, timeline: Timeline, baseline: bool) -> Window {
        Window(tokio::spawn(async move {
            tokio::time::sleep_until(timeline.measure_from.into()).await;
            let profile = if baseline {
                Self::start_baseline(run).await?
            } else {
                Self::start(run).await?
            };
            tokio::time::sleep_until(timeline.until.into()).await;
            profile.finish().await
        }))
    }
}

/// A measured window being recorded in the background.
pub struct Window(JoinHandle<anyhow::Result<()>>);

impl Window {
    /// Waits until the window's flame graph is written.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.0.await.context("The profiler panicked")?
    }
}

/// Waits until `perf` has opened its output file, a sign that it is attached and sampling;
/// fails with its own message if it gave up instead.
async fn wait_attached(perf: &mut Child, data: &Path, scope: Scope) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    while started.elapsed() < ATTACH_LIMIT {
        if let Some(status) = perf.try_wait().context("Failed to watch perf record")? {
            let mut message = String::new();
            if let Some(mut stderr) = perf.stderr.take() {
                use tokio::io::AsyncReadExt;
                stderr.read_to_string(&mut message).await.ok();
            }
            let allowed = scope.paranoid_limit();
            bail!(
                "perf record could not profile {} ({status}): {}; as a user other than root, \
                 set kernel.perf_event_paranoid to {allowed} or lower \
                 (sudo sysctl kernel.perf_event_paranoid={allowed})",
                scope.what(),
                message.trim()
            );
        }
        if std::fs::metadata(data).is_ok_and(|m| m.len() > 0) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Folds `perf script`'s output of one process into stacks, one line per stack with its count.
fn fold_process(script: &[u8]) -> anyhow::Result<Vec<u8>> {
    use inferno::collapse::Collapse;
    let mut folded = Vec::new();
    inferno::collapse::perf::Folder::from(inferno::collapse::perf::Options::default())
        .collapse(script, &mut folded)
        .context("Failed to fold perf's stacks")?;
    Ok(folded)
}

/// The name of every process running now, by pid (`/proc/<pid>/comm`: a process's name is
/// its main thread's).
fn process_names() -> HashMap<u32, String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid = entry.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            Some((pid, name.trim().to_owned()))
        })
        .collect()
}

/// Folds `perf script`'s output of the whole machine (fields `comm,pid,tid,time,event,ip,sym,dso`,
/// leaf frame first) into `process;user function;kernel frames…` stacks: the process by its
/// name in `names` (its thread's name where the process is gone), then the user-space
/// function that was running or made the system call, then the kernel's frames from its entry
/// down. User-space frames above the first are dropped: unwound by frame pointers through code
/// built without them, they are mostly wrong.
fn fold_machine(script: &str, names: &HashMap<u32, String>) -> Vec<u8> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut lines = script.lines().peekable();
    while let Some(header) = lines.next() {
        if header.trim().is_empty() || header.starts_with(char::is_whitespace) {
            continue;
        }
        let process = sample_process(header, names);
        let mut kernel = Vec::new();
        let mut user = None;
        while let Some(frame) = lines.next_if(|line| line.starts_with(char::is_whitespace)) {
            let Some((address, function, object)) = frame_parts(frame) else {
                continue;
            };
            // The kernel's half of the address space, whatever object perf names (the kernel
            // itself, a module, a BPF program).
            let in_kernel = address.len() == 16 && address.starts_with("ffff");
            if in_kernel {
                if user.is_none() {
                    kernel.push(function);
                }
            } else if user.is_none() {
                user = Some(if function == "[unknown]" {
                    format!("[{}]", object.rsplit('/').next().unwrap_or(object))
                } else {
                    function.to_owned()
                });
            }
        }
        let mut stack = process;
        // A sample taken in the kernel on behalf of no user code (an idle CPU, a kernel thread).
        stack.push(';');
        stack.push_str(user.as_deref().unwrap_or("[kernel]"));
        for function in kernel.iter().rev() {
            stack.push(';');
            stack.push_str(function);
        }
        *counts.entry(stack).or_default() += 1;
    }
    let mut folded: Vec<_> = counts.into_iter().collect();
    folded.sort();
    folded
        .into_iter()
        .flat_map(|(stack, count)| format!("{stack} {count}\n").into_bytes())
        .collect()
}

/// The name of the process a sample's header line (`comm pid/tid time: event:`) names; `;`
/// and spaces, which separate frames and counts in a folded line, become `_`.
fn sample_process(header: &str, names: &HashMap<u32, String>) -> String {
    let words: Vec<&str> = header.split_whitespace().collect();
    let ids = words.iter().position(|word| {
        word.split_once('/').is_some_and(|(pid, tid)| {
            [pid, tid]
                .iter()
                .all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        })
    });
    let (thread, pid) = match ids {
        Some(at) => (
            words[..at].join(" "),
            words[at]
                .split_once('/')
                .and_then(|(pid, _)| pid.parse().ok()),
        ),
        None => (words.first().copied().unwrap_or("?").to_owned(), None),
    };
    let name = pid.and_then(|pid: u32| names.get(&pid)).unwrap_or(&thread);
    name.replace([';', ' '], "_")
}

/// A frame line's address, function and object (`\t  addr function (object)`); `;`, which
/// separates frames in a folded line, becomes `:`. An object whose file is gone is named
/// without perf's ` (deleted)` (RabbitMQ's compiled code lives in such a file).
fn frame_parts(line: &str) -> Option<(&str, String, &str)> {
    let (address, rest) = line.trim().split_once(char::is_whitespace)?;
    let rest = rest.trim();
    let rest = rest
        .strip_suffix(" (deleted))")
        .unwrap_or(rest.strip_suffix(')')?);
    let (function, object) = rest.rsplit_once(" (")?;
    Some((address, function.replace(';', ":"), object))
}

/// Draws folded stacks (at least one) into `svg`.
fn flame_graph(folded: &[u8], svg: &Path, title: String) -> anyhow::Result<()> {
    let mut options = inferno::flamegraph::Options::default();
    options.title = title;
    let file = std::fs::File::create(svg)
        .with_context(|| format!("Failed to create {}", svg.display()))?;
    inferno::flamegraph::from_reader(&mut options, folded, std::io::BufWriter::new(file))
        .context("Failed to draw the flame graph")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "\
postgres 4100/4100   161.927015: cpu-clock:ppp: 
\t ffffffff8a010000 copy_user_generic ([kernel.kallsyms])
\t ffffffff8a020000 do_syscall_64 ([kernel.kallsyms])
\t     55d0a1 XLogInsertRecord (/usr/lib/postgresql/15/bin/postgres)
\t     55d0a2 [unknown] ([unknown])

tokio-runtime-w 4200/4207   161.928015: cpu-clock:ppp: 
\t     7f0001 [unknown] (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t     7f0002 hap::handler<a;b> (/work/target/release/hap-bench)

swapper     0/0   161.929015: cpu-clock:ppp: 
\t ffffffff8a030000 default_idle ([kernel.kallsyms])
\t ffffffff8a040000 cpu_startup_entry ([kernel.kallsyms])

tokio-runtime-w 4200/4207   161.930015: cpu-clock:ppp: 
\t     7f0001 [unknown] (/usr/lib/x86_64-linux-gnu/libc.so.6)

1_scheduler 3900/3911   161.931015: cpu-clock:ppp: 
\t ffffffffc0a10000 virtnet_poll ([virtio_net])
\t ffffffff8a050000 __napi_poll ([kernel.kallsyms])
\t     7f3001 [unknown] (/memfd:vmem (deleted))

";

    #[test]
    fn a_machine_recording_folds_into_process_user_function_and_kernel_frames() {
        let names = HashMap::from([
            (4200, "hap-bench".to_owned()),
            (3900, "beam.smp".to_owned()),
        ]);
        let folded = String::from_utf8(fold_machine(SCRIPT, &names)).unwrap();
        assert_eq!(
            folded.lines().collect::<Vec<_>>(),
            [
                "beam.smp;[memfd:vmem];__napi_poll;virtnet_poll 1",
                "hap-bench;[libc.so.6] 2",
                "postgres;XLogInsertRecord;do_syscall_64;copy_user_generic 1",
                "swapper;[kernel];cpu_startup_entry;default_idle 1",
            ]
        );
    }

    #[test]
    fn a_process_gone_before_the_recording_ended_keeps_its_threads_name() {
        let header = "lto cgu.11  9206/9472    161.927015: cpu-clock:ppp:";
        assert_eq!(sample_process(header, &HashMap::new()), "lto_cgu.11");
        let names = HashMap::from([(9206, "rustc".to_owned())]);
        assert_eq!(sample_process(header, &names), "rustc");
    }
}
