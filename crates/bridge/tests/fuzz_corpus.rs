//! The committed fuzz corpora (`fuzz/corpus/<target>/`) replayed through
//! `mesh_bridge::fuzzing` on every `cargo test`: an input that once broke a
//! property, kept in the corpus when it was fixed, keeps passing. Also
//! checks that every target has a corpus and a libFuzzer binary.

use std::fs;
use std::path::{Path, PathBuf};

use mesh_bridge::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn every_corpus_input_keeps_its_properties() {
    for (name, run) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let mut inputs: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a corpus entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name}: no seed in {}", dir.display());
        for input in inputs {
            let bytes = fs::read(&input).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| run(&bytes));
            assert!(
                outcome.is_ok(),
                "{name}: {} broke a property",
                input.display()
            );
        }
    }
}

#[test]
fn every_target_has_a_fuzzer_binary() {
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] for {name}"
        );
        let src = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text = fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        assert!(text.contains(&format!("mesh_bridge::fuzzing::{name}(data)")));
    }
}
