//! The normalized order-status model: one vocabulary for every vendor and for
//! both paths (callback and poll), and the rules that merge one observation
//! into an order's current state (docs/contract.md#normalized-status). Each
//! vendor maps its own labels onto it (`vendors::<name>::labels`).
//!
//! Pure: no I/O, no clock, no database. Nothing here may depend on which
//! source (callback, poll, manual) spoke; the store persists what `merge`
//! decides and nothing else decides it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::vendor::Vendor;

/// Where an order stands. `New` is ours: the order is tracked but no source
/// has said anything about it yet. Vendor labels never map to `New`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    New,
    Pending,
    Submitted,
    Shipped,
    Completed,
    Settled,
    SettlementFailed,
    Revoked,
    Rejected,
    Cancelled,
    Unknown,
}

impl Status {
    pub const ALL: [Status; 11] = [
        Status::New,
        Status::Pending,
        Status::Submitted,
        Status::Shipped,
        Status::Completed,
        Status::Settled,
        Status::SettlementFailed,
        Status::Revoked,
        Status::Rejected,
        Status::Cancelled,
        Status::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Pending => "pending",
            Status::Submitted => "submitted",
            Status::Shipped => "shipped",
            Status::Completed => "completed",
            Status::Settled => "settled",
            Status::SettlementFailed => "settlement_failed",
            Status::Revoked => "revoked",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
            Status::Unknown => "unknown",
        }
    }

    /// Terminal statuses absorb: nothing moves an order out of one, and the
    /// vendor must not be queried about it again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Settled
                | Status::SettlementFailed
                | Status::Revoked
                | Status::Rejected
                | Status::Cancelled
        )
    }

    /// Position on the progress line `new < pending < submitted < shipped <
    /// completed < terminal`. `Unknown` has no position: it is not comparable.
    fn rank(self) -> Option<u8> {
        match self {
            Status::New => Some(0),
            Status::Pending => Some(1),
            Status::Submitted => Some(2),
            Status::Shipped => Some(3),
            Status::Completed => Some(4),
            Status::Unknown => None,
            _ => Some(5),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown status `{s}`"))
    }
}

/// Who told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Callback,
    Poll,
    Manual,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Callback => "callback",
            Source::Poll => "poll",
            Source::Manual => "manual",
        }
    }
}

/// Everything about an order besides its status. Every field is optional:
/// an observation carries what its source said, an order what we know.
/// `details` holds vendor-specific extras, merged key by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_order_no: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub express_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub express_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub third_phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iccid: Option<String>,
    /// Card activation label verbatim (已激活 / 未激活).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_charge: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_charge_amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remark: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub details: BTreeMap<String, serde_json::Value>,
}

/// The 172 card-status label that means the card is active.
pub const CARD_ACTIVE: &str = "已激活";

/// What one source said about one order at one time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    pub vendor: Vendor,
    pub order_id: String,
    pub source: Source,
    /// The vendor's status label, verbatim.
    pub vendor_status: Option<String>,
    pub status: Status,
    pub fields: OrderFields,
}

/// What we currently hold for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderState {
    pub status: Status,
    /// The label behind `status`, verbatim.
    pub vendor_status: Option<String>,
    pub fields: OrderFields,
    /// A terminal order later got a different terminal observation.
    pub conflict: bool,
    /// The latest label we could not map; set for ops to review, never cleared
    /// by an observation.
    pub unknown_vendor_status: Option<String>,
}

impl OrderState {
    /// A tracked order nobody has said anything about.
    pub fn new_order() -> Self {
        OrderState {
            status: Status::New,
            vendor_status: None,
            fields: OrderFields::default(),
            conflict: false,
            unknown_vendor_status: None,
        }
    }
}

/// What an observation did to the status axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Moved the status forward.
    Advanced,
    /// Same status as held (possibly with new fields or a new label for it).
    Same,
    /// Older than what we hold; kept in history only (fields may fill gaps).
    Stale,
    /// A different terminal status for an already terminal order.
    Conflict,
    /// A label we cannot map; the status is not touched (unless it was `new`).
    UnknownStatus,
    /// Not merged: a callback that would have made the order terminal, held
    /// until the vendor confirms it (see [`needs_confirmation`]).
    Unconfirmed,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Advanced => "advanced",
            Effect::Same => "same",
            Effect::Stale => "stale",
            Effect::Conflict => "conflict",
            Effect::UnknownStatus => "unknown_status",
            Effect::Unconfirmed => "unconfirmed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub state: OrderState,
    pub effect: Effect,
    /// The order's state differs from before (status, a field or a flag).
    pub changed: bool,
}

/// Relation of an observed status to the held one.
fn status_effect(held: Status, seen: Status) -> Effect {
    if seen == Status::Unknown {
        return Effect::UnknownStatus;
    }
    if held.is_terminal() {
        return if seen == held {
            Effect::Same
        } else if seen.is_terminal() {
            Effect::Conflict
        } else {
            Effect::Stale
        };
    }
    match (held.rank(), seen.rank()) {
        // Anything known beats `unknown`.
        (None, _) => Effect::Advanced,
        (Some(h), Some(s)) if s > h => Effect::Advanced,
        (Some(h), Some(s)) if s == h => Effect::Same,
        _ => Effect::Stale,
    }
}

