//! The rules at the bottom: what every other module decides with, and
//! nothing else. The status model and the merge (`status`), when to ask a
//! vendor next (`schedule`, and again when its settings change:
//! `reschedule`), how long orders stay in a status (`dwell`),
//! deployment-wide callback silences (`gaps`),
//! how a callback request is judged and answered (`inbound`), bounded
//! identifiers (`ids`), masking of personal data (`mask`), times as
//! operators type them and the day a report covers (`time`), when 172 is
//! expected to have settled an order (`settlement`), when the database
//! counts as down and when it is probed (`db_health`), and the `Vendor` and
//! `Observation` types both paths share.
//!
//! Pure: no I/O, no clock (callers pass `now`), no database, no logging.
//! Nothing here imports another module of the crate but `secret`.

pub mod db_health;
pub mod duration;
pub mod dwell;
pub mod forward;
pub mod gaps;
pub mod ids;
pub mod inbound;
pub mod mask;
pub mod reschedule;
pub mod retention;
pub mod schedule;
pub mod settlement;
pub mod status;
pub mod time;
pub mod vendor;

pub use status::{Observation, Source, Status};
pub use vendor::Vendor;
