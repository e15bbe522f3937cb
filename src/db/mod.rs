//! PostgreSQL plumbing: the r2d2 pool and the health of the database behind
//! it (`health`), creating the database, embedded migrations, and the
//! helpers that run sync diesel off the async workers. No business rules
//! here.
//!
//! Every connection is taken through `PgPool::get` (or `run`/`run_within`
//! on top of it): while `health` says the database is down it fails at
//! once, and a wait for a connection ends as soon as the database goes
//! down, so no caller sits out the pool timeout during an outage.

pub mod health;
pub mod models;
pub mod schema;
mod url;

pub use health::{DbHealth, Prober};
pub use url::DatabaseUrl;

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

pub type PgConn = PooledConnection<ConnectionManager<PgConnection>>;

/// How often a wait for a connection looks at the health state.
const GET_SLICE: Duration = Duration::from_millis(50);
/// A wait for a connection this long asks the prober to look now.
const SLOW_GET: Duration = Duration::from_millis(300);

/// The connection pool and the health of the database behind it. Cheap to
/// clone; every clone shares both.
#[derive(Clone)]
pub struct PgPool {
    inner: Pool<ConnectionManager<PgConnection>>,
    health: Arc<DbHealth>,
    timeout: Duration,
}

impl PgPool {
    /// The database's health as this process sees it (`DbHealth::is_up`).
    pub fn health(&self) -> &Arc<DbHealth> {
        &self.health
    }

    /// A connection within the pool's timeout (`DB_TIMEOUT_SECS`).
    pub fn get(&self) -> Result<PgConn, DbError> {
        self.get_timeout(self.timeout)
    }

    /// A connection within `wait`; at once `Unavailable` while the
    /// database is down, and as soon as it goes down while waiting. A wait
    /// that runs out is reported to the prober: a busy pool is not an
    /// outage, a database that does not answer is.
    pub fn get_timeout(&self, wait: Duration) -> Result<PgConn, DbError> {
        let started = Instant::now();
        let end = started + wait;
        let mut last_error: Option<String> = None;
        let mut reported_slow = false;
        loop {
            if !self.health.is_up() {
                return Err(self.health.unavailable());
            }
            let slice = end.saturating_duration_since(Instant::now()).min(GET_SLICE);
            match self.inner.get_timeout(slice) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    // r2d2 says `timed out waiting for connection[: <the
                    // last connection error>]`.
                    if let Some((_, why)) = e.to_string().split_once(": ") {
                        last_error = Some(connection_reason(why));
                    }
                }
            }
            if Instant::now() >= end {
                let why = match &last_error {
                    Some(e) => format!("no connection within {} ms: {e}", wait.as_millis()),
                    None => format!(
                        "no connection within {} ms (all {} busy, or connecting)",
                        wait.as_millis(),
                        self.inner.max_size()
                    ),
                };
                self.health.suspect(&why);
                return Err(DbError::Unavailable(why));
            }
            if !reported_slow && started.elapsed() >= SLOW_GET {
                reported_slow = true;
                self.health.suspect(&format!(
                    "waited {} ms for a connection{}",
                    SLOW_GET.as_millis(),
                    last_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ));
            }
        }
    }
}

/// r2d2 reports every failed attempt to open or check a connection here:
/// the prober looks (r2d2 would log each attempt as an error; the outage is
/// logged once, by the prober).
#[derive(Debug)]
struct Suspect(Arc<DbHealth>);

impl diesel::r2d2::HandleError<diesel::r2d2::Error> for Suspect {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        self.0.suspect(&connection_reason(&error.to_string()));
    }
}

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached (pool timeout, connection lost).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Query(diesel::result::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    /// A connection could not be opened to create or migrate the database;
    /// the message says to which server, for what, and why.
    #[error("{0}")]
    Connect(String),
}

/// The one place a diesel error becomes ours: connection-level failures are
/// "unavailable" (answered 503, retried), everything else is a query error.
/// Every `?` on a diesel result goes through here.
impl From<diesel::result::Error> for DbError {
    fn from(e: diesel::result::Error) -> DbError {
        use diesel::result::{DatabaseErrorKind, Error};
        match &e {
            Error::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                info,
            ) => DbError::Unavailable(info.message().to_owned()),
            Error::DatabaseError(_, info)
                if info.message().contains("terminating connection")
                    || info.message().contains("server closed the connection")
                    || info.message().contains("the database system is") =>
            {
                DbError::Unavailable(info.message().to_owned())
            }
            _ => DbError::Query(e),
        }
    }
}

