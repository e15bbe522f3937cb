//! The only place that decides what is committed. It applies an observation
//! (event row + order merge) in the caller's transaction, records raw inbound
//! requests, and batches many callbacks into one commit (`ingest`).
//! The rules themselves live in `status`; this module only persists them.

pub mod gaps;
pub mod ingest;
pub mod poll;
pub mod tokens;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Text};
use diesel::upsert::excluded;

use crate::db::models::{
    NewInboundCallback, NewOrderEvent, NewOrderKey, NextCheck, Order, OrderEvent, OrderUpdate,
};
use crate::db::schema::{inbound_callbacks, order_events, orders};
use crate::poller::schedule::{jitter, Schedule};
use crate::status::{self, Effect, Observation, Source, Status};
use crate::vendors::Vendor;

/// Take a transaction-scoped advisory lock on `vendor` within the lock
/// family `base` (one family per concern: call budgets, gap looks), so that
/// only one process at a time does that work for that vendor.
pub fn lock_vendor(conn: &mut PgConnection, base: i64, vendor: Vendor) -> QueryResult<()> {
    let n: i64 = match vendor {
        Vendor::Haoka172 => 1,
        Vendor::Damaijia => 2,
    };
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<diesel::sql_types::BigInt, _>(base + n)
        .execute(conn)?;
    Ok(())
}

/// What applying one observation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A new event row; the order was merged.
    Event {
        event_id: i64,
        effect: Effect,
        changed: bool,
        /// The order's status after the merge.
        status: Status,
    },
    /// The dedup key was seen before: nothing written.
    Duplicate,
}

/// One observation to apply, with its dedup key (callback `RequidId`).
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    pub obs: &'a Observation,
    pub request_id: Option<&'a str>,
}

/// Apply one observation inside the caller's transaction; see `apply_batch`.
pub fn apply_observation(
    conn: &mut PgConnection,
    obs: &Observation,
    request_id: Option<&str>,
    now: DateTime<Utc>,
    schedule: &Schedule,
) -> QueryResult<Applied> {
    let mut r = apply_batch(conn, &[Item { obs, request_id }], now, schedule)?;
    Ok(r.pop().unwrap_or(Applied::Duplicate))
}

/// An order while a batch is merged into it.
struct Working {
    before: Order,
    state: status::OrderState,
    next: NextCheck,
    changed: bool,
    source: &'static str,
}

