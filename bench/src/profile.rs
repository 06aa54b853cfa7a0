//! `--profile`: a CPU flame graph of HAP over each timed HAP run, written as an SVG.
//!
//! Every subcommand but `chaos` runs HAP's pieces inside the bench's own process (see
//! [`crate::system`]), so the process to profile is this one. `perf record -p` on it is used
//! rather than an in-process sampler (pprof-rs): it records nothing outside the window it is
//! started and stopped around, costs the process nothing but the sampling itself, and sees
//! every thread, the blocking pool's included (where a rebuild decodes its pages). Raw runs
//! happen outside the window, so their baselines are not in the graph. What it does contain
//! beside HAP is the load driver of the same process (the HTTP client of `append` and `e2e`):
//! its frames are `reqwest`'s and `hap_bench`'s, and they are the part to look past.
//! PostgreSQL and RabbitMQ run in other processes and are not in the graph either.
//!
//! Stacks are unwound from DWARF call-frame information (`--call-graph dwarf`): Rust's
//! standard library and most crates are compiled without frame pointers, and a frame-pointer
//! walk through them gives truncated, misattributed stacks. The recording is folded with
//! `inferno`, `perf`'s own symbol names kept as they are (demangled Rust paths).

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
/// Bytes of stack copied per sample for unwinding: the most `perf` copies. A request's stack
/// through axum, tower and tokio is deep, and with 32 KiB a debug build's stacks were cut off
/// before their thread's start in half the samples.
const STACK_BYTES: &str = "65528";
/// How long `perf record` may take to attach before the run starts anyway.
const ATTACH_LIMIT: Duration = Duration::from_secs(5);

/// Where the flame graphs go and which subcommand they are of, set once by `main` when
/// `--profile` is given.
struct Settings {
    directory: PathBuf,
    subcommand: &'static str,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Turns profiling on for `subcommand`, writing into `directory`; fails at once, before any
/// setup, if `perf` cannot record here.
pub async fn enable(subcommand: &'static str, directory: PathBuf) -> anyhow::Result<()> {
    check_perf().await?;
    std::fs::create_dir_all(&directory)
        .with_context(|| format!("Failed to create {}", directory.display()))?;
    // Set once, by `main`; the first value stands.
    let _ = SETTINGS.set(Settings {
        directory,
        subcommand,
    });
    Ok(())
}

/// Whether `perf` is installed and allowed to record this process.
async fn check_perf() -> anyhow::Result<()> {
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
    // Root records whatever the level; anyone else needs 2 or lower to profile their own
    // process's user-space code, and `perf` samples the kernel's side too unless told not to.
    if !nix::unistd::geteuid().is_root() && paranoid.is_some_and(|level| level > 1) {
        bail!(
            "--profile: kernel.perf_event_paranoid is {}, which keeps `perf` from recording \
             this process; set it to 1 or lower (sudo sysctl kernel.perf_event_paranoid=1) or \
             run as root",
            paranoid.unwrap_or_default()
        );
    }
    Ok(())
}

/// One timed run being recorded, or nothing when `--profile` was not given.
pub struct Profile(Option<Recording>);

struct Recording {
    perf: Child,
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
        let mut perf = Command::new("perf")
            .args(["record", "--quiet", "-F", FREQUENCY, "--call-graph"])
            .arg(format!("dwarf,{STACK_BYTES}"))
            .arg("-p")
            .arg(std::process::id().to_string())
            .arg("-o")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("Failed to start perf record")?;
        wait_attached(&mut perf, &file).await?;
        Ok(Self(Some(Recording {
            perf,
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
        let script = Command::new("perf")
            // Inlined frames come from the line tables, which makes `perf script` many times
            // slower; the functions they are inlined into are shown all the same.
            .args(["script", "--no-inline", "-i"])
            .arg(recording.data.path().join("perf.data"))
            .stderr(Stdio::null())
            .output()
            .await
            .context("Failed to run perf script")?;
        if !script.status.success() {
            bail!("perf script failed on {}", recording.data.path().display());
        }
        let (svg, title) = (recording.svg, recording.title);
        let written = svg.clone();
        tokio::task::spawn_blocking(move || flame_graph(&script.stdout, &svg, title))
            .await
            .context("Folding the recording panicked")??;
        eprintln!("profile: flame graph written to {}", written.display());
        Ok(())
    }

    /// Records the measured window of `timeline` (after its warm-up) in the background.
    pub fn over(run: &'static str, timeline: Timeline) -> Window {
        Window(tokio::spawn(async move {
            tokio::time::sleep_until(timeline.measure_from.into()).await;
            let profile = Self::start(run).await?;
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
async fn wait_attached(perf: &mut Child, data: &Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    while started.elapsed() < ATTACH_LIMIT {
        if let Some(status) = perf.try_wait().context("Failed to watch perf record")? {
            let mut message = String::new();
            if let Some(mut stderr) = perf.stderr.take() {
                use tokio::io::AsyncReadExt;
                stderr.read_to_string(&mut message).await.ok();
            }
            bail!(
                "perf record could not profile this process ({status}): {}; as a user other \
                 than root, set kernel.perf_event_paranoid to 1 or lower \
                 (sudo sysctl kernel.perf_event_paranoid=1)",
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

/// Folds `perf script`'s output into stacks and draws them into `svg`.
fn flame_graph(script: &[u8], svg: &Path, title: String) -> anyhow::Result<()> {
    use inferno::collapse::Collapse;
    let mut folded = Vec::new();
    inferno::collapse::perf::Folder::from(inferno::collapse::perf::Options::default())
        .collapse(script, &mut folded)
        .context("Failed to fold perf's stacks")?;
    if folded.is_empty() {
        bail!("perf recorded no samples of this process");
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = title;
    let file = std::fs::File::create(svg)
        .with_context(|| format!("Failed to create {}", svg.display()))?;
    inferno::flamegraph::from_reader(
        &mut options,
        folded.as_slice(),
        std::io::BufWriter::new(file),
    )
    .context("Failed to draw the flame graph")?;
    Ok(())
}
