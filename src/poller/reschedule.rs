//! At start (`serve`, `poll-once`): bring the next checks of every tracked
//! order to this process's schedule settings when they changed since the
//! orders were scheduled (`store::schedule` walks them, `rules::reschedule`
//! decides each), and say so: one line when it starts (what changed, how
//! many orders), progress on a long walk, one line when it is done.
//!
//! Must never hold up callbacks: it runs chunk by chunk through the
//! blocking pool, each chunk a short transaction.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::Poller;
use crate::db::{self, DbError};
use crate::rules::reschedule::ScheduleSettings;
use crate::store::schedule::{self as sstore, Begin, Plan, RESCHEDULE_CHUNK, RESCHEDULE_LEASE};
use crate::vendors::Vendor;

/// How often a long walk says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

impl Poller {
    /// Every vendor's tracked orders follow this process's settings when
    /// this returns, or (`wait_for_others` false) another process is moving
    /// them. With `wait_for_others`, waits for that process (and takes its
    /// walk over if it stops).
    pub async fn reconcile_schedules(&self, wait_for_others: bool) -> Result<(), DbError> {
        for vendor in Vendor::ALL {
            self.reconcile_schedule(vendor, wait_for_others, RESCHEDULE_CHUNK)
                .await?;
        }
        Ok(())
    }

    /// One vendor; `chunk` orders per transaction.
    pub async fn reconcile_schedule(
        &self,
        vendor: Vendor,
        wait_for_others: bool,
        chunk: i64,
    ) -> Result<(), DbError> {
        let settings = self.schedule.settings(vendor);
        let mut said_busy = false;
        loop {
            let s = settings.clone();
            let owner = self.owner.clone();
            let begin = db::run(&self.pool, move |conn| {
                sstore::begin(conn, vendor, &s, &owner, RESCHEDULE_LEASE, Utc::now())
            })
            .await?;
            match begin {
                Begin::UpToDate => {
                    log::debug!("{vendor} orders follow the current schedule settings");
                    return Ok(());
                }
                Begin::Recorded => {
                    log::info!(
                        "recorded the {vendor} schedule settings ({}): tracked orders keep their next checks; when these change, the next serve or poll-once reschedules them",
                        settings.describe(vendor)
                    );
                    return Ok(());
                }
                Begin::Busy { owner, until, to } => {
                    let to_ours = to.as_ref() == Some(&settings);
                    if !said_busy {
                        log::info!(
                            "{vendor} tracked orders are being rescheduled by {owner}{}",
                            if to_ours {
                                " to these settings".to_owned()
                            } else {
                                format!(
                                    " to other settings ({}); every process should share them",
                                    to.as_ref()
                                        .map_or("unreadable".into(), |t| t.describe(vendor))
                                )
                            }
                        );
                        said_busy = true;
                    }
                    if !wait_for_others {
                        return Ok(());
                    }
                    let left = (until - Utc::now()).to_std().unwrap_or_default();
                    tokio::time::sleep(left.clamp(Duration::from_secs(1), RESCHEDULE_LEASE)).await;
                }
                Begin::Reschedule(plan) => {
                    if self.walk(vendor, &settings, &plan, chunk).await? {
                        return Ok(());
                    }
                    // Taken over: see who has it now.
                }
            }
        }
    }

    /// Walk every tracked order of `vendor`; false when the walk was taken
    /// over by another process before it finished.
    async fn walk(
        &self,
        vendor: Vendor,
        settings: &ScheduleSettings,
        plan: &Plan,
        chunk: i64,
    ) -> Result<bool, DbError> {
        let what = match (&plan.from, &plan.unfinished) {
            (_, Some(other)) => format!(
                "a reschedule to other settings ({}) was left unfinished",
                other.describe(vendor)
            ),
            (Some(from), None) => {
                let changes = settings.changes_from(from, vendor);
                if changes.is_empty() {
                    "no change".to_owned()
                } else {
                    changes.join(", ")
                }
            }
            (None, None) => "the recorded settings are unreadable".to_owned(),
        };
        match &plan.resumed {
            Some(r) => log::info!(
                "{vendor} schedule settings changed ({what}): resuming the reschedule after order {} ({} orders walked, {} moved so far) of {} tracked orders",
                r.after, r.walked, r.moved, plan.tracked
            ),
            None => log::info!(
                "{vendor} schedule settings changed ({what}): rescheduling {} tracked orders from what each last heard, {chunk} per transaction",
                plan.tracked
            ),
        }
        let started = Instant::now();
        let mut said = Instant::now();
        let (mut walked, mut moved, mut due) = plan
            .resumed
            .as_ref()
            .map_or((0, 0, 0), |r| (r.walked, r.moved, 0));
        loop {
            let schedule = std::sync::Arc::clone(&self.schedule);
            let owner = self.owner.clone();
            let done = db::run(&self.pool, move |conn| {
                sstore::reschedule_chunk(
                    conn,
                    vendor,
                    &schedule,
                    &owner,
                    RESCHEDULE_LEASE,
                    chunk,
                    Utc::now(),
                )
            })
            .await?;
            let Some(c) = done else {
                log::warn!(
                    "{vendor} reschedule: another process took the walk over after {walked} orders (this one was slower than the {}s lease)",
                    RESCHEDULE_LEASE.as_secs()
                );
                return Ok(false);
            };
            walked += c.walked as i64;
            moved += c.moved as i64;
            due += c.due_now as i64;
            if c.done {
                log::info!(
                    "{vendor} tracked orders rescheduled under the new settings: {moved} of {walked} moved ({due} due now) in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(true);
            }
            if said.elapsed() >= PROGRESS_EVERY {
                log::info!(
                    "{vendor} reschedule: {walked} of {} tracked orders walked, {moved} moved ({:.0}s)",
                    plan.tracked,
                    started.elapsed().as_secs_f64()
                );
                said = Instant::now();
            }
        }
    }
}
