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
    Command::new(hap_binary())
        .args(["serve", "--roles", roles, "--http-addr", "127.0.0.1:0"])
        .env("HAP_DATABASE_URL", &db.url)
        .env("HAP_EXCHANGE_PREFIX", prefix)
        .env("HAP_INSTANCE", instance)
        .env("HAP_INSECURE_NO_AUTH", "true")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("hap starts")
}
