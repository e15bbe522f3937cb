//! Pre-generate distinct, correctly signed 172 callbacks for `bench/ingest`:
//! one request per line, `sign<TAB>body`. A realistic mix: about five
//! callbacks per order, statuses along the lifecycle, some terminal.
//!
//! `cargo run --release --example gen_callbacks -- COUNT PREFIX SECRET OUT`

use std::io::Write;

use haoka_sync::sim::lifecycle::Rng;
use haoka_sync::sim::sign::callback_sign;

const LABELS: [&str; 10] = [
    "待处理",
    "已提运营商",
    "已发货",
    "已发货",
    "已完成",
    "已结算",
    "已结算",
    "审核不通过",
    "已撤单",
    "无法结算",
];

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, count, prefix, secret, out] = args.as_slice() else {
        eprintln!("usage: gen_callbacks COUNT PREFIX SECRET OUT");
        std::process::exit(2);
    };
    let count: usize = count.parse().unwrap_or(100_000);
    let orders = (count / 5).max(1);
    let mut rng = Rng::new(count as u64 ^ 0xBE1C);
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    for i in 0..count {
        let order = format!("{prefix}O{:07}", rng.next_u64() as usize % orders);
        let label = LABELS[rng.next_u64() as usize % LABELS.len()];
        let data = serde_json::json!({
            "OrderNo": order, "OrderNo172": format!("mlkj{:016}", rng.next_u64() % 10_000_000_000_000_000),
            "OrderStatus": label, "ThirdPhone": "13095541234", "Remark": format!("[{label}]"),
            "ExpressName": "京东", "ExpressCode": format!("JDV{:012}", i), "CardStatus": "未激活",
            "ActiveTime": null, "Iccid": null, "IsFirstCharge": 0, "FirstCharge": ""
        });
        let body =
            serde_json::json!({"RequidId": format!("{prefix}R{i:08}"), "Data": data.to_string()});
        writeln!(w, "{}\t{}", callback_sign(secret, &order), body)?;
    }
    w.flush()
}
