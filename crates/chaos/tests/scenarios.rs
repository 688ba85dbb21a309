//! Every scenario file parses, validates, and expands into the same schedule
//! for the same seed (so a seeded run repeats its faults exactly).

use std::path::Path;

use mesh_chaos::scenario::Scenario;
use mesh_chaos::schedule;

#[test]
fn scenario_files_are_valid_and_deterministic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios");
    let all = Scenario::load_dir(&dir).expect("scenarios load");
    let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "steady",
        "container-churn",
        "backend-restart",
        "engine-restart",
        "exhaustion",
        "duplicate-storm",
        "store-corruption",
        "port-squat",
        "soak",
    ] {
        assert!(names.contains(&want), "tests/scenarios/{want}.toml missing");
    }
    for s in &all {
        let file = dir.join(format!("{}.toml", s.name));
        assert!(
            file.is_file(),
            "{}: the file name must be the scenario name",
            s.name
        );
        let a = schedule::build(s, s.seed).expect("schedule");
        let b = schedule::build(s, s.seed).expect("schedule");
        assert_eq!(a, b, "{}: same seed, same schedule", s.name);
        assert_eq!(a.len(), b.len());
        let total = s.duration().expect("duration").as_millis() as u64;
        assert!(
            a.iter().all(|p| p.t_ms < total),
            "{}: faults inside the duration",
            s.name
        );
        if s.name == "steady" {
            assert!(a.is_empty(), "steady is the no-fault baseline");
        }
        if s.name == "soak" {
            assert!(!s.ci, "soak is not part of the CI suite");
            assert!(s.duration().expect("d").as_secs() >= 20 * 60);
        }
    }
}
