//! The stored side of `haoka-sync replay`: which stored callback requests a
//! selection names, their raw requests, and the commit of a batch of them
//! judged again. The commit is the live callbacks' own (`ingest::commit`:
//! the same `RequidId` dedup, merge and confirmation rules), so a replay is
//! exactly an arrival; each inbox row keeps its original outcome and records
//! the replay (`replayed_at`, `replay_outcome`, `replay_event_id`).
//!
//! It never judges a request (the caller does, with the configuration of
//! now), and a dry run never commits anything.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Bytea, Nullable, Text};

use super::ingest::{self, InboundRequest, Receipt, Record};
use crate::db::schema::inbound_callbacks;
use crate::db::DbError;
use crate::rules::inbound::{Outcome, Verdict};
use crate::rules::schedule::Schedule;
use crate::rules::Vendor;

/// Which stored requests to judge again: every part given must match.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `received_at >= since`.
    pub since: Option<DateTime<Utc>>,
    /// `received_at < until`.
    pub until: Option<DateTime<Utc>>,
    /// The outcomes they were stored with.
    pub outcomes: Vec<Outcome>,
    /// `inbound_callbacks.id`s; empty means any.
    pub ids: Vec<i64>,
}

/// The ids of the vendor's stored requests that `sel` names, in arrival
/// order (the merge sees them in the order they came). Only ids: a large
/// selection is then read a batch at a time.
pub fn select(conn: &mut PgConnection, vendor: Vendor, sel: &Selection) -> QueryResult<Vec<i64>> {
    use inbound_callbacks::dsl as ic;
    let outcomes: Vec<&str> = sel.outcomes.iter().map(|o| o.as_str()).collect();
    let mut q = ic::inbound_callbacks
        .select(ic::id)
        .filter(ic::vendor.eq(vendor.as_str()))
        .filter(ic::outcome.eq_any(outcomes))
        .into_boxed();
    if let Some(t) = sel.since {
        q = q.filter(ic::received_at.ge(t));
    }
    if let Some(t) = sel.until {
        q = q.filter(ic::received_at.lt(t));
    }
    if !sel.ids.is_empty() {
        q = q.filter(ic::id.eq_any(&sel.ids));
    }
    q.order(ic::id.asc()).load(conn)
}

/// The stored outcome and arrival of each of `ids` that is the vendor's, to
/// say why one was not selected (an id missing here is not stored).
pub fn describe(
    conn: &mut PgConnection,
    vendor: Vendor,
    ids: &[i64],
) -> QueryResult<Vec<(i64, String, DateTime<Utc>)>> {
    use inbound_callbacks::dsl as ic;
    ic::inbound_callbacks
        .filter(ic::vendor.eq(vendor.as_str()))
        .filter(ic::id.eq_any(ids))
        .select((ic::id, ic::outcome, ic::received_at))
        .order(ic::id.asc())
        .load(conn)
}

/// A stored request as it arrived, with what judging it again needs.
#[derive(Debug, Clone, QueryableByName)]
pub struct StoredCallback {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// The outcome it was stored with.
    #[diesel(sql_type = Text)]
    pub outcome: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub content_type: Option<String>,
    #[diesel(sql_type = Text)]
    body: String,
    #[diesel(sql_type = Nullable<Bytea>)]
    body_raw: Option<Vec<u8>>,
    /// The `sign` header it came with.
    #[diesel(sql_type = Nullable<Text>)]
    pub sign: Option<String>,
    /// The client address judged when it arrived.
    #[diesel(sql_type = Nullable<Text>)]
    pub source_addr: Option<String>,
    /// Only a sample of the body was kept (`too_large`): it cannot be
    /// judged again.
    #[diesel(sql_type = Bool)]
    pub body_truncated: bool,
}

impl StoredCallback {
    /// The exact bytes received.
    pub fn body(&self) -> &[u8] {
        self.body_raw.as_deref().unwrap_or(self.body.as_bytes())
    }

    /// The request for the commit path, judged again as `verdict`.
    pub fn judged(&self, verdict: Verdict) -> InboundRequest {
        InboundRequest {
            record: Record::Replay { inbox_id: self.id },
            verdict,
        }
    }
}

/// The stored requests `ids`, in id order.
pub fn load(conn: &mut PgConnection, ids: &[i64]) -> QueryResult<Vec<StoredCallback>> {
    diesel::sql_query(
        "SELECT id, outcome, content_type, body, body_raw, headers ->> 'sign' AS sign, \
         source_addr, body_truncated FROM inbound_callbacks WHERE id = ANY($1) ORDER BY id",
    )
    .bind::<Array<BigInt>, _>(ids)
    .load(conn)
}

/// Commit a batch of stored requests judged again, as one group commit of
/// arrivals (a request that cannot be stored alone is recorded as
/// `internal_error`, as a live one is). `dry_run`: the same, in a
/// transaction that is rolled back, so the receipts say what would happen
/// and nothing is committed.
pub fn commit(
    conn: &mut PgConnection,
    reqs: &[InboundRequest],
    schedule: &Schedule,
    dry_run: bool,
) -> Result<Vec<Receipt>, DbError> {
    if !dry_run {
        return ingest::commit_with_fallback(conn, reqs, schedule, false)
            .into_iter()
            .collect();
    }
    match rolled_back(conn, reqs, schedule) {
        Ok(receipts) => Ok(receipts),
        Err(e) if e.is_unavailable() => Err(e),
        Err(e) if reqs.len() == 1 => Ok(vec![failed(&reqs[0], &e)]),
        // One bad request must not hide what the others would do.
        Err(_) => reqs
            .iter()
            .map(
                |r| match rolled_back(conn, std::slice::from_ref(r), schedule) {
                    Ok(mut v) => Ok(v.remove(0)),
                    Err(e) if e.is_unavailable() => Err(e),
                    Err(e) => Ok(failed(r, &e)),
                },
            )
            .collect(),
    }
}

/// `ingest::commit` in a transaction that is always rolled back, retried
/// like a live commit when it loses a race.
fn rolled_back(
    conn: &mut PgConnection,
    reqs: &[InboundRequest],
    schedule: &Schedule,
) -> Result<Vec<Receipt>, DbError> {
    use diesel::result::Error;
    let mut attempt = 0;
    loop {
        let mut receipts = Vec::new();
        let result = conn.transaction(|conn| {
            receipts = ingest::commit(conn, reqs, schedule)?;
            Err::<(), _>(Error::RollbackTransaction)
        });
        match result {
            Ok(()) | Err(Error::RollbackTransaction) => return Ok(receipts),
            Err(e) if attempt < 3 && ingest::is_retryable(&e) => attempt += 1,
            Err(e) => return Err(DbError::from(e)),
        }
    }
}

/// What a dry run reports for a request the store could not take.
fn failed(r: &InboundRequest, cause: &DbError) -> Receipt {
    let (request_id, order_id) = r.verdict.ids();
    Receipt {
        outcome: Outcome::InternalError,
        effect: None,
        error: Some(format!("could not be stored in full: {cause}")),
        expedited: false,
        request_id: request_id.map(str::to_owned),
        order_id: order_id.map(str::to_owned),
    }
}
