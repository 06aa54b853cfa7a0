//! The clinic as separate `hap serve` processes, one per role, each of which can be killed
//! with SIGKILL and started again; and the one-shot `hap` commands the checks run.
//!
//! Every process gets the same settings through its environment (the scratch database, the
//! broker, the exchange prefix, the auth secret, the saga deadline), with any `HAP_*` variable
//! of the bench's own environment removed first, so that nothing from the caller's shell
//! changes what runs. Each writes its log to a file of its own per incarnation
//! (`{name}.{n}.log`), read meanwhile for the line that says where it listens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// How long a process may take to say it listens (migrations included, on a loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What `hap serve` logs once its HTTP listener is bound, with the `address` field.
const LISTENING: &str = "HAP is listening";

/// The `hap` binary and the environment every process of the run gets.
#[derive(Clone)]
pub struct Hap {
    binary: PathBuf,
    env: Vec<(String, String)>,
    logs: PathBuf,
}

impl Hap {
    /// `binary` (or, when `None`, the `hap` beside this executable, where `cargo build` puts
    /// both) with `env`, logging under `logs`.
    pub fn new(
        binary: Option<PathBuf>,
        env: Vec<(String, String)>,
        logs: PathBuf,
    ) -> anyhow::Result<Self> {
        let binary = match binary {
            Some(binary) => binary,
            None => std::env::current_exe()
                .context("Failed to find hap-bench's own path")?
                .with_file_name("hap"),
        };
        if !binary.is_file() {
            bail!(
                "{} does not exist: build it first (`cargo build -p api --bin hap`, with the \
                 same profile as hap-bench) or pass --hap-bin",
                binary.display()
            );
        }
        Ok(Self { binary, env, logs })
    }

    /// `hap {args}` with the run's environment, `instance` as `HAP_INSTANCE`.
    fn command(&self, instance: &str, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command.args(args);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("HAP_") {
                command.env_remove(name);
            }
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("HAP_INSTANCE", instance)
            // Plain text, so that the listening line can be read.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            // A child left behind by a failing run must not outlive it.
            .kill_on_drop(true);
        command
    }

    /// Runs `hap {args}` to its end with the run's environment, as `instance`; returns whether
    /// it exited 0, and what it printed (stdout, then stderr).
    pub async fn run(&self, instance: &str, args: &[&str]) -> anyhow::Result<(bool, String)> {
        let output = self
            .command(instance, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .with_context(|| format!("Failed to run hap {}", args.join(" ")))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((output.status.success(), text))
    }
}

/// Where an API process can be reached right now: `None` while it is down, so that clients
/// turn to the other one instead of waiting for a refused connection.
#[derive(Clone, Default)]
pub struct Endpoint(Arc<RwLock<Option<SocketAddr>>>);

impl Endpoint {
    pub fn get(&self) -> Option<SocketAddr> {
        *self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, address: Option<SocketAddr>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = address;
    }
}

/// One `hap serve` process of the cluster: its name, roles and instance, and the running child
/// when it runs.
pub struct Process {
    pub name: String,
    /// What it is, for the report: `api`, `publisher`, `saga` or `timer`.
    pub role: &'static str,
    pub roles: &'static str,
    pub instance: String,
    /// Set while it listens.
    pub endpoint: Endpoint,
    child: Option<Child>,
    /// The address it last listened on: a restart asks for the same port, so that a client
    /// holding it finds the process again.
    last_address: Option<SocketAddr>,
    incarnation: u32,
}

impl Process {
    pub fn new(name: &str, role: &'static str, roles: &'static str, instance: &str) -> Self {
        Self {
            name: name.to_owned(),
            role,
            roles,
            instance: instance.to_owned(),
            endpoint: Endpoint::default(),
            child: None,
            last_address: None,
            incarnation: 0,
        }
    }

    /// Whether its HTTP API takes commands and queries.
    pub fn serves_api(&self) -> bool {
        self.roles == API_ROLES
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Starts it and waits until it listens. A restart asks for the port it had; if that is
    /// taken meanwhile, any free port.
    pub async fn start(&mut self, hap: &Hap) -> anyhow::Result<SocketAddr> {
        if let Some(address) = self.last_address {
            match self.spawn(hap, &address.to_string()).await {
                Ok(address) => return Ok(address),
                Err(error) => tracing::warn!(
                    process = %self.name,
                    error = format!("{error:#}"),
                    "restarting on the same port failed; trying any port"
                ),
            }
        }
        self.spawn(hap, "127.0.0.1:0").await
    }

    async fn spawn(&mut self, hap: &Hap, http_addr: &str) -> anyhow::Result<SocketAddr> {
        self.incarnation += 1;
        let log_path = hap
            .logs
            .join(format!("{}.{}.log", self.name, self.incarnation));
        let log = tokio::fs::File::create(&log_path)
            .await
            .with_context(|| format!("Failed to create {}", log_path.display()))?;
        let stdout = log
            .try_clone()
            .await
            .context("Failed to share the log file")?
            .into_std()
            .await;
        let mut child = hap
            .command(
                &self.instance,
                &["serve", "--roles", self.roles, "--http-addr", http_addr],
            )
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("Failed to start {}", self.name))?;
        let stderr = child.stderr.take().context("the child's stderr is piped")?;
        let (listening, address) = oneshot::channel();
        tokio::spawn(copy_log(stderr, log, listening));
        let started = tokio::time::timeout(START_TIMEOUT, address).await;
        let address = match started {
            Ok(Ok(address)) => address,
            Ok(Err(_)) => {
                let status = child.wait().await.ok();
                bail!(
                    "{} exited before it listened ({status:?}); see {}",
                    self.name,
                    log_path.display()
                )
            }
            Err(_) => {
                child.start_kill().ok();
                bail!(
                    "{} did not listen within {START_TIMEOUT:?}; see {}",
                    self.name,
                    log_path.display()
                )
            }
        };
        self.child = Some(child);
        self.last_address = Some(address);
        self.endpoint.set(Some(address));
        Ok(address)
    }