impl DbError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable(_) | DbError::Connect(_))
    }
}

impl From<diesel::r2d2::PoolError> for DbError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        DbError::Unavailable(e.to_string())
    }
}

/// A pool that does not need the database at build time: it reconnects by
/// itself. Its connections get libpq's `connect_timeout` (the request
/// timeout, at least 2 s, unless `url` sets one), so an attempt to reach a
/// black-holed address ends instead of holding one of r2d2's threads for
/// minutes.
pub fn pool(url: &DatabaseUrl, size: u32, timeout: Duration) -> PgPool {
    let health = DbHealth::new(url);
    let connect = url.with_default_param(
        "connect_timeout",
        &timeout.as_secs().clamp(2, 600).to_string(),
    );
    let manager = ConnectionManager::<PgConnection>::new(connect.expose());
    let inner = Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .connection_timeout(timeout)
        .test_on_check_out(true)
        .error_handler(Box::new(Suspect(Arc::clone(&health))))
        .build_unchecked(manager);
    PgPool {
        inner,
        health,
        timeout,
    }
}

/// Run sync diesel work on the blocking pool, never on an async worker.
/// Its errors arrive classified (`From<diesel::result::Error>`): a lost
/// connection is `Unavailable` wherever it happened. While the database is
/// down it answers `Unavailable` at once, and it stops waiting as soon as
/// the database goes down (the blocking work, if it hangs, is left to end
/// by itself).
pub async fn run<T, F>(pool: &PgPool, f: F) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnOnce(&mut PgConnection) -> diesel::QueryResult<T> + Send + 'static,
{
    run_inner(pool, pool.timeout, None, f).await
}

async fn run_inner<T, F>(
    pool: &PgPool,
    wait: Duration,
    deadline: Option<Duration>,
    f: F,
) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnOnce(&mut PgConnection) -> diesel::QueryResult<T> + Send + 'static,
{
    let health = pool.health();
    if !health.is_up() {
        return Err(health.unavailable());
    }
    let p = pool.clone();
    let task = tokio::task::spawn_blocking(move || {
        let mut conn = p.get_timeout(wait)?;
        Ok(f(&mut conn)?)
    });
    let work = async {
        task.await
            .map_err(|e| DbError::Unavailable(format!("database task failed: {e}")))?
    };
    let expired = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        biased;
        r = work => r,
        () = health.wait_down() => Err(health.unavailable()),
        () = expired => Err(DbError::Unavailable(format!(
            "no answer within {} ms",
            deadline.unwrap_or_default().as_millis()
        ))),
    };
    if let Err(e) = &result {
        if e.is_unavailable() {
            health.suspect(&e.to_string());
        }
    }
    result
}

