//! `haoka-sync show <vendor> <order-id>`: an order's state, how long it has
//! been in its status against its peers (`status_dwell`), where it stands
//! with the poller, its pending confirmations and its history, personal data
//! masked. Read-only: it creates nothing, and a missing database is one line.

use chrono::{DateTime, Utc};

use super::{failed, CliResult};
use crate::config::DatabaseConfig;
use crate::rules::duration::human_duration;
use crate::rules::schedule::china_time;
use crate::rules::Vendor;
use crate::store::dwell::DwellRow;

pub(super) async fn run(db: &DatabaseConfig, vendor: Vendor, order_id: &str) -> CliResult {
    let url = db.url.clone();
    let id = order_id.to_owned();
    let found = tokio::task::spawn_blocking(move || -> Result<_, String> {
        // One direct connection, not a pool: a database that is missing or
        // down is said at once, in one line.
        let mut conn = super::read_only_connection(&url)?;
        let q = |e: diesel::result::Error| format!("database {}: {e}", url.database_name());
        let conn = &mut conn;
        let order = crate::store::find_order(conn, vendor, &id).map_err(q)?;
        let Some(order) = order else { return Ok(None) };
        let poll = crate::store::poll::poll_state(conn, vendor, &id).map_err(q)?;
        let pause = crate::store::poll::active_pause(conn, vendor, Utc::now()).map_err(q)?;
        let history = crate::store::order_history(conn, vendor, &id).map_err(q)?;
        let confirmations = crate::store::order_confirmations(conn, vendor, &id).map_err(q)?;
        let status = order
            .status
            .parse()
            .unwrap_or(crate::rules::Status::Unknown);
        let peers = crate::store::dwell::of(conn, vendor, status).map_err(q)?;
        Ok(Some((order, poll, pause, history, confirmations, peers)))
    })
    .await?
    .map_err(failed)?;
    let Some((o, poll, pause, history, confirmations, peers)) = found else {
        return Err(failed(format!(
            "no {vendor} order {order_id} (`haoka-sync track {vendor} {order_id}` starts tracking it)"
        )));
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("{} {}", o.vendor, o.order_id);
    println!("  status:        {} ({})", o.status, opt(&o.vendor_status));
    if o.conflict {
        println!("  CONFLICT:      a different terminal status was reported later (see history)");
    }
    if let Some(u) = &o.unknown_vendor_status {
        println!("  unmapped label: {u}");
    }
    println!("  vendor order:  {}", opt(&o.vendor_order_no));
    println!(
        "  express:       {} {}",
        opt(&o.express_name),
        opt(&o.express_code)
    );
    println!(
        "  phone:         {}",
        o.third_phone
            .as_deref()
            .map(crate::rules::mask::phone)
            .unwrap_or_else(|| "-".into())
    );
    println!(
        "  card:          {} activated_at={}",
        opt(&o.card_status),
        o.activated_at.map(china_time).unwrap_or_else(|| "-".into())
    );
    println!(
        "  first top-up:  {} {}",
        o.first_charge
            .map(|b| b.to_string())
            .unwrap_or_else(|| "-".into()),
        opt(&o.first_charge_amount)
    );
    println!(
        "  last heard:    {} via {}",
        o.last_heard_at
            .map(china_time)
            .unwrap_or_else(|| "never".into()),
        opt(&o.last_source)
    );
    if !o.is_terminal {
        let since = o.status_changed_at.unwrap_or(o.created_at);
        println!(
            "  in status:     {} (since {}){}",
            human_duration((Utc::now() - since).num_seconds().max(0) as u64),
            china_time(since),
            against_peers(&o.status, since, peers.as_ref())
        );
    }
    print_poll(vendor, poll.as_ref(), pause.as_ref());
    for c in &confirmations {
        let what = match c.reason.as_str() {
            "terminal" => format!("claimed {}", c.claimed_status),
            _ => "was signed over an OrderNo172 nobody vouched for".to_owned(),
        };
        match (&c.result, &c.vendor_status) {
            (Some(result), answer) => println!(
                "  callback {} {what}: {result} by GetOrderInfo{}",
                c.request_id,
                answer
                    .as_deref()
                    .map(|a| format!(" (answered {a})"))
                    .unwrap_or_default()
            ),
            (None, _) => println!(
                "  callback {} {what}: awaiting GetOrderInfo since {}{}",
                c.request_id,
                china_time(c.requested_at),
                if c.expedited {
                    " (asked at once)"
                } else {
                    " (at its next scheduled check)"
                }
            ),
        }
    }
    println!("  history ({} events):", history.len());
    for e in history {
        println!(
            "    {}  {:<8} {:<17} {:<14} {:<8} {}",
            china_time(e.received_at),
            e.source,
            e.status,
            e.effect,
            if e.applied { "applied" } else { "-" },
            e.vendor_status.unwrap_or_default()
        );
    }
    Ok(())
}

/// How the time in its status compares with its peers' (`status_dwell`):
/// said loudest past their p99, so that a stuck order (or one whose
/// callbacks were lost) stands out.
fn against_peers(status: &str, since: DateTime<Utc>, peers: Option<&DwellRow>) -> String {
    let Some(p) = peers else {
        return String::new();
    };
    let stayed = (Utc::now() - since).num_seconds();
    let peers = format!("{} {status} orders", p.vendor);
    let h = |s: i64| human_duration(s.max(0) as u64);
    match (p.p50_secs, p.p90_secs, p.p99_secs) {
        (_, _, Some(p99)) if stayed > p99 => format!(
            ": LONGER THAN 99 % of {peers} (p99 {}, status_dwell): stuck at the vendor, or its callbacks were lost",
            h(p99)
        ),
        (_, Some(p90), _) if stayed > p90 => {
            format!(": longer than 90 % of {peers} (p90 {}, status_dwell)", h(p90))
        }
        (Some(p50), _, _) if stayed > p50 => {
            format!(": longer than half of {peers} (p50 {}, status_dwell)", h(p50))
        }
        (Some(p50), p90, _) => format!(
            ": {peers} stay p50 {}{} (status_dwell)",
            h(p50),
            p90.map(|p| format!(", p90 {}", h(p))).unwrap_or_default()
        ),
        (None, ..) => String::new(),
    }
}

/// The poll lines: next check and why, the last outcome, quiet polls, calls
/// today and a vendor pause in effect.
fn print_poll(
    vendor: Vendor,
    poll: Option<&crate::store::poll::PollState>,
    pause: Option<&(DateTime<Utc>, String)>,
) {
    let Some(p) = poll else {
        println!("  next check:    - (not tracked)");
        return;
    };
    let now = Utc::now();
    let when = match p.next_check_at {
        Some(t) if t <= now => format!("due now (since {})", china_time(t)),
        Some(t) => china_time(t),
        None => "never".to_owned(),
    };
    println!("  next check:    {when}: {}", p.reason);
    println!(
        "  last poll:     {} (quiet polls {}, calls today {}, tracked since {})",
        p.last_poll_outcome.as_deref().unwrap_or("never polled"),
        p.quiet_polls,
        p.calls_today,
        china_time(p.tracked_at)
    );
    if let Some((until, reason)) = pause {
        println!(
            "  PAUSED:        no {vendor} calls until {}: {reason}",
            china_time(*until)
        );
    }
}
