//! Simulated order lifecycles: what each order goes through and when, drawn
//! from a seeded generator so a run can be repeated. Pure.

use std::time::Duration;

/// A small deterministic generator (SplitMix64); no crate needed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// One 172 status change, `at` after the simulation started.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub at: Duration,
    pub label: &'static str,
    /// Express, activation and first top-up appear along the way.
    pub shipped: bool,
    pub activated: bool,
    pub first_charge: bool,
}

/// A 172 order's whole life; the last step is its truth.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle172 {
    pub order_no: String,
    pub order_no_172: String,
    pub steps: Vec<Step>,
    /// The normalized status of the last step (the simulator's own table).
    pub truth: &'static str,
}

/// Draw a lifecycle: every path of docs/vendors.md#172号卡-status-vocabulary, ending terminal, with gaps
/// of 0.5–1.5 `step` between status changes.
pub fn haoka172(rng: &mut Rng, order_no: String, start: Duration, step: Duration) -> Lifecycle172 {
    haoka172_with_gaps(rng, order_no, start, |rng, _, _| {
        step.mul_f64(0.5 + rng.unit())
    })
}

/// Like `haoka172`, with the time between two labels chosen by `gap(rng,
/// from, to)` (the poller benchmark draws days-long, status-dependent gaps).
pub fn haoka172_with_gaps(
    rng: &mut Rng,
    order_no: String,
    start: Duration,
    mut gap: impl FnMut(&mut Rng, &'static str, &'static str) -> Duration,
) -> Lifecycle172 {
    let r = rng.unit();
    let (labels, truth): (Vec<&'static str>, &'static str) = if r < 0.30 {
        (vec!["待处理", "已提运营商", "已发货", "已结算"], "settled")
    } else if r < 0.55 {
        (
            vec!["待处理", "已提运营商", "已发货", "已完成", "已结算"],
            "settled",
        )
    } else if r < 0.65 {
        (
            vec!["待处理", "已提运营商", "已发货", "已完成", "无法结算"],
            "settlement_failed",
        )
    } else if r < 0.75 {
        (vec!["待处理", "已提运营商", "审核不通过"], "rejected")
    } else if r < 0.83 {
        (vec!["待处理", "已撤单"], "revoked")
    } else if r < 0.91 {
        (vec!["正在进单", "已提运营商", "已取消"], "cancelled")
    } else {
        (
            vec!["待处理", "已提运营商", "已发货", "无法结算"],
            "settlement_failed",
        )
    };
    let mut at = start;
    let mut shipped = false;
    let mut activated = false;
    let mut steps = Vec::with_capacity(labels.len());
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            at += gap(rng, labels[i - 1], label);
        }
        shipped |= *label == "已发货";
        activated |= shipped && matches!(*label, "已完成" | "已结算") && rng.chance(0.8);
        steps.push(Step {
            at,
            label,
            shipped,
            activated,
            first_charge: activated && *label == "已结算",
        });
    }
    Lifecycle172 {
        order_no_172: format!("mlkj{:0>16}", rng.next_u64() % 10_000_000_000_000_000),
        order_no,
        steps,
        truth,
    }
}

/// One 大麦家 (PDD) state change.
#[derive(Debug, Clone, PartialEq)]
pub struct ShopStep {
    pub at: Duration,
    pub order_status: i64,
    pub refund_status: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleShop {
    pub order_sn: String,
    pub steps: Vec<ShopStep>,
    /// Promised ship-by time, in simulated milliseconds since the epoch.
    pub last_ship_ms: i64,
    pub truth: &'static str,
}

/// 待发货 → 已发货待签收 → 已签收, some refunded along the way.
pub fn shop(
    rng: &mut Rng,
    order_sn: String,
    start: Duration,
    step: Duration,
    now_ms: i64,
) -> LifecycleShop {
    let mut at = start;
    let mut steps = vec![ShopStep {
        at,
        order_status: 1,
        refund_status: 1,
    }];
    let refund_after = if rng.chance(0.15) {
        Some(rng.next_u64() % 3)
    } else {
        None
    };
    let mut truth = "completed";
    for (i, os) in [2, 3].into_iter().enumerate() {
        at += step.mul_f64(0.5 + rng.unit());
        if refund_after == Some(i as u64) {
            steps.push(ShopStep {
                at,
                order_status: steps.last().map_or(1, |s| s.order_status),
                refund_status: 4,
            });
            truth = "cancelled";
            break;
        }
        steps.push(ShopStep {
            at,
            order_status: os,
            refund_status: 1,
        });
    }
    if truth == "completed" && refund_after == Some(2) {
        at += step.mul_f64(0.5 + rng.unit());
        steps.push(ShopStep {
            at,
            order_status: 3,
            refund_status: 4,
        });
        truth = "cancelled";
    }
    LifecycleShop {
        order_sn,
        steps,
        last_ship_ms: now_ms + 48 * 3600 * 1000,
        truth,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic_and_uniform_enough() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut r = Rng::new(1);
        let hits = (0..10_000).filter(|_| r.chance(0.15)).count();
        assert!((1300..1700).contains(&hits), "{hits}");
    }

    #[test]
    fn every_172_lifecycle_is_ordered_and_ends_in_its_terminal_truth() {
        let mut rng = Rng::new(42);
        let mut truths = std::collections::BTreeSet::new();
        for i in 0..2000 {
            let l = haoka172(
                &mut rng,
                format!("D{i}"),
                Duration::from_secs(1),
                Duration::from_secs(2),
            );
            assert!(l.steps.windows(2).all(|w| w[0].at < w[1].at));
            let last = l.steps.last().unwrap();
            // The simulator's truth agrees with the vendor label it ends on.
            let want = match last.label {
                "已结算" => "settled",
                "无法结算" => "settlement_failed",
                "审核不通过" => "rejected",
                "已撤单" => "revoked",
                "已取消" => "cancelled",
                other => panic!("non-terminal end {other}"),
            };
            assert_eq!(l.truth, want);
            truths.insert(l.truth);
        }
        assert_eq!(truths.len(), 5, "every terminal status occurs");
    }

    #[test]
    fn shop_lifecycles_end_completed_or_refunded() {
        let mut rng = Rng::new(3);
        let mut refunded = 0;
        for i in 0..1000 {
            let l = shop(
                &mut rng,
                format!("S{i}"),
                Duration::ZERO,
                Duration::from_secs(1),
                0,
            );
            let last = l.steps.last().unwrap();
            match l.truth {
                "cancelled" => {
                    assert_eq!(last.refund_status, 4);
                    refunded += 1;
                }
                "completed" => assert_eq!((last.order_status, last.refund_status), (3, 1)),
                t => panic!("{t}"),
            }
        }
        assert!((100..220).contains(&refunded), "{refunded}");
    }
}
