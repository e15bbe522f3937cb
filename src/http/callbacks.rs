//! `POST /callbacks/haoka172`: the extractor reads the request (bounded) and
//! judges its sender, the vendor module judges the body, the store commits
//! and says what happened, the outcome says what the sender is told. Every
//! request leaves a row in `inbound_callbacks`; nothing is acknowledged
//! before it commits (docs/contract.md#callback-answers).

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};

use super::inbound::Inbound;
use super::AppState;
use crate::db::DbError;
use crate::rules::inbound::SUCCESS_MESSAGE;
use crate::rules::status::Effect;
use crate::store::ingest::{InboundRequest, Receipt, Record};
use crate::vendors::haoka172::callback;
use crate::vendors::Vendor;

pub async fn probe() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "code": 0,
        "message": "haoka-sync 172 callback endpoint; POST order-status callbacks here"
    }))
}

pub async fn haoka172(req: Inbound, state: web::Data<AppState>) -> HttpResponse {
    let verdict = req.refused.unwrap_or_else(|| {
        let ct = req.raw.content_type.as_deref();
        callback::check(
            ct,
            req.raw.bytes(),
            req.sign.as_deref(),
            &state.haoka172_keys,
        )
    });
    let request = InboundRequest {
        record: Record::New(req.raw),
        verdict,
    };
    let result = state.ingest.submit(request).await;
    if result.is_err() {
        state.metrics.callback_unstored(Vendor::Haoka172);
    }
    respond(result)
}

/// The answer, and the one log line for a request the store handled (one
/// it could not take, e.g. while the database is down, was logged by
/// `store::ingest`, with its ids).
fn respond(result: Result<Receipt, DbError>) -> HttpResponse {
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            let msg = if e.is_unavailable() {
                "database unavailable, retry later"
            } else {
                "could not be stored, retry later"
            };
            return answer(StatusCode::SERVICE_UNAVAILABLE, msg);
        }
    };
    let (rid, oid) = (
        r.request_id.as_deref().unwrap_or("-"),
        r.order_id.as_deref().unwrap_or("-"),
    );
    let (status, message) = r.outcome.answer(r.error.as_deref());
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let expedited = if r.expedited {
        "; GetOrderInfo will be asked in the next pass"
    } else {
        ""
    };
    let (order_id, request_id) = (r.order_id.as_deref(), r.request_id.as_deref());
    match (r.outcome.is_success(), r.effect) {
        (true, Some((Effect::Unconfirmed, claimed))) => log::info!(
            vendor = "haoka172", order_id = order_id, request_id = request_id,
            outcome = r.outcome.as_str(), effect = "unconfirmed", claimed:% = claimed;
            "callback haoka172 order={oid} request_id={rid}: held, claims {claimed}; it waits for GetOrderInfo to confirm it{expedited}"
        ),
        (true, Some((effect, now))) => log::info!(
            vendor = "haoka172", order_id = order_id, request_id = request_id,
            outcome = r.outcome.as_str(), effect = effect.as_str(), status:% = now;
            "callback haoka172 order={oid} request_id={rid}: applied ({}, order now {now})",
            effect.as_str()
        ),
        (true, None) => log::info!(
            vendor = "haoka172", order_id = order_id, request_id = request_id,
            outcome = r.outcome.as_str();
            "callback haoka172 order={oid} request_id={rid}: {}",
            r.outcome.as_str()
        ),
        (false, _) => log::warn!(
            vendor = "haoka172", order_id = order_id, request_id = request_id,
            outcome = r.outcome.as_str(), error = r.error.as_deref();
            "callback haoka172 order={oid} request_id={rid}: {} ({}){expedited}",
            r.outcome.as_str(),
            r.error.as_deref().unwrap_or("-")
        ),
    }
    answer(status, message)
}

/// `{"code":0,"message":"上传成功"}` exactly, or `{"code":-1,"message":…}`.
fn answer(status: StatusCode, message: &str) -> HttpResponse {
    if status.is_success() {
        return HttpResponse::Ok()
            .content_type("application/json; charset=utf-8")
            .body(format!(r#"{{"code":0,"message":"{SUCCESS_MESSAGE}"}}"#));
    }
    HttpResponse::build(status).json(serde_json::json!({"code": -1, "message": message}))
}
