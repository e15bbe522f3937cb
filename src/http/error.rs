//! The error type of the admin API (`/api/*`).
//!
//! Policy: every variant has one HTTP status; client errors say what was
//! wrong; server errors answer an opaque message and their cause is logged
//! once, here, where they become a response. Callback replies have their own
//! fixed wire format (see `http::callbacks`) and do not use this type.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("the admin API is disabled: set ADMIN_TOKEN to enable it")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("database unavailable, retry later")]
    Unavailable,
    #[error("internal error")]
    Internal(String),
}

impl From<DbError> for AppError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            AppError::Unavailable
        } else {
            AppError::Internal(e.to_string())
        }
    }
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::Forbidden => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let AppError::Internal(cause) = self {
            log::error!("api: {cause}");
        }
        HttpResponse::build(self.status_code()).json(serde_json::json!({"error": self.to_string()}))
    }
}

/// A request body the JSON extractor refused, answered in the API's own
/// `{"error": …}` form with what to change (actix would answer plain text).
pub fn json_body(
    err: actix_web::error::JsonPayloadError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    let e = match &err {
        E::ContentType => AppError::UnsupportedMediaType(
            "the body must be JSON: send Content-Type: application/json".into(),
        ),
        E::OverflowKnownLength { length, limit } => AppError::PayloadTooLarge(format!(
            "the body is {length} bytes; the API takes at most {limit}"
        )),
        E::Overflow { limit } => {
            AppError::PayloadTooLarge(format!("the body is over the {limit} bytes the API takes"))
        }
        E::Deserialize(e) => {
            AppError::BadRequest(format!("the body is not the JSON this route takes: {e}"))
        }
        other => AppError::BadRequest(format!("cannot read the body: {other}")),
    };
    e.into()
}
