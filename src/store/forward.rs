//! Forwarding's SQL: the targets (`haoka-sync targets`), claiming due
//! deliveries under a lease (`FOR UPDATE SKIP LOCKED`, the earliest pending
//! one of each target and order only, so an order's changes go in order),
//! recording each attempt and what follows from it, redelivering, and
//! listing. The deliveries themselves are written by `feed::publish`, with
//! the change (the transactional outbox).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Timestamptz};

use crate::rules::forward::{is_failing, Next, Policy};

#[derive(Debug, Clone, QueryableByName, serde::Serialize)]
pub struct Target {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Text)]
    pub url: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub vendor: Option<String>,
    #[diesel(sql_type = Nullable<Array<Text>>)]
    pub statuses: Option<Vec<String>>,
    #[diesel(sql_type = Bool)]
    pub enabled: bool,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub failing_since: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub marked_failing_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_success_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub previous_until: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    #[diesel(sql_type = BigInt)]
    pub delivered: i64,
    #[diesel(sql_type = BigInt)]
    pub exhausted: i64,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// A new target; returns its id.
pub fn add_target(
    conn: &mut PgConnection,
    name: &str,
    url: &str,
    vendor: Option<&str>,
    statuses: Option<&[String]>,
    secret: &str,
) -> QueryResult<i64> {
    let r: Id = diesel::sql_query(
        "INSERT INTO forward_targets (name, url, vendor, statuses, secret) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind::<Text, _>(name)
    .bind::<Text, _>(url)
    .bind::<Nullable<Text>, _>(vendor)
    .bind::<Nullable<Array<Text>>, _>(statuses)
    .bind::<Text, _>(secret)
    .get_result(conn)?;
    Ok(r.id)
}

/// Every target with its deliveries by state, oldest first.
pub fn targets(conn: &mut PgConnection) -> QueryResult<Vec<Target>> {
    diesel::sql_query(
        "SELECT t.id, t.name, t.url, t.vendor, t.statuses, t.enabled, t.failing_since, t.marked_failing_at, \
                t.last_success_at, t.previous_until, \
                count(d.id) FILTER (WHERE d.state = 'pending') AS pending, \
                count(d.id) FILTER (WHERE d.state = 'delivered') AS delivered, \
                count(d.id) FILTER (WHERE d.state = 'exhausted') AS exhausted \
         FROM forward_targets t LEFT JOIN forward_deliveries d ON d.target_id = t.id \
         GROUP BY t.id ORDER BY t.id",
    )
    .load(conn)
}

/// Enable or disable; false when there is no such target. A disabled
/// target gets no new deliveries and its pending ones wait.
pub fn set_enabled(conn: &mut PgConnection, id: i64, enabled: bool) -> QueryResult<bool> {
    let n = diesel::sql_query("UPDATE forward_targets SET enabled = $2 WHERE id = $1")
        .bind::<BigInt, _>(id)
        .bind::<Bool, _>(enabled)
        .execute(conn)?;
    Ok(n == 1)
}

/// The new secret signs from now on; the old one also signs until `grace`.
pub fn rotate_secret(
    conn: &mut PgConnection,
    id: i64,
    secret: &str,
    grace: DateTime<Utc>,
) -> QueryResult<bool> {
    let n = diesel::sql_query(
        "UPDATE forward_targets SET previous_secret = secret, previous_until = $3, secret = $2 WHERE id = $1",
    )
    .bind::<BigInt, _>(id)
    .bind::<Text, _>(secret)
    .bind::<Timestamptz, _>(grace)
    .execute(conn)?;
    Ok(n == 1)
}

/// A delivery leased to this worker, with what it takes to send it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub target_id: i64,
    pub url: String,
    /// The current secret, then the previous one while it still signs.
    pub secrets: Vec<String>,
    pub webhook_id: String,
    /// The JSON body, the same bytes on every attempt; an error when it
    /// cannot be built (its change is no longer in `order_change_log`).
    pub body: Result<String, String>,
    pub attempts: i32,
    pub retry_from: DateTime<Utc>,
    pub redelivery: bool,
    pub vendor: String,
    pub order_id: String,
    /// The process whose lease ran out on it, if any: it may have sent it
    /// already (and died before recording), so this may be a duplicate.
    pub taken_from: Option<String>,
}

