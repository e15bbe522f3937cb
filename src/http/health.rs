//! Liveness and readiness.

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::db;

/// 200 while the process runs.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// 200 when the database answers, 503 otherwise.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match db::run(&state.pool, db::ping).await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({"status": "ready", "database": "ok"})),
        Err(e) => {
            log::warn!("readyz: {e}");
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({"status": "not ready", "database": "unavailable"}))
        }
    }
}
