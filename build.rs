// `embed_migrations!` reads migrations/ at compile time; `RUST_LOG` is
// checked against the crates this program is built from (Cargo.lock).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let lock =
        std::fs::read_to_string(std::path::Path::new(&dir).join("Cargo.lock")).unwrap_or_default();
    let mut crates: Vec<String> = lock
        .lines()
        .filter_map(|l| l.strip_prefix("name = \"")?.strip_suffix('"'))
        .map(|n| n.replace('-', "_"))
        .collect();
    crates.push("haoka_sync".into());
    crates.sort();
    crates.dedup();
    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"))
        .join("log_crates.rs");
    std::fs::write(
        out,
        format!("/// The crates this program is built from (log targets start with one).\npub(crate) const CRATES: &[&str] = &{crates:?};\n"),
    )
    .expect("OUT_DIR is writable");
}
