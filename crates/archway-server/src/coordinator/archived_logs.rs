//! The database side of archiving job logs: which finished attempts still keep their log in
//! `log_chunks`, the whole log of one of them, and the switch to the archived copy
//! (`attempts.log_digest`, the chunks dropped in the same transaction). The copying itself is
//! [`crate::logs::JobLogs`]'s.
//!
//! A finished attempt's chunks never change again (appends are fenced once it is not
//! `running`), so any number of servers may archive the same attempt at once: they write the
//! same bytes under the same digest, and the first switch wins.

use super::*;

/// A finished attempt's whole log, read from the database.
#[derive(Debug)]
pub struct FinishedLog {
    pub attempt_id: i64,
    pub bytes: Vec<u8>,
}

impl Coordinator {
    /// Finished attempts after `after` whose log is still in the database, oldest first, at
    /// most `limit`.
    pub async fn logs_to_archive(&self, after: i64, limit: i64) -> Result<Vec<i64>, CoordError> {
        let ids = sqlx::query_scalar(
            "SELECT id FROM attempts WHERE log_digest IS NULL AND state <> 'running' \
             AND id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.db.read)
        .await?;
        Ok(ids)
    }

    /// The whole stored log of a finished attempt; `None` while it runs, once it is archived,
    /// or if there is no such attempt. One statement, so the attempt's row and its chunks are
    /// read from one snapshot.
    pub async fn finished_log(&self, attempt_id: i64) -> Result<Option<FinishedLog>, CoordError> {
        let rows = sqlx::query(
            "SELECT a.state, a.log_stored, a.log_digest, c.pos, c.data \
             FROM attempts a LEFT JOIN log_chunks c ON c.attempt_id = a.id \
             WHERE a.id = $1 ORDER BY c.pos",
        )
        .bind(attempt_id)
        .fetch_all(&self.db.write)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let state: String = first.try_get("state")?;
        let digest: Option<String> = first.try_get("log_digest")?;
        if state == "running" || digest.is_some() {
            return Ok(None);
        }
        let stored = first.try_get::<i64, _>("log_stored")? as u64;
        let mut bytes = Vec::with_capacity(stored as usize);
        for r in &rows {
            let Some(pos) = r.try_get::<Option<i64>, _>("pos")? else {
                continue;
            };
            let data: Vec<u8> = r.try_get::<Option<Vec<u8>>, _>("data")?.unwrap_or_default();
            if pos as u64 != bytes.len() as u64 {
                return Err(CoordError::Conflict(format!(
                    "the log of attempt {attempt_id} has a chunk at {pos} where {} was expected",
                    bytes.len()
                )));
            }
            bytes.extend_from_slice(&data);
        }
        if bytes.len() as u64 != stored {
            return Err(CoordError::Conflict(format!(
                "the log of attempt {attempt_id} holds {} bytes, its attempt says {stored}",
                bytes.len()
            )));
        }
        Ok(Some(FinishedLog { attempt_id, bytes }))
    }

    /// Records that a finished attempt's log is stored under `digest` and drops its chunks;
    /// false if another server did so first (or the attempt still runs).
    pub async fn switch_to_archived_log(
        &self,
        attempt_id: i64,
        digest: &str,
    ) -> Result<bool, CoordError> {
        let mut tx = self.begin().await?;
        let switched = sqlx::query(
            "UPDATE attempts SET log_digest = $1 \
             WHERE id = $2 AND log_digest IS NULL AND state <> 'running'",
        )
        .bind(digest)
        .bind(attempt_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if switched {
            sqlx::query("DELETE FROM log_chunks WHERE attempt_id = $1")
                .bind(attempt_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(switched)
    }

    /// Where an attempt's log is archived (its digest), `None` while it is in the database.
    pub async fn archived_log_digest(&self, attempt_id: i64) -> Result<Option<String>, CoordError> {
        let digest: Option<Option<String>> =
            sqlx::query_scalar("SELECT log_digest FROM attempts WHERE id = $1")
                .bind(attempt_id)
                .fetch_optional(&self.db.read)
                .await?;
        Ok(digest.flatten())
    }
}