/// The order's fields as they were when the change committed (the
/// delivery's snapshot columns): the body's `order` object.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct OrderSnapshot {
    #[diesel(sql_type = Nullable<Text>)]
    #[serde(rename = "status")]
    pub order_status: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub vendor_status: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub vendor_order_no: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub express_name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub express_code: Option<String>,
    /// Masked when stored (`138****5678`).
    #[diesel(sql_type = Nullable<Text>)]
    #[serde(rename = "third_phone")]
    pub third_phone_masked: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub iccid: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub card_status: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub activated_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Bool>)]
    pub first_charge: Option<bool>,
    #[diesel(sql_type = Nullable<Text>)]
    pub first_charge_amount: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub remark: Option<String>,
}

/// The change a delivery sends, as `order_change_log` has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeFields {
    pub from: String,
    pub to: String,
    pub source: String,
    pub at: DateTime<Utc>,
}

/// The JSON body of a delivery (contract: `vendor`, `order_id`, `from`,
/// `to`, `source`, `at`, `seq`, and the order's fields), the same bytes
/// for the same row: fields in this order, times in RFC 3339 UTC.
pub fn body(
    vendor: &str,
    order_id: &str,
    seq: i64,
    change_id: i64,
    change: &ChangeFields,
    order: &OrderSnapshot,
) -> String {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        vendor: &'a str,
        order_id: &'a str,
        from: &'a str,
        to: &'a str,
        source: &'a str,
        at: DateTime<Utc>,
        seq: i64,
        change_id: i64,
        order: &'a OrderSnapshot,
    }
    let b = Body {
        vendor,
        order_id,
        from: &change.from,
        to: &change.to,
        source: &change.source,
        at: change.at,
        seq,
        change_id,
        order,
    };
    serde_json::to_string(&b).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// A claimed row as the claim returns it.
#[derive(QueryableByName)]
struct ClaimedRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    target_id: i64,
    #[diesel(sql_type = Text)]
    url: String,
    #[diesel(sql_type = Array<Text>)]
    secrets: Vec<String>,
    #[diesel(sql_type = Text)]
    webhook_id: String,
    /// Rows from before migration 019: the body as stored.
    #[diesel(sql_type = Nullable<Text>)]
    legacy_body: Option<String>,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Timestamptz)]
    retry_from: DateTime<Utc>,
    #[diesel(sql_type = Bool)]
    redelivery: bool,
    #[diesel(sql_type = Text)]
    vendor: String,
    #[diesel(sql_type = Text)]
    order_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    taken_from: Option<String>,
    #[diesel(sql_type = BigInt)]
    change_id: i64,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Nullable<Text>)]
    from_status: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    to_status: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    source: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    change_at: Option<DateTime<Utc>>,
    #[diesel(embed)]
    order: OrderSnapshot,
}

impl From<ClaimedRow> for Claimed {
    fn from(r: ClaimedRow) -> Claimed {
        let change = match (r.from_status, r.to_status, r.source, r.change_at) {
            (Some(from), Some(to), Some(source), Some(at)) => Some(ChangeFields {
                from,
                to,
                source,
                at,
            }),
            _ => None,
        };
        let body = match (r.legacy_body, change) {
            (Some(b), _) => Ok(b),
            (None, Some(c)) => Ok(body(
                &r.vendor,
                &r.order_id,
                r.seq,
                r.change_id,
                &c,
                &r.order,
            )),
            (None, None) => Err(format!(
                "change {} is no longer in order_change_log: its body cannot be built",
                r.change_id
            )),
        };
        Claimed {
            id: r.id,
            target_id: r.target_id,
            url: r.url,
            secrets: r.secrets,
            webhook_id: r.webhook_id,
            body,
            attempts: r.attempts,
            retry_from: r.retry_from,
            redelivery: r.redelivery,
            vendor: r.vendor,
            order_id: r.order_id,
            taken_from: r.taken_from,
        }
    }
}

