//! Tokens, authentication, runners, and the bookkeeping of runners' polls.

use super::*;

impl Coordinator {
    // --- tokens ----------------------------------------------------------------------------

    /// On first start: creates the admin and runner registration tokens and returns them
    /// (they are shown once; only their hashes are kept). `None` when they exist.
    pub async fn bootstrap(&self) -> Result<Option<(String, String)>, CoordError> {
        let mut tx = self.begin().await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tokens WHERE kind = 'admin'")
            .fetch_one(&mut *tx)
            .await?;
        if n > 0 {
            return Ok(None);
        }
        let admin = tokens::generate(TokenKind::Admin);
        let reg = tokens::generate(TokenKind::Registration);
        for (kind, name, t) in [
            ("admin", "initial admin", &admin),
            ("registration", "initial", &reg),
        ] {
            sqlx::query(
                "INSERT INTO tokens (kind, name, hash, created_ms) VALUES ($1, $2, $3, $4)",
            )
            .bind(kind)
            .bind(name)
            .bind(tokens::hash(t))
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some((admin, reg)))
    }

    /// A new admin or registration token (returned once).
    pub async fn create_token(
        &self,
        kind: TokenKind,
        name: &str,
    ) -> Result<(i64, String), CoordError> {
        if !matches!(kind, TokenKind::Admin | TokenKind::Registration) {
            return Err(CoordError::BadRequest(
                "only admin and registration tokens can be created".into(),
            ));
        }
        let t = tokens::generate(kind);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO tokens (kind, name, hash, created_ms) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(kind.as_str())
        .bind(name)
        .bind(tokens::hash(&t))
        .bind(now_ms())
        .fetch_one(&self.db.write)
        .await?;
        Ok((id, t))
    }

