//! The `mesh-bridge` binary.
fn main() {}