/// The due deliveries a worker may send now, leased to `owner` until
/// `lease_until`: of healthy targets, the earliest pending delivery of each
/// (target, order) that is due, oldest due first, at most `limit`; of a
/// target marked failing, one at a time and at most once per
/// `probe_every` (a probe). Skips rows other workers hold.
pub fn claim(
    conn: &mut PgConnection,
    owner: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
    p: &Policy,
) -> QueryResult<Vec<Claimed>> {
    conn.transaction(|conn| {
        // Failing targets whose next probe is due: one delivery each, now.
        // "Has a due delivery" is a scalar subquery, which PostgreSQL runs
        // per failing target (one entry of the claim index each): as an
        // EXISTS it became a semi-join that read every pending delivery
        // on every claim, healthy targets or not.
        let probing: Vec<Id> = diesel::sql_query(
            "UPDATE forward_targets SET probe_after = $1 + make_interval(secs => $2) \
             WHERE enabled AND marked_failing_at IS NOT NULL AND (probe_after IS NULL OR probe_after <= $1) \
               AND coalesce((SELECT true FROM forward_deliveries d WHERE d.target_id = forward_targets.id \
                             AND d.state = 'pending' AND d.next_attempt_at <= $1 LIMIT 1), false) \
             RETURNING id",
        )
        .bind::<Timestamptz, _>(now)
        .bind::<diesel::sql_types::Double, _>(p.probe_every.as_secs_f64())
        .load(conn)?;
        // Each target's share of the batch: the whole batch for the targets
        // sent to freely (enabled, not marked failing), one for a probe.
        let healthy: Vec<Id> = diesel::sql_query(
            "SELECT id FROM forward_targets WHERE enabled AND marked_failing_at IS NULL",
        )
        .load(conn)?;
        let mut targets: Vec<i64> = healthy.into_iter().map(|i| i.id).collect();
        let mut shares = vec![limit; targets.len()];
        targets.extend(probing.iter().map(|i| i.id));
        shares.resize(targets.len(), 1);
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        diesel::sql_query(CLAIM_SQL)
            .bind::<Text, _>(owner)
            .bind::<Timestamptz, _>(now)
            .bind::<Timestamptz, _>(lease_until)
            .bind::<BigInt, _>(limit)
            .bind::<Array<BigInt>, _>(&targets)
            .bind::<Array<BigInt>, _>(&shares)
            .load::<ClaimedRow>(conn)
            .map(|rows| rows.into_iter().map(Claimed::from).collect())
    })
}

/// $1 owner, $2 now, $3 lease until, $4 limit, $5 targets, $6 how many of
/// each at most. Per target, walks `forward_deliveries_claim_idx` (target,
/// next_attempt_at, id) in order and stops at its share, so a claim costs
/// what it takes, not what is pending. A later change of an order that
/// still waits for an earlier one is read and passed over: "an earlier
/// change of the order is pending for this target" is a correlated scalar
/// subquery over the order's changes (`order_change_log_order_idx`) and
/// their deliveries (`forward_deliveries_change_target_key`), which
/// PostgreSQL runs per row with the full key whatever its statistics say
/// (an anti-join planned on stale statistics read the target's whole
/// backlog for each row). Its `state = 'pending'` is inside the aggregate,
/// not a condition, so the partial claim index is not eligible there
/// either (see below). The oldest due of those win. Then locks them by
/// primary key, skipping rows other workers hold, and checks again that
/// each is still free (the lock re-reads a row changed meanwhile) and
/// pending. The pending check is on the locked row's value, not in the
/// locking scan: `state = 'pending'` there made the partial claim index
/// eligible for that scan, and on statistics taken before a burst (the
/// index "empty") PostgreSQL walked the whole index once for the
/// candidates, 580 ms at 46,000 pending against 0.6 ms by key
/// (BENCHMARKS.md, Forwarding). Last, the change each delivery sends, for
/// its body.
const CLAIM_SQL: &str = "WITH candidates AS ( \
       SELECT c.id FROM unnest($5::bigint[], $6::bigint[]) AS t(id, share) \
       CROSS JOIN LATERAL ( \
         SELECT d.id, d.next_attempt_at FROM forward_deliveries d \
         WHERE d.target_id = t.id AND d.state = 'pending' AND d.next_attempt_at <= $2 \
           AND (d.lease_until IS NULL OR d.lease_until < $2) \
           AND NOT coalesce((SELECT bool_or(e.state = 'pending') FROM order_change_log ch \
                             JOIN forward_deliveries e ON e.change_id = ch.id AND e.target_id = d.target_id \
                             WHERE ch.vendor = d.vendor AND ch.order_id = d.order_id AND ch.id < d.change_id), false) \
         ORDER BY d.next_attempt_at, d.id \
         LIMIT t.share) c \
       ORDER BY c.next_attempt_at, c.id \
       LIMIT $4), \
     locked AS ( \
       SELECT d.id, d.lease_owner AS taken_from, d.state FROM forward_deliveries d \
       WHERE d.id IN (SELECT id FROM candidates) \
         AND (d.lease_until IS NULL OR d.lease_until < $2) \
       FOR UPDATE OF d SKIP LOCKED), \
     claimed AS ( \
       UPDATE forward_deliveries d SET lease_owner = $1, lease_until = $3 \
       FROM locked c, forward_targets t \
       WHERE d.id = c.id AND c.state = 'pending' AND t.id = d.target_id \
       RETURNING d.*, t.url, \
         CASE WHEN t.previous_secret IS NOT NULL AND t.previous_until > $2 \
              THEN ARRAY[t.secret, t.previous_secret] ELSE ARRAY[t.secret] END AS secrets, \
         c.taken_from) \
     SELECT k.id, k.target_id, k.url, k.secrets, k.webhook_id, k.payload::text AS legacy_body, k.attempts, \
       k.retry_from, k.redeliveries > 0 AS redelivery, k.vendor, k.order_id, k.taken_from, k.change_id, k.seq, \
       ch.from_status, ch.to_status, ch.source, ch.at AS change_at, \
       k.order_status, k.vendor_status, k.vendor_order_no, k.express_name, k.express_code, k.third_phone_masked, \
       k.iccid, k.card_status, k.activated_at, k.first_charge, k.first_charge_amount, k.remark \
     FROM claimed k LEFT JOIN order_change_log ch ON ch.id = k.change_id";

