//! Who a process is, in the leases it takes and the runs it records
//! (`HOSTNAME`, docs/contract.md): `HOSTNAME:pid` (`host` when `HOSTNAME`
//! is unset), and for a worker that one process may run several of (the
//! tests, `demo`) a suffix that tells them apart.

/// `HOSTNAME:pid`: the process (`retention_runs.owner`).
pub fn process() -> String {
    format!(
        "{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
        std::process::id()
    )
}

/// `HOSTNAME:pid:<hex>`: one worker of the process (`orders.lease_owner`,
/// `vendor_calls.caller`, `forward_deliveries.lease_owner`).
pub fn worker() -> String {
    format!(
        "{}:{:x}",
        process(),
        chrono::Utc::now().timestamp_subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_named_after_its_process() {
        let p = process();
        let w = worker();
        assert!(p.ends_with(&format!(":{}", std::process::id())), "{p}");
        let suffix = w.strip_prefix(&format!("{p}:")).unwrap_or_default();
        assert!(
            !suffix.is_empty() && suffix.chars().all(|c| c.is_ascii_hexdigit()),
            "{w}"
        );
    }
}
