//! `haoka-sync show <vendor> <order-id>`: an order's state, its pending
//! confirmations and its history, personal data masked.

use super::{failed, CliResult};
use crate::config::DatabaseConfig;
use crate::db;
use crate::rules::Vendor;

pub(super) async fn run(db: &DatabaseConfig, vendor: Vendor, order_id: &str) -> CliResult {
    let pool = db::pool(&db.url, 1, db.timeout);
    let id = order_id.to_owned();
    let found = db::run(&pool, move |conn| {
        let order = crate::store::find_order(conn, vendor, &id)?;
        let history = crate::store::order_history(conn, vendor, &id)?;
        let confirmations = crate::store::order_confirmations(conn, vendor, &id)?;
        Ok(order.map(|o| (o, history, confirmations)))
    })
    .await?;
    let Some((o, history, confirmations)) = found else {
        return Err(failed(format!("no {vendor} order {order_id}")));
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
        o.activated_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "-".into())
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
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "never".into()),
        opt(&o.last_source)
    );
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
                c.requested_at.format("%Y-%m-%d %H:%M:%S UTC"),
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
            e.received_at.format("%Y-%m-%d %H:%M:%S"),
            e.source,
            e.status,
            e.effect,
            if e.applied { "applied" } else { "-" },
            e.vendor_status.unwrap_or_default()
        );
    }
    Ok(())
}
