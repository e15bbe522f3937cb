//! Many callbacks at once: nothing acknowledged is lost, and every order
//! ends at the highest status it was sent, whatever the arrival order.

use futures_util::future::join_all;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_callbacks_for_twenty_orders_all_land() {
    // Terminal callbacks apply at once here: this is about arrival order.
    let app = TestApp::spawn_with(&[CONFIRM_OFF]).await;
    // Ten callbacks per order over the progress line; a third of the orders
    // also get a terminal status. Sent shuffled, all at once.
    let line = ["待处理", "正在进单", "已提运营商", "已发货", "已完成"];
    let mut sends = Vec::new();
    let mut expected = Vec::new();
    for o in 0..20u32 {
        let order_no = format!("CONC{o:03}");
        let terminal = o % 3 == 0;
        let top = if terminal {
            "settled"
        } else {
            ["pending", "pending", "submitted", "shipped", "completed"][(o as usize % 4) + 1]
        };
        let max_idx = if terminal { 4 } else { (o as usize % 4) + 1 };
        for k in 0..10u32 {
            let label = if terminal && k == 9 {
                "已结算"
            } else {
                line[(k as usize * 7 + o as usize) % (max_idx + 1)]
            };
            sends.push((format!("R-{o}-{k}"), order_no.clone(), label));
        }
        // Make sure the top of the line is actually sent for non-terminal orders.
        if !terminal {
            sends.push((format!("R-{o}-top"), order_no.clone(), line[max_idx]));
        }
        expected.push((order_no, top));
    }
    // Deterministic shuffle.
    let mut seed = 42u64;
    for i in (1..sends.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        sends.swap(i, (seed >> 33) as usize % (i + 1));
    }
    let n = sends.len();
    let results = join_all(
        sends
            .iter()
            .map(|(rid, ord, label)| app.send(rid, ord, label)),
    )
    .await;
    let acked = results
        .iter()
        .filter(|(s, b)| *s == 200 && b == SUCCESS)
        .count();
    assert_eq!(
        acked,
        n,
        "every callback acknowledged: {:?}",
        results.iter().find(|r| r.0 != 200)
    );

    let mut c = app.db.conn();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM inbound_callbacks WHERE outcome = 'applied'"
        ),
        n as i64
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(DISTINCT request_id) AS n FROM inbound_callbacks"
        ),
        n as i64
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM order_events"),
        n as i64
    );
    for (order_no, top) in expected {
        let o = order(&mut c, &order_no).unwrap();
        assert_eq!(o.status, top, "{order_no}");
    }
}
