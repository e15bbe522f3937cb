//! 172号卡 status labels onto the normalized statuses.

use crate::rules::Status;

/// 172号卡 order-status labels (docs/vendors.md#172号卡-status-vocabulary). Any other
/// label is `Unknown` and is kept verbatim by the caller.
pub fn status_of(label: &str) -> Status {
    match label.trim() {
        "待处理" | "正在进单" => Status::Pending,
        "已提运营商" => Status::Submitted,
        "已发货" => Status::Shipped,
        "已完成" => Status::Completed,
        "已结算" => Status::Settled,
        "无法结算" => Status::SettlementFailed,
        "已撤单" => Status::Revoked,
        "审核不通过" | "审核失败" => Status::Rejected,
        "已取消" => Status::Cancelled,
        _ => Status::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_172_label_maps_to_its_contract_status() {
        let table = [
            ("待处理", Status::Pending),
            ("正在进单", Status::Pending),
            ("已提运营商", Status::Submitted),
            ("已发货", Status::Shipped),
            ("已完成", Status::Completed),
            ("已结算", Status::Settled),
            ("无法结算", Status::SettlementFailed),
            ("已撤单", Status::Revoked),
            ("审核不通过", Status::Rejected),
            ("审核失败", Status::Rejected),
            ("已取消", Status::Cancelled),
            ("已失效", Status::Unknown),
            ("", Status::Unknown),
            ("shipped", Status::Unknown),
        ];
        for (label, want) in table {
            assert_eq!(status_of(label), want, "label {label:?}");
        }
        assert_eq!(status_of(" 已发货\n"), Status::Shipped);
    }

    #[test]
    fn exactly_the_five_terminal_labels_are_terminal() {
        for label in ["已撤单", "审核不通过", "已取消", "已结算", "无法结算"] {
            assert!(status_of(label).is_terminal(), "{label}");
        }
        for label in ["待处理", "已提运营商", "已发货", "已完成", "正在进单"] {
            assert!(!status_of(label).is_terminal(), "{label}");
        }
    }
}
