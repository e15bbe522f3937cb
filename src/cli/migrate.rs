//! `haoka-sync migrate`: create the database if missing, apply the embedded
//! migrations, exit.

use super::{prepare, CliResult};
use crate::config::DatabaseConfig;

/// Reads only the database variables: a mistake in the poller's or the
/// server's settings does not stop a migration.
pub(super) async fn run(db: &DatabaseConfig) -> CliResult {
    prepare(&db.url).await?;
    println!("database {} is up to date", db.url.database_name());
    Ok(())
}
