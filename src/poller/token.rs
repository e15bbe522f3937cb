//! A vendor token that a login replaces, shared by the whole deployment:
//! every login kills the older tokens, so one process at a time logs in (a
//! lease in `vendor_tokens`) and every process uses the token stored there.

use std::time::Duration;

use super::Poller;
use crate::db::{self, DbError};
use crate::secret::Secret;
use crate::store::tokens;
use crate::vendors::{Asker, Failure, FailureKind};

/// How long one login may hold the deployment-wide login lease.
const LOGIN_LEASE: Duration = Duration::from_secs(30);

/// The `api` label of logins in `haoka_sync_vendor_calls_total` (logins are
/// not rows of `vendor_calls`).
pub const LOGIN_API: &str = "login";

impl Poller {
    /// The token to use: the one the deployment last logged in for, else the
    /// configured one; with neither, log in.
    pub(super) async fn current_token(&self, asker: &dyn Asker) -> Result<Option<Secret>, DbError> {
        let vendor = asker.vendor();
        let stored = db::run(&self.pool, move |conn| tokens::stored(conn, vendor)).await?;
        match stored.or_else(|| asker.configured_token()) {
            Some(t) => Ok(Some(t)),
            None => Ok(self.relogin(asker, None).await?.ok()),
        }
    }

    /// Get a token that replaces `failed`: log in ourselves if we win the
    /// deployment-wide login lease, otherwise wait for whoever holds it. A
    /// login that someone else finished meanwhile is reused, never repeated.
    pub(super) async fn relogin(
        &self,
        asker: &dyn Asker,
        failed: Option<&Secret>,
    ) -> Result<Result<Secret, Failure>, DbError> {
        let vendor = asker.vendor();
        let refused = || Failure::new(FailureKind::AuthFailed, "auth_failed", asker.token_help());
        let is_new = |t: &Option<Secret>| t.as_ref().filter(|t| Some(*t) != failed).cloned();
        for _ in 0..80 {
            let owner = self.owner.clone();
            let (won, stored) = db::run(&self.pool, move |conn| {
                let won = tokens::acquire_login(conn, vendor, &owner, LOGIN_LEASE)?;
                Ok((won, tokens::stored(conn, vendor)?))
            })
            .await?;
            if let Some(t) = is_new(&stored) {
                if won {
                    let owner = self.owner.clone();
                    db::run(&self.pool, move |conn| {
                        tokens::release_login(conn, vendor, &owner)
                    })
                    .await?;
                }
                return Ok(Ok(t));
            }
            if won {
                let login = match asker.login() {
                    Some(login) => login.await,
                    None => Err(refused()),
                };
                let owner = self.owner.clone();
                let token = login.clone().ok();
                db::run(&self.pool, move |conn| match &token {
                    Some(t) => tokens::store(conn, vendor, &owner, t),
                    None => tokens::release_login(conn, vendor, &owner),
                })
                .await?;
                let outcome = login.as_ref().map_or_else(|f| f.outcome, |_| "ok");
                self.metrics.vendor_call(vendor, LOGIN_API, outcome);
                match &login {
                    Ok(_) => log::info!(
                        vendor = vendor.as_str();
                        "{vendor}: logged in for a new token"
                    ),
                    Err(e) => log::error!(
                        vendor = vendor.as_str(), error:% = e;
                        "{vendor} login failed: {e}"
                    ),
                }
                return Ok(login);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(Err(refused()))
    }
}
