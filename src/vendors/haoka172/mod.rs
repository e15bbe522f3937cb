//! 172号卡 (lot-ml): request signing, the order-status callback, and (later)
//! the `GetOrderInfo` client, its labels and poll interface
//! (docs/vendors.md, the 172号卡 sections).

pub mod ask;
pub mod callback;
pub mod client;
pub mod labels;
pub mod sign;
