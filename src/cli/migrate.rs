//! `haoka-sync migrate`: create the database if missing, apply the embedded
//! migrations, exit.

use super::{prepare, CliResult};
use crate::config::Config;

pub(super) async fn run(config: &Config) -> CliResult {
    prepare(config).await?;
    println!(
        "database {} is up to date",
        config.database_url.database_name()
    );
    Ok(())
}
