//! Running the real `hap` binary as a child process, for the tests that kill one.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;

use crate::TestDb;
use tokio::process::{Child, Command};

/// The `hap` binary of this build, built first (once per test process) so that it is never
/// older than the code under test.
pub fn hap_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "--quiet", "-p", "api", "--bin", "hap"])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building hap failed");
            // target/<profile>/deps/<test binary> → target/<profile>/hap
            let exe = std::env::current_exe().expect("the test binary has a path");
            exe.parent()
                .and_then(|deps| deps.parent())
                .expect("tests run from target/<profile>/deps")
                .join("hap")
        })
        .clone()
}

/// `hap serve` as `instance` with `roles`, against the test's database and exchanges under
/// `prefix`.
pub fn spawn_hap(db: &TestDb, prefix: &str, roles: &str, instance: &str) -> Child {
    serve(db, prefix, roles, instance, "127.0.0.1:0")
        .spawn()
        .expect("hap starts")
}

/// The command of `hap serve` as [`spawn_hap`] runs it, listening on `http_addr`, for a test
/// that sets more (its broker, say) before it spawns it. Killed when dropped; its log (warnings
/// and errors) goes to the test's output.
pub fn serve(db: &TestDb, prefix: &str, roles: &str, instance: &str, http_addr: &str) -> Command {
    let mut command = Command::new(hap_binary());
    command
        .args(["serve", "--roles", roles, "--http-addr", http_addr])
        .env("HAP_DATABASE_URL", &db.url)
        .env("HAP_EXCHANGE_PREFIX", prefix)
        .env("HAP_INSTANCE", instance)
        .env("HAP_INSECURE_NO_AUTH", "true")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    command
}

/// A local address for a server to listen on: a port free now, picked by the kernel.
pub fn free_address() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("a bound address")
}
