//! 172号卡 (lot-ml): request signing, the order-status callback, and (later)
//! the `GetOrderInfo` client. See `vendors.md` §1–§4.

pub mod ask;
pub mod callback;
pub mod client;
pub mod labels;
pub mod sign;
