//! Shared by the property tests (`mod props` in the rule and parser
//! modules).

use proptest::test_runner::{Config, RngAlgorithm};

/// `default` cases, or `PROPTEST_CASES` when set (for longer runs). A
/// failing case is reported and shrunk but not written to a
/// `proptest-regressions/` file next to the sources. The generator is
/// XorShift unless `PROPTEST_RNG_ALGORITHM` says otherwise: ChaCha, the
/// default, takes about half the time of a run in a debug build.
pub fn proptest_config(default: u32) -> Config {
    let defaults = Config::default();
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
        failure_persistence: None,
        rng_algorithm: if std::env::var_os("PROPTEST_RNG_ALGORITHM").is_some() {
            defaults.rng_algorithm
        } else {
            RngAlgorithm::XorShift
        },
        ..defaults
    }
}
