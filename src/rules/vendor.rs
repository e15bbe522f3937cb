//! The upstream systems whose orders we track. Everything about a vendor
//! that is not its name lives in its folder under `vendors/`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An upstream system whose orders we track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vendor {
    /// 172号卡 (lot-ml): order-status callbacks plus `GetOrderInfo`.
    Haoka172,
    /// 大麦家: PDD shop orders through `mpagingOrders`.
    Damaijia,
}

impl Vendor {
    pub const ALL: [Vendor; 2] = [Vendor::Haoka172, Vendor::Damaijia];

    /// A small number per vendor (1, 2, …), its place in `ALL`: lock ids
    /// derive from it, so a new vendor goes at the end and the others keep
    /// theirs (processes of two versions must take the same locks).
    pub fn number(self) -> i64 {
        Vendor::ALL
            .iter()
            .position(|v| *v == self)
            .map_or(0, |i| i as i64 + 1)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Haoka172 => "haoka172",
            Vendor::Damaijia => "damaijia",
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Vendor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Vendor::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown vendor `{s}` (expected haoka172 or damaijia)"))
    }
}
