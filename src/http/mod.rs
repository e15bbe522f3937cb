//! HTTP: routes and thin handlers. Handlers read the request, call one
//! function elsewhere (vendor parsing, store, db), and map the result to a
//! response. No SQL and no business rules here.

mod api;
mod callbacks;
pub mod error;
mod health;
mod inbound;
pub mod source;

use std::sync::Arc;

use actix_web::web;

use crate::db::PgPool;
use crate::rules::schedule::Schedule;
use crate::secret::Secret;
use crate::store::ingest::Ingest;
use crate::vendors::haoka172::sign::CallbackKey;
use source::SourcePolicy;

/// Shared by every worker.
pub struct AppState {
    pub pool: PgPool,
    pub ingest: Arc<Ingest>,
    /// Keys for 172 callback signatures (current first; empty = not configured).
    pub haoka172_keys: Vec<CallbackKey>,
    pub callback_max_body_bytes: usize,
    /// Who may send callbacks, and how the sender's address is found.
    pub callback_sources: SourcePolicy,
    pub admin_token: Option<Secret>,
    /// The newest migration this build embeds (readiness checks for it).
    pub schema_version: String,
    pub schedule: Arc<Schedule>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/healthz")
            .route(web::get().to(health::healthz))
            .route(web::head().to(health::healthz)),
    )
    .service(
        web::resource("/readyz")
            .route(web::get().to(health::readyz))
            .route(web::head().to(health::readyz)),
    )
    .service(
        web::resource("/callbacks/haoka172")
            .route(web::post().to(callbacks::haoka172))
            .route(web::get().to(callbacks::probe)),
    )
    .route("/api/orders", web::post().to(api::track_orders))
    .route(
        "/api/orders/{vendor}/{order_id}",
        web::get().to(api::get_order),
    );
}
