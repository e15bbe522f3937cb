//! The admin API behind `ADMIN_TOKEN`.

use actix_web::{web, HttpRequest, HttpResponse};

use super::AppState;
use crate::db::models::{Order, OrderPoll};
use crate::http::error::AppError;
use crate::vendors::Vendor;
use crate::{db, store};

/// `Authorization: Bearer $ADMIN_TOKEN`; without a configured token the API
/// is off (403).
fn require_admin(req: &HttpRequest, state: &AppState) -> Result<(), AppError> {
    let Some(token) = &state.admin_token else {
        return Err(AppError::Forbidden);
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
    if ok {
        Ok(())
    } else {
        Err(AppError::Unauthorized)
    }
}

/// `GET /api/orders/{vendor}/{order_id}`: current state and history.
pub async fn get_order(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    require_admin(&req, &state)?;
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
    req: HttpRequest,
    body: web::Json<TrackRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    require_admin(&req, &state)?;
    let body = body.into_inner();
    let vendor: Vendor = body.vendor.parse().map_err(AppError::BadRequest)?;
    let ids = crate::store::poll::clean_order_ids(body.order_id.into_iter().chain(body.order_ids))
        .map_err(AppError::BadRequest)?;
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
