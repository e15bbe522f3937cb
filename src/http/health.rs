//! Liveness and readiness, for a load balancer or a service manager.

use std::time::Duration;

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::db::{self, Schema};

/// How long readiness waits for a connection: common probe timeouts are 1 s.
const READY_WAIT: Duration = Duration::from_millis(800);

/// 200 while the process runs (GET and HEAD).
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// 200 when the database answers within a second and has this build's
/// schema; 503 otherwise, with what is wrong (GET and HEAD). While the
/// database is known to be down it answers at once, without a connection.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let not_ready = |database: &str, detail: String| {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "not ready", "database": database, "detail": detail
        }))
    };
    let health = state.pool.health();
    if !health.is_up() {
        return not_ready("unavailable", health.unavailable().to_string());
    }
    let wants = state.schema_version.clone();
    let checked = db::run_within(&state.pool, READY_WAIT, move |conn| {
        db::schema(conn, &wants)
    })
    .await;
    match checked {
        Ok(Schema::Current) => {
            HttpResponse::Ok().json(serde_json::json!({"status": "ready", "database": "ok"}))
        }
        Ok(Schema::Behind { has, wants }) => not_ready(
            "schema behind",
            format!(
                "the database has migrations up to {}, this build needs {wants}: run haoka-sync migrate (serve does at start)",
                has.as_deref().unwrap_or("none")
            ),
        ),
        Err(e) => {
            // Probes come every few seconds: the outage is logged once, by
            // the database's prober.
            log::debug!("readyz: {e}");
            not_ready("unavailable", e.to_string())
        }
    }
}