/// Merge one observation into the held state.
///
/// Status: never backwards, terminal absorbs, a different terminal is a
/// conflict (flagged, status kept), an unknown label never overwrites a known
/// status. Fields: an observation that is current (advanced or same status)
/// overwrites with what it carries; a stale, conflicting or unknown one only
/// fills gaps. Activation time and the first top-up keep their first value;
/// an activated card and a first top-up never become "not" again.
pub fn merge(held: &OrderState, obs: &Observation) -> Merged {
    let effect = status_effect(held.status, obs.status);
    let label = obs
        .vendor_status
        .as_deref()
        .map(str::trim)
        .filter(|l| !l.is_empty());
    let mut state = held.clone();
    match effect {
        Effect::Advanced => {
            state.status = obs.status;
            state.vendor_status = label.map(str::to_owned);
        }
        Effect::Same => {
            if label.is_some() {
                state.vendor_status = label.map(str::to_owned);
            }
        }
        Effect::Conflict => state.conflict = true,
        Effect::Stale | Effect::Unconfirmed => {}
        Effect::UnknownStatus => {
            if matches!(held.status, Status::New | Status::Unknown) {
                state.status = Status::Unknown;
                state.vendor_status = label.map(str::to_owned);
            }
            if label.is_some() {
                state.unknown_vendor_status = label.map(str::to_owned);
            }
        }
    }
    let current = matches!(effect, Effect::Advanced | Effect::Same);
    merge_fields(&mut state.fields, &obs.fields, current, obs.source);
    let changed = state != *held;
    Merged {
        state,
        effect,
        changed,
    }
}

/// What a callback's signature vouches for. The vendor signs one order
/// number and nothing else, so the signature proves neither the status nor
/// the other fields: see [`corroborate`] and [`needs_confirmation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedOver {
    /// Our order id (172: `OrderNo`): the callback is about this order.
    OrderId,
    /// The vendor's order number as the body states it (172: `OrderNo172`):
    /// it proves the sender holds a sign for that number, not that the
    /// number belongs to this order.
    VendorOrderNo,
}

impl SignedOver {
    /// The `inbound_callbacks.sign_matched` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SignedOver::OrderId => "order_no",
            SignedOver::VendorOrderNo => "order_no_172",
        }
    }
}

/// How a vendor number a signature vouches for compares with the one we hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corroboration {
    /// It is the number we hold from an authenticated source: the callback
    /// is about this order.
    Matches,
    /// We hold another number: the sign was made for another order.
    Differs,
    /// We hold none yet: only the vendor can tell (one query).
    Unknown,
}

/// A sign over the vendor's order number counts only when that number is
/// the one we already hold for the order. What we hold came only from
/// authenticated observations (a query answer, or a callback signed over our
/// order id), never from a body that vouches for itself.
pub fn corroborate(held: &OrderState, claimed: Option<&str>) -> Corroboration {
    let claimed = claimed.map(str::trim).filter(|c| !c.is_empty());
    match (held.fields.vendor_order_no.as_deref(), claimed) {
        (None, _) => Corroboration::Unknown,
        (Some(h), Some(c)) if h == c => Corroboration::Matches,
        (Some(_), _) => Corroboration::Differs,
    }
}

/// A callback's sign covers the order number only, so anyone who saw one
/// callback can replay its sign with any status for that order. A change
/// that can never be undone (the order becoming terminal) therefore waits
/// for the vendor's own answer; everything else a callback may do at once
/// (forward moves are re-checked by the ordinary polling anyway).
pub fn needs_confirmation(obs: &Observation, merged: &Merged) -> bool {
    obs.source == Source::Callback
        && merged.effect == Effect::Advanced
        && merged.state.status.is_terminal()
}

