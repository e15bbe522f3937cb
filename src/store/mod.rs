//! The only place that decides what is committed. It applies an observation
//! (event row + order merge) in the caller's transaction, records raw inbound
//! requests, and batches many callbacks into one commit (`ingest`).
//! The rules themselves live in `status`; this module only persists them.

pub mod dwell;
pub mod feed;
pub mod forward;
pub mod gaps;
pub mod ingest;
pub mod metrics;
pub mod poll;
pub mod replay;
pub mod report;
pub mod retention;
pub mod schedule;
pub mod tokens;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Text};
use diesel::upsert::excluded;

use diesel::dsl::sql;
use diesel::sql_types::{Bool, Timestamptz};

use crate::db::models::{
    Confirmation, NewConfirmation, NewInboundCallback, NewOrderEvent, NewOrderKey, Order,
    OrderEvent, OrderPoll, OrderUpdate, ScheduleUpdate,
};
use crate::db::schema::{
    callback_confirmations, inbound_callbacks, order_events, order_polls, orders,
};
use crate::rules::schedule::{Event, NextCheck, Schedule};
use crate::rules::status::{self, Corroboration, Effect, Observation, SignedOver, Source, Status};
use crate::vendors::Vendor;

/// Take a transaction-scoped advisory lock on `vendor` within the lock
/// family `base` (one family per concern: call budgets, gap looks), so that
/// only one process at a time does that work for that vendor.
pub fn lock_vendor(conn: &mut PgConnection, base: i64, vendor: Vendor) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<diesel::sql_types::BigInt, _>(base + vendor.number())
        .execute(conn)?;
    Ok(())
}

/// What applying one item did.
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
    /// A callback that would have made the order terminal: its event is kept
    /// (effect `unconfirmed`) and the order left as it was until a query
    /// confirms it (`callback_confirmations`).
    Held {
        event_id: i64,
        /// What the callback claimed.
        claimed: Status,
        /// The order was made due for that query now.
        expedited: bool,
    },
    /// The dedup key was seen before: nothing written.
    Duplicate,
    /// Signed over a vendor order number we do not hold yet: no event, the
    /// order untouched but for a query to learn its number.
    Unverified { expedited: bool },
    /// Signed over a vendor order number other than the one we hold.
    Mismatch,
}

/// One observation to apply, with its dedup key (callback `RequidId`).
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    pub obs: &'a Observation,
    pub request_id: Option<&'a str>,
    /// For callbacks: what the signature vouched for. `VendorOrderNo` counts
    /// only when it corroborates (`status::corroborate`).
    pub signed_over: Option<SignedOver>,
}

impl<'a> Item<'a> {
    /// An observation from a source that needs no signature (poll, manual).
    pub fn trusted(obs: &'a Observation) -> Self {
        Item {
            obs,
            request_id: None,
            signed_over: None,
        }
    }
}

/// Apply one observation inside the caller's transaction; see `apply_batch`.
pub fn apply_observation(
    conn: &mut PgConnection,
    obs: &Observation,
    request_id: Option<&str>,
    now: DateTime<Utc>,
    schedule: &Schedule,
) -> QueryResult<Applied> {
    let item = Item {
        request_id,
        ..Item::trusted(obs)
    };
    let mut r = apply_batch(conn, &[item], now, schedule)?;
    Ok(r.pop().unwrap_or(Applied::Duplicate))
}

/// An order while a batch is merged into it.
struct Working {
    before: Order,
    state: status::OrderState,
    /// The schedule it has now (read only when a rule needs it: a quiet
    /// poll counts on from it).
    held: NextCheck,
    /// The schedule to write, when the batch decided one.
    next: Option<NextCheck>,
    changed: bool,
    source: &'static str,
    /// Created by this batch (it did not exist before).
    created: bool,
    /// A trusted observation (applied or held) concerned it: write it back.
    heard: bool,
    /// Made due now for a confirming query.
    expedited: bool,
}

