// `sqlx::migrate!` embeds the migrations when this crate compiles; without this, a migration
// added since the last build would be missing from the binary.
fn main() {
    println!("cargo:rerun-if-changed=../migrations/eventstore");
}