/// How one attempt went.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub at: DateTime<Utc>,
    pub http_status: Option<i32>,
    pub latency_ms: i32,
    pub error: Option<String>,
    pub response_sample: Option<String>,
    /// `None` for a success; else what follows.
    pub next: Option<Next>,
}

/// What recording an attempt changed for the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetChange {
    /// It has now failed for `failing_after`: marked failing (log once).
    pub now_failing: bool,
    /// It was failing and answered: its waiting deliveries are due now.
    pub recovered: bool,
    /// This worker no longer held the lease (another took the delivery
    /// over): the attempt is recorded, the delivery left to the other.
    pub lease_lost: bool,
}

/// Record an attempt of `c` by `worker` and its consequence, in one
/// transaction: the attempt row; the delivery delivered, due again or
/// exhausted (only while `worker` still holds its lease); the target's
/// failing state.
pub fn record(
    conn: &mut PgConnection,
    c: &Claimed,
    worker: &str,
    r: &AttemptResult,
    p: &Policy,
) -> QueryResult<TargetChange> {
    conn.transaction(|conn| {
        diesel::sql_query(
            "INSERT INTO forward_attempts (delivery_id, at, worker, http_status, latency_ms, error, response_sample, redelivery) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind::<BigInt, _>(c.id)
        .bind::<Timestamptz, _>(r.at)
        .bind::<Text, _>(worker)
        .bind::<Nullable<Integer>, _>(r.http_status)
        .bind::<Integer, _>(r.latency_ms)
        .bind::<Nullable<Text>, _>(r.error.as_deref())
        .bind::<Nullable<Text>, _>(r.response_sample.as_deref())
        .bind::<Bool, _>(c.redelivery)
        .execute(conn)?;
        let (state, next_at) = match r.next {
            None => ("delivered", r.at),
            Some(Next::RetryAt(at)) => ("pending", at),
            Some(Next::Exhausted) => ("exhausted", r.at),
        };
        let held = diesel::sql_query(
            "UPDATE forward_deliveries SET state = $3, attempts = attempts + 1, next_attempt_at = $4, \
               last_attempt_at = $5, last_status = $6, last_error = $7, \
               delivered_at = CASE WHEN $3 = 'delivered' THEN $5 ELSE delivered_at END, \
               lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind::<BigInt, _>(c.id)
        .bind::<Text, _>(worker)
        .bind::<Text, _>(state)
        .bind::<Timestamptz, _>(next_at)
        .bind::<Timestamptz, _>(r.at)
        .bind::<Nullable<Integer>, _>(r.http_status)
        .bind::<Nullable<Text>, _>(r.error.as_deref())
        .execute(conn)?;
        let mut change = TargetChange {
            lease_lost: held == 0,
            ..TargetChange::default()
        };
        if r.next.is_none() {
            // A success touches the target only when it changes something:
            // it was failing, or its last success is over a second old.
            // Otherwise every delivery to one target would queue on that
            // target's row lock (and write a new version of it).
            #[derive(QueryableByName)]
            struct Cleared {
                #[diesel(sql_type = Bool)]
                was_marked: bool,
            }
            let cleared: Option<Cleared> = diesel::sql_query(
                "WITH old AS (SELECT id, marked_failing_at FROM forward_targets WHERE id = $1) \
                 UPDATE forward_targets t SET failing_since = NULL, marked_failing_at = NULL, probe_after = NULL, \
                   last_success_at = GREATEST(t.last_success_at, $2) \
                 FROM old WHERE t.id = old.id \
                   AND (t.failing_since IS NOT NULL OR t.marked_failing_at IS NOT NULL \
                        OR t.last_success_at IS NULL OR t.last_success_at < $2 - interval '1 second') \
                 RETURNING old.marked_failing_at IS NOT NULL AS was_marked",
            )
            .bind::<BigInt, _>(c.target_id)
            .bind::<Timestamptz, _>(r.at)
            .get_result(conn)
            .optional()?;
            if cleared.is_some_and(|c| c.was_marked) {
                change.recovered = true;
                diesel::sql_query(
                    "UPDATE forward_deliveries SET next_attempt_at = $2 \
                     WHERE target_id = $1 AND state = 'pending' AND next_attempt_at > $2",
                )
                .bind::<BigInt, _>(c.target_id)
                .bind::<Timestamptz, _>(r.at)
                .execute(conn)?;
            }
        } else {
            #[derive(QueryableByName)]
            struct Health {
                #[diesel(sql_type = Nullable<Timestamptz>)]
                failing_since: Option<DateTime<Utc>>,
                #[diesel(sql_type = Nullable<Timestamptz>)]
                marked_failing_at: Option<DateTime<Utc>>,
            }
            let h: Health = diesel::sql_query(
                "SELECT failing_since, marked_failing_at FROM forward_targets WHERE id = $1 FOR UPDATE",
            )
            .bind::<BigInt, _>(c.target_id)
            .get_result(conn)?;
            let since = h.failing_since.unwrap_or(r.at);
            let mark = h.marked_failing_at.is_none() && is_failing(p, Some(since), r.at);
            change.now_failing = mark;
            diesel::sql_query(
                "UPDATE forward_targets SET failing_since = $2, \
                   marked_failing_at = CASE WHEN $3 THEN $4 ELSE marked_failing_at END, \
                   probe_after = CASE WHEN $3 THEN $4 + make_interval(secs => $5) ELSE probe_after END \
                 WHERE id = $1",
            )
            .bind::<BigInt, _>(c.target_id)
            .bind::<Timestamptz, _>(since)
            .bind::<Bool, _>(mark)
            .bind::<Timestamptz, _>(r.at)
            .bind::<diesel::sql_types::Double, _>(p.probe_every.as_secs_f64())
            .execute(conn)?;
        }
        Ok(change)
    })
}

/// Which deliveries `redeliver` sends again (every filter given must match).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub ids: Vec<i64>,
    pub vendor: Option<String>,
    pub order_id: Option<String>,
    pub target: Option<i64>,
    /// The change committed at or after this...
    pub since: Option<DateTime<Utc>>,
    /// ... and before this.
    pub until: Option<DateTime<Utc>>,
}

/// Make the selected deliveries, whatever their state, pending and due at
/// `now` again (same `webhook-id`; retried for `FORWARD_RETRY_FOR` from
/// now); returns their ids, in id order.
pub fn redeliver(
    conn: &mut PgConnection,
    s: &Selection,
    now: DateTime<Utc>,
) -> QueryResult<Vec<i64>> {
    let ids: Vec<Id> = diesel::sql_query(
        "UPDATE forward_deliveries SET state = 'pending', next_attempt_at = $7, retry_from = $7, \
           redeliveries = redeliveries + 1, lease_owner = NULL, lease_until = NULL \
         WHERE (cardinality($1::bigint[]) = 0 OR id = ANY ($1)) \
           AND ($3::text IS NULL OR change_id IN (SELECT c.id FROM order_change_log c \
                  WHERE c.vendor = ANY ($8) AND c.order_id = $3)) \
           AND ($2::text IS NULL OR vendor = $2) AND ($4::bigint IS NULL OR target_id = $4) \
           AND ($5::timestamptz IS NULL OR created_at >= $5) AND ($6::timestamptz IS NULL OR created_at < $6) \
         RETURNING id",
    )
    .bind::<Array<BigInt>, _>(&s.ids)
    .bind::<Nullable<Text>, _>(s.vendor.as_deref())
    .bind::<Nullable<Text>, _>(s.order_id.as_deref())
    .bind::<Nullable<BigInt>, _>(s.target)
    .bind::<Nullable<Timestamptz>, _>(s.since)
    .bind::<Nullable<Timestamptz>, _>(s.until)
    .bind::<Timestamptz, _>(now)
    .bind::<Array<Text>, _>(vendors(s.vendor.as_deref()))
    .load(conn)?;
    let mut ids: Vec<i64> = ids.into_iter().map(|i| i.id).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// A delivery as `haoka-sync deliveries` lists it.
#[derive(Debug, Clone, QueryableByName, serde::Serialize)]
pub struct DeliveryRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    pub target_id: i64,
    #[diesel(sql_type = Text)]
    pub vendor: String,
    #[diesel(sql_type = Text)]
    pub order_id: String,
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Text)]
    pub webhook_id: String,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub next_attempt_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Integer>)]
    pub last_status: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    /// The change it sends (from `order_change_log`; for a row from
    /// before migration 019 whose change is gone, from its stored body).
    #[diesel(sql_type = Nullable<Text>)]
    #[serde(rename = "from")]
    pub from_status: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    #[serde(rename = "to")]
    pub to_status: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub source: Option<String>,
}

