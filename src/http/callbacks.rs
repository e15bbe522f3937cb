//! `POST /callbacks/haoka172`: read the raw body (bounded), let the vendor
//! module judge it, let the store commit it, answer. A sender that
//! `CALLBACK_ALLOWED_SOURCES` does not allow is refused before its body is
//! judged. Every request leaves a row in `inbound_callbacks`; nothing is
//! acknowledged before it commits.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use super::AppState;
use crate::db::DbError;
use crate::status::Effect;
use crate::store::ingest::{Disposition, InboundRequest, Outcome, RawRequest, Receipt, Record};
use crate::vendors::haoka172::callback;

/// The exact success body both public integrations send back.
pub const SUCCESS_BODY: &str = r#"{"code":0,"message":"上传成功"}"#;

/// How much of an oversized body is kept.
const TOO_LARGE_SAMPLE: usize = 4096;

/// Headers whose values are credentials and are not stored.
const REDACTED_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
];

pub async fn probe() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "code": 0,
        "message": "haoka-sync 172 callback endpoint; POST order-status callbacks here"
    }))
}

pub async fn haoka172(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    // The sender first: a request from an address that may not send
    // callbacks is stored as it came, but never judged as one.
    let source = state
        .callback_sources
        .judge(req.peer_addr().map(|a| a.ip()), req.headers());
    let forbidden = source
        .refusal
        .map(|error| reject(Outcome::ForbiddenSource, error));
    let body = read_bounded(payload, state.callback_max_body_bytes).await;
    let sign_header = req.headers().get("sign").and_then(|v| v.to_str().ok());
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let (bytes, disposition, truncated, size) = match body {
        Body::Complete(bytes) => {
            let d = forbidden.unwrap_or_else(|| judge(content_type, &bytes, sign_header, &state));
            let size = bytes.len();
            (bytes, d, false, size)
        }
        Body::TooLarge { sample, size } => {
            let d = forbidden.unwrap_or_else(|| {
                reject(
                    Outcome::TooLarge,
                    format!(
                        "body of {size} bytes exceeds the limit of {} bytes",
                        state.callback_max_body_bytes
                    ),
                )
            });
            (sample, d, true, size)
        }
        Body::Broken { partial, error } => {
            let size = partial.len();
            let d = forbidden.unwrap_or_else(|| {
                reject(
                    Outcome::Malformed,
                    format!("body could not be read: {error}"),
                )
            });
            (partial, d, false, size)
        }
    };
    let (text, raw_bytes) = RawRequest::body_fields(&bytes);
    let raw = RawRequest {
        vendor: "haoka172",
        content_type: content_type.map(str::to_owned),
        remote_addr: req.peer_addr().map(|a| a.to_string()),
        source_addr: source.addr.map(|a| a.to_string()),
        headers: headers_json(&req),
        body: text,
        body_raw: raw_bytes,
        body_size: i32::try_from(size).unwrap_or(i32::MAX),
        body_truncated: truncated,
    };
    let error = match &disposition {
        Disposition::Reject { error, .. } => Some(error.clone()),
        _ => None,
    };
    let ids = ids(&disposition);
    let result = state
        .ingest
        .submit(InboundRequest {
            record: Record::New(raw),
            disposition,
        })
        .await;
    respond(result, error, ids)
}

enum Body {
    Complete(Vec<u8>),
    TooLarge { sample: Vec<u8>, size: usize },
    Broken { partial: Vec<u8>, error: String },
}

/// Read at most `limit` bytes; past it, stop and keep a sample.
async fn read_bounded(mut payload: web::Payload, limit: usize) -> Body {
    let mut buf = Vec::new();
    while let Some(chunk) = payload.next().await {
        match chunk {
            Ok(chunk) => {
                if buf.len() + chunk.len() > limit {
                    let size = buf.len() + chunk.len();
                    buf.extend_from_slice(
                        &chunk[..chunk.len().min(TOO_LARGE_SAMPLE.saturating_sub(buf.len()))],
                    );
                    buf.truncate(TOO_LARGE_SAMPLE);
                    return Body::TooLarge { sample: buf, size };
                }
                buf.extend_from_slice(&chunk);
            }
            Err(e) => {
                return Body::Broken {
                    partial: buf,
                    error: e.to_string(),
                }
            }
        }
    }
    Body::Complete(buf)
}

fn judge(
    content_type: Option<&str>,
    body: &[u8],
    sign: Option<&str>,
    state: &AppState,
) -> Disposition {
    Disposition::judged(callback::check(
        content_type,
        body,
        sign,
        &state.haoka172_keys,
    ))
}

