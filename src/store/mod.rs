//! The only place that decides what is committed. It applies an observation
//! (event row + order merge) in the caller's transaction, records raw inbound
//! requests, and batches many callbacks into one commit (`ingest`).
//! The rules themselves live in `status`; this module only persists them.

pub mod ingest;
pub mod poll;
pub mod tokens;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;

use crate::db::models::{
    NewInboundCallback, NewOrderEvent, NewOrderKey, NextCheck, Order, OrderEvent, OrderUpdate,
};
use crate::db::schema::{inbound_callbacks, order_events, orders};
use crate::poller::schedule::{jitter, Schedule};
use crate::status::{self, Effect, Observation, Source, Status};
use crate::vendors::Vendor;

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

/// Apply one observation inside the caller's transaction: lock (or create)
/// the order, merge by the status rules, append the event, update the order.
/// `request_id` is the dedup key (callback `RequidId`); a seen key changes
/// nothing. The next poll is rescheduled in the same transaction: news (a
/// callback, or a poll that changed something) waits the overdue time, a
/// quiet poll backs off.
pub fn apply_observation(
    conn: &mut PgConnection,
    obs: &Observation,
    request_id: Option<&str>,
    now: DateTime<Utc>,
    schedule: &Schedule,
) -> QueryResult<Applied> {
    let vendor = obs.vendor.as_str();
    if let Some(rid) = request_id {
        let seen: bool = diesel::select(diesel::dsl::exists(
            order_events::table
                .filter(order_events::vendor.eq(vendor))
                .filter(order_events::request_id.eq(rid)),
        ))
        .get_result(conn)?;
        if seen {
            return Ok(Applied::Duplicate);
        }
    }
    // Upsert that also takes the row lock, so concurrent observations of one
    // order merge one after the other.
    let before: Order = diesel::insert_into(orders::table)
        .values(NewOrderKey {
            vendor,
            order_id: &obs.order_id,
        })
        .on_conflict((orders::vendor, orders::order_id))
        .do_update()
        .set(orders::vendor.eq(excluded(orders::vendor)))
        .returning(Order::as_returning())
        .get_result(conn)?;
    let merged = status::merge(&before.state(), obs);
    let event_id: Option<i64> = diesel::insert_into(order_events::table)
        .values(NewOrderEvent {
            vendor,
            order_id: &obs.order_id,
            source: obs.source.as_str(),
            status: obs.status.as_str(),
            vendor_status: obs.vendor_status.as_deref(),
            applied: merged.changed,
            effect: merged.effect.as_str(),
            request_id,
            observed: serde_json::to_value(&obs.fields).unwrap_or_default(),
            received_at: now,
        })
        .on_conflict((order_events::vendor, order_events::request_id))
        .do_nothing()
        .returning(order_events::id)
        .get_result(conn)
        .optional()?;
    let Some(event_id) = event_id else {
        // Lost a race with a concurrent delivery of the same key.
        return Ok(Applied::Duplicate);
    };
    let status = merged.state.status;
    let next = if obs.source != Source::Poll {
        NextCheck {
            at: schedule.after_news(obs.vendor, status, now),
            quiet_polls: 0,
        }
    } else if merged.changed {
        NextCheck {
            at: schedule.after_poll_news(obs.vendor, status, now),
            quiet_polls: 0,
        }
    } else {
        let quiet = before.quiet_polls.saturating_add(1);
        NextCheck {
            at: schedule.after_quiet(obs.vendor, status, now, quiet, jitter(&obs.order_id, now)),
            quiet_polls: quiet,
        }
    };
    diesel::update(orders::table.find((vendor, &obs.order_id)))
        .set(OrderUpdate::from_state(
            &merged.state,
            &before,
            obs.source.as_str(),
            now,
            merged.changed,
            next,
        ))
        .execute(conn)?;
    Ok(Applied::Event {
        event_id,
        effect: merged.effect,
        changed: merged.changed,
        status: merged.state.status,
    })
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
