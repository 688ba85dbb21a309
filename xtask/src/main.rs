//! Project automation: images, scenarios, reliability, bench, dashboards.
fn main() {}
