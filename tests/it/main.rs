#![allow(clippy::unwrap_used)]
//! Integration tests: the real service against a real PostgreSQL, one fresh
//! database per test, so they run in parallel.

mod callbacks;
mod cli;
mod concurrency;
mod damaijia;
mod dwell;
mod e2e;
mod failfast;
mod faults;
mod feed;
mod forward;
mod gaps;
mod helpers;
mod logs;
mod metrics;
mod outage;
mod poller;
mod replay;
mod report;
mod retention;
mod schedule;
mod security;
mod sources;
mod store;