fn reject(outcome: Outcome, error: String) -> Disposition {
    Disposition::refused(outcome, error)
}

fn ids(d: &Disposition) -> (Option<String>, Option<String>) {
    match d {
        Disposition::Apply {
            request_id,
            observation,
            ..
        } => (Some(request_id.clone()), Some(observation.order_id.clone())),
        Disposition::Test { request_id } => (Some(request_id.clone()), None),
        Disposition::Reject {
            request_id,
            order_id,
            ..
        } => (request_id.clone(), order_id.clone()),
    }
}

/// What the sender is told. Every signature failure gets the same answer,
/// whatever check failed, so probing teaches nothing about the key (no
/// padding oracle); the precise cause is in the inbox row and the log.
fn answer(outcome: Outcome, error: Option<&str>) -> (StatusCode, &str) {
    let precise = |fallback| error.unwrap_or(fallback);
    match outcome {
        Outcome::Applied | Outcome::Duplicate | Outcome::Test => (StatusCode::OK, SUCCESS_BODY),
        Outcome::BadSignature => (StatusCode::UNAUTHORIZED, BAD_SIGNATURE),
        Outcome::Unverified => (
            StatusCode::SERVICE_UNAVAILABLE,
            "signature cannot be verified yet, retry later",
        ),
        Outcome::Malformed => (StatusCode::BAD_REQUEST, precise("malformed callback")),
        Outcome::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, precise("body too large")),
        Outcome::NotConfigured => (StatusCode::SERVICE_UNAVAILABLE, precise("not configured")),
        Outcome::ForbiddenSource => (StatusCode::FORBIDDEN, "source address not allowed"),
        Outcome::InternalError => (
            StatusCode::SERVICE_UNAVAILABLE,
            "could not be stored, retry later",
        ),
    }
}

/// The one answer to every signature failure.
pub const BAD_SIGNATURE: &str = "bad signature";

fn respond(
    result: Result<Receipt, DbError>,
    error: Option<String>,
    (request_id, order_id): (Option<String>, Option<String>),
) -> HttpResponse {
    let rid = request_id.as_deref().unwrap_or("-");
    let oid = order_id.as_deref().unwrap_or("-");
    let receipt = match result {
        Ok(r) => r,
        Err(e) => {
            // Logged once by the ingest writer; here only the answer. Never
            // a 500: whatever failed, the sender may retry.
            let msg = if e.is_unavailable() {
                "database unavailable, retry later"
            } else {
                "could not be stored, retry later"
            };
            log::warn!("callback haoka172 order={oid} request_id={rid}: not acknowledged (503)");
            return failure(StatusCode::SERVICE_UNAVAILABLE, msg);
        }
    };
    let error = receipt.error.clone().or(error);
    let (status, body) = answer(receipt.outcome, error.as_deref());
    if status.is_success() {
        match receipt.effect {
            Some((Effect::Unconfirmed, claimed)) => log::info!(
                "callback haoka172 order={oid} request_id={rid}: held, claims {claimed}; {}",
                if receipt.expedited {
                    "GetOrderInfo will confirm it in the next pass"
                } else {
                    "the next scheduled GetOrderInfo will confirm it"
                }
            ),
            Some((effect, status)) => log::info!(
                "callback haoka172 order={oid} request_id={rid}: applied ({}, order now {status})",
                effect.as_str()
            ),
            None => log::info!(
                "callback haoka172 order={oid} request_id={rid}: {}",
                receipt.outcome.as_str()
            ),
        }
        return HttpResponse::Ok()
            .content_type("application/json; charset=utf-8")
            .body(SUCCESS_BODY);
    }
    let cause = error.as_deref().unwrap_or(receipt.outcome.as_str());
    log::warn!(
        "callback haoka172 order={oid} request_id={rid}: {} ({cause}){}",
        receipt.outcome.as_str(),
        if receipt.expedited {
            "; GetOrderInfo will tell its vendor number in the next pass"
        } else {
            ""
        }
    );
    failure(status, body)
}

fn failure(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({"code": -1, "message": message}))
}

/// Request headers as a JSON object, credentials redacted.
fn headers_json(req: &HttpRequest) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, value) in req.headers() {
        let key = name.as_str().to_ascii_lowercase();
        let v = if REDACTED_HEADERS.contains(&key.as_str()) {
            "[redacted]".to_owned()
        } else {
            String::from_utf8_lossy(value.as_bytes()).replace('\0', "\u{FFFD}")
        };
        match map.get_mut(&key) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                map.insert(key, serde_json::Value::String(v));
            }
        }
    }
    serde_json::Value::Object(map)
}
