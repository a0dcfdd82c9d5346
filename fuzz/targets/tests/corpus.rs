//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through the target's function on
//! stable: the inputs the fuzzer kept, the seeds from the repository's test vectors and every
//! crash found (fixed since) must run without a panic. Part of `make test`; no nightly needed.

use std::path::{Path, PathBuf};

use meshwasm_fuzz_targets::{TARGETS, target};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus_and_every_corpus_a_target() {
    for (name, _) in TARGETS {
        let dir = corpus_dir().join(name);
        assert!(
            dir.is_dir() && !files(&dir).is_empty(),
            "no corpus for fuzz target `{name}` in {}",
            dir.display()
        );
    }
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(target(&name).is_some(), "fuzz/corpus/{name} belongs to no fuzz target");
    }
}

#[test]
fn fixed_configurations_of_the_targets_are_valid() {
    // The targets run against fixed plans; one that stopped configuring would fuzz nothing.
    assert_eq!(meshwasm_fuzz_targets::broken_fixtures(), Vec::<&str>::new());
}

#[test]
fn corpora_replay_without_a_panic() {
    let mut failed = Vec::new();
    let mut replayed = 0;
    for (name, run) in TARGETS {
        let dir = corpus_dir().join(name);
        if !dir.is_dir() {
            continue;
        }
        for file in files(&dir) {
            let data = std::fs::read(&file).unwrap();
            replayed += 1;
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(format!("{name}: {}", file.display()));
            }
        }
    }
    assert!(failed.is_empty(), "{} of {replayed} corpus inputs panic:\n{}", failed.len(), failed.join("\n"));
    eprintln!("replayed {replayed} corpus inputs");
}

#[test]
fn the_jwt_claims_corpus_gets_past_the_signature() {
    // The structure-aware target signs what it builds: its corpus must reach allowed requests (claims,
    // rules and the cache), not stop at signature errors.
    let dir = corpus_dir().join("jwt_claims");
    let mut allowed = 0;
    for file in files(&dir) {
        let outcomes = meshwasm_fuzz_targets::jwt::claims_outcomes(&std::fs::read(&file).unwrap());
        allowed += outcomes.iter().filter(|o| *o == "allow").count();
    }
    assert!(allowed >= 10, "only {allowed} allowed requests in the jwt_claims corpus");
}
