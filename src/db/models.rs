//! Row types for the tables in `schema.rs`, and their conversion to and from
//! the status model. Queries live in `store`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use super::schema::{callback_confirmations, inbound_callbacks, order_events, order_polls, orders};
use crate::rules::schedule::NextCheck;
use crate::rules::status::{OrderFields, OrderState, Status};

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = orders, check_for_backend(diesel::pg::Pg))]
pub struct Order {
    pub vendor: String,
    pub order_id: String,
    pub status: String,
    pub vendor_status: Option<String>,
    pub is_terminal: bool,
    pub vendor_order_no: Option<String>,
    pub express_name: Option<String>,
    pub express_code: Option<String>,
    pub third_phone: Option<String>,
    pub iccid: Option<String>,
    pub card_status: Option<String>,
    pub activated_at: Option<DateTime<Utc>>,
    pub first_charge: Option<bool>,
    pub first_charge_amount: Option<String>,
    pub remark: Option<String>,
    pub details: serde_json::Value,
    pub conflict: bool,
    pub unknown_vendor_status: Option<String>,
    pub last_source: Option<String>,
    pub last_heard_at: Option<DateTime<Utc>>,
    pub status_changed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How and when the poller asks about an order (`order_polls`). Not
/// `Serialize`: the lease and budget are bookkeeping, never shown as is.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = order_polls, check_for_backend(diesel::pg::Pg))]
pub struct OrderPoll {
    pub vendor: String,
    pub order_id: String,
    pub next_check_at: Option<DateTime<Utc>>,
    pub quiet_polls: i32,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub calls_day: Option<chrono::NaiveDate>,
    pub calls_today: i32,
    pub last_poll_outcome: Option<String>,
    pub tracking_expired_at: Option<DateTime<Utc>>,
    pub tracked_at: DateTime<Utc>,
}

impl OrderPoll {
    pub fn next(&self) -> NextCheck {
        NextCheck {
            at: self.next_check_at,
            quiet_polls: self.quiet_polls,
        }
    }
}

/// An order's schedule as a merge leaves it, written for many orders at once
/// with `INSERT … ON CONFLICT DO UPDATE` (a callback's first order creates
/// its row). Any observation revives an order whose tracking had expired.
#[derive(Debug, Insertable)]
#[diesel(table_name = order_polls)]
pub struct ScheduleUpdate<'a> {
    pub vendor: &'a str,
    pub order_id: &'a str,
    pub next_check_at: Option<DateTime<Utc>>,
    pub quiet_polls: i32,
    pub tracking_expired_at: Option<DateTime<Utc>>,
}

impl Order {
    /// The status-model view of this row. A status string the model does not
    /// know (only possible through manual SQL) reads as `unknown`.
    pub fn state(&self) -> OrderState {
        let details = match &self.details {
            serde_json::Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            _ => Default::default(),
        };
        OrderState {
            status: self.status.parse().unwrap_or(Status::Unknown),
            vendor_status: self.vendor_status.clone(),
            fields: OrderFields {
                vendor_order_no: self.vendor_order_no.clone(),
                express_name: self.express_name.clone(),
                express_code: self.express_code.clone(),
                third_phone: self.third_phone.clone(),
                iccid: self.iccid.clone(),
                card_status: self.card_status.clone(),
                activated_at: self.activated_at,
                first_charge: self.first_charge,
                first_charge_amount: self.first_charge_amount.clone(),
                remark: self.remark.clone(),
                details,
            },
            conflict: self.conflict,
            unknown_vendor_status: self.unknown_vendor_status.clone(),
        }
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = orders)]
pub struct NewOrderKey<'a> {
    pub vendor: &'a str,
    pub order_id: &'a str,
}

