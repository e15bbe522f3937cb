//! `haoka-sync targets add|list|disable|enable|rotate-secret`: where status
//! changes are forwarded. A new or rotated signing secret is printed once,
//! never logged; `list` never shows one.

use chrono::Utc;

use super::{failed, prepare, CliError, CliResult};
use crate::config::{DatabaseConfig, ForwardConfig};
use crate::rules::schedule::china_time;
use crate::rules::{Status, Vendor};
use crate::store::forward as fstore;

#[derive(Debug, clap::Subcommand)]
pub(super) enum TargetsCommand {
    /// Forward the matching status changes to URL; prints its id and its
    /// signing secret (once).
    Add {
        /// Where to POST: http:// or https://.
        #[arg(long)]
        url: String,
        /// Only this vendor's orders (haoka172 or damaijia).
        #[arg(long)]
        vendor: Option<Vendor>,
        /// Only changes to these statuses, comma-separated (e.g. shipped,settled).
        #[arg(long, value_name = "S[,S...]", value_delimiter = ',')]
        status: Vec<Status>,
        /// A name for operators (default: the URL's host).
        #[arg(long)]
        name: Option<String>,
    },
    /// Every target, what it receives, its health and its deliveries.
    List,
    /// Stop creating deliveries for it; the pending ones wait.
    Disable { id: i64 },
    /// Create deliveries for it again and send the ones that waited.
    Enable { id: i64 },
    /// A new signing secret (printed once); the old one also signs for
    /// FORWARD_SECRET_GRACE (default 1d).
    RotateSecret { id: i64 },
}

pub(super) async fn run(
    db: &DatabaseConfig,
    forward: &ForwardConfig,
    cmd: TargetsCommand,
) -> CliResult {
    prepare(&db.url).await?;
    let pool = crate::db::pool(&db.url, 1, db.timeout);
    match cmd {
        TargetsCommand::Add {
            url,
            vendor,
            status,
            name,
        } => {
            let parsed = url::Url::parse(&url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or_else(|| {
                    CliError::Usage(format!("--url {url}: not an http:// or https:// URL"))
                })?;
            let name = name.unwrap_or_else(|| parsed.host_str().unwrap_or("target").to_owned());
            let secret = new_secret()?;
            let statuses: Option<Vec<String>> = (!status.is_empty())
                .then(|| status.iter().map(|s| s.as_str().to_owned()).collect());
            let (s2, u2, n2, v2) = (
                secret.clone(),
                url.clone(),
                name.clone(),
                vendor.map(|v| v.as_str()),
            );
            let st2 = statuses.clone();
            let id = crate::db::run(&pool, move |c| {
                fstore::add_target(c, &n2, &u2, v2, st2.as_deref(), &s2)
            })
            .await?;
            println!(
                "target {id} ({name}) added: {url}, {}",
                what(vendor.map(|v| v.as_str()), statuses.as_deref())
            );
            println!(
                "signing secret (shown only now; the receiver verifies webhook-signature with it):"
            );
            println!("{secret}");
            log::info!(target_id = id; "forward target {id} ({name}) added");
            Ok(())
        }
        TargetsCommand::List => {
            let rows = crate::db::run(&pool, fstore::targets).await?;
            if rows.is_empty() {
                println!("no targets: haoka-sync targets add --url URL adds one");
                return Ok(());
            }
            for t in rows {
                let health = match (t.enabled, t.marked_failing_at, t.failing_since) {
                    (false, ..) => "disabled".to_owned(),
                    (true, Some(_), Some(since)) => format!("FAILING since {}", china_time(since)),
                    (true, None, Some(since)) => {
                        format!("failing attempts since {}", china_time(since))
                    }
                    _ => "ok".to_owned(),
                };
                println!(
                    "{} {} {}: {}; {}; pending {}, delivered {}, exhausted {}; last success {}{}",
                    t.id,
                    t.name,
                    t.url,
                    what(t.vendor.as_deref(), t.statuses.as_deref()),
                    health,
                    t.pending,
                    t.delivered,
                    t.exhausted,
                    t.last_success_at.map_or("-".to_owned(), china_time),
                    t.previous_until
                        .filter(|u| *u > Utc::now())
                        .map(|u| format!("; the previous secret signs too until {}", china_time(u)))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        TargetsCommand::Disable { id } | TargetsCommand::Enable { id } => {
            let enable = matches!(cmd, TargetsCommand::Enable { .. });
            let found = crate::db::run(&pool, move |c| fstore::set_enabled(c, id, enable)).await?;
            if !found {
                return Err(failed(format!("no target {id} (haoka-sync targets list)")));
            }
            println!(
                "target {id} {}",
                if enable {
                    "enabled"
                } else {
                    "disabled: no new deliveries; the pending ones wait"
                }
            );
            log::info!(target_id = id; "forward target {id} {}", if enable { "enabled" } else { "disabled" });
            Ok(())
        }
        TargetsCommand::RotateSecret { id } => {
            let secret = new_secret()?;
            let grace =
                Utc::now() + chrono::Duration::from_std(forward.secret_grace).unwrap_or_default();
            let s2 = secret.clone();
            let found =
                crate::db::run(&pool, move |c| fstore::rotate_secret(c, id, &s2, grace)).await?;
            if !found {
                return Err(failed(format!("no target {id} (haoka-sync targets list)")));
            }
            println!(
                "target {id}: new signing secret (shown only now); until {} every delivery carries a signature with each secret:",
                china_time(grace)
            );
            println!("{secret}");
            log::info!(target_id = id; "forward target {id}: secret rotated; the old one signs until {}", china_time(grace));
            Ok(())
        }
    }
}

fn what(vendor: Option<&str>, statuses: Option<&[String]>) -> String {
    format!(
        "changes of {} to {}",
        vendor.unwrap_or("every vendor"),
        statuses.map_or("any status".to_owned(), |s| s.join(","))
    )
}

fn new_secret() -> Result<String, CliError> {
    crate::forward::new_target_secret()
        .map_err(|e| failed(format!("no randomness for a secret: {e}")))
}