/// Apply many observations inside the caller's transaction, in a fixed number
/// of statements whatever their count: look up which dedup keys were seen,
/// lock (or create) every order touched in key order, merge in Rust by the
/// status rules (several observations of one order in arrival order), append
/// the events, write the orders back. A seen key, or a key repeated within
/// the batch, changes nothing. The next poll is rescheduled with the merge:
/// news (a callback, or a poll that changed something) waits the overdue
/// time, a quiet poll backs off. Results are in `items` order.
///
/// A concurrent transaction inserting the same key makes the event insert
/// fail with a unique violation; the caller retries and then sees the key.
pub fn apply_batch(
    conn: &mut PgConnection,
    items: &[Item<'_>],
    now: DateTime<Utc>,
    schedule: &Schedule,
) -> QueryResult<Vec<Applied>> {
    use std::collections::BTreeMap;
    let mut seen = seen_request_ids(conn, items)?;
    let fresh: Vec<bool> = items
        .iter()
        .map(|i| match i.request_id {
            Some(rid) => seen.insert((i.obs.vendor.as_str().to_owned(), rid.to_owned())),
            None => true,
        })
        .collect();
    // Lock every order touched, in key order (concurrent batches lock in the
    // same order, so they cannot deadlock); create the missing ones.
    let keys: Vec<(&str, &str)> = items
        .iter()
        .zip(&fresh)
        .filter(|(_, f)| **f)
        .map(|(i, _)| (i.obs.vendor.as_str(), i.obs.order_id.as_str()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if keys.is_empty() {
        return Ok(vec![Applied::Duplicate; items.len()]);
    }
    let rows: Vec<NewOrderKey<'_>> = keys
        .iter()
        .map(|(vendor, order_id)| NewOrderKey { vendor, order_id })
        .collect();
    let locked: Vec<Order> = diesel::insert_into(orders::table)
        .values(&rows)
        .on_conflict((orders::vendor, orders::order_id))
        .do_update()
        .set(orders::vendor.eq(excluded(orders::vendor)))
        .returning(Order::as_returning())
        .get_results(conn)?;
    let mut work: BTreeMap<(String, String), Working> = locked
        .into_iter()
        .map(|o| {
            let next = NextCheck {
                at: o.next_check_at,
                quiet_polls: o.quiet_polls,
            };
            (
                (o.vendor.clone(), o.order_id.clone()),
                Working {
                    state: o.state(),
                    before: o,
                    next,
                    changed: false,
                    source: "callback",
                },
            )
        })
        .collect();
    // Merge in arrival order.
    let mut events = Vec::new();
    let mut outcomes: Vec<Option<(Effect, bool, Status)>> = Vec::with_capacity(items.len());
    for (item, fresh) in items.iter().zip(&fresh) {
        let obs = item.obs;
        let key = (obs.vendor.as_str().to_owned(), obs.order_id.clone());
        let Some(w) = work.get_mut(&key).filter(|_| *fresh) else {
            outcomes.push(None);
            continue;
        };
        let merged = status::merge(&w.state, obs);
        let st = merged.state.status;
        w.next = if obs.source != Source::Poll {
            NextCheck {
                at: schedule.after_news(obs.vendor, st, now),
                quiet_polls: 0,
            }
        } else if merged.changed {
            NextCheck {
                at: schedule.after_poll_news(obs.vendor, st, now),
                quiet_polls: 0,
            }
        } else {
            let quiet = w.next.quiet_polls.saturating_add(1);
            NextCheck {
                at: schedule.after_quiet(obs.vendor, st, now, quiet, jitter(&obs.order_id, now)),
                quiet_polls: quiet,
            }
        };
        w.changed |= merged.changed;
        w.source = obs.source.as_str();
        w.state = merged.state;
        events.push(NewOrderEvent {
            vendor: obs.vendor.as_str(),
            order_id: &obs.order_id,
            source: obs.source.as_str(),
            status: obs.status.as_str(),
            vendor_status: obs.vendor_status.as_deref(),
            applied: merged.changed,
            effect: merged.effect.as_str(),
            request_id: item.request_id,
            observed: serde_json::to_value(&obs.fields).unwrap_or_default(),
            received_at: now,
        });
        outcomes.push(Some((merged.effect, merged.changed, st)));
    }
    // Rows come back in VALUES order.
    let ids: Vec<i64> = diesel::insert_into(order_events::table)
        .values(&events)
        .returning(order_events::id)
        .get_results(conn)?;
    let updates: Vec<OrderUpdate<'_>> = work
        .values()
        .map(|w| OrderUpdate::from_state(&w.state, &w.before, w.source, now, w.changed, w.next))
        .collect();
    diesel::insert_into(orders::table)
        .values(&updates)
        .on_conflict((orders::vendor, orders::order_id))
        .do_update()
        .set((
            orders::status.eq(excluded(orders::status)),
            orders::vendor_status.eq(excluded(orders::vendor_status)),
            orders::vendor_order_no.eq(excluded(orders::vendor_order_no)),
            orders::express_name.eq(excluded(orders::express_name)),
            orders::express_code.eq(excluded(orders::express_code)),
            orders::third_phone.eq(excluded(orders::third_phone)),
            orders::iccid.eq(excluded(orders::iccid)),
            orders::card_status.eq(excluded(orders::card_status)),
            orders::activated_at.eq(excluded(orders::activated_at)),
            orders::first_charge.eq(excluded(orders::first_charge)),
            orders::first_charge_amount.eq(excluded(orders::first_charge_amount)),
            orders::remark.eq(excluded(orders::remark)),
            orders::details.eq(excluded(orders::details)),
            orders::conflict.eq(excluded(orders::conflict)),
            orders::unknown_vendor_status.eq(excluded(orders::unknown_vendor_status)),
            orders::last_source.eq(excluded(orders::last_source)),
            orders::last_heard_at.eq(excluded(orders::last_heard_at)),
            orders::status_changed_at.eq(excluded(orders::status_changed_at)),
            orders::updated_at.eq(excluded(orders::updated_at)),
            orders::next_check_at.eq(excluded(orders::next_check_at)),
            orders::quiet_polls.eq(excluded(orders::quiet_polls)),
            orders::tracking_expired_at.eq(excluded(orders::tracking_expired_at)),
        ))
        .execute(conn)?;
    let mut ids = ids.into_iter();
    Ok(outcomes
        .into_iter()
        .map(|o| match o {
            Some((effect, changed, status)) => Applied::Event {
                event_id: ids.next().unwrap_or_default(),
                effect,
                changed,
                status,
            },
            None => Applied::Duplicate,
        })
        .collect())
}

#[derive(QueryableByName)]
struct SeenKey {
    #[diesel(sql_type = Text)]
    vendor: String,
    #[diesel(sql_type = Text)]
    request_id: String,
}

/// Which of the items' dedup keys are already in `order_events`: one
/// statement, one unique-index probe per key. The keys are joined from
/// arrays so that the only index matching both columns is the unique one;
/// a plain `vendor = $1 AND request_id = ANY($2)` can get a cached generic
/// plan that walks every event of the vendor (planned while the table was
/// empty), which made each batch slower as the table grew.
fn seen_request_ids(
    conn: &mut PgConnection,
    items: &[Item<'_>],
) -> QueryResult<std::collections::HashSet<(String, String)>> {
    let (vendors, rids): (Vec<&str>, Vec<&str>) = items
        .iter()
        .filter_map(|i| Some((i.obs.vendor.as_str(), i.request_id?)))
        .unzip();
    if rids.is_empty() {
        return Ok(Default::default());
    }
    let found: Vec<SeenKey> = diesel::sql_query(
        "SELECT e.vendor, e.request_id FROM unnest($1::text[], $2::text[]) AS k(vendor, request_id) \
         JOIN order_events e ON e.vendor = k.vendor AND e.request_id = k.request_id",
    )
    .bind::<Array<Text>, _>(&vendors)
    .bind::<Array<Text>, _>(&rids)
    .load(conn)?;
    Ok(found
        .into_iter()
        .map(|k| (k.vendor, k.request_id))
        .collect())
}

/// Append raw inbound requests (one multi-row insert).
pub fn insert_inbound(
    conn: &mut PgConnection,
    rows: &[NewInboundCallback<'_>],
) -> QueryResult<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    diesel::insert_into(inbound_callbacks::table)
        .values(rows)
        .execute(conn)
}

pub fn find_order(
    conn: &mut PgConnection,
    vendor: Vendor,
    order_id: &str,
) -> QueryResult<Option<Order>> {
    orders::table
        .find((vendor.as_str(), order_id))
        .select(Order::as_select())
        .first(conn)
        .optional()
}

/// The order's history, oldest first.
pub fn order_history(
    conn: &mut PgConnection,
    vendor: Vendor,
    order_id: &str,
) -> QueryResult<Vec<OrderEvent>> {
    order_events::table
        .filter(order_events::vendor.eq(vendor.as_str()))
        .filter(order_events::order_id.eq(order_id))
        .order(order_events::id.asc())
        .select(OrderEvent::as_select())
        .load(conn)
}