/// An order row as an observation leaves it: written back for many orders
/// at once with `INSERT … ON CONFLICT DO UPDATE` (the rows exist and are
/// locked by then).
#[derive(Debug, Insertable)]
#[diesel(table_name = orders)]
pub struct OrderUpdate<'a> {
    pub vendor: &'a str,
    pub order_id: &'a str,
    pub status: &'a str,
    pub vendor_status: Option<&'a str>,
    pub vendor_order_no: Option<&'a str>,
    pub express_name: Option<&'a str>,
    pub express_code: Option<&'a str>,
    pub third_phone: Option<&'a str>,
    pub iccid: Option<&'a str>,
    pub card_status: Option<&'a str>,
    pub activated_at: Option<DateTime<Utc>>,
    pub first_charge: Option<bool>,
    pub first_charge_amount: Option<&'a str>,
    pub remark: Option<&'a str>,
    pub details: serde_json::Value,
    pub conflict: bool,
    pub unknown_vendor_status: Option<&'a str>,
    pub last_source: Option<&'a str>,
    pub last_heard_at: Option<DateTime<Utc>>,
    pub status_changed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl<'a> OrderUpdate<'a> {
    pub fn from_state(
        state: &'a OrderState,
        before: &'a Order,
        source: &'a str,
        now: DateTime<Utc>,
        changed: bool,
    ) -> Self {
        let f = &state.fields;
        let status_moved = state.status.as_str() != before.status;
        OrderUpdate {
            vendor: &before.vendor,
            order_id: &before.order_id,
            status: state.status.as_str(),
            vendor_status: state.vendor_status.as_deref(),
            vendor_order_no: f.vendor_order_no.as_deref(),
            express_name: f.express_name.as_deref(),
            express_code: f.express_code.as_deref(),
            third_phone: f.third_phone.as_deref(),
            iccid: f.iccid.as_deref(),
            card_status: f.card_status.as_deref(),
            activated_at: f.activated_at,
            first_charge: f.first_charge,
            first_charge_amount: f.first_charge_amount.as_deref(),
            remark: f.remark.as_deref(),
            details: serde_json::Value::Object(f.details.clone().into_iter().collect()),
            conflict: state.conflict,
            unknown_vendor_status: state.unknown_vendor_status.as_deref(),
            last_source: Some(source),
            last_heard_at: Some(now),
            status_changed_at: if status_moved {
                Some(now)
            } else {
                before.status_changed_at
            },
            updated_at: if changed { now } else { before.updated_at },
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = order_events, check_for_backend(diesel::pg::Pg))]
pub struct OrderEvent {
    pub id: i64,
    pub vendor: String,
    pub order_id: String,
    pub source: String,
    pub status: String,
    pub vendor_status: Option<String>,
    pub applied: bool,
    pub effect: String,
    pub request_id: Option<String>,
    pub observed: serde_json::Value,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = order_events)]
pub struct NewOrderEvent<'a> {
    pub vendor: &'a str,
    pub order_id: &'a str,
    pub source: &'a str,
    pub status: &'a str,
    pub vendor_status: Option<&'a str>,
    pub applied: bool,
    pub effect: &'a str,
    pub request_id: Option<&'a str>,
    pub observed: serde_json::Value,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = inbound_callbacks, check_for_backend(diesel::pg::Pg))]
pub struct InboundCallback {
    pub id: i64,
    pub vendor: String,
    pub received_at: DateTime<Utc>,
    pub outcome: String,
    pub error: Option<String>,
    pub request_id: Option<String>,
    pub order_id: Option<String>,
    pub event_id: Option<i64>,
    pub sign_matched: Option<String>,
    pub content_type: Option<String>,
    pub remote_addr: Option<String>,
    pub headers: serde_json::Value,
    pub body: String,
    pub body_raw: Option<Vec<u8>>,
    pub body_size: i32,
    pub body_truncated: bool,
    pub source_addr: Option<String>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub replay_outcome: Option<String>,
    pub replay_event_id: Option<i64>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = inbound_callbacks)]
pub struct NewInboundCallback<'a> {
    pub vendor: &'a str,
    pub received_at: DateTime<Utc>,
    pub outcome: &'a str,
    pub error: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub order_id: Option<&'a str>,
    pub event_id: Option<i64>,
    pub sign_matched: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub remote_addr: Option<&'a str>,
    pub headers: &'a serde_json::Value,
    pub body: &'a str,
    pub body_raw: Option<&'a [u8]>,
    pub body_size: i32,
    pub body_truncated: bool,
    pub source_addr: Option<&'a str>,
}

/// A callback that waited or waits for the vendor's word.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = callback_confirmations, check_for_backend(diesel::pg::Pg))]
pub struct Confirmation {
    pub reason: String,
    pub request_id: String,
    pub claimed_status: String,
    pub requested_at: DateTime<Utc>,
    pub expedited: bool,
    pub resolved_at: Option<DateTime<Utc>>,
    pub result: Option<String>,
    pub vendor_status: Option<String>,
}

/// A callback that waits for the vendor's word (`callback_confirmations`).
#[derive(Debug, Insertable)]
#[diesel(table_name = callback_confirmations)]
pub struct NewConfirmation<'a> {
    pub vendor: &'a str,
    pub order_id: &'a str,
    pub reason: &'a str,
    pub request_id: &'a str,
    pub claimed_status: &'a str,
    pub claimed_vendor_order_no: Option<&'a str>,
    pub event_id: Option<i64>,
    pub requested_at: DateTime<Utc>,
    pub expedited: bool,
}