    /// (id, kind, name, created, revoked) of every token.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, CoordError> {
        let rows =
            sqlx::query("SELECT id, kind, name, created_ms, revoked_ms FROM tokens ORDER BY id")
                .fetch_all(&self.db.read)
                .await?;
        let mut out = Vec::new();
        for r in rows {
            out.push(TokenInfo {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                name: r.try_get("name")?,
                created_ms: r.try_get("created_ms")?,
                revoked_ms: r.try_get("revoked_ms")?,
            });
        }
        Ok(out)
    }

    pub async fn revoke_token(&self, id: i64) -> Result<(), CoordError> {
        // (Cached principals expire within seconds.)
        let n =
            sqlx::query("UPDATE tokens SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&self.db.write)
                .await?
                .rows_affected();
        if n == 0 {
            return Err(CoordError::NotFound(format!(
                "no active token with id {id} (see `archway server token list`)"
            )));
        }
        Ok(())
    }

    pub async fn revoke_runner(&self, id: i64) -> Result<(), CoordError> {
        let n =
            sqlx::query("UPDATE runners SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&self.db.write)
                .await?
                .rows_affected();
        if n == 0 {
            return Err(CoordError::NotFound(format!(
                "no active runner with id {id}"
            )));
        }
        Ok(())
    }

    /// Whether admin/registration token `id` is still active.
    pub async fn token_active(&self, id: i64) -> Result<bool, CoordError> {
        self.row_exists(
            "SELECT count(*) FROM tokens WHERE id = $1 AND revoked_ms IS NULL",
            id,
        )
        .await
    }

    /// Whether runner `id` may still work.
    pub async fn runner_active(&self, id: i64) -> Result<bool, CoordError> {
        self.row_exists(
            "SELECT count(*) FROM runners WHERE id = $1 AND revoked_ms IS NULL",
            id,
        )
        .await
    }

    /// Whether attempt `id` still runs (its job token is valid).
    pub async fn attempt_running(&self, id: i64) -> Result<bool, CoordError> {
        self.row_exists(
            "SELECT count(*) FROM attempts WHERE id = $1 AND state = 'running'",
            id,
        )
        .await
    }

    /// Whether `count_sql` (a `SELECT count(*)` with `$1`) counts a row for `id`.
    async fn row_exists(&self, count_sql: &'static str, id: i64) -> Result<bool, CoordError> {
        let n: i64 = sqlx::query_scalar(count_sql)
            .bind(id)
            .fetch_one(&self.db.read)
            .await?;
        Ok(n > 0)
    }

    /// Who holds `token`.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, CoordError> {
        let bad = || {
            CoordError::Unauthorized(
                "unknown, revoked or expired token; check ARCHWAY_TOKEN / --token".into(),
            )
        };
        let kind = TokenKind::of(token).ok_or_else(bad)?;
        let h = tokens::hash(token);
        if let Some(p) = self.principals.get(&h) {
            return Ok(p);
        }
        let principal = self.authenticate_uncached(kind, &h).await?;
        self.principals.insert(h, principal.clone());
        Ok(principal)
    }

    async fn authenticate_uncached(
        &self,
        kind: TokenKind,
        h: &str,
    ) -> Result<Principal, CoordError> {
        let bad = || {
            CoordError::Unauthorized(
                "unknown, revoked or expired token; check ARCHWAY_TOKEN / --token".into(),
            )
        };
        match kind {
            TokenKind::Admin | TokenKind::Registration => {
                let row = sqlx::query(
                    "SELECT id, kind FROM tokens WHERE hash = $1 AND revoked_ms IS NULL",
                )
                .bind(h)
                .fetch_optional(&self.db.read)
                .await?
                .ok_or_else(bad)?;
                let id: i64 = row.try_get("id")?;
                let k: String = row.try_get("kind")?;
                match (kind, k.as_str()) {
                    (TokenKind::Admin, "admin") => Ok(Principal::Admin { token_id: id }),
                    (TokenKind::Registration, "registration") => {
                        Ok(Principal::Registration { token_id: id })
                    }
                    _ => Err(bad()),
                }
            }
            TokenKind::Runner => {
                let id: i64 = sqlx::query_scalar(
                    "SELECT id FROM runners WHERE token_hash = $1 AND revoked_ms IS NULL",
                )
                .bind(h)
                .fetch_optional(&self.db.read)
                .await?
                .ok_or_else(bad)?;
                Ok(Principal::Runner { runner_id: id })
            }
            TokenKind::Job => {
                // Which attempt it is; whether it still runs is checked by every change
                // it asks for (in the same transaction) and by `attempt_running`.
                let row = sqlx::query(
                    "SELECT a.id AS attempt_id, a.job_id, j.pipeline_id, p.project \
                     FROM attempts a JOIN jobs j ON j.id = a.job_id \
                     JOIN pipelines p ON p.id = j.pipeline_id WHERE a.token_hash = $1",
                )
                .bind(h)
                .fetch_optional(&self.db.read)
                .await?
                .ok_or_else(bad)?;
                let attempt_id: i64 = row.try_get("attempt_id")?;
                Ok(Principal::Job(JobIdentity {
                    attempt_id,
                    job_id: row.try_get("job_id")?,
                    pipeline_id: row.try_get("pipeline_id")?,
                    project: row.try_get("project")?,
                }))
            }
        }
    }

    // --- runners ---------------------------------------------------------------------------

    pub async fn register_runner(
        &self,
        req: &RegisterRunner,
    ) -> Result<RegisteredRunner, CoordError> {
        match self.authenticate(&req.registration_token).await {
            Ok(Principal::Registration { .. }) => {}
            _ => {
                return Err(CoordError::Unauthorized(
                    "the registration token is unknown or revoked (`archway server token list` \
                     on the server shows the active ones)"
                        .into(),
                ));
            }
        }
        if req.name.is_empty() || req.name.len() > 100 {
            return Err(CoordError::BadRequest(
                "runner name must be 1–100 characters".into(),
            ));
        }
        if req.platforms.is_empty() {
            return Err(CoordError::BadRequest(
                "a runner must offer at least one platform".into(),
            ));
        }
        if req.tags.len() > 50 || req.tags.iter().any(|t| t.is_empty() || t.len() > 100) {
            return Err(CoordError::BadRequest(
                "at most 50 tags of 1–100 characters each".into(),
            ));
        }
        validate_platforms(&req.platforms)?;
        let token = tokens::generate(TokenKind::Runner);
        let mut tags = req.tags.clone();
        tags.sort();
        tags.dedup();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO runners (name, token_hash, tags, platforms, concurrency, run_untagged, \
             version, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(&req.name)
        .bind(tokens::hash(&token))
        .bind(json(&tags))
        .bind(json(&req.platforms))
        .bind(i64::from(req.concurrency.clamp(1, 1000)))
        .bind(i64::from(req.run_untagged))
        .bind(req.version.chars().take(64).collect::<String>())
        .bind(now_ms())
        .fetch_one(&self.db.write)
        .await?;
        tracing::info!(runner = id, name = %req.name, "runner registered");
        Ok(RegisteredRunner { id, token })
    }

    /// What a runner offers to the dispatcher (its tags with the automatic architecture
    /// tags of what it can run now).
    pub async fn runner_offer(
        &self,
        runner_id: i64,
        platforms: &[PlatformOffer],
    ) -> Result<RunnerOffer, CoordError> {
        let fixed = self.runner_fixed(runner_id).await?;
        let mut tags: BTreeSet<String> = fixed.tags.into_iter().collect();
        let platforms: Vec<PlatformOffer> = if platforms.is_empty() {
            fixed.platforms
        } else {
            platforms.to_vec()
        };
        for p in &platforms {
            tags.extend(archway_api::arch_tags(&p.platform));
        }
        Ok(RunnerOffer {
            runner_id,
            tags,
            platforms: platforms
                .iter()
                .map(|p| (p.platform.clone(), p.emulated))
                .collect(),
            run_untagged: fixed.run_untagged,
        })
    }

    /// The poll's bookkeeping: renew the leases of what the runner runs, lose what it no
    /// longer has, and tell it which of its attempts to stop.
    pub async fn reconcile(
        &self,
        runner_id: i64,
        running: &[i64],
        platforms: &[PlatformOffer],
        draining: bool,
        version: &str,
    ) -> Result<Vec<i64>, CoordError> {
        validate_platforms(platforms)?;
        let rows = sqlx::query(
            "SELECT id, cancel_requested FROM attempts WHERE runner_id = $1 AND state = 'running'",
        )
        .bind(runner_id)
        .fetch_all(&self.db.read)
        .await?;
        let reported: HashSet<i64> = running.iter().copied().collect();
        let mut server_side = HashSet::new();
        let mut cancel = Vec::new();
        for r in &rows {
            let id: i64 = r.try_get("id")?;
            server_side.insert(id);
            if r.try_get::<i64, _>("cancel_requested")? != 0 && reported.contains(&id) {
                cancel.push(id);
            }
        }
        // Attempts the runner reports but that are over here (lost, finished, canceled).
        cancel.extend(reported.iter().filter(|id| !server_side.contains(id)));
        // Attempts this runner had but no longer reports: it restarted or dropped them.
        for id in server_side.iter().filter(|id| !reported.contains(id)) {
            self.lose_attempt(*id, "its runner no longer reports it (restarted?)")
                .await?;
        }
        let due = {
            let mut m = self.renewed.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let due = m
                .get(&runner_id)
                .is_none_or(|t| now.duration_since(*t) >= self.config.lease_ttl / 5);
            if due {
                m.insert(runner_id, now);
            }
            due
        };
        if due {
            let now = now_ms();
            let mut tx = self.begin().await?;
            sqlx::query(
                "UPDATE attempts SET lease_expires_ms = $1 WHERE runner_id = $2 AND state = 'running'",
            )
            .bind(now + self.config.lease_ttl.as_millis() as i64)
            .bind(runner_id)
            .execute(&mut *tx)
            .await?;
            let mut q =
                String::from("UPDATE runners SET last_seen_ms = $1, draining = $2, version = $3");
            if !platforms.is_empty() {
                q.push_str(", platforms = $5");
            }
            q.push_str(" WHERE id = $4");
            let mut query = sqlx::query(&q)
                .bind(now)
                .bind(i64::from(draining))
                .bind(version.chars().take(64).collect::<String>())
                .bind(runner_id);
            if !platforms.is_empty() {
                query = query.bind(json(&platforms));
            }
            query.execute(&mut *tx).await?;
            tx.commit().await?;
        }
        cancel.sort_unstable();
        cancel.dedup();
        Ok(cancel)
    }
}

/// A token as `archway server token list` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub kind: String,
    pub name: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

fn validate_platforms(platforms: &[PlatformOffer]) -> Result<(), CoordError> {
    if platforms.len() > 16 {
        return Err(CoordError::BadRequest(
            "at most 16 platforms per runner".into(),
        ));
    }
    for p in platforms {
        p.platform
            .parse::<archway_oci::Platform>()
            .map_err(|e| CoordError::BadRequest(format!("platform `{}`: {e}", p.platform)))?;
    }
    Ok(())
}
