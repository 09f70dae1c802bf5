//! Handing ready jobs to waiting runners within milliseconds.
//!
//! A runner's long poll registers a [`Waiter`] here and sleeps. One dispatcher task per server
//! runs a round whenever jobs become ready or a runner starts waiting (and once a second
//! regardless): it reads the oldest pending jobs, matches them to waiters in memory
//! ([`schedule::pick_runner`]: every tag, native before emulated, longest-waiting first),
//! claims them in one transaction and answers the polls. No runner ever polls on a timer
//! for work.
//!
//! **Invariant:** a claimed attempt is either delivered to a waiting poll or handed back in the
//! same round; a poll that gave up (timeout) removes its waiter under the same lock the
//! dispatcher delivers under, so a job is never delivered to nobody.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use archway_api::JobPayload;

use crate::coordinator::{Claim, Coordinator};
use crate::schedule::{self, RunnerOffer};

/// A runner's poll waiting for work.
#[derive(Debug)]
pub struct Waiter {
    id: u64,
    offer: RunnerOffer,
    slots: u32,
    tx: oneshot::Sender<Vec<JobPayload>>,
}

#[derive(Debug, Default)]
pub struct Dispatcher {
    waiters: Mutex<Vec<Waiter>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// A registered wait; see [`Dispatcher::wait`].
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    rx: oneshot::Receiver<Vec<JobPayload>>,
}

impl Dispatcher {
    pub fn new() -> Arc<Dispatcher> {
        Arc::new(Dispatcher::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiter>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiting runner (at most one waiter per runner: a newer poll replaces an
    /// older one, whose answer is then empty).
    pub fn register(&self, offer: RunnerOffer, slots: u32) -> Ticket {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut w = self.lock();
        w.retain(|x| x.offer.runner_id != offer.runner_id);
        w.push(Waiter {
            id,
            offer,
            slots,
            tx,
        });
        Ticket { id, rx }
    }

    /// Waits for jobs on `ticket` until `deadline` or until `interrupt` resolves (a cancel
    /// for this runner). Returns what was delivered (possibly nothing).
    pub async fn wait(
        &self,
        ticket: Ticket,
        deadline: Duration,
        interrupt: impl std::future::Future<Output = ()>,
    ) -> Vec<JobPayload> {
        let Ticket { id, mut rx } = ticket;
        tokio::select! {
            r = &mut rx => return r.unwrap_or_default(),
            () = tokio::time::sleep(deadline) => {}
            () = interrupt => {}
        }
        // Leave the queue; if the dispatcher already took us, its delivery is on the way.
        let still_waiting = {
            let mut w = self.lock();
            let before = w.len();
            w.retain(|x| x.id != id);
            w.len() != before
        };
        if still_waiting {
            Vec::new()
        } else {
            rx.await.unwrap_or_default()
        }
    }

    pub fn waiting(&self) -> usize {
        self.lock().len()
    }

    /// Runs rounds forever: on every wake-up and at least once a second.
    pub async fn run(self: Arc<Self>, coord: Arc<Coordinator>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = coord.events.dispatch_wanted() => {}
                _ = tick.tick() => {
                    if let Err(e) = coord.promote_scheduled().await {
                        tracing::warn!(error = %e, "promoting delayed jobs");
                    }
                }
            }
            // Rounds until nothing more can be matched.
            loop {
                match self.round(&coord).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "dispatch round failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                }
            }
        }
    }

    /// One round; true if it handed out something (another round may find more).
    pub async fn round(&self, coord: &Coordinator) -> Result<bool, crate::error::CoordError> {
        let offers: Vec<(u64, RunnerOffer, u32)> = {
            let mut w = self.lock();
            // Polls whose connection is gone (the runner died mid-poll).
            w.retain(|x| !x.tx.is_closed());
            w.iter().map(|w| (w.id, w.offer.clone(), w.slots)).collect()
        };
        if offers.is_empty() {
            return Ok(false);
        }
        let free_slots: u32 = offers.iter().map(|o| o.2).sum();
        // Enough candidates to fill the free slots even if many do not fit.
        let limit = (i64::from(free_slots) * 4).clamp(16, 256);
        let candidates = coord.candidates(limit).await?;
        if candidates.is_empty() {
            return Ok(false);
        }
        // Match in memory.
        let mut slots: Vec<u32> = offers.iter().map(|o| o.2).collect();
        let mut plan: Vec<(u64, Claim)> = Vec::new();
        for c in &candidates {
            let free = offers
                .iter()
                .enumerate()
                .filter(|(i, _)| slots[*i] > 0)
                .map(|(i, (_, o, _))| (i, o));
            if let Some((i, platform, emulated)) =
                schedule::pick_runner(free, &c.tags, c.platform.as_deref())
            {
                slots[i] -= 1;
                plan.push((
                    offers[i].0,
                    Claim {
                        job_id: c.job_id,
                        runner_id: offers[i].1.runner_id,
                        platform,
                        emulated,
                    },
                ));
            }
            if slots.iter().all(|s| *s == 0) {
                break;
            }
        }
        if plan.is_empty() {
            return Ok(false);
        }
        let claims: Vec<Claim> = plan.iter().map(|(_, c)| c.clone()).collect();
        let claimed = coord.claim(&claims).await?;
        // Deliver: group by waiter.
        let mut undeliverable = Vec::new();
        {
            let mut w = self.lock();
            let mut by_waiter: Vec<(u64, Vec<JobPayload>)> = Vec::new();
            for (runner_id, payload) in claimed {
                let waiter = plan
                    .iter()
                    .find(|(_, c)| c.job_id == payload.job_id && c.runner_id == runner_id)
                    .map(|(wid, _)| *wid);
                match waiter {
                    Some(wid) => match by_waiter.iter_mut().find(|(x, _)| *x == wid) {
                        Some((_, v)) => v.push(payload),
                        None => by_waiter.push((wid, vec![payload])),
                    },
                    None => undeliverable.push(payload.attempt_id),
                }
            }
            for (wid, jobs) in by_waiter {
                match w.iter().position(|x| x.id == wid) {
                    Some(pos) => {
                        let waiter = w.remove(pos);
                        if let Err(jobs) = waiter.tx.send(jobs) {
                            undeliverable.extend(jobs.iter().map(|j| j.attempt_id));
                        }
                    }
                    None => undeliverable.extend(jobs.iter().map(|j| j.attempt_id)),
                }
            }
        }
        if !undeliverable.is_empty() {
            tracing::debug!(attempts = ?undeliverable, "runner left before delivery; unclaiming");
            coord.unclaim(&undeliverable).await?;
        }
        Ok(true)
    }
}
