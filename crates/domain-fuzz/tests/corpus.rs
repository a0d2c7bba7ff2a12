//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`, docs/fuzzing.md) and the
//! generated seeds through every harness on stable: each input the fuzzer kept, and every
//! crash it found once fixed, stays a regression test that runs in seconds.

use std::path::PathBuf;

use domain_fuzz::{TARGETS, seeds};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Runs `run` over `data`, naming the input on a panic (the harness panicking is the bug).
fn replay(target: &str, name: &str, run: fn(&[u8]), data: &[u8]) {
    if std::panic::catch_unwind(|| run(data)).is_err() {
        panic!(
            "fuzz target {target} panicked on {name} ({} bytes)",
            data.len()
        );
    }
}

#[test]
fn corpus_replays_without_panics() {
    let mut total = 0;
    for target in TARGETS {
        let dir = corpus_dir(target.name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus folder {} is missing: {e}", dir.display()));
        let mut files = 0;
        for entry in entries {
            let path = entry.expect("readable corpus folder").path();
            let data =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            replay(target.name, &path.display().to_string(), target.run, &data);
            files += 1;
        }
        assert!(files > 0, "corpus folder {} is empty", dir.display());
        total += files;
    }
    eprintln!("replayed {total} corpus files");
}

/// Every target has a seed, every seed runs cleanly through its target, and with
/// `DOMAIN_FUZZ_WRITE_SEEDS=1` the seeds are (re)written to the corpus.
#[test]
fn seeds_run_and_cover_every_target() {
    let seeds = seeds::all();
    for target in TARGETS {
        assert!(
            seeds.iter().any(|s| s.target == target.name),
            "no seed for {}",
            target.name
        );
    }
    let write = std::env::var_os("DOMAIN_FUZZ_WRITE_SEEDS").is_some();
    for seed in &seeds {
        let target = TARGETS
            .iter()
            .find(|t| t.name == seed.target)
            .expect("a seed names a target");
        replay(target.name, &seed.name, target.run, &seed.data);
        if write {
            let dir = corpus_dir(target.name);
            std::fs::create_dir_all(&dir).expect("create the corpus folder");
            std::fs::write(dir.join(format!("seed-{}", seed.name)), &seed.data)
                .expect("write a seed");
        }
    }
}

/// The seeds reach the protocol logic past every signature check: a fuzzer starting from
/// seeds that were refused at the door would only ever fuzz the door.
#[test]
fn seeds_reach_the_decisions() {
    let seeds = seeds::all();
    let seed = |target: &str, name: &str| {
        &seeds
            .iter()
            .find(|s| s.target == target && s.name == name)
            .unwrap_or_else(|| panic!("no seed {target}/{name}"))
            .data
    };
    // (target, seed, what the protocol decides on it)
    type Decide = fn(&[u8]) -> Vec<&'static str>;
    let decisions: [(&str, &str, Decide, &str); 4] = [
        (
            "mediator_events",
            "approve",
            domain_fuzz::mediator_verdicts,
            "approved",
        ),
        (
            "mediator_events",
            "reject",
            domain_fuzz::mediator_verdicts,
            "rejected",
        ),
        (
            "mediator_events",
            "timeout",
            domain_fuzz::mediator_verdicts,
            "timed_out",
        ),
        (
            "participant_events",
            "verdict",
            domain_fuzz::participant_outcomes,
            "approved",
        ),
    ];
    for (target, name, decide, expected) in decisions {
        assert_eq!(
            decide(seed(target, name)),
            [expected],
            "seed {target}/{name}"
        );
    }
    for name in [
        "participant-request",
        "time-proof",
        "domain-manager-topology-0",
        "domain-manager-topology-4",
    ] {
        assert!(
            domain_fuzz::send_request_accepted(seed("send_request", name)),
            "send_request seed {name} is refused"
        );
    }
    for (name, service) in [
        ("sequencer", "sequencer"),
        ("mediator-with-overrides", "mediator"),
        ("participant", "participant"),
        ("domain-manager", "domain-manager"),
    ] {
        assert!(
            domain_fuzz::config_accepted(seed("config", name)).contains(&service),
            "config seed {name} is refused by the {service}"
        );
    }
}
