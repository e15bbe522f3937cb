//! The extractor every callback route starts with: who sent it (the source
//! policy), the body read up to its bound (a sample kept past it), and the
//! headers with credentials redacted, as the raw request the store keeps.
//! A request refused here (forbidden source, too large, unreadable) comes
//! with its verdict; the body of any other is for the vendor module to judge.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::StreamExt;

use super::AppState;
use crate::rules::inbound::{Outcome, Verdict};
use crate::store::ingest::RawRequest;

/// How much of an oversized body is kept.
const TOO_LARGE_SAMPLE: usize = 4096;

/// Headers whose values are credentials and are not stored.
const REDACTED_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
];

/// A callback request as it arrived.
pub struct Inbound {
    /// What the inbox row keeps.
    pub raw: RawRequest,
    /// The `sign` header, if any.
    pub sign: Option<String>,
    /// Refused before its body could be judged.
    pub refused: Option<Verdict>,
}

impl FromRequest for Inbound {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = web::Payload::from_request(&req, payload).into_inner();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| actix_web::error::ErrorInternalServerError("no app state"))?;
            let payload = payload?;
            Ok(read(&req, payload, state).await)
        })
    }
}

async fn read(req: &HttpRequest, payload: web::Payload, state: &AppState) -> Inbound {
    // The sender first: a request from an address that may not send
    // callbacks is stored as it came, but never judged as one.
    let source = state
        .callback_sources
        .judge(req.peer_addr().map(|a| a.ip()), req.headers());
    let limit = state.callback_max_body_bytes;
    let (bytes, size, truncated, unreadable) = read_bounded(payload, limit).await;
    let refused = source
        .refusal
        .map(|e| Verdict::refused(Outcome::ForbiddenSource, e))
        .or_else(|| {
            truncated.then(|| {
                Verdict::refused(
                    Outcome::TooLarge,
                    format!("body of {size} bytes exceeds the limit of {limit} bytes"),
                )
            })
        })
        .or_else(|| {
            unreadable.map(|e| {
                Verdict::refused(Outcome::Malformed, format!("body could not be read: {e}"))
            })
        });
    let (body, body_raw) = RawRequest::body_fields(&bytes);
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Inbound {
        sign: header(header::HeaderName::from_static("sign")),
        raw: RawRequest {
            vendor: "haoka172",
            content_type: header(header::CONTENT_TYPE),
            remote_addr: req.peer_addr().map(|a| a.to_string()),
            source_addr: source.addr.map(|a| a.to_string()),
            headers: headers_json(req),
            body,
            body_raw,
            body_size: i32::try_from(size).unwrap_or(i32::MAX),
            body_truncated: truncated,
        },
        refused,
    }
}

/// Read at most `limit` bytes; past it, stop and keep a sample. Returns the
/// bytes, the size seen, whether it was cut, and a read error.
async fn read_bounded(
    mut payload: web::Payload,
    limit: usize,
) -> (Vec<u8>, usize, bool, Option<String>) {
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
                    return (buf, size, true, None);
                }
                buf.extend_from_slice(&chunk);
            }
            Err(e) => {
                let size = buf.len();
                return (buf, size, false, Some(e.to_string()));
            }
        }
    }
    let size = buf.len();
    (buf, size, false, None)
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