/// The newest `limit` deliveries matching, newest first. `failed`: the ones
/// not delivered whose last attempt failed, and the exhausted.
pub fn deliveries(
    conn: &mut PgConnection,
    target: Option<i64>,
    failed: bool,
    order_id: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<DeliveryRow>> {
    diesel::sql_query(
        "SELECT d.id, d.target_id, d.vendor, d.order_id, d.seq, d.webhook_id, d.state, d.attempts, d.created_at, \
                d.next_attempt_at, d.last_status, d.last_error, \
                coalesce(ch.from_status, d.payload->>'from') AS from_status, \
                coalesce(ch.to_status, d.payload->>'to') AS to_status, \
                coalesce(ch.source, d.payload->>'source') AS source \
         FROM forward_deliveries d LEFT JOIN order_change_log ch ON ch.id = d.change_id \
         WHERE ($1::bigint IS NULL OR d.target_id = $1) \
           AND ($3::text IS NULL OR d.change_id IN (SELECT c.id FROM order_change_log c \
                  WHERE c.vendor = ANY ($5) AND c.order_id = $3)) \
           AND (NOT $2 OR d.state = 'exhausted' OR (d.state = 'pending' AND d.attempts > 0)) \
         ORDER BY d.id DESC LIMIT $4",
    )
    .bind::<Nullable<BigInt>, _>(target)
    .bind::<Bool, _>(failed)
    .bind::<Nullable<Text>, _>(order_id)
    .bind::<BigInt, _>(limit)
    .bind::<Array<Text>, _>(vendors(None))
    .load(conn)
}

/// The vendors an order id is looked up under: the one given, or all. The
/// order's deliveries are found through its changes (`order_change_log`'s
/// `(vendor, order_id, id)` index, then `forward_deliveries_change_target_key`),
/// so the outbox carries no index of its own by order.
fn vendors(vendor: Option<&str>) -> Vec<String> {
    match vendor {
        Some(v) => vec![v.to_owned()],
        None => crate::rules::vendor::Vendor::ALL
            .iter()
            .map(|v| v.as_str().to_owned())
            .collect(),
    }
}

/// An attempt as `haoka-sync deliveries` shows it.
#[derive(Debug, Clone, QueryableByName, serde::Serialize)]
pub struct AttemptRow {
    #[diesel(sql_type = BigInt)]
    pub delivery_id: i64,
    #[diesel(sql_type = Timestamptz)]
    pub at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub worker: String,
    #[diesel(sql_type = Nullable<Integer>)]
    pub http_status: Option<i32>,
    #[diesel(sql_type = Integer)]
    pub latency_ms: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
    #[diesel(sql_type = Bool)]
    pub redelivery: bool,
}

/// The attempts of `ids`, oldest first.
pub fn attempts(conn: &mut PgConnection, ids: &[i64]) -> QueryResult<Vec<AttemptRow>> {
    diesel::sql_query(
        "SELECT delivery_id, at, worker, http_status, latency_ms, error, redelivery FROM forward_attempts \
         WHERE delivery_id = ANY ($1) ORDER BY delivery_id, id",
    )
    .bind::<Array<BigInt>, _>(ids)
    .load(conn)
}

/// For the metrics: per target, pending deliveries and the age of the
/// oldest (seconds at `now`), whether it is failing; exhausted ones.
#[derive(Debug, Clone, QueryableByName, PartialEq)]
pub struct TargetGauge {
    #[diesel(sql_type = BigInt)]
    pub target_id: i64,
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub oldest_pending: Option<DateTime<Utc>>,
    #[diesel(sql_type = Bool)]
    pub failing: bool,
    #[diesel(sql_type = BigInt)]
    pub exhausted: i64,
}

/// One row per target: pending deliveries through the partial index, the
/// exhausted ones counted (they are few and kept).
pub fn gauges(conn: &mut PgConnection) -> QueryResult<Vec<TargetGauge>> {
    diesel::sql_query(
        "SELECT t.id AS target_id, \
           (SELECT count(*) FROM forward_deliveries d WHERE d.target_id = t.id AND d.state = 'pending') AS pending, \
           (SELECT min(created_at) FROM forward_deliveries d WHERE d.target_id = t.id AND d.state = 'pending') AS oldest_pending, \
           t.marked_failing_at IS NOT NULL AS failing, \
           (SELECT count(*) FROM forward_deliveries d WHERE d.target_id = t.id AND d.state = 'exhausted') AS exhausted \
         FROM forward_targets t ORDER BY t.id",
    )
    .load(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(any::<String>())
    }

    proptest! {
        /// The body says what the row and its change say, under the
        /// contract's names, and is the same bytes every time it is built.
        #[test]
        fn a_body_carries_the_change_and_the_snapshot_and_is_stable(
            vendor in "[a-z0-9]{1,12}", order_id in any::<String>(), seq in 1i64..1_000_000,
            change_id in any::<i64>(), from in any::<String>(), to in any::<String>(),
            source in "callback|poll|manual", secs in 0i64..4_000_000_000,
            status in text(), vendor_status in text(), remark in text(),
            phone in proptest::option::of("[0-9]{3}\\*{4}[0-9]{4}"),
            activated in proptest::option::of(0i64..4_000_000_000),
            first_charge in proptest::option::of(any::<bool>()),
        ) {
            let change = ChangeFields { from, to, source, at: Utc.timestamp_opt(secs, 0).unwrap() };
            let order = OrderSnapshot {
                order_status: status, vendor_status, vendor_order_no: None, express_name: None,
                express_code: None, third_phone_masked: phone, iccid: None, card_status: None,
                activated_at: activated.map(|s| Utc.timestamp_opt(s, 0).unwrap()), first_charge,
                first_charge_amount: None, remark,
            };
            let b = body(&vendor, &order_id, seq, change_id, &change, &order);
            prop_assert_eq!(&b, &body(&vendor, &order_id, seq, change_id, &change, &order));
            let v: serde_json::Value = serde_json::from_str(&b).unwrap();
            prop_assert_eq!(v["vendor"].as_str(), Some(vendor.as_str()));
            prop_assert_eq!(v["order_id"].as_str(), Some(order_id.as_str()));
            prop_assert_eq!(v["from"].as_str(), Some(change.from.as_str()));
            prop_assert_eq!(v["to"].as_str(), Some(change.to.as_str()));
            prop_assert_eq!(v["source"].as_str(), Some(change.source.as_str()));
            prop_assert_eq!(v["seq"].as_i64(), Some(seq));
            prop_assert_eq!(v["change_id"].as_i64(), Some(change_id));
            let at = DateTime::parse_from_rfc3339(v["at"].as_str().unwrap()).unwrap();
            prop_assert_eq!(at, change.at);
            prop_assert_eq!(v["order"]["status"].as_str(), order.order_status.as_deref());
            prop_assert_eq!(v["order"]["vendor_status"].as_str(), order.vendor_status.as_deref());
            prop_assert_eq!(v["order"]["remark"].as_str(), order.remark.as_deref());
            prop_assert_eq!(v["order"]["third_phone"].as_str(), order.third_phone_masked.as_deref());
            prop_assert_eq!(v["order"]["first_charge"].as_bool(), order.first_charge);
            let activated_at = v["order"]["activated_at"]
                .as_str()
                .map(|s| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc));
            prop_assert_eq!(activated_at, order.activated_at);
        }
    }
}
