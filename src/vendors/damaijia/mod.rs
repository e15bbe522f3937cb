//! 大麦家 (PDD shop orders through `mpagingOrders`): the client and the
//! tolerant answer parser. See `vendors.md` §5.

pub mod ask;
pub mod client;
pub mod labels;
pub mod parse;
