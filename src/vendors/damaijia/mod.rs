//! 大麦家 (PDD shop orders through `mpagingOrders`): the client and the
//! tolerant answer parser, and its poll interface (docs/vendors.md, the
//! 大麦家 sections).

pub mod ask;
pub mod client;
pub mod labels;
pub mod parse;
