//! A private PostgreSQL server, for tests and benchmarks that stop, restart or crash the
//! database under HAP. The machine's shared server must never be touched that way (other
//! tests run against it); this one belongs to its owner alone.
//!
//! [`LocalPostgres::new`] makes a throw-away cluster in a temporary directory with the
//! machine's own `initdb` and starts it on a free port of 127.0.0.1, with trust
//! authentication for user `postgres` and without flushing to disk (`fsync` and full-page
//! writes off: only a crash of the machine could lose data then, and the cluster would not
//! outlive that anyway). Commits are still synchronous, so a commit a client was told of
//! survives an immediate shutdown, as on a production server. It takes about a second.
//! Dropping it stops the server (immediately) and deletes the directory.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use hap_support::postgres::{LocalPostgres, Shutdown};
//! let postgres = LocalPostgres::new().await?;
//! let url = postgres.url(); // postgres://postgres@127.0.0.1:{port}/postgres
//! // … run HAP against `url` …
//! postgres.restart(Shutdown::Immediate).await?; // as if it crashed, then recover
//! postgres.stop(Shutdown::Fast).await?;         // an outage that lasts…
//! postgres.start().await?;                      // …until now
//! # Ok(()) }
//! ```
//!
//! The binaries are PostgreSQL's server tools: `pg_config --bindir` if it has `initdb`,
//! otherwise the newest `/usr/lib/postgresql/*/bin` (Debian's layout). `initdb` refuses to run
//! as root, so as root every tool runs as the `postgres` user (`runuser -u postgres --`) and the
//! directory is given to that user.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;

/// How PostgreSQL is shut down (`pg_ctl --mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Sessions are ended with `57P01` ("terminating connection due to administrator
    /// command") and the server checkpoints before it exits: a clean restart.
    Fast,
    /// Every process is killed at once, connections are reset without a word, and the next
    /// start recovers from the write-ahead log: what a crash does.
    Immediate,
}

impl Shutdown {
    fn mode(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Immediate => "immediate",
        }
    }
}

/// How long `pg_ctl` waits for the server to start or stop.
const PG_CTL_WAIT: Duration = Duration::from_secs(60);

/// A private PostgreSQL cluster, running unless stopped; removed when dropped.
pub struct LocalPostgres {
    /// Holds the cluster (`data/`), the server's log (`log`) and its Unix socket.
    dir: TempDir,
    port: u16,
    /// Where `initdb` and `pg_ctl` are.
    bin: PathBuf,
    /// Whether the tools run as the `postgres` user (this process is root).
    as_postgres: bool,
}

impl LocalPostgres {
    /// Creates a cluster in a temporary directory and starts it on a free port.
    pub async fn new() -> anyhow::Result<Self> {
        let bin = server_binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("hap-postgres-")
            .tempdir()
            .context("Failed to create a directory for a private PostgreSQL")?;
        let as_postgres = std::fs::metadata("/proc/self")
            .map(|me| me.uid() == 0)
            .unwrap_or(false);
        let postgres = Self {
            port: free_port()?,
            dir,
            bin,
            as_postgres,
        };
        if as_postgres {
            run(tokio::process::Command::new("chown")
                .arg("postgres:")
                .arg(postgres.dir.path()))
            .await
            .context("Failed to give the private PostgreSQL's directory to user postgres")?;
        }
        postgres
            .tool("initdb")
            .arg("--pgdata")
            .arg(postgres.data())
            .args(["--username", "postgres", "--auth", "trust"])
            .args(["--encoding", "UTF8", "--locale", "C"])
            .args(["--no-sync", "--no-instructions"])
            .output()
            .await
            .map_err(anyhow::Error::from)
            .and_then(checked)
            .context("initdb failed")?;
        postgres.configure()?;
        postgres.start().await?;
        Ok(postgres)
    }

    /// `postgres://postgres@127.0.0.1:{port}/postgres`: the server's own `postgres` database,
    /// as a server-level URL (e.g. to create scratch databases on it).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the server (again) and waits until it accepts connections. After an immediate
    /// shutdown this includes crash recovery.
    pub async fn start(&self) -> anyhow::Result<()> {
        self.pg_ctl("start", None)
            .await
            .context("Failed to start the private PostgreSQL")
    }

