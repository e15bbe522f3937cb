//! haoka-sync: an exact, queryable record of phone-card order status, fed by
//! vendor callbacks and (for what callbacks miss) rate-limited polling.
//!
//! Module map: `status` (the pure rules), `vendors` (protocols), `store`
//! (what gets committed), `db` (PostgreSQL plumbing), `http` (thin
//! handlers), `startup` (wiring), `cli` (subcommands), `config`.

pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod http;
pub mod poller;
pub mod rules;
pub mod secret;
pub mod sim;
pub mod startup;
pub mod store;
pub mod vendors;

#[cfg(test)]
mod test_support;
