//! HTTP: routes and thin handlers. Handlers read the request, call one
//! function elsewhere (vendor parsing, store, db), and map the result to a
//! response. No SQL and no business rules here.

mod api;
mod callbacks;
pub mod error;
mod health;
mod inbound;
pub mod metrics;
pub mod source;

use std::sync::Arc;

use actix_web::{middleware, web};

use crate::db::PgPool;
use crate::metrics::Metrics;
use crate::rules::schedule::Schedule;
use crate::secret::Secret;
use crate::store::ingest::Ingest;
use crate::vendors::haoka172::sign::CallbackKey;
use crate::vendors::Vendor;
use source::SourcePolicy;

/// The vendors that push callbacks to a route here (their callback series
/// start at zero; their last callback is looked up).
pub const CALLBACK_VENDORS: [Vendor; 1] = [Vendor::Haoka172];

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
    pub metrics: Arc<Metrics>,
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
        web::resource("/metrics")
            .route(web::get().to(metrics::metrics))
            .route(web::head().to(metrics::metrics)),
    )
    .service(
        web::resource("/callbacks/haoka172")
            .route(
                web::post()
                    .to(callbacks::haoka172)
                    .wrap(middleware::from_fn(metrics::time_haoka172)),
            )
            .route(web::get().to(callbacks::probe)),
    )
    .service(
        // The admin API: the token is checked before a body is read, bodies
        // that are not the JSON a route takes get JSON errors, and every
        // request gets an access line (target `haoka_sync::api`).
        web::scope("/api")
            .app_data(web::JsonConfig::default().error_handler(error::json_body))
            .wrap(middleware::from_fn(api::admin_gate))
            .wrap(middleware::Logger::new(r#"%a "%r" %s %b %Dms"#).log_target("haoka_sync::api"))
            .route("/orders", web::post().to(api::track_orders))
            .route("/orders/recheck", web::post().to(api::recheck_orders))
            .route("/orders/{vendor}/{order_id}", web::get().to(api::get_order))
            .default_service(web::to(api::no_route)),
    );
}