    /// Stops the server and waits until it is gone.
    pub async fn stop(&self, mode: Shutdown) -> anyhow::Result<()> {
        self.pg_ctl("stop", Some(mode))
            .await
            .with_context(|| format!("Failed to stop the private PostgreSQL ({})", mode.mode()))
    }

    /// Stops the server in `mode` and starts it again, waiting until it accepts connections.
    pub async fn restart(&self, mode: Shutdown) -> anyhow::Result<()> {
        self.pg_ctl("restart", Some(mode))
            .await
            .with_context(|| format!("Failed to restart the private PostgreSQL ({})", mode.mode()))
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// Listens on 127.0.0.1 only, with its socket in the directory (not in the shared
    /// server's), and without durability.
    fn configure(&self) -> anyhow::Result<()> {
        use std::io::Write;
        let settings = format!(
            "\n# Written by hap-support's LocalPostgres.\n\
             port = {port}\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{socket}'\n\
             fsync = off\n\
             full_page_writes = off\n\
             max_connections = 200\n",
            port = self.port,
            socket = self.dir.path().display(),
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join("postgresql.conf"))
            .and_then(|mut conf| conf.write_all(settings.as_bytes()))
            .context("Failed to configure the private PostgreSQL")
    }

    async fn pg_ctl(&self, action: &str, mode: Option<Shutdown>) -> anyhow::Result<()> {
        let mut pg_ctl = self.tool("pg_ctl");
        pg_ctl
            .arg("--pgdata")
            .arg(self.data())
            // Always a log file: without one the server writes to pg_ctl's output, which would
            // then never end.
            .arg("--log")
            .arg(self.log())
            .args(["--wait", "--timeout", &PG_CTL_WAIT.as_secs().to_string()]);
        if let Some(mode) = mode {
            pg_ctl.args(["--mode", mode.mode()]);
        }
        let output = pg_ctl.arg(action).output().await?;
        checked(output).map(|_| ()).map_err(|error| {
            // The server's own words say why (a port taken, a failed recovery).
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            error.context(format!("server log:\n{tail}"))
        })
    }

    /// One of PostgreSQL's tools, run as the user that owns the cluster, from its directory.
    fn tool(&self, name: &str) -> tokio::process::Command {
        tool_command(&self.bin, name, self.as_postgres, self.dir.path()).into()
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        // Drop cannot await; pg_ctl is quick, and blocking here is what a test's clean-up
        // wants. A server already stopped makes it fail, which is fine. The directory goes
        // with `self.dir` after this.
        let stopped = tool_command(&self.bin, "pg_ctl", self.as_postgres, self.dir.path())
            .arg("--pgdata")
            .arg(self.data())
            .args(["--mode", "immediate", "--wait", "stop"])
            .output();
        if let Err(error) = stopped {
            tracing::warn!(%error, "could not stop the private PostgreSQL");
        }
    }
}

fn tool_command(bin: &Path, name: &str, as_postgres: bool, cwd: &Path) -> std::process::Command {
    let program = bin.join(name);
    let mut command = if as_postgres {
        let mut runuser = std::process::Command::new("runuser");
        runuser.args(["-u", "postgres", "--"]).arg(program);
        runuser
    } else {
        std::process::Command::new(program)
    };
    // The tools look up their working directory, which user postgres may not be allowed into.
    command.current_dir(cwd);
    command
}

/// The directory of PostgreSQL's server tools on this machine.
fn server_binaries() -> anyhow::Result<PathBuf> {
    let from_pg_config = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    if let Some(bin) = from_pg_config.filter(|bin| bin.join("initdb").exists()) {
        return Ok(bin);
    }
    // Debian installs the server under /usr/lib/postgresql/{major}/bin, and pg_config may
    // belong to a client package without it.
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major);
    match newest {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL's server tools (initdb, pg_ctl) were not found: neither `pg_config \
             --bindir` nor /usr/lib/postgresql/*/bin has them (install the postgresql package)"
        ),
    }
}

/// A port of 127.0.0.1 that nothing listens on now.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("Failed to find a free local port for a private PostgreSQL")?;
    Ok(listener.local_addr()?.port())
}

async fn run(command: &mut tokio::process::Command) -> anyhow::Result<()> {
    checked(command.output().await?).map(|_| ())
}

/// `output` if its command succeeded, else an error with what it printed.
fn checked(output: Output) -> anyhow::Result<Output> {
    if output.status.success() {
        return Ok(output);
    }
    bail!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
