//! `store::apply_batch` directly: the batch semantics the ingest relies on.

use haoka_sync::config::Config;
use haoka_sync::rules::status::{Observation, OrderFields, SignedOver, Source, Status};
use haoka_sync::store::{apply_batch, Applied, Item};
use haoka_sync::vendors::Vendor;

use crate::helpers::*;

fn obs(order: &str, status: Status, label: &str) -> Observation {
    Observation {
        vendor: Vendor::Haoka172,
        order_id: order.into(),
        source: Source::Callback,
        vendor_status: Some(label.into()),
        status,
        fields: OrderFields::default(),
    }
}

#[test]
fn one_batch_merges_in_arrival_order_and_a_repeated_key_applies_once() {
    let db = TestDb::new();
    let mut c = db.conn();
    let schedule = Config::with(&[]).unwrap().schedule();
    let (a1, a2, a3, b1) = (
        obs("A", Status::Shipped, "已发货"),
        obs("A", Status::Submitted, "已提运营商"),
        obs("A", Status::Settled, "已结算"),
        obs("B", Status::Pending, "待处理"),
    );
    let items = [
        Item {
            obs: &a1,
            request_id: Some("k1"),
            signed_over: Some(SignedOver::OrderId),
        },
        Item {
            obs: &b1,
            request_id: Some("k2"),
            signed_over: Some(SignedOver::OrderId),
        },
        Item {
            obs: &a2,
            request_id: Some("k3"),
            signed_over: Some(SignedOver::OrderId),
        },
        Item {
            obs: &a3,
            request_id: Some("k1"),
            signed_over: Some(SignedOver::OrderId),
        },
        Item {
            obs: &a3,
            request_id: Some("k4"),
            signed_over: Some(SignedOver::OrderId),
        },
    ];
    let r = apply_batch(&mut c, &items, chrono::Utc::now(), &schedule).unwrap();
    let effects: Vec<String> = r
        .iter()
        .map(|a| match a {
            Applied::Event { effect, status, .. } => format!("{}:{status}", effect.as_str()),
            Applied::Duplicate => "duplicate".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        effects,
        [
            "advanced:shipped",
            "advanced:pending",
            "stale:shipped",
            "duplicate",
            "advanced:settled"
        ]
    );
    assert_eq!(order(&mut c, "A").unwrap().status, "settled");
    assert_eq!(order(&mut c, "B").unwrap().status, "pending");
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM order_events"), 4);

    // A later batch sees the keys as seen.
    let again = apply_batch(&mut c, &items[..2], chrono::Utc::now(), &schedule).unwrap();
    assert_eq!(again, [Applied::Duplicate, Applied::Duplicate]);
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM order_events"), 4);
}

#[test]
fn an_answer_that_makes_the_order_terminal_settles_even_claims_made_while_it_was_asked() {
    use haoka_sync::store::poll::{record_poll, PollResult};
    let db = TestDb::new();
    let mut c = db.conn();
    let schedule = Config::with(&[("HAOKA172_USER_ID", "u"), ("HAOKA172_SECRET", "s")])
        .unwrap()
        .schedule();
    assert!(schedule.confirm_terminal);
    let now = chrono::Utc::now();
    // A claim of `settled`, held; the question is asked before it came.
    let claim = obs("T", Status::Settled, "已结算");
    let held = apply_batch(
        &mut c,
        &[Item {
            obs: &claim,
            request_id: Some("late-claim"),
            signed_over: Some(SignedOver::OrderId),
        }],
        now,
        &schedule,
    )
    .unwrap();
    assert!(matches!(held[0], Applied::Held { .. }), "{held:?}");
    let mut answer = obs("T", Status::Settled, "已结算");
    answer.source = Source::Poll;
    let asked_at = now - chrono::Duration::seconds(5);
    let rec = record_poll(
        &mut c,
        Vendor::Haoka172,
        "T",
        "owner",
        PollResult::Observed(&answer),
        &schedule,
        now,
        asked_at,
        &[],
    )
    .unwrap();
    assert_eq!(rec.settled.len(), 1, "{rec:?}");
    assert_eq!(rec.settled[0].result, "confirmed");
    assert_eq!(order(&mut c, "T").unwrap().status, "settled");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM callback_confirmations WHERE resolved_at IS NULL"
        ),
        0,
        "nothing left waiting on a terminal order"
    );
}
