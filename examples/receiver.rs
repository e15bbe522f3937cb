//! A fast downstream receiver for `bench/forward`: the simulator's
//! receiver (answers 200 at once, checks each Standard Webhooks signature
//! with its own code) on ADDR, verifying with SECRET, until SIGINT/SIGTERM;
//! then one line: how many requests arrived, how many verified, how many
//! distinct webhook-ids, and how many arrived before an earlier change of
//! the same order (out of order).
//!
//! `cargo run --release --example receiver -- 127.0.0.1:18090 whsec_...`

use haoka_sync::sim::receiver::Receiver;

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, secret] = args.as_slice() else {
        eprintln!("usage: receiver ADDR SECRET");
        std::process::exit(2);
    };
    let addr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}"))
    })?;
    let receiver = Receiver::start_on(addr, vec![secret.clone()]).await?;
    println!("READY {}", receiver.url());
    haoka_sync::startup::shutdown_signal().await;
    receiver.stop().await;
    let t = receiver.tally();
    println!(
        "RESULT received={} verified={} unique={} out_of_order={}",
        t.received, t.verified, t.unique, t.out_of_order
    );
    Ok(())
}
