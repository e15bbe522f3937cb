//! `POST /callbacks/haoka172`: read the raw body (bounded), let the vendor
//! module judge it, let the store commit it, answer. Every request leaves a
//! row in `inbound_callbacks`; nothing is acknowledged before it commits.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use super::AppState;
use crate::db::DbError;
use crate::store::ingest::{Disposition, InboundRequest, Outcome, RawRequest, Receipt};
use crate::vendors::haoka172::callback::{self, Rejection, Verdict};

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
    let body = read_bounded(payload, state.callback_max_body_bytes).await;
    let sign_header = req.headers().get("sign").and_then(|v| v.to_str().ok());
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let (bytes, disposition, truncated, size) = match body {
        Body::Complete(bytes) => {
            let d = judge(content_type, &bytes, sign_header, &state);
            let size = bytes.len();
            (bytes, d, false, size)
        }
        Body::TooLarge { sample, size } => {
            let d = reject(
                Outcome::TooLarge,
                format!(
                    "body of {size} bytes exceeds the limit of {} bytes",
                    state.callback_max_body_bytes
                ),
            );
            (sample, d, true, size)
        }
        Body::Broken { partial, error } => {
            let size = partial.len();
            (
                partial,
                reject(
                    Outcome::Malformed,
                    format!("body could not be read: {error}"),
                ),
                false,
                size,
            )
        }
    };
    let (text, raw_bytes) = RawRequest::body_fields(&bytes);
    let raw = RawRequest {
        vendor: "haoka172",
        content_type: content_type.map(str::to_owned),
        remote_addr: req.peer_addr().map(|a| a.to_string()),
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
        .submit(InboundRequest { raw, disposition })
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
    match callback::check(content_type, body, sign, &state.haoka172_keys) {
        Ok(Verdict::Apply {
            request_id,
            sign_matched,
            observation,
        }) => Disposition::Apply {
            request_id,
            sign_matched: Some(sign_matched.as_str()),
            observation,
        },
        Ok(Verdict::Test { request_id }) => Disposition::Test { request_id },
        Err((rejection, partial)) => Disposition::Reject {
            outcome: match rejection {
                Rejection::Malformed(_) => Outcome::Malformed,
                Rejection::BadSignature(_) => Outcome::BadSignature,
                Rejection::NotConfigured => Outcome::NotConfigured,
            },
            error: rejection.to_string(),
            request_id: partial.request_id,
            order_id: partial.order_id,
        },
    }
}

fn reject(outcome: Outcome, error: String) -> Disposition {
    Disposition::Reject {
        outcome,
        error,
        request_id: None,
        order_id: None,
    }
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
            // Logged once by the ingest writer; here only the answer.
            let (status, msg) = if e.is_unavailable() {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database unavailable, retry later",
                )
            } else {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error, retry later",
                )
            };
            log::warn!(
                "callback haoka172 order={oid} request_id={rid}: not acknowledged ({status})"
            );
            return failure(status, msg);
        }
    };
    match receipt.outcome {
        Outcome::Applied | Outcome::Duplicate | Outcome::Test => {
            match receipt.effect {
                Some((effect, status)) => log::info!(
                    "callback haoka172 order={oid} request_id={rid}: applied ({}, order now {status})",
                    effect.as_str()
                ),
                None => log::info!("callback haoka172 order={oid} request_id={rid}: {}", receipt.outcome.as_str()),
            }
            HttpResponse::Ok()
                .content_type("application/json; charset=utf-8")
                .body(SUCCESS_BODY)
        }
        outcome => {
            let status = match outcome {
                Outcome::BadSignature => StatusCode::UNAUTHORIZED,
                Outcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                Outcome::NotConfigured => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            let msg = error.unwrap_or_else(|| outcome.as_str().to_owned());
            log::warn!(
                "callback haoka172 order={oid} request_id={rid}: {} ({msg})",
                outcome.as_str()
            );
            failure(status, &msg)
        }
    }
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
