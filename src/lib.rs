//! haoka-sync: an exact, queryable record of phone-card order status, fed by
//! vendor callbacks and (for what callbacks miss) rate-limited polling.
//!
//! Layers, each using only those below it (README, "Design"):
//! - bottom: `rules` (the pure rules: status model and merge, when to ask,
//!   callback gaps, the callback verdict and its answers, ids, masking, the
//!   `Vendor` type) and `secret`; `metrics` (the Prometheus registry every
//!   layer above counts into) uses only `rules`;
//! - `vendors` (each vendor's protocol in its folder, and the `Asker`
//!   interface the poller uses), `db` (pool, the database's health and its
//!   prober, migrations, schema) and
//!   `config` (typed configuration, built once), `owner` (the process's
//!   name in leases and runs);
//! - `store` (the only code that decides what is committed; `ingest` is the
//!   one commit path for callbacks, live or replayed);
//! - `poller` and `http` orchestrate; `sim` is the vendor simulator;
//! - `startup` wires them, `demo` and `cli` run them.

pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod forward;
pub mod http;
pub mod metrics;
pub mod owner;
pub mod poller;
pub mod rules;
pub mod secret;
pub mod sim;
pub mod startup;
pub mod store;
pub mod vendors;

#[cfg(test)]
mod test_support;
