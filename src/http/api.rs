//! The admin API behind `ADMIN_TOKEN`.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};

use super::AppState;
use crate::db::models::{Order, OrderPoll};
use crate::http::error::AppError;
use crate::vendors::Vendor;
use crate::{db, store};

/// Every `/api/*` request passes here first, before its body is read:
/// `Authorization: Bearer $ADMIN_TOKEN`; without a configured token the API
/// is off (403).
pub async fn admin_gate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let token = req
        .app_data::<web::Data<AppState>>()
        .and_then(|s| s.admin_token.clone());
    let Some(token) = token else {
        return Err(AppError::Forbidden.into());
    };
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    // Compared without an early exit on the first differing byte.
    let ok: bool =
        subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.expose().as_bytes()).into();
    if !ok {
        return Err(AppError::Unauthorized.into());
    }
    next.call(req).await
}

/// Any other `/api/*` path or method.
pub async fn no_route(req: HttpRequest) -> Result<HttpResponse, AppError> {
    Err(AppError::NotFound(format!(
        "no API route {} {}: see the admin API in docs/contract.md",
        req.method(),
        req.path()
    )))
}

/// `GET /api/orders/{vendor}/{order_id}`: current state and history.
pub async fn get_order(
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let (vendor, order_id) = path.into_inner();
    let vendor: Vendor = vendor.parse().map_err(AppError::BadRequest)?;
    crate::rules::ids::check("order id", &order_id).map_err(AppError::BadRequest)?;
    let id = order_id.clone();
    let found = db::run(&state.pool, move |conn| {
        let order = store::find_order(conn, vendor, &id)?;
        let Some(order) = order else {
            return Ok(None);
        };
        let poll = store::find_order_poll(conn, vendor, &id)?;
        let history = store::order_history(conn, vendor, &id)?;
        let confirmations = store::order_confirmations(conn, vendor, &id)?;
        Ok(Some((order, poll, history, confirmations)))
    })
    .await?;
    let (order, poll, history, confirmations) =
        found.ok_or_else(|| AppError::NotFound(format!("no {vendor} order {order_id}")))?;
    let mut body = serde_json::json!({
        "order": OrderView::new(order, poll),
        "history": history,
        "confirmations": confirmations,
    });
    // Personal data leaves masked, whatever field carries it.
    crate::rules::mask::personal(&mut body);
    Ok(HttpResponse::Ok().json(body))
}

/// An order as the API shows it: what we know of it and when it is next
/// checked, not which process holds it or how many calls it used today.
#[derive(Debug, serde::Serialize)]
struct OrderView {
    #[serde(flatten)]
    order: Order,
    poll: Option<PollView>,
}

#[derive(Debug, serde::Serialize)]
struct PollView {
    next_check_at: Option<chrono::DateTime<chrono::Utc>>,
    last_poll_outcome: Option<String>,
    tracked_at: chrono::DateTime<chrono::Utc>,
    tracking_expired_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl OrderView {
    fn new(order: Order, poll: Option<OrderPoll>) -> Self {
        OrderView {
            order,
            poll: poll.map(|p| PollView {
                next_check_at: p.next_check_at,
                last_poll_outcome: p.last_poll_outcome,
                tracked_at: p.tracked_at,
                tracking_expired_at: p.tracking_expired_at,
            }),
        }
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct TrackRequest {
    vendor: String,
    #[serde(default)]
    order_id: Option<String>,
    #[serde(default)]
    order_ids: Vec<String>,
}

/// `POST /api/orders` `{"vendor":"haoka172","order_id":"..."}` (or
/// `"order_ids":[...]`): start tracking. Registering again is harmless.
pub async fn track_orders(
    body: web::Json<TrackRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let vendor: Vendor = body.vendor.parse().map_err(AppError::BadRequest)?;
    let ids = listed(body.order_id, body.order_ids)?;
    let schedule = std::sync::Arc::clone(&state.schedule);
    let n = ids.len();
    let created = db::run(&state.pool, move |conn| {
        crate::store::poll::register(conn, vendor, &ids, &schedule, chrono::Utc::now())
    })
    .await?;
    let status = if created > 0 {
        actix_web::http::StatusCode::CREATED
    } else {
        actix_web::http::StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(serde_json::json!({
        "vendor": vendor, "requested": n, "newly_tracked": created, "already_tracked": n - created
    })))
}

/// The ids of a request body, each with where it was, checked as `track`
/// checks them.
fn listed(one: Option<String>, many: Vec<String>) -> Result<Vec<String>, AppError> {
    let items = one.map(|id| ("order_id".to_owned(), id)).into_iter().chain(
        many.into_iter()
            .enumerate()
            .map(|(i, id)| (format!("order_ids[{i}]"), id)),
    );
    crate::rules::ids::clean_list(items).map_err(AppError::BadRequest)
}

/// `POST /api/orders/recheck` `{"vendor":"…","order_ids":[…]}`: make tracked
/// orders due now; the next pass asks about them within every limit.
pub async fn recheck_orders(
    body: web::Json<TrackRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    let vendor: Vendor = body.vendor.parse().map_err(AppError::BadRequest)?;
    let ids = listed(body.order_id, body.order_ids)?;
    let done = db::run(&state.pool, move |conn| {
        crate::store::poll::recheck(conn, vendor, &ids, chrono::Utc::now())
    })
    .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "vendor": vendor, "due_now": done.due, "terminal": done.terminal, "not_tracked": done.unknown
    })))
}
