//! 大麦家 / PDD order and refund states onto the normalized statuses.

use crate::rules::Status;

/// 大麦家 / PDD: `order_status` 1 待发货, 2 已发货待签收, 3 已签收;
/// `refund_status` 4 (退款成功) cancels whatever the order status says. Other
/// refund states do not change the status (the caller keeps them as fields).
pub fn status_of(order_status: Option<i64>, refund_status: Option<i64>) -> Status {
    if refund_status == Some(4) {
        return Status::Cancelled;
    }
    match order_status {
        Some(1) => Status::Pending,
        Some(2) => Status::Shipped,
        Some(3) => Status::Completed,
        _ => Status::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_damaijia_value_maps_to_its_contract_status() {
        let table = [
            (Some(1), Some(1), Status::Pending),
            (Some(2), Some(1), Status::Shipped),
            (Some(3), Some(1), Status::Completed),
            (Some(1), Some(4), Status::Cancelled),
            (Some(3), Some(4), Status::Cancelled),
            (None, Some(4), Status::Cancelled),
            (Some(2), Some(2), Status::Shipped),
            (Some(2), Some(3), Status::Shipped),
            (Some(0), Some(1), Status::Unknown),
            (Some(7), None, Status::Unknown),
            (None, None, Status::Unknown),
        ];
        for (os, rs, want) in table {
            assert_eq!(status_of(os, rs), want, "{os:?} {rs:?}");
        }
    }
}
