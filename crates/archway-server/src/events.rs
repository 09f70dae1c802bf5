//! Wake-ups inside one server, and across servers sharing a PostgreSQL database.
//!
//! * jobs became ready → the dispatcher runs a round;
//! * a runner's attempt must stop → that runner's waiting poll answers now;
//! * log bytes arrived → followers of a job log read them;
//! * anything changed → watchers of pipelines look again.
//!
//! With PostgreSQL, each event is also published with `NOTIFY archway_events`, and every
//! server `LISTEN`s, so a runner long-polling server A hears about a cancel made on server B
//! within milliseconds. Periodic rounds (the dispatcher's tick, followers' timeouts) make
//! missed notifications a delay, never a loss.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

use crate::db::{Db, Dialect};

const CHANNEL: &str = "archway_events";

/// The wake-up hub.
#[derive(Debug)]
pub struct Events {
    dispatch: Notify,
    runners: Mutex<HashMap<i64, Arc<Notify>>>,
    log: watch::Sender<u64>,
    state: watch::Sender<u64>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            dispatch: Notify::new(),
            runners: Mutex::new(HashMap::new()),
            log: watch::channel(0).0,
            state: watch::channel(0).0,
        }
    }
}

impl Events {
    pub fn new() -> Arc<Events> {
        Arc::new(Events::default())
    }

    /// Resolves when the dispatcher should run a round.
    pub async fn dispatch_wanted(&self) {
        self.dispatch.notified().await
    }

    pub fn wake_dispatcher(&self) {
        self.dispatch.notify_one();
    }

    /// The notifier a runner's poll waits on.
    pub fn runner(&self, runner_id: i64) -> Arc<Notify> {
        self.runners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(runner_id)
            .or_default()
            .clone()
    }

    pub fn subscribe_log(&self) -> watch::Receiver<u64> {
        self.log.subscribe()
    }

    pub fn subscribe_state(&self) -> watch::Receiver<u64> {
        self.state.subscribe()
    }

    pub fn state_changed(&self) {
        self.state.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn local(&self, event: &str) {
        match event {
            "ready" => self.wake_dispatcher(),
            "log" => self.log.send_modify(|v| *v = v.wrapping_add(1)),
            "state" => self.state_changed(),
            e => {
                if let Some(id) = e.strip_prefix("cancel:").and_then(|s| s.parse().ok()) {
                    self.runner(id).notify_one();
                }
            }
        }
    }

    async fn publish(&self, db: &Db, event: &str) {
        self.local(event);
        if db.dialect == Dialect::Postgres {
            // Best effort: the periodic rounds cover a lost notification.
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(event)
                .execute(&db.write)
                .await
            {
                tracing::debug!(error = %e, "NOTIFY failed");
            }
        }
    }

    pub async fn jobs_ready(&self, db: &Db) {
        self.publish(db, "ready").await;
    }

    pub async fn cancel_for_runner(&self, db: &Db, runner_id: i64) {
        self.publish(db, &format!("cancel:{runner_id}")).await;
    }

    pub async fn log_appended(&self, db: &Db) {
        self.publish(db, "log").await;
    }

    /// Listens for other servers' events (PostgreSQL only); runs until the process ends,
    /// reconnecting after errors.
    pub async fn listen(self: Arc<Self>, db: Db) {
        let Some(url) = db.url.clone() else { return };
        loop {
            match sqlx::postgres::PgListener::connect(&url).await {
                Ok(mut l) => {
                    if let Err(e) = l.listen(CHANNEL).await {
                        tracing::warn!(error = %e, "LISTEN failed");
                    } else {
                        // Whatever happened while we were not listening: look again.
                        self.local("ready");
                        self.local("log");
                        self.local("state");
                        loop {
                            match l.recv().await {
                                Ok(n) => self.local(n.payload()),
                                Err(e) => {
                                    tracing::warn!(error = %e, "LISTEN connection lost");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "connecting the event listener"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}
