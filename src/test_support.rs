//! Shared by the property tests (`mod props` in the rule and parser
//! modules).

use proptest::test_runner::Config;

/// `default` cases, or `PROPTEST_CASES` when set (for longer runs). A
/// failing case is reported and shrunk but not written to a
/// `proptest-regressions/` file next to the sources.
pub fn proptest_config(default: u32) -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
        failure_persistence: None,
        ..Config::default()
    }
}
