//! The change feed: every applied status change, once, in commit order
//! (`order_change_log`, read through the view `order_changes`), and a
//! `pg_notify` on `haoka_sync_order_changed` from the transaction that
//! commits it. `apply_batch` publishes the changes it made; `since` is
//! what a consumer (`haoka-sync watch`) reads to catch up.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};

use crate::rules::status::Status;

/// The channel every applied status change is announced on.
pub const CHANNEL: &str = "haoka_sync_order_changed";

/// The advisory lock the feed's ids are drawn under (held to the commit).
const LOCK: i64 = 7217201400;

/// Insert the changes ($1..$6: event ids, vendors, order ids, from, to,
/// sources; $7 the time) with ids drawn in order and each order's next
/// `order_seq`; the deliveries of every enabled target that matches
/// (the transactional outbox: the order's fields as they are now, phone
/// masked, from which and the change the body is built when sent); and one
/// notification per change on $8.
/// One statement, whatever the number of changes or targets.
const PUBLISH_SQL: &str = "WITH k AS ( \
       SELECT u.*, coalesce(prev.seq, 0) + row_number() OVER (PARTITION BY u.vendor, u.order_id ORDER BY u.n) AS order_seq \
       FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
              WITH ORDINALITY AS u(event_id, vendor, order_id, from_status, to_status, source, n) \
       LEFT JOIN LATERAL (SELECT c.order_seq AS seq FROM order_change_log c \
                          WHERE c.vendor = u.vendor AND c.order_id = u.order_id ORDER BY c.id DESC LIMIT 1) prev ON true), \
     rows AS ( \
       INSERT INTO order_change_log (id, event_id, vendor, order_id, from_status, to_status, source, at, order_seq) \
       SELECT nextval('order_change_log_id_seq'), o.event_id, o.vendor, o.order_id, o.from_status, o.to_status, o.source, $7, o.order_seq \
       FROM (SELECT * FROM k ORDER BY n) o \
       RETURNING id, vendor, order_id, from_status, to_status, source, at, order_seq), \
     deliveries AS ( \
       INSERT INTO forward_deliveries (target_id, change_id, vendor, order_id, seq, webhook_id, next_attempt_at, created_at, \
              order_status, vendor_status, vendor_order_no, express_name, express_code, third_phone_masked, \
              iccid, card_status, activated_at, first_charge, first_charge_amount, remark) \
       SELECT t.id, r.id, r.vendor, r.order_id, r.order_seq, 'msg_' || r.id || '_' || t.id, $7, $7, \
              o.status, o.vendor_status, o.vendor_order_no, o.express_name, o.express_code, \
              CASE WHEN length(o.third_phone) >= 7 THEN left(o.third_phone, 3) || '****' || right(o.third_phone, 4) \
                   WHEN o.third_phone IS NOT NULL THEN left(o.third_phone, 1) || '***' END, \
              o.iccid, o.card_status, o.activated_at, o.first_charge, o.first_charge_amount, o.remark \
       FROM rows r \
       JOIN forward_targets t ON t.enabled AND (t.vendor IS NULL OR t.vendor = r.vendor) \
                             AND (t.statuses IS NULL OR r.to_status = ANY (t.statuses)) \
       LEFT JOIN orders o ON o.vendor = r.vendor AND o.order_id = r.order_id \
       RETURNING 1) \
     SELECT pg_notify($8, json_build_object('id', id, 'vendor', vendor, 'order_id', order_id, \
              'from', from_status, 'to', to_status, 'source', source, 'at', at)::text) \
     FROM (SELECT * FROM rows ORDER BY id) r";

/// One applied status change, as `apply_batch` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<'a> {
    pub event_id: i64,
    pub vendor: &'a str,
    pub order_id: &'a str,
    pub from: Status,
    pub to: Status,
    /// `callback`, `poll` or `manual`.
    pub source: &'a str,
}

/// Append `changes` to the feed and announce each, in two statements
/// whatever their number: take the feed's lock (after every orders row the
/// transaction locks: nothing may lock an order after this), then insert
/// the rows with ids drawn in order and `pg_notify` each (queued by
/// PostgreSQL, sent at commit, dropped on rollback). Holding the lock to
/// the commit makes ids increase in commit order.
pub fn publish(
    conn: &mut PgConnection,
    changes: &[Change<'_>],
    at: DateTime<Utc>,
) -> QueryResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<BigInt, _>(LOCK)
        .execute(conn)?;
    let event: Vec<i64> = changes.iter().map(|c| c.event_id).collect();
    let vendor: Vec<&str> = changes.iter().map(|c| c.vendor).collect();
    let order: Vec<&str> = changes.iter().map(|c| c.order_id).collect();
    let from: Vec<&str> = changes.iter().map(|c| c.from.as_str()).collect();
    let to: Vec<&str> = changes.iter().map(|c| c.to.as_str()).collect();
    let source: Vec<&str> = changes.iter().map(|c| c.source).collect();
    diesel::sql_query(PUBLISH_SQL)
        .bind::<Array<BigInt>, _>(&event)
        .bind::<Array<Text>, _>(&vendor)
        .bind::<Array<Text>, _>(&order)
        .bind::<Array<Text>, _>(&from)
        .bind::<Array<Text>, _>(&to)
        .bind::<Array<Text>, _>(&source)
        .bind::<Timestamptz, _>(at)
        .bind::<Text, _>(CHANNEL)
        .execute(conn)?;
    Ok(())
}

/// A row of `order_changes`.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, serde::Serialize, serde::Deserialize)]
pub struct FeedRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub vendor: String,
    #[diesel(sql_type = Text)]
    pub order_id: String,
    #[diesel(sql_type = Text)]
    #[serde(rename = "from")]
    pub from_status: String,
    #[diesel(sql_type = Text)]
    #[serde(rename = "to")]
    pub to_status: String,
    #[diesel(sql_type = Text)]
    pub source: String,
    #[diesel(sql_type = Timestamptz)]
    pub at: DateTime<Utc>,
}

/// At most `limit` changes after `after_id` (of `vendor` when given), in id
/// order: what a consumer reads to catch up.
pub fn since(
    conn: &mut PgConnection,
    after_id: i64,
    vendor: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<FeedRow>> {
    diesel::sql_query(
        "SELECT id, vendor, order_id, from_status, to_status, source, at FROM order_changes \
         WHERE id > $1 AND ($2::text IS NULL OR vendor = $2) ORDER BY id LIMIT $3",
    )
    .bind::<BigInt, _>(after_id)
    .bind::<Nullable<Text>, _>(vendor)
    .bind::<BigInt, _>(limit)
    .load(conn)
}

#[derive(QueryableByName)]
struct LastId {
    #[diesel(sql_type = Nullable<BigInt>)]
    id: Option<i64>,
}

/// The id of the newest change (0 when there is none).
pub fn last_id(conn: &mut PgConnection) -> QueryResult<i64> {
    let r: LastId =
        diesel::sql_query("SELECT max(id) AS id FROM order_change_log").get_result(conn)?;
    Ok(r.id.unwrap_or(0))
}
