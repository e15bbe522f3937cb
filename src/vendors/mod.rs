//! Everything vendor-specific: signing, request and response shapes, error
//! codes. Adding a vendor touches a folder here, one label mapping in
//! `status`, and configuration. Nothing here touches the database.

pub mod damaijia;
pub mod haoka172;
pub mod value;

pub use crate::rules::vendor::Vendor;
