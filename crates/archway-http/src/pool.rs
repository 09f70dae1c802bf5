//! A bounded pool for CPU-heavy work (bcrypt password checks): at most `workers` jobs run at
//! once, each on one of tokio's blocking threads, and at most `max_waiting` callers wait for
//! a turn; beyond that the caller is told the pool is busy at once, so a flood of such work
//! neither stalls the async worker threads nor takes every blocking thread from file I/O, nor
//! queues without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

/// Why a job did not run to completion.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the {pool} pool is busy ({waiting} jobs already waiting); try again shortly")]
    Busy { pool: &'static str, waiting: usize },
    #[error("a {pool} job failed: {message}")]
    Failed { pool: &'static str, message: String },
}

/// See the module documentation.
#[derive(Debug)]
pub struct BlockingPool {
    name: &'static str,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Counts a caller as waiting until it is dropped (also when the caller gives up).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BlockingPool {
    /// `workers` jobs at once (at least one), `max_waiting` callers queued.
    pub fn new(name: &'static str, workers: usize, max_waiting: usize) -> Self {
        BlockingPool {
            name,
            permits: Arc::new(Semaphore::new(workers.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// Runs `job` on a blocking thread once a worker slot is free.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let before = self.waiting.fetch_add(1, Ordering::Relaxed);
        let waiting = Waiting(&self.waiting);
        if before >= self.max_waiting {
            return Err(PoolError::Busy {
                pool: self.name,
                waiting: before,
            });
        }
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| PoolError::Failed {
                pool: self.name,
                message: e.to_string(),
            })?;
        drop(waiting);
        // The permit travels with the job: a caller that gives up does not free its slot
        // before the job really ends.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
        .map_err(|e| PoolError::Failed {
            pool: self.name,
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_runs_more_than_its_workers_and_refuses_past_its_queue() {
        let pool = Arc::new(BlockingPool::new("test", 2, 3));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut jobs = Vec::new();
        for _ in 0..5 {
            let (pool, running, peak, rx) =
                (pool.clone(), running.clone(), peak.clone(), rx.clone());
            jobs.push(tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Block until the test lets one job finish.
                    let _ = rx.lock().unwrap().recv();
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        // Wait (without timing anything) until two jobs run and three wait.
        while running.load(Ordering::SeqCst) < 2 || pool.waiting.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A sixth caller finds the queue full.
        assert!(matches!(
            pool.run(|| ()).await,
            Err(PoolError::Busy { waiting: 3, .. })
        ));
        for _ in 0..5 {
            tx.send(()).unwrap();
        }
        for j in jobs {
            j.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }
}