fn merge_fields(held: &mut OrderFields, seen: &OrderFields, current: bool, source: Source) {
    fn take(held: &mut Option<String>, seen: &Option<String>, current: bool) {
        if let Some(v) = seen.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            if current || held.is_none() {
                *held = Some(v.to_owned());
            }
        }
    }
    // The vendor's number for an order never changes: the first one we are
    // told sticks, except that a query answer (the vendor speaking about the
    // order we asked for) always wins over what a callback body said.
    take(
        &mut held.vendor_order_no,
        &seen.vendor_order_no,
        source == Source::Poll,
    );
    take(&mut held.express_name, &seen.express_name, current);
    take(&mut held.express_code, &seen.express_code, current);
    take(&mut held.third_phone, &seen.third_phone, current);
    take(&mut held.iccid, &seen.iccid, current);
    take(&mut held.remark, &seen.remark, current);
    // Activation is one-way: once active, a later "not active" is ignored,
    // and "active" counts even from a stale observation.
    if held.card_status.as_deref() != Some(CARD_ACTIVE) {
        let active = seen.card_status.as_deref().map(str::trim) == Some(CARD_ACTIVE);
        take(&mut held.card_status, &seen.card_status, current || active);
    }
    if held.activated_at.is_none() {
        held.activated_at = seen.activated_at;
    }
    // The first top-up happens once: true is sticky, the amount keeps its
    // first value.
    match (held.first_charge, seen.first_charge) {
        (Some(true), _) | (_, None) => {}
        (None, Some(v)) => held.first_charge = Some(v),
        (Some(false), Some(v)) => {
            if current || v {
                held.first_charge = Some(v)
            }
        }
    }
    take(
        &mut held.first_charge_amount,
        &seen.first_charge_amount,
        false,
    );
    for (k, v) in &seen.details {
        if v.is_null() {
            continue;
        }
        if current || !held.details.contains_key(k) {
            held.details.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn obs(status: Status, label: &str) -> Observation {
        Observation {
            vendor: Vendor::Haoka172,
            order_id: "DOWN1".into(),
            source: Source::Callback,
            vendor_status: Some(label.into()),
            status,
            fields: OrderFields::default(),
        }
    }

    fn held(status: Status) -> OrderState {
        OrderState {
            status,
            vendor_status: Some(format!("label-of-{status}")),
            ..OrderState::new_order()
        }
    }

    #[test]
    fn exactly_the_five_contract_statuses_are_terminal() {
        let terminal: Vec<_> = Status::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                Status::Settled,
                Status::SettlementFailed,
                Status::Revoked,
                Status::Rejected,
                Status::Cancelled
            ]
        );
    }

    #[test]
    fn status_names_round_trip() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!("shipping".parse::<Status>().is_err());
    }

    /// The contract's progress line, written out independently of `rank`.
    fn expected_effect(held: Status, seen: Status) -> Effect {
        const LINE: [Status; 5] = [
            Status::New,
            Status::Pending,
            Status::Submitted,
            Status::Shipped,
            Status::Completed,
        ];
        let pos = |s: Status| LINE.iter().position(|x| *x == s);
        if seen == Status::Unknown {
            return Effect::UnknownStatus;
        }
        if held.is_terminal() {
            if seen == held {
                return Effect::Same;
            }
            return if seen.is_terminal() {
                Effect::Conflict
            } else {
                Effect::Stale
            };
        }
        if held == Status::Unknown || seen.is_terminal() {
            return Effect::Advanced;
        }
        let (h, s) = (pos(held).unwrap(), pos(seen).unwrap());
        if s > h {
            Effect::Advanced
        } else if s == h {
            Effect::Same
        } else {
            Effect::Stale
        }
    }

    #[test]
    fn every_ordered_pair_of_statuses_merges_by_the_contract() {
        for h in Status::ALL {
            // `new` is never observed: vendors cannot say it.
            for s in Status::ALL.into_iter().filter(|s| *s != Status::New) {
                let before = held(h);
                let m = merge(&before, &obs(s, "observed-label"));
                let want = expected_effect(h, s);
                assert_eq!(m.effect, want, "held {h}, seen {s}");
                let want_status = match want {
                    Effect::Advanced => s,
                    Effect::UnknownStatus if matches!(h, Status::New | Status::Unknown) => {
                        Status::Unknown
                    }
                    _ => h,
                };
                assert_eq!(m.state.status, want_status, "held {h}, seen {s}");
                // Never backwards along the line, terminal absorbs.
                if h.is_terminal() {
                    assert_eq!(m.state.status, h, "terminal {h} moved by {s}");
                }
                assert_eq!(
                    m.state.conflict,
                    want == Effect::Conflict,
                    "held {h}, seen {s}"
                );
                // A stale observation with no fields changes nothing; every
                // other one at least records the new label or a flag.
                assert_eq!(m.changed, want != Effect::Stale, "held {h}, seen {s}");
            }
        }
    }

    #[test]
    fn unknown_label_never_overwrites_a_known_status_and_is_flagged() {
        let m = merge(&held(Status::Shipped), &obs(Status::Unknown, "已失效"));
        assert_eq!(m.state.status, Status::Shipped);
        assert_eq!(m.state.vendor_status.as_deref(), Some("label-of-shipped"));
        assert_eq!(m.state.unknown_vendor_status.as_deref(), Some("已失效"));
        assert_eq!(m.effect, Effect::UnknownStatus);
    }

    #[test]
    fn an_unknown_status_without_a_label_keeps_the_flagged_label() {
        let s = merge(&held(Status::Shipped), &obs(Status::Unknown, "已失效")).state;
        let mut blank = obs(Status::Unknown, "  ");
        let m = merge(&s, &blank);
        assert_eq!(m.state.unknown_vendor_status.as_deref(), Some("已失效"));
        assert!(!m.changed);
        blank.vendor_status = None;
        let m = merge(&s, &blank);
        assert_eq!(m.state.unknown_vendor_status.as_deref(), Some("已失效"));
    }

    #[test]
    fn unknown_label_on_a_new_order_makes_it_unknown_and_a_known_one_then_wins() {
        let m = merge(&OrderState::new_order(), &obs(Status::Unknown, "奇怪"));
        assert_eq!(m.state.status, Status::Unknown);
        assert_eq!(m.state.vendor_status.as_deref(), Some("奇怪"));
        let m2 = merge(&m.state, &obs(Status::Pending, "待处理"));
        assert_eq!(m2.state.status, Status::Pending);
        assert_eq!(m2.state.vendor_status.as_deref(), Some("待处理"));
        assert_eq!(m2.state.unknown_vendor_status.as_deref(), Some("奇怪"));
    }

    #[test]
    fn settled_then_late_shipped_stays_settled() {
        let s = merge(&OrderState::new_order(), &obs(Status::Settled, "已结算")).state;
        let m = merge(&s, &obs(Status::Shipped, "已发货"));
        assert_eq!(m.effect, Effect::Stale);
        assert_eq!(m.state.status, Status::Settled);
        assert_eq!(m.state.vendor_status.as_deref(), Some("已结算"));
        assert!(!m.changed);
    }

    #[test]
    fn same_observation_twice_changes_nothing_the_second_time() {
        let mut o = obs(Status::Shipped, "已发货");
        o.fields.express_code = Some("SF1".into());
        let first = merge(&OrderState::new_order(), &o);
        assert!(first.changed);
        let second = merge(&first.state, &o);
        assert_eq!(second.effect, Effect::Same);
        assert!(!second.changed);
    }

    #[test]
    fn same_rank_with_another_label_updates_the_label() {
        let s = merge(&OrderState::new_order(), &obs(Status::Pending, "待处理")).state;
        let m = merge(&s, &obs(Status::Pending, "正在进单"));
        assert_eq!(m.effect, Effect::Same);
        assert_eq!(m.state.vendor_status.as_deref(), Some("正在进单"));
        assert!(m.changed);
    }

    #[test]
    fn conflicting_terminal_is_flagged_and_kept_out_of_the_status() {
        let s = merge(&OrderState::new_order(), &obs(Status::Settled, "已结算")).state;
        let m = merge(&s, &obs(Status::Cancelled, "已取消"));
        assert_eq!(m.effect, Effect::Conflict);
        assert_eq!(m.state.status, Status::Settled);
        assert!(m.state.conflict);
        // The same terminal again is not a conflict.
        let again = merge(&s, &obs(Status::Settled, "已结算"));
        assert!(!again.state.conflict);
        assert!(!again.changed);
    }

    #[test]
    fn current_observation_overwrites_fields_and_stale_one_only_fills_gaps() {
        let mut shipped = obs(Status::Shipped, "已发货");
        shipped.fields.express_name = Some("京东".into());
        shipped.fields.express_code = Some("JD1".into());
        let s = merge(&OrderState::new_order(), &shipped).state;

        let mut completed = obs(Status::Completed, "已完成");
        completed.fields.express_code = Some("JD2".into());
        completed.fields.third_phone = Some("13000000000".into());
        let s = merge(&s, &completed).state;
        assert_eq!(s.fields.express_code.as_deref(), Some("JD2"));
        assert_eq!(s.fields.express_name.as_deref(), Some("京东"));

        let mut late = obs(Status::Submitted, "已提运营商");
        late.fields.express_code = Some("OLD".into());
        late.fields.iccid = Some("8986001".into());
        late.fields.remark = Some("late remark".into());
        let m = merge(&s, &late);
        assert_eq!(m.effect, Effect::Stale);
        assert_eq!(
            m.state.fields.express_code.as_deref(),
            Some("JD2"),
            "stale must not overwrite"
        );
        assert_eq!(
            m.state.fields.iccid.as_deref(),
            Some("8986001"),
            "stale fills a gap"
        );
        assert_eq!(m.state.fields.remark.as_deref(), Some("late remark"));
        assert!(m.changed);
    }

    #[test]
    fn empty_strings_never_erase_what_we_know() {
        let mut a = obs(Status::Shipped, "已发货");
        a.fields.express_code = Some("JD1".into());
        let s = merge(&OrderState::new_order(), &a).state;
        let mut b = obs(Status::Completed, "已完成");
        b.fields.express_code = Some("  ".into());
        let m = merge(&s, &b);
        assert_eq!(m.state.fields.express_code.as_deref(), Some("JD1"));
    }

    #[test]
    fn activation_keeps_its_first_time_and_never_reverts() {
        let t1 = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        let t2 = Utc.with_ymd_and_hms(2024, 2, 2, 3, 4, 5).unwrap();
        let mut a = obs(Status::Shipped, "已发货");
        a.fields.card_status = Some(CARD_ACTIVE.into());
        a.fields.activated_at = Some(t1);
        let s = merge(&OrderState::new_order(), &a).state;
        let mut b = obs(Status::Completed, "已完成");
        b.fields.card_status = Some("未激活".into());
        b.fields.activated_at = Some(t2);
        let m = merge(&s, &b);
        assert_eq!(m.state.fields.activated_at, Some(t1));
        assert_eq!(m.state.fields.card_status.as_deref(), Some(CARD_ACTIVE));
        assert_eq!(m.state.status, Status::Completed);
    }

    #[test]
    fn activation_arriving_on_a_stale_observation_is_still_recorded() {
        let s = merge(&OrderState::new_order(), &obs(Status::Settled, "已结算")).state;
        let t = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        let mut late = obs(Status::Shipped, "已发货");
        late.fields.card_status = Some(CARD_ACTIVE.into());
        late.fields.activated_at = Some(t);
        let m = merge(&s, &late);
        assert_eq!(m.state.fields.activated_at, Some(t));
        assert_eq!(m.state.fields.card_status.as_deref(), Some(CARD_ACTIVE));
    }

    #[test]
    fn a_stale_activation_replaces_a_held_not_active() {
        let mut not_active = obs(Status::Completed, "已完成");
        not_active.fields.card_status = Some("未激活".into());
        let s = merge(&OrderState::new_order(), &not_active).state;
        let t = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        let mut late = obs(Status::Shipped, "已发货");
        late.fields.card_status = Some(CARD_ACTIVE.into());
        late.fields.activated_at = Some(t);
        let m = merge(&s, &late);
        assert_eq!(m.effect, Effect::Stale);
        assert_eq!(m.state.fields.card_status.as_deref(), Some(CARD_ACTIVE));
        assert_eq!(m.state.fields.activated_at, Some(t));
    }

    #[test]
    fn first_top_up_is_sticky_and_keeps_its_first_amount() {
        let mut a = obs(Status::Completed, "已完成");
        a.fields.first_charge = Some(true);
        a.fields.first_charge_amount = Some("50".into());
        let s = merge(&OrderState::new_order(), &a).state;
        let mut b = obs(Status::Settled, "已结算");
        b.fields.first_charge = Some(false);
        b.fields.first_charge_amount = Some("100".into());
        let m = merge(&s, &b);
        assert_eq!(m.state.fields.first_charge, Some(true));
        assert_eq!(m.state.fields.first_charge_amount.as_deref(), Some("50"));

        // A stale "yes" still counts; a stale "no" does not undo a current "no".
        let mut no = obs(Status::Completed, "已完成");
        no.fields.first_charge = Some(false);
        let s = merge(&OrderState::new_order(), &no).state;
        let mut late_yes = obs(Status::Shipped, "已发货");
        late_yes.fields.first_charge = Some(true);
        assert_eq!(merge(&s, &late_yes).state.fields.first_charge, Some(true));
    }

    #[test]
    fn details_merge_key_by_key() {
        let mut a = obs(Status::Pending, "待处理");
        a.fields.details.insert("goods_name".into(), "卡".into());
        a.fields.details.insert("goods_count".into(), 1.into());
        let s = merge(&OrderState::new_order(), &a).state;
        let mut b = obs(Status::Shipped, "已发货");
        b.fields.details.insert("goods_count".into(), 2.into());
        b.fields
            .details
            .insert("pay_amount".into(), serde_json::Value::Null);
        let m = merge(&s, &b);
        assert_eq!(m.state.fields.details["goods_name"], "卡");
        assert_eq!(m.state.fields.details["goods_count"], 2);
        assert!(!m.state.fields.details.contains_key("pay_amount"));
    }

    fn with_vendor_no(n: Option<&str>) -> OrderState {
        let mut s = held(Status::Shipped);
        s.fields.vendor_order_no = n.map(str::to_owned);
        s
    }

    #[test]
    fn a_sign_over_the_vendor_number_counts_only_when_it_is_the_number_we_hold() {
        let known = with_vendor_no(Some("mlkj1"));
        assert_eq!(corroborate(&known, Some("mlkj1")), Corroboration::Matches);
        assert_eq!(corroborate(&known, Some(" mlkj1 ")), Corroboration::Matches);
        assert_eq!(corroborate(&known, Some("mlkj2")), Corroboration::Differs);
        assert_eq!(corroborate(&known, None), Corroboration::Differs);
        assert_eq!(corroborate(&known, Some("")), Corroboration::Differs);
        let unknown = with_vendor_no(None);
        assert_eq!(corroborate(&unknown, Some("mlkj1")), Corroboration::Unknown);
        assert_eq!(corroborate(&unknown, None), Corroboration::Unknown);
    }

    #[test]
    fn only_a_callback_that_would_make_the_order_terminal_needs_confirmation() {
        for h in Status::ALL {
            for s in Status::ALL.into_iter().filter(|s| *s != Status::New) {
                let mut o = obs(s, "label");
                let m = merge(&held(h), &o);
                let want = !h.is_terminal() && s.is_terminal();
                assert_eq!(needs_confirmation(&o, &m), want, "held {h}, seen {s}");
                // The vendor's own answer never does.
                o.source = Source::Poll;
                assert!(
                    !needs_confirmation(&o, &merge(&held(h), &o)),
                    "poll {h} {s}"
                );
            }
        }
    }

    #[test]
    fn a_callback_only_fills_the_vendor_number_and_a_query_answer_replaces_it() {
        let mut first = obs(Status::Pending, "待处理");
        first.fields.vendor_order_no = Some("mlkjEVIL".into());
        let s = merge(&OrderState::new_order(), &first).state;
        let mut later = obs(Status::Shipped, "已发货");
        later.fields.vendor_order_no = Some("mlkjOTHER".into());
        let s = merge(&s, &later).state;
        assert_eq!(s.fields.vendor_order_no.as_deref(), Some("mlkjEVIL"));
        // A stale query answer still corrects it.
        let mut answer = obs(Status::Pending, "待处理");
        answer.source = Source::Poll;
        answer.fields.vendor_order_no = Some("mlkjREAL".into());
        let m = merge(&s, &answer);
        assert_eq!(m.effect, Effect::Stale);
        assert_eq!(m.state.fields.vendor_order_no.as_deref(), Some("mlkjREAL"));
    }

    mod props {
        use super::*;
        use chrono::TimeZone;
        use proptest::prelude::*;

        /// The contract's progress line up to `completed`; every terminal
        /// status comes after it. Written out independently of `rank`.
        fn position(s: Status) -> Option<usize> {
            const LINE: [Status; 5] = [
                Status::New,
                Status::Pending,
                Status::Submitted,
                Status::Shipped,
                Status::Completed,
            ];
            if s.is_terminal() {
                return Some(LINE.len());
            }
            LINE.iter().position(|x| *x == s)
        }

        /// Few values, so that they often repeat and often are blank.
        const TEXTS: [Option<&str>; 6] = [
            None,
            Some(""),
            Some("  "),
            Some("a"),
            Some(" a "),
            Some("b"),
        ];
        const LABELS: [Option<&str>; 7] = [
            None,
            Some(""),
            Some("待处理"),
            Some(" 已发货 "),
            Some("已结算"),
            Some("已失效"),
            Some("x"),
        ];
        const CARDS: [Option<&str>; 6] = [
            None,
            Some(CARD_ACTIVE),
            Some(" 已激活 "),
            Some("未激活"),
            Some(""),
            Some("激活?"),
        ];
        const SOURCES: [Source; 3] = [Source::Callback, Source::Poll, Source::Manual];

        fn pick<T: Copy>(from: &[T], b: u8) -> T {
            from[usize::from(b) % from.len()]
        }

        fn text_of(b: u8) -> Option<String> {
            pick(&TEXTS, b).map(str::to_owned)
        }

        fn text() -> impl Strategy<Value = Option<String>> {
            any::<u8>().prop_map(text_of)
        }

        /// One observation of order DOWN1, decoded from bytes (cheap to
        /// generate; shrinking towards 0 means towards "not said"): any
        /// status a vendor can say (never `new`), a label unrelated to it,
        /// any source, any fields.
        fn decode(b: [u8; 14]) -> Observation {
            let observed: Vec<Status> = Status::ALL
                .into_iter()
                .filter(|s| *s != Status::New)
                .collect();
            let detail = |present: u8, value: u8| {
                (present & 1 == 1).then(|| match value % 4 {
                    0 => serde_json::Value::Null,
                    1 => serde_json::Value::from(1),
                    2 => serde_json::Value::from(2),
                    _ => serde_json::Value::from("x"),
                })
            };
            let details = ["a", "b", "c"]
                .into_iter()
                .enumerate()
                .filter_map(|(i, k)| {
                    detail(b[12] >> i, b[13] >> (2 * i)).map(|v| (k.to_owned(), v))
                })
                .collect();
            Observation {
                vendor: Vendor::Haoka172,
                order_id: "DOWN1".into(),
                source: pick(&SOURCES, b[2]),
                vendor_status: pick(&LABELS, b[1]).map(str::to_owned),
                status: observed[usize::from(b[0]) % observed.len()],
                fields: OrderFields {
                    vendor_order_no: text_of(b[3]),
                    express_name: text_of(b[4]),
                    express_code: text_of(b[5]),
                    third_phone: text_of(b[6]),
                    iccid: text_of(b[7] & 0x0f),
                    card_status: pick(&CARDS, b[8]).map(str::to_owned),
                    activated_at: (b[9] % 5 > 0).then(|| {
                        Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()
                            + chrono::Duration::days(i64::from(b[9] % 5))
                    }),
                    first_charge: [None, Some(false), Some(true)][usize::from(b[10] % 3)],
                    first_charge_amount: text_of(b[11]),
                    remark: text_of(b[7] >> 4),
                    details,
                },
            }
        }

        fn observation() -> impl Strategy<Value = Observation> {
            any::<[u8; 14]>().prop_map(decode)
        }

        /// Up to 12 observations drawn from a few, so that the same
        /// observation often comes again (a redelivery, a re-read).
        fn observations() -> impl Strategy<Value = Vec<Observation>> {
            (
                proptest::collection::vec(observation(), 1..6),
                proptest::collection::vec(any::<u8>(), 0..12),
            )
                .prop_map(|(few, picks)| {
                    picks
                        .iter()
                        .map(|p| few[usize::from(*p) % few.len()].clone())
                        .collect()
                })
        }

        /// The state after each observation, the new order first.
        fn fold(seq: &[Observation]) -> Vec<OrderState> {
            let mut states = vec![OrderState::new_order()];
            for o in seq {
                let next = merge(states.last().unwrap(), o).state;
                states.push(next);
            }
            states
        }

        fn distinct_terminals(seq: &[Observation]) -> Vec<Status> {
            let mut t: Vec<Status> = Vec::new();
            for s in seq.iter().map(|o| o.status).filter(|s| s.is_terminal()) {
                if !t.contains(&s) {
                    t.push(s);
                }
            }
            t
        }

        /// The status the contract gives an order after `seq`: the first
        /// terminal status observed, else the furthest known one along the
        /// line, else `unknown` when only unmapped labels came, else `new`.
        fn expected_status(seq: &[Observation]) -> Status {
            if let Some(t) = distinct_terminals(seq).first() {
                return *t;
            }
            seq.iter()
                .map(|o| o.status)
                .filter(|s| *s != Status::Unknown)
                .max_by_key(|s| position(*s))
                .unwrap_or(if seq.is_empty() {
                    Status::New
                } else {
                    Status::Unknown
                })
        }

        fn trimmed(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|v| !v.is_empty())
        }

        proptest! {
            #![proptest_config(crate::test_support::proptest_config(5000))]

            /// Order-independence of the status axis. What holds for every
            /// permutation of the same observations (repeats included):
            /// - `conflict` is set exactly when two different terminal
            ///   statuses were observed, in any order;
            /// - with at most one distinct terminal status among them, the
            ///   final status is the same for every permutation: that
            ///   terminal status, else the furthest known status along
            ///   the line, else `unknown` (only unmapped labels), else `new`;
            /// - with two or more different terminal statuses the status is
            ///   NOT order-independent: it is the first terminal status of
            ///   the sequence (terminal absorbs), the later ones only set
            ///   `conflict`.
            /// Unmapped labels never decide the status once any known
            /// status is observed. Labels (`vendor_status`,
            /// `unknown_vendor_status`) are the latest ones and depend on
            /// the order by design.
            #[test]
            fn the_status_and_the_conflict_flag_do_not_depend_on_the_order_of_observations(
                (seq, shuffled) in observations()
                    .prop_flat_map(|seq| (Just(seq.clone()), Just(seq).prop_shuffle())),
            ) {
                let a = fold(&seq).pop().unwrap();
                let b = fold(&shuffled).pop().unwrap();
                prop_assert_eq!(a.status, expected_status(&seq));
                prop_assert_eq!(b.status, expected_status(&shuffled));
                let conflict = distinct_terminals(&seq).len() >= 2;
                prop_assert_eq!(a.conflict, conflict);
                prop_assert_eq!(b.conflict, conflict);
                if !conflict {
                    prop_assert_eq!(a.status, b.status);
                }
            }

            /// No step moves the status backwards along `new < pending <
            /// submitted < shipped < completed < terminal`; a terminal
            /// status never changes; `new` is never
            /// reached again; the flag `conflict` is never cleared; the
            /// status after a step is the held one or the observed one.
            #[test]
            fn each_merge_moves_the_status_only_forward_and_a_terminal_status_never_changes(
                seq in observations(),
            ) {
                let states = fold(&seq);
                for (i, o) in seq.iter().enumerate() {
                    let (before, after) = (&states[i], &states[i + 1]);
                    let (b, a) = (before.status, after.status);
                    prop_assert!(a == b || a == o.status, "{b} + {} gave {a}", o.status);
                    prop_assert_ne!(a, Status::New);
                    if b.is_terminal() {
                        prop_assert_eq!(a, b, "terminal {} moved by {}", b, o.status);
                    }
                    if let (Some(pb), Some(pa)) = (position(b), position(a)) {
                        prop_assert!(pa >= pb, "{b} went back to {a}");
                    }
                    if b != Status::New && b != Status::Unknown {
                        prop_assert_ne!(a, Status::Unknown, "{} overwritten by unknown", b);
                    }
                    prop_assert!(after.conflict || !before.conflict, "conflict cleared");
                }
            }

            /// An unmapped label never overwrites a known status or its
            /// label; it is flagged in `unknown_vendor_status`, which no
            /// observation clears (only a newer unmapped label replaces it).
            #[test]
            fn an_unmapped_label_never_overwrites_a_known_status_and_its_flag_is_never_cleared(
                seq in observations(),
            ) {
                let states = fold(&seq);
                for (i, o) in seq.iter().enumerate() {
                    let (before, after) = (&states[i], &states[i + 1]);
                    if o.status != Status::Unknown {
                        prop_assert_eq!(&after.unknown_vendor_status, &before.unknown_vendor_status);
                        continue;
                    }
                    if !matches!(before.status, Status::New | Status::Unknown) {
                        prop_assert_eq!(after.status, before.status);
                        prop_assert_eq!(&after.vendor_status, &before.vendor_status);
                    }
                    let want = trimmed(&o.vendor_status)
                        .map(str::to_owned)
                        .or_else(|| before.unknown_vendor_status.clone());
                    prop_assert_eq!(&after.unknown_vendor_status, &want);
                }
            }

            /// A redelivered or re-read observation is harmless: merging
            /// the same observation twice in a row changes nothing the
            /// second time, from any state the order can reach.
            #[test]
            fn merging_the_same_observation_twice_in_a_row_changes_nothing_the_second_time(
                seq in observations(),
                o in observation(),
            ) {
                let held = fold(&seq).pop().unwrap();
                let first = merge(&held, &o);
                let second = merge(&first.state, &o);
                prop_assert!(!second.changed, "{:?} then {:?}", first.effect, second.effect);
                prop_assert_eq!(&second.state, &first.state);
                prop_assert_ne!(second.effect, Effect::Advanced);
            }

            /// One-way facts and fields: `activated_at` is the first one
            /// observed; the first top-up is true once any observation says
            /// so (in any order) and its amount is the first one observed;
            /// the card is 已激活 once any observation says so (in any
            /// order); no field once known is erased; a callback never
            /// replaces a held vendor number, a query answer always does.
            #[test]
            fn first_activation_first_top_up_and_known_fields_are_sticky(
                seq in observations(),
            ) {
                let states = fold(&seq);
                let last = states.last().unwrap();
                let f = &last.fields;
                prop_assert_eq!(f.activated_at, seq.iter().find_map(|o| o.fields.activated_at));
                let said = |v| seq.iter().any(|o| o.fields.first_charge == Some(v));
                let first_charge = if said(true) {
                    Some(true)
                } else if said(false) {
                    Some(false)
                } else {
                    None
                };
                prop_assert_eq!(f.first_charge, first_charge);
                prop_assert_eq!(
                    f.first_charge_amount.as_deref(),
                    seq.iter().find_map(|o| trimmed(&o.fields.first_charge_amount))
                );
                if seq.iter().any(|o| trimmed(&o.fields.card_status) == Some(CARD_ACTIVE)) {
                    prop_assert_eq!(f.card_status.as_deref(), Some(CARD_ACTIVE));
                }
                for (i, o) in seq.iter().enumerate() {
                    let (b, a) = (&states[i].fields, &states[i + 1].fields);
                    for (name, before, after) in [
                        ("vendor_order_no", &b.vendor_order_no, &a.vendor_order_no),
                        ("express_name", &b.express_name, &a.express_name),
                        ("express_code", &b.express_code, &a.express_code),
                        ("third_phone", &b.third_phone, &a.third_phone),
                        ("iccid", &b.iccid, &a.iccid),
                        ("card_status", &b.card_status, &a.card_status),
                        ("first_charge_amount", &b.first_charge_amount, &a.first_charge_amount),
                        ("remark", &b.remark, &a.remark),
                    ] {
                        prop_assert!(after.is_some() || before.is_none(), "{name} erased");
                    }
                    prop_assert!(b.details.keys().all(|k| a.details.contains_key(k)));
                    let seen = trimmed(&o.fields.vendor_order_no);
                    if o.source == Source::Poll && seen.is_some() {
                        prop_assert_eq!(a.vendor_order_no.as_deref(), seen);
                    } else if b.vendor_order_no.is_some() {
                        prop_assert_eq!(&a.vendor_order_no, &b.vendor_order_no);
                    }
                }
            }

            /// The confirmation rule: exactly a callback that would make a
            /// non-terminal order terminal waits for the vendor; a query
            /// answer (or ops) never does.
            #[test]
            fn only_a_callback_that_would_make_a_non_terminal_order_terminal_needs_confirmation(
                seq in observations(),
                mut o in observation(),
            ) {
                let held = fold(&seq).pop().unwrap();
                let want = o.source == Source::Callback
                    && !held.status.is_terminal()
                    && o.status.is_terminal();
                prop_assert_eq!(needs_confirmation(&o, &merge(&held, &o)), want);
                o.source = Source::Poll;
                prop_assert!(!needs_confirmation(&o, &merge(&held, &o)));
            }

            /// A sign over the vendor number vouches for the order only
            /// when that number (trimmed) is the one held; with none held
            /// only the vendor can tell.
            #[test]
            fn a_sign_over_the_vendor_number_counts_only_for_the_number_held(
                seq in observations(),
                claimed in text(),
            ) {
                let held = fold(&seq).pop().unwrap();
                let want = match (held.fields.vendor_order_no.as_deref(), trimmed(&claimed)) {
                    (None, _) => Corroboration::Unknown,
                    (Some(h), Some(c)) if h == c => Corroboration::Matches,
                    _ => Corroboration::Differs,
                };
                prop_assert_eq!(corroborate(&held, claimed.as_deref()), want);
            }
        }
    }
}