/// A callback waiting for the vendor's word, to insert once event ids are
/// known.
struct Pending {
    key: (String, String),
    reason: &'static str,
    item: usize,
    /// Index into the batch's events (held terminal callbacks).
    event: Option<usize>,
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
/// Callbacks are trusted only as far as their signature reaches: one signed
/// over the vendor's order number counts only when it corroborates, and one
/// that would make its order terminal is held for a confirming query
/// (`Schedule::confirm_terminal`). Either kind makes the order due at once,
/// at most once per order and reason in its lifetime. An order created only
/// for a callback that turns out unverified is not kept.
///
/// Every status change is published to the change feed (`feed::publish`)
/// as the batch's last statements: the feed's lock is held to the commit,
/// so a caller must lock no other order after this in the same transaction.
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
    let locked: Vec<(Order, bool)> = diesel::insert_into(orders::table)
        .values(&rows)
        .on_conflict((orders::vendor, orders::order_id))
        .do_update()
        .set(orders::vendor.eq(excluded(orders::vendor)))
        // `xmax = 0` only on a row this statement inserted.
        .returning((Order::as_returning(), sql::<Bool>("xmax = 0")))
        .get_results(conn)?;
    let mut work: BTreeMap<(String, String), Working> = locked
        .into_iter()
        .map(|(o, created)| {
            (
                (o.vendor.clone(), o.order_id.clone()),
                Working {
                    state: o.state(),
                    before: o,
                    held: NextCheck::default(),
                    next: None,
                    changed: false,
                    source: "callback",
                    created,
                    heard: false,
                    expedited: false,
                },
            )
        })
        .collect();
    // A quiet poll backs off from the order's current quiet count; callbacks
    // need nothing of the current schedule, so the callback path skips this.
    if items.iter().any(|i| i.obs.source == Source::Poll) {
        let (v, o): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
        let held: Vec<OrderPoll> = order_polls::table
            .filter(order_polls::vendor.eq_any(&v))
            .filter(order_polls::order_id.eq_any(&o))
            .select(OrderPoll::as_select())
            .load(conn)?;
        for p in held {
            if let Some(w) = work.get_mut(&(p.vendor.clone(), p.order_id.clone())) {
                w.held = p.next();
            }
        }
    }
    // Merge in arrival order.
    let mut events = Vec::new();
    // Status changes, by index into `events`.
    let mut changes: Vec<(usize, Status, Status)> = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut outcomes: Vec<Applied> = Vec::with_capacity(items.len());
    for (index, (item, fresh)) in items.iter().zip(&fresh).enumerate() {
        let obs = item.obs;
        let key = (obs.vendor.as_str().to_owned(), obs.order_id.clone());
        let Some(w) = work.get_mut(&key).filter(|_| *fresh) else {
            outcomes.push(Applied::Duplicate);
            continue;
        };
        if item.signed_over == Some(SignedOver::VendorOrderNo) {
            match status::corroborate(&w.state, obs.fields.vendor_order_no.as_deref()) {
                Corroboration::Matches => {}
                Corroboration::Differs => {
                    outcomes.push(Applied::Mismatch);
                    continue;
                }
                Corroboration::Unknown => {
                    // Expedited or not is settled once the batch is merged.
                    pending.push(Pending {
                        key,
                        reason: "vendor_order_no",
                        item: index,
                        event: None,
                    });
                    outcomes.push(Applied::Unverified { expedited: false });
                    continue;
                }
            }
        }
        let merged = status::merge(&w.state, obs);
        if schedule.confirm_terminal && status::needs_confirmation(obs, &merged) {
            w.heard = true;
            w.source = obs.source.as_str();
            pending.push(Pending {
                key,
                reason: "terminal",
                item: index,
                event: Some(events.len()),
            });
            events.push(new_event(item, Effect::Unconfirmed, false, now));
            outcomes.push(Applied::Held {
                event_id: 0,
                claimed: obs.status,
                expedited: false,
            });
            continue;
        }
        let st = merged.state.status;
        let event = match (obs.source, merged.changed) {
            (Source::Poll, true) => Event::PollNews { status: st },
            (Source::Poll, false) => Event::PollQuiet { status: st },
            _ => Event::News { status: st },
        };
        let next = schedule.next_check(obs.vendor, &obs.order_id, event, w.held, now);
        w.held = next;
        w.next = Some(next);
        w.changed |= merged.changed;
        w.heard = true;
        w.source = obs.source.as_str();
        if merged.state.status != w.state.status {
            changes.push((events.len(), w.state.status, merged.state.status));
        }
        w.state = merged.state;
        events.push(new_event(item, merged.effect, merged.changed, now));
        outcomes.push(Applied::Event {
            event_id: 0,
            effect: merged.effect,
            changed: merged.changed,
            status: st,
        });
    }
    // Rows come back in VALUES order.
    let ids: Vec<i64> = if events.is_empty() {
        Vec::new()
    } else {
        diesel::insert_into(order_events::table)
            .values(&events)
            .returning(order_events::id)
            .get_results(conn)?
    };
    let mut next_id = ids.iter().copied();
    for o in &mut outcomes {
        if let Applied::Event { event_id, .. } | Applied::Held { event_id, .. } = o {
            *event_id = next_id.next().unwrap_or_default();
        }
    }
    if !pending.is_empty() {
        request_confirmations(
            conn,
            items,
            &pending,
            &ids,
            &mut work,
            &mut outcomes,
            schedule,
            now,
        )?;
    }
    // Orders created only for requests that did not count are not kept.
    let unused: Vec<(&str, &str)> = work
        .values()
        .filter(|w| w.created && !w.heard)
        .map(|w| (w.before.vendor.as_str(), w.before.order_id.as_str()))
        .collect();
    if !unused.is_empty() {
        let (v, o): (Vec<&str>, Vec<&str>) = unused.into_iter().unzip();
        diesel::sql_query(
            "DELETE FROM orders USING unnest($1::text[], $2::text[]) AS k(vendor, order_id) \
             WHERE orders.vendor = k.vendor AND orders.order_id = k.order_id",
        )
        .bind::<Array<Text>, _>(&v)
        .bind::<Array<Text>, _>(&o)
        .execute(conn)?;
    }
    // A new order heard of only through a held callback still gets its
    // schedule row, as registered (due now when expedited).
    for w in work
        .values_mut()
        .filter(|w| w.created && w.heard && w.next.is_none())
    {
        let Ok(vendor) = w.before.vendor.parse::<Vendor>() else {
            continue;
        };
        let registered = schedule.next_check(
            vendor,
            &w.before.order_id,
            Event::Registered,
            NextCheck::default(),
            now,
        );
        w.next = Some(if w.expedited {
            NextCheck {
                at: Some(now),
                ..registered
            }
        } else {
            registered
        });
    }
    // Expedited, with no new schedule decided: only due now.
    let due_now: Vec<(&str, &str)> = work
        .values()
        .filter(|w| w.expedited && w.next.is_none() && !w.created)
        .map(|w| (w.before.vendor.as_str(), w.before.order_id.as_str()))
        .collect();
    if !due_now.is_empty() {
        let (v, o): (Vec<&str>, Vec<&str>) = due_now.into_iter().unzip();
        diesel::sql_query(
            "UPDATE order_polls p SET next_check_at = $3 FROM unnest($1::text[], $2::text[]) AS k(vendor, order_id) \
             WHERE p.vendor = k.vendor AND p.order_id = k.order_id",
        )
        .bind::<Array<Text>, _>(&v)
        .bind::<Array<Text>, _>(&o)
        .bind::<Timestamptz, _>(now)
        .execute(conn)?;
    }
    let updates: Vec<OrderUpdate<'_>> = work
        .values()
        .filter(|w| w.heard)
        .map(|w| OrderUpdate::from_state(&w.state, &w.before, w.source, now, w.changed))
        .collect();
    if !updates.is_empty() {
        write_back(conn, &updates)?;
    }
    let schedules: Vec<ScheduleUpdate<'_>> = work
        .values()
        .filter_map(|w| {
            let next = w.next?;
            Some(ScheduleUpdate {
                vendor: &w.before.vendor,
                order_id: &w.before.order_id,
                next_check_at: next.at,
                quiet_polls: next.quiet_polls,
                tracking_expired_at: None,
            })
        })
        .collect();
    if !schedules.is_empty() {
        diesel::insert_into(order_polls::table)
            .values(&schedules)
            .on_conflict((order_polls::vendor, order_polls::order_id))
            .do_update()
            .set((
                order_polls::next_check_at.eq(excluded(order_polls::next_check_at)),
                order_polls::quiet_polls.eq(excluded(order_polls::quiet_polls)),
                order_polls::tracking_expired_at.eq(excluded(order_polls::tracking_expired_at)),
            ))
            .execute(conn)?;
    }
    // Last: the feed's lock is held to the commit (no order is locked
    // after it).
    let changes: Vec<feed::Change<'_>> = changes
        .into_iter()
        .map(|(e, from, to)| feed::Change {
            event_id: ids[e],
            vendor: events[e].vendor,
            order_id: events[e].order_id,
            from,
            to,
            source: events[e].source,
        })
        .collect();
    feed::publish(conn, &changes, now)?;
    Ok(outcomes)
}

