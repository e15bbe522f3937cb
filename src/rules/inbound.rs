//! How a callback request is judged and what its sender is told: the
//! verdict the vendor module reaches (or the HTTP layer, before the body is
//! read), the outcome stored in `inbound_callbacks.outcome`, and the answer
//! each outcome gets (docs/contract.md#callback-answers).
//!
//! Every signature failure gets the same answer, whatever check failed, so
//! probing teaches nothing about the key (no padding oracle); the precise
//! cause goes to the inbox row and the log only.

use super::status::{Observation, SignedOver};

/// How a callback request was judged: by the vendor module (signature,
/// parsing), or before it (size, source address). The store takes it as is.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Signed: apply the observation (deduplicated on `request_id`) as far
    /// as the signature reaches (`store::apply_batch`).
    Apply {
        request_id: String,
        signed_over: SignedOver,
        observation: Box<Observation>,
    },
    /// The back office's test push: record, change nothing.
    Test { request_id: String },
    /// Rejected: record (quarantine) only. `request_id` and `order_id`
    /// are what could be read, when usable (`ids::check`).
    Reject {
        outcome: Outcome,
        error: String,
        request_id: Option<String>,
        order_id: Option<String>,
    },
}

/// The `inbound_callbacks.outcome` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Test,
    /// Signed over a vendor order number we cannot tie to the order yet.
    Unverified,
    BadSignature,
    Malformed,
    TooLarge,
    NotConfigured,
    ForbiddenSource,
    /// Could not be stored in full; kept raw.
    InternalError,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Applied,
        Outcome::Duplicate,
        Outcome::Test,
        Outcome::Unverified,
        Outcome::BadSignature,
        Outcome::Malformed,
        Outcome::TooLarge,
        Outcome::NotConfigured,
        Outcome::ForbiddenSource,
        Outcome::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Test => "test",
            Outcome::Unverified => "unverified",
            Outcome::BadSignature => "bad_signature",
            Outcome::Malformed => "malformed",
            Outcome::TooLarge => "too_large",
            Outcome::NotConfigured => "not_configured",
            Outcome::ForbiddenSource => "forbidden_source",
            Outcome::InternalError => "internal_error",
        }
    }

    /// Acknowledged to the sender as received.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Applied | Outcome::Duplicate | Outcome::Test)
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown callback outcome `{s}`"))
    }
}

impl Verdict {
    /// A request refused before its body was judged (too large, unreadable,
    /// from a source that is not allowed).
    pub fn refused(outcome: Outcome, error: String) -> Verdict {
        Verdict::Reject {
            outcome,
            error,
            request_id: None,
            order_id: None,
        }
    }

    /// The request and order ids it carries, when it has usable ones.
    pub fn ids(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Verdict::Apply {
                request_id,
                observation,
                ..
            } => (Some(request_id), Some(&observation.order_id)),
            Verdict::Test { request_id } => (Some(request_id), None),
            Verdict::Reject {
                request_id,
                order_id,
                ..
            } => (request_id.as_deref(), order_id.as_deref()),
        }
    }

    /// The precise reason, for the inbox row and the log.
    pub fn error(&self) -> Option<&str> {
        match self {
            Verdict::Reject { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// The one answer to every signature failure.
pub const BAD_SIGNATURE: &str = "bad signature";

impl Outcome {
    /// The HTTP status and the `message` the sender gets; `error` is the
    /// precise reason, shown only where it teaches nothing about the key.
    /// Every failure is non-2xx so that the vendor retries under either
    /// reading of its protocol; none is a 500.
    pub fn answer(self, error: Option<&str>) -> (u16, &str) {
        let precise = |fallback| error.unwrap_or(fallback);
        match self {
            Outcome::Applied | Outcome::Duplicate | Outcome::Test => (200, SUCCESS_MESSAGE),
            Outcome::BadSignature => (401, BAD_SIGNATURE),
            Outcome::Unverified => (503, "signature cannot be verified yet, retry later"),
            Outcome::Malformed => (400, precise("malformed callback")),
            Outcome::TooLarge => (413, precise("body too large")),
            Outcome::NotConfigured => (503, precise("not configured")),
            Outcome::ForbiddenSource => (403, "source address not allowed"),
            Outcome::InternalError => (503, "could not be stored, retry later"),
        }
    }
}

/// The `message` of the success answer, verbatim as the vendor expects it.
pub const SUCCESS_MESSAGE: &str = "上传成功";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_is_non_2xx_and_none_is_a_500() {
        for o in Outcome::ALL {
            let (status, _) = o.answer(Some("x"));
            assert_eq!(o.is_success(), status == 200, "{o:?}");
            assert_ne!(status, 500, "{o:?}");
            assert_eq!(o.as_str().parse::<Outcome>(), Ok(o));
        }
    }

    #[test]
    fn a_signature_failure_never_tells_its_cause() {
        assert_eq!(
            Outcome::BadSignature.answer(Some("sign does not decrypt with our key (bad padding)")),
            (401, BAD_SIGNATURE)
        );
        assert_eq!(
            Outcome::Malformed
                .answer(Some("malformed callback: Data missing"))
                .1,
            "malformed callback: Data missing"
        );
    }
}
