//! `haoka-sync watch [--vendor V] [--since-id N] [--format text|json]`:
//! follow the change feed and print one line per applied status change as
//! it commits. It catches up from `--since-id` first (without it: from the
//! newest change), then LISTENs on `haoka_sync_order_changed`; every
//! notification (and a look every few seconds) reads `order_changes` after
//! the last id printed, so the lines come in id order with none missing.
//! When the connection is lost it reconnects by itself and resumes after
//! the last id it printed. Read-only; it runs until stopped (Ctrl-C).

use std::io::Write;
use std::time::{Duration, Instant};

use diesel::prelude::*;

use super::{failed, one_line, read_only_connection, CliResult};
use crate::config::DatabaseConfig;
use crate::db::DatabaseUrl;
use crate::rules::schedule::china_time;
use crate::rules::Vendor;
use crate::store::feed::{self, FeedRow, CHANNEL};

/// How the changes are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Format {
    /// `#<id> <China time> <vendor> <order id> <from> -> <to> (<source>)`
    Text,
    /// The notification's JSON, one object a line.
    Json,
}

#[derive(Debug, clap::Args)]
pub(super) struct WatchArgs {
    /// Only this vendor's changes (haoka172 or damaijia).
    #[arg(long)]
    vendor: Option<Vendor>,
    /// Print every change after this id first (0: the whole feed), then
    /// follow; without it, only changes from now on.
    #[arg(long, value_name = "N")]
    since_id: Option<i64>,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Between looks at the connection for notifications.
const TICK: Duration = Duration::from_millis(100);
/// A look at the feed even without a notification: a lost notification
/// costs at most this, and a dead connection is found within it.
const LOOK_EVERY: Duration = Duration::from_secs(3);
/// Changes read per query while catching up.
const PAGE: i64 = 1000;

pub(super) async fn run(db: &DatabaseConfig, args: WatchArgs) -> CliResult {
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || follow(&url, &args))
        .await?
        .map_err(failed)
}

fn follow(url: &DatabaseUrl, args: &WatchArgs) -> Result<(), String> {
    // Keepalives and a send timeout: a peer that vanished without closing
    // the connection is found in seconds, not in the kernel's minutes.
    let url = url
        .with_default_param("keepalives_idle", "5")
        .with_default_param("keepalives_interval", "2")
        .with_default_param("keepalives_count", "2")
        .with_default_param("tcp_user_timeout", "10000");
    let vendor = args.vendor.map(|v| v.as_str());
    // The first connection must work: a wrong DATABASE_URL is one line.
    let mut conn = read_only_connection(&url)?;
    let mut last = match args.since_id {
        Some(id) => id.max(0),
        None => feed::last_id(&mut conn).map_err(|e| format!("reading the feed: {e}"))?,
    };
    eprintln!(
        "watch: following order_changes{} after id {last} (Ctrl-C to stop)",
        vendor.map(|v| format!(" of {v}")).unwrap_or_default()
    );
    let mut out = std::io::stdout().lock();
    let mut pause = Duration::from_millis(250);
    loop {
        match stream(&mut conn, vendor, args.format, &mut last, &mut out) {
            Ok(()) => return Ok(()),
            Err(Lost::Output(e)) => return Err(format!("cannot write the output: {e}")),
            Err(Lost::Database(e)) => {
                eprintln!("watch: lost the database ({e}); reconnecting, resuming after id {last}");
            }
        }
        let down = Instant::now();
        conn = loop {
            std::thread::sleep(pause);
            match read_only_connection(&url) {
                Ok(c) => break c,
                Err(e) => {
                    pause = (pause * 2).min(Duration::from_secs(5));
                    log::debug!("watch: still no database: {e}");
                }
            }
        };
        pause = Duration::from_millis(250);
        eprintln!(
            "watch: reconnected after {:.1}s; resuming after id {last}",
            down.elapsed().as_secs_f64()
        );
    }
}

enum Lost {
    Database(String),
    Output(std::io::Error),
}

/// LISTEN, catch up, then print what each notification announces, until
/// the connection fails (or stdout closes: `watch | head`).
fn stream(
    conn: &mut PgConnection,
    vendor: Option<&str>,
    format: Format,
    last: &mut i64,
    out: &mut impl Write,
) -> Result<(), Lost> {
    let db = |e: diesel::result::Error| Lost::Database(one_line(&e.to_string()));
    // Listening before the catch-up: a change committed in between is
    // either read now or announced.
    diesel::sql_query(format!("LISTEN {CHANNEL}"))
        .execute(conn)
        .map_err(db)?;
    let mut looked = Instant::now() - LOOK_EVERY;
    loop {
        let mut heard = false;
        for n in conn.notifications_iter() {
            n.map_err(db)?;
            heard = true;
        }
        if heard || looked.elapsed() >= LOOK_EVERY {
            looked = Instant::now();
            loop {
                let rows = feed::since(conn, *last, vendor, PAGE).map_err(db)?;
                for r in &rows {
                    match writeln!(out, "{}", line(r, format)) {
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                        Err(e) => return Err(Lost::Output(e)),
                        Ok(()) => {}
                    }
                    *last = r.id;
                }
                if let Err(e) = out.flush() {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(Lost::Output(e));
                }
                if (rows.len() as i64) < PAGE {
                    break;
                }
            }
            // With a vendor filter the others' changes move nothing:
            // still, a look proves the connection alive.
        }
        std::thread::sleep(TICK);
    }
}

fn line(r: &FeedRow, format: Format) -> String {
    match format {
        Format::Text => format!(
            "#{} {} {} {} {} -> {} ({})",
            r.id,
            china_time(r.at),
            r.vendor,
            r.order_id,
            r.from_status,
            r.to_status,
            r.source
        ),
        Format::Json => serde_json::to_string(r).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row() -> FeedRow {
        FeedRow {
            id: 42,
            vendor: "haoka172".into(),
            order_id: "HK1".into(),
            from_status: "pending".into(),
            to_status: "shipped".into(),
            source: "callback".into(),
            at: chrono::Utc.with_ymd_and_hms(2026, 12, 2, 3, 4, 5).unwrap(),
        }
    }

    #[test]
    fn a_text_line_says_id_china_time_order_and_move() {
        assert_eq!(
            line(&row(), Format::Text),
            "#42 2026-12-02 11:04:05 +08:00 haoka172 HK1 pending -> shipped (callback)"
        );
    }

    #[test]
    fn a_json_line_has_the_notification_fields() {
        let v: serde_json::Value = serde_json::from_str(&line(&row(), Format::Json)).unwrap();
        assert_eq!(v["id"], 42);
        assert_eq!(v["from"], "pending");
        assert_eq!(v["to"], "shipped");
        assert_eq!(v["order_id"], "HK1");
        assert_eq!(v["source"], "callback");
        assert_eq!(v["at"], "2026-12-02T03:04:05Z");
    }
}