fn new_event<'a>(
    item: &Item<'a>,
    effect: Effect,
    applied: bool,
    now: DateTime<Utc>,
) -> NewOrderEvent<'a> {
    let obs = item.obs;
    NewOrderEvent {
        vendor: obs.vendor.as_str(),
        order_id: &obs.order_id,
        source: obs.source.as_str(),
        status: obs.status.as_str(),
        vendor_status: obs.vendor_status.as_deref(),
        applied,
        effect: effect.as_str(),
        request_id: item.request_id,
        observed: serde_json::to_value(&obs.fields).unwrap_or_default(),
        received_at: now,
    }
}

#[derive(QueryableByName)]
struct ExpeditedKey {
    #[diesel(sql_type = Text)]
    vendor: String,
    #[diesel(sql_type = Text)]
    order_id: String,
    #[diesel(sql_type = Text)]
    reason: String,
}

/// Record the callbacks that wait for the vendor's word, and make each
/// order due at once for it, unless that order was already expedited for
/// the same reason (once in its lifetime), is terminal (never queried), or
/// exists only for this request. Two statements.
#[allow(clippy::too_many_arguments)]
fn request_confirmations(
    conn: &mut PgConnection,
    items: &[Item<'_>],
    pending: &[Pending],
    event_ids: &[i64],
    work: &mut std::collections::BTreeMap<(String, String), Working>,
    outcomes: &mut [Applied],
    schedule: &Schedule,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    let (v, o): (Vec<&str>, Vec<&str>) = pending
        .iter()
        .map(|p| (p.key.0.as_str(), p.key.1.as_str()))
        .unzip();
    let used: Vec<ExpeditedKey> = diesel::sql_query(
        "SELECT c.vendor, c.order_id, c.reason FROM callback_confirmations c \
         JOIN unnest($1::text[], $2::text[]) AS k(vendor, order_id) \
           ON c.vendor = k.vendor AND c.order_id = k.order_id \
         WHERE c.expedited",
    )
    .bind::<Array<Text>, _>(&v)
    .bind::<Array<Text>, _>(&o)
    .load(conn)?;
    let mut used: std::collections::HashSet<(String, String, String)> = used
        .into_iter()
        .map(|k| (k.vendor, k.order_id, k.reason))
        .collect();
    let mut rows = Vec::with_capacity(pending.len());
    for p in pending {
        let obs = items[p.item].obs;
        let Some(w) = work.get_mut(&p.key) else {
            continue;
        };
        let exists = !w.created || w.heard;
        let expedite = exists
            && !w.state.status.is_terminal()
            && used.insert((p.key.0.clone(), p.key.1.clone(), p.reason.to_owned()));
        if !exists {
            // Nothing to query about: the order is not kept either.
            continue;
        }
        if expedite {
            w.expedited = true;
            let event = Event::Confirm {
                status: w.state.status,
            };
            let next = schedule.next_check(obs.vendor, &obs.order_id, event, w.held, now);
            w.held = next;
            // Only the time changes: an order with no new schedule keeps its
            // quiet count in the database (`due_now` below).
            if let Some(n) = &mut w.next {
                *n = next;
            }
        }
        match &mut outcomes[p.item] {
            Applied::Held { expedited, .. } | Applied::Unverified { expedited } => {
                *expedited = expedite
            }
            _ => {}
        }
        rows.push(NewConfirmation {
            vendor: obs.vendor.as_str(),
            order_id: &obs.order_id,
            reason: p.reason,
            request_id: items[p.item].request_id.unwrap_or(""),
            claimed_status: obs.status.as_str(),
            claimed_vendor_order_no: (p.reason == "vendor_order_no")
                .then_some(obs.fields.vendor_order_no.as_deref())
                .flatten(),
            event_id: p.event.and_then(|e| event_ids.get(e).copied()),
            requested_at: now,
            expedited: expedite,
        });
    }
    if !rows.is_empty() {
        diesel::insert_into(callback_confirmations::table)
            .values(&rows)
            .execute(conn)?;
    }
    Ok(())
}

/// Write merged orders back (the rows exist and are locked by then).
fn write_back(conn: &mut PgConnection, updates: &[OrderUpdate<'_>]) -> QueryResult<usize> {
    diesel::insert_into(orders::table)
        .values(updates)
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
        ))
        .execute(conn)
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

/// How and when the poller asks about the order.
pub fn find_order_poll(
    conn: &mut PgConnection,
    vendor: Vendor,
    order_id: &str,
) -> QueryResult<Option<OrderPoll>> {
    order_polls::table
        .find((vendor.as_str(), order_id))
        .select(OrderPoll::as_select())
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

/// The order's callbacks that waited or wait for the vendor's word, oldest
/// first.
pub fn order_confirmations(
    conn: &mut PgConnection,
    vendor: Vendor,
    order_id: &str,
) -> QueryResult<Vec<Confirmation>> {
    callback_confirmations::table
        .filter(callback_confirmations::vendor.eq(vendor.as_str()))
        .filter(callback_confirmations::order_id.eq(order_id))
        .order(callback_confirmations::id.asc())
        .select(Confirmation::as_select())
        .load(conn)
}