/// Create the database named in `url` if it does not exist (connecting to the
/// server's `postgres` database to do so).
pub fn create_database_if_missing(url: &DatabaseUrl) -> Result<bool, DbError> {
    let name = url.database_name();
    let mut conn = connect(
        url,
        &url.with_database("postgres"),
        &format!("to create the database {name}"),
    )?;
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    let row: Exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<diesel::sql_types::Text, _>(&name)
            .get_result(&mut conn)?;
    if row.exists {
        return Ok(false);
    }
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match conn.batch_execute(&sql) {
        Ok(()) => Ok(true),
        // Someone else created it between our check and our create.
        Err(diesel::result::Error::DatabaseError(_, info))
            if info.message().contains("already exists") =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Apply pending embedded migrations; returns their names.
pub fn migrate(conn: &mut PgConnection) -> Result<Vec<String>, DbError> {
    // Serialize concurrent migrators (two `serve` starting at once).
    conn.batch_execute("SELECT pg_advisory_lock(7217200001)")?;
    let result = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|v| v.iter().map(|m| m.to_string()).collect())
        .map_err(|e| DbError::Migration(e.to_string()));
    let _ = conn.batch_execute("SELECT pg_advisory_unlock(7217200001)");
    result
}

/// Create the database if needed and bring its schema up to date.
pub fn prepare(url: &DatabaseUrl) -> Result<Vec<String>, DbError> {
    if create_database_if_missing(url)? {
        log::info!("created database {}", url.database_name());
    }
    let name = url.database_name();
    let mut conn = connect(url, url, &format!("to migrate the database {name}"))?;
    migrate(&mut conn)
}

/// Connect to `target` (`configured` itself, or another database on its
/// server) for `purpose`; a failure names the server, the purpose and the
/// variable, and gives the driver's reason in one line, password masked:
/// `cannot reach PostgreSQL at 127.0.0.1:5432 to create the database
/// haoka_sync (DATABASE_URL): connection refused`.
pub fn connect(
    configured: &DatabaseUrl,
    target: &DatabaseUrl,
    purpose: &str,
) -> Result<PgConnection, DbError> {
    PgConnection::establish(target.expose()).map_err(|e| {
        DbError::Connect(format!(
            "cannot reach PostgreSQL at {} {purpose} (DATABASE_URL): {}",
            configured.server(),
            configured.redact(&connection_reason(&e.to_string()))
        ))
    })
}

/// libpq's message in one line, without what the caller already says
/// (`connection to server at "h", port p failed: `) or the severity:
/// `Connection refused\n\tIs the server running…` → `connection refused`.
fn connection_reason(message: &str) -> String {
    let first = message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let reason = first.split_once(" failed: ").map_or(first, |(_, r)| r);
    let reason = reason
        .trim_start_matches("FATAL:")
        .trim_start_matches("ERROR:")
        .trim();
    // `Connection refused` → `connection refused`, but `SSL …` stays.
    let mut chars = reason.chars();
    match (chars.next(), chars.next()) {
        (Some(a), Some(b)) if a.is_ascii_uppercase() && b.is_ascii_lowercase() => {
            format!("{}{}", a.to_ascii_lowercase(), &reason[1..])
        }
        _ => reason.to_owned(),
    }
}

/// `SELECT 1` through the pool.
pub fn ping(conn: &mut PgConnection) -> diesel::QueryResult<()> {
    conn.batch_execute("SELECT 1")
}

/// Whether the database has every migration this build embeds: a database
/// recreated empty, or one an older version migrated, answers queries but
/// cannot take callbacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schema {
    Current,
    /// The newest migration it has (none at all: never migrated).
    Behind {
        has: Option<String>,
        wants: String,
    },
}

/// The newest embedded migration's version (`2026-12-02-000007`, …).
pub fn latest_migration() -> String {
    use diesel::migration::MigrationSource;
    MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .ok()
        .into_iter()
        .flatten()
        .map(|m| m.name().version().to_string())
        .max()
        .unwrap_or_default()
}

/// Compare the database's migrations with this build's (two small queries).
pub fn schema(conn: &mut PgConnection, wants: &str) -> diesel::QueryResult<Schema> {
    #[derive(QueryableByName)]
    struct Newest {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        version: Option<String>,
    }
    #[derive(QueryableByName)]
    struct Present {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        present: bool,
    }
    let present = diesel::sql_query(
        "SELECT to_regclass('__diesel_schema_migrations') IS NOT NULL AS present",
    )
    .get_result::<Present>(conn)?
    .present;
    let has = if present {
        diesel::sql_query("SELECT max(version) AS version FROM __diesel_schema_migrations")
            .get_result::<Newest>(conn)?
            .version
    } else {
        None
    };
    Ok(match has {
        Some(h) if h.as_str() >= wants => Schema::Current,
        has => Schema::Behind {
            has,
            wants: wants.to_owned(),
        },
    })
}

/// Run `f` only if it is done within `wait`, connection included: a
/// readiness probe must answer within its own timeout, not the pool's.
pub async fn run_within<T, F>(pool: &PgPool, wait: Duration, f: F) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnOnce(&mut PgConnection) -> diesel::QueryResult<T> + Send + 'static,
{
    run_inner(pool, wait, Some(wait), f).await
}

#[cfg(test)]
mod tests {
    use super::connection_reason;

    #[test]
    fn the_connection_reason_is_one_line_without_the_server_or_severity() {
        for (libpq, want) in [
            (
                "connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?\n",
                "connection refused",
            ),
            (
                "connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  role \"nobody\" does not exist\n",
                "role \"nobody\" does not exist",
            ),
            (
                "could not translate host name \"x.invalid\" to address: Name or service not known\n",
                "could not translate host name \"x.invalid\" to address: Name or service not known",
            ),
            ("SSL error: certificate verify failed", "SSL error: certificate verify failed"),
            ("", ""),
        ] {
            assert_eq!(connection_reason(libpq), want);
        }
    }
}
