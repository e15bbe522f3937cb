//! `CALLBACK_ALLOWED_SOURCES`: callbacks from other addresses are stored and
//! refused; behind a trusted proxy the forwarded address is the one judged.

use diesel::prelude::*;

use crate::helpers::*;

const FORBIDDEN: &str = r#"{"code":-1,"message":"source address not allowed"}"#;

/// A signed, non-terminal callback, with an `X-Forwarded-For` when given.
async fn send_via(
    app: &TestApp,
    request_id: &str,
    order_no: &str,
    xff: Option<&str>,
) -> (u16, String) {
    let mut req = app
        .client
        .post(format!("{}/callbacks/haoka172", app.address))
        .header("sign", app.key.encrypt(order_no))
        .json(&callback(request_id, order_no, "已发货"));
    if let Some(v) = xff {
        req = req.header("X-Forwarded-For", v);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[derive(Debug, QueryableByName)]
struct SourceRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    outcome: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    source_addr: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    error: Option<String>,
}

/// Outcome, judged address and error of every inbound row, oldest first.
fn sources(conn: &mut PgConnection) -> Vec<SourceRow> {
    diesel::sql_query("SELECT outcome, source_addr, error FROM inbound_callbacks ORDER BY id")
        .load(conn)
        .unwrap()
}

#[tokio::test]
async fn a_signed_callback_from_outside_the_allowed_sources_is_stored_and_refused_with_403() {
    let app = TestApp::spawn_with(&[("CALLBACK_ALLOWED_SOURCES", "10.0.0.0/8")]).await;
    let (status, body) = app.send("R-src-1", "SRC001", "已发货").await;
    assert_eq!((status, body.as_str()), (403, FORBIDDEN));

    let mut c = app.db.conn();
    let rows = sources(&mut c);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome, "forbidden_source");
    assert_eq!(rows[0].source_addr.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        rows[0].error.as_deref(),
        Some("source address 127.0.0.1 is not in CALLBACK_ALLOWED_SOURCES")
    );
    assert!(inbound(&mut c)[0].body.contains("SRC001"), "raw body kept");
    assert!(order(&mut c, "SRC001").is_none(), "no order created");
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM order_events"), 0);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_right_most_forwarded_address_is_judged() {
    let app = TestApp::spawn_with(&[
        ("CALLBACK_ALLOWED_SOURCES", "203.0.113.0/24"),
        ("TRUSTED_PROXY_HEADER", "X-Forwarded-For"),
    ])
    .await;
    let (status, body) = send_via(&app, "R-px-1", "SRC010", Some("203.0.113.5")).await;
    assert_eq!((status, body.as_str()), (200, SUCCESS));
    let (status, body) = send_via(&app, "R-px-2", "SRC011", Some("198.51.100.1")).await;
    assert_eq!((status, body.as_str()), (403, FORBIDDEN));
    // The client wrote the allowed address itself; the proxy appended the real one.
    let (status, body) =
        send_via(&app, "R-px-3", "SRC012", Some("203.0.113.5, 198.51.100.1")).await;
    assert_eq!((status, body.as_str()), (403, FORBIDDEN));

    let mut c = app.db.conn();
    let rows: Vec<_> = sources(&mut c)
        .into_iter()
        .map(|r| (r.outcome, r.source_addr.unwrap_or_default()))
        .collect();
    let want = [
        ("applied", "203.0.113.5"),
        ("forbidden_source", "198.51.100.1"),
        ("forbidden_source", "198.51.100.1"),
    ];
    assert_eq!(
        rows,
        want.map(|(o, a)| (o.to_owned(), a.to_owned())).to_vec()
    );
    assert_eq!(order(&mut c, "SRC010").unwrap().status, "shipped");
    assert!(order(&mut c, "SRC011").is_none());
    assert!(order(&mut c, "SRC012").is_none());
}

#[tokio::test]
async fn the_forwarded_header_of_a_peer_that_is_not_a_trusted_proxy_is_ignored() {
    let app = TestApp::spawn_with(&[
        ("CALLBACK_ALLOWED_SOURCES", "203.0.113.0/24"),
        ("TRUSTED_PROXY_HEADER", "X-Forwarded-For"),
        ("TRUSTED_PROXIES", "192.0.2.0/24"),
    ])
    .await;
    let (status, body) = send_via(&app, "R-up-1", "SRC020", Some("203.0.113.5")).await;
    assert_eq!((status, body.as_str()), (403, FORBIDDEN));
    let mut c = app.db.conn();
    let rows = sources(&mut c);
    assert_eq!(rows[0].outcome, "forbidden_source");
    assert_eq!(rows[0].source_addr.as_deref(), Some("127.0.0.1"));
    assert!(order(&mut c, "SRC020").is_none());
}

#[tokio::test]
async fn without_allowed_sources_every_address_is_accepted_and_its_address_recorded() {
    let app = TestApp::spawn().await;
    let (status, body) = send_via(&app, "R-any-1", "SRC030", Some("198.51.100.1")).await;
    assert_eq!((status, body.as_str()), (200, SUCCESS));
    let mut c = app.db.conn();
    let rows = sources(&mut c);
    assert_eq!(rows[0].outcome, "applied");
    assert_eq!(
        rows[0].source_addr.as_deref(),
        Some("127.0.0.1"),
        "no TRUSTED_PROXY_HEADER: the peer is recorded, the header ignored"
    );
}
