//! Property-based fuzzing of everything `subnet` parses from other machines or from disk: the
//! network config, lease keys, lease values and subnet.env. Inputs are random bytes and random
//! mutations (flips, insertions, deletions, truncations) of the corpus in `fuzz-corpus/`. Every
//! parser must return instead of panicking, and what it accepts must satisfy its invariants and
//! round-trip. `FUZZ_CASES` sets the cases per target (default 20000: a few seconds in CI).

use std::path::Path;

use proptest::prelude::*;
use subnet::{LeaseAttrs, NetworkConfig, PreviousEnv, SubnetKey};

/// The files of `fuzz-corpus/<target>/`.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-corpus")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    entries.sort();
    entries
        .iter()
        .map(|p| std::fs::read(p).expect("corpus file"))
        .collect()
}

/// One mutation: (kind, position, byte).
type Mutation = (u8, usize, u8);

fn mutate(mut input: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for &(kind, pos, byte) in mutations {
        let at = if input.is_empty() {
            0
        } else {
            pos % (input.len() + 1)
        };
        match kind % 5 {
            0 if at < input.len() => input[at] ^= byte | 1,
            1 => input.insert(at, byte),
            2 if at < input.len() => {
                input.remove(at);
            }
            3 => input.truncate(at),
            _ => {
                let piece: Vec<u8> = input[at..].iter().take(8).copied().collect();
                input.splice(at..at, piece);
            }
        }
    }
    input
}

/// Random bytes, a corpus entry as is, or a mutated corpus entry.
fn inputs(target: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(target);
    let n = seeds.len();
    let mutated = (0..n, proptest::collection::vec(any::<Mutation>(), 0..6))
        .prop_map(move |(i, m)| mutate(seeds[i].clone(), &m));
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..160), mutated]
}

fn config() -> ProptestConfig {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn network_config_parser(raw in inputs("config")) {
        if let Ok(config) = NetworkConfig::parse(&raw) {
            if let Some(r) = config.v4() {
                let size = 1u64 << (32 - u32::from(r.subnet_len));
                prop_assert!(r.network.prefix_len() <= r.subnet_len && r.subnet_len <= 30);
                prop_assert!(r.network.contains(&r.subnet_min) && r.network.contains(&r.subnet_max));
                prop_assert_eq!(u64::from(u32::from(r.subnet_min)) % size, 0);
                prop_assert_eq!(u64::from(u32::from(r.subnet_max)) % size, 0);
                prop_assert_eq!(r.network.trunc(), r.network);
            }
        }
    }

    #[test]
    fn lease_key_parser(raw in inputs("lease_key")) {
        let text = String::from_utf8_lossy(&raw);
        if let Ok(key) = text.parse::<SubnetKey>() {
            prop_assert_eq!(key.to_string().parse::<SubnetKey>(), Ok(key));
        }
    }

    #[test]
    fn lease_value_parser(raw in inputs("lease_json")) {
        if let Ok(attrs) = LeaseAttrs::from_json(&raw) {
            prop_assert_eq!(LeaseAttrs::from_json(attrs.to_json().as_bytes()), Ok(attrs));
        }
    }

    #[test]
    fn subnet_env_reader(raw in inputs("subnet_env")) {
        let previous = PreviousEnv::parse(&String::from_utf8_lossy(&raw));
        for net in [previous.subnet, previous.network].into_iter().flatten() {
            prop_assert_eq!(net.trunc(), net);
        }
    }
}

#[test]
fn every_corpus_entry_is_read_without_panicking() {
    for raw in corpus("config") {
        let _ = NetworkConfig::parse(&raw);
    }
    for raw in corpus("lease_key") {
        let _ = String::from_utf8_lossy(&raw).parse::<SubnetKey>();
    }
    for raw in corpus("lease_json") {
        let _ = LeaseAttrs::from_json(&raw);
    }
    for raw in corpus("subnet_env") {
        let _ = PreviousEnv::parse(&String::from_utf8_lossy(&raw));
    }
}