    /// `kill -9`, then waits until it is gone. Clients are turned away first.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.endpoint.set(None);
        if let Some(mut child) = self.child.take() {
            child
                .start_kill()
                .with_context(|| format!("Failed to kill {}", self.name))?;
            child
                .wait()
                .await
                .with_context(|| format!("Failed to wait for {}", self.name))?;
        }
        Ok(())
    }

    /// Whether it has exited by itself (a crash, not one of ours).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

/// Copies the child's stderr into its log file, and sends the address of the listening line
/// as soon as it passes.
async fn copy_log(
    stderr: tokio::process::ChildStderr,
    mut log: tokio::fs::File,
    listening: oneshot::Sender<SocketAddr>,
) {
    let mut listening = Some(listening);
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if listening.is_some()
            && let Some(address) = listening_address(&line)
            && let Some(sender) = listening.take()
        {
            let _ = sender.send(address);
        }
        // The log is for reading after a failure; a write that fails loses only that.
        let _ = log.write_all(line.as_bytes()).await;
        let _ = log.write_all(b"\n").await;
    }
    let _ = log.flush().await;
}

/// The `address` field of `hap serve`'s listening line, colours or not.
fn listening_address(line: &str) -> Option<SocketAddr> {
    if !line.contains(LISTENING) {
        return None;
    }
    let plain = strip_ansi(line);
    let (_, rest) = plain.split_once("address=")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `line` without ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The processes of a run: two API processes on two instances, and two each of publisher,
/// saga and timer. Dropping it kills whatever still runs.
pub struct Cluster {
    pub processes: Vec<Process>,
}

/// The instances of the two API processes; the other processes take them in turn (their
/// instance only names the read-model schema they open, which they do not write).
pub const INSTANCES: [&str; 2] = ["chaos-a", "chaos-b"];

/// What an API process runs: commands and queries, over its own instance's projectors.
const API_ROLES: &str = "command,query,projector";

impl Cluster {
    pub fn new() -> Self {
        let mut processes = vec![
            Process::new("api-a", "api", API_ROLES, INSTANCES[0]),
            Process::new("api-b", "api", API_ROLES, INSTANCES[1]),
        ];
        for role in ["publisher", "saga", "timer"] {
            for (n, instance) in INSTANCES.iter().enumerate() {
                processes.push(Process::new(
                    &format!("{role}-{}", n + 1),
                    role,
                    role,
                    instance,
                ));
            }
        }
        Self { processes }
    }

    /// Starts every process: the API processes first (each migrates its instance's read
    /// model), then the rest side by side.
    pub async fn start(&mut self, hap: &Hap) -> anyhow::Result<()> {
        let (api, rest): (Vec<_>, Vec<_>) = self.processes.iter_mut().partition(|p| p.serves_api());
        for wave in [api, rest] {
            let started = futures::future::join_all(wave.into_iter().map(|process| async {
                let address = process.start(hap).await?;
                eprintln!(
                    "started {} ({}) on {address}, pid {}",
                    process.name,
                    process.roles,
                    process.pid().unwrap_or(0)
                );
                anyhow::Ok(())
            }))
            .await;
            started.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        }
        Ok(())
    }

    /// The endpoints of the API processes, in a fixed order.
    pub fn api_endpoints(&self) -> Vec<Endpoint> {
        self.processes
            .iter()
            .filter(|p| p.serves_api())
            .map(|p| p.endpoint.clone())
            .collect()
    }

    /// Kills every process and waits until each is gone.
    pub async fn stop(&mut self) {
        for process in &mut self.processes {
            if let Err(error) = process.kill().await {
                tracing::warn!(error = format!("{error:#}"), "stopping a process failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_the_address_with_or_without_colours() {
        let plain = "2026-12-06T10:00:00Z  INFO api::cli: HAP is listening address=127.0.0.1:4321 roles=[Saga]";
        let coloured = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m HAP is listening \u{1b}[3maddress\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:4321 \u{1b}[3mroles\u{1b}[0m";
        let expected: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        assert_eq!(listening_address(plain), Some(expected));
        assert_eq!(listening_address(coloured), Some(expected));
        assert_eq!(listening_address("INFO something else address=1"), None);
    }
}
