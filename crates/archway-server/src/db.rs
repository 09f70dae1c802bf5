//! The coordinator's database: SQLite (the embedded default, a file under the data
//! directory, WAL) or PostgreSQL, through one code path (sqlx's `Any` driver, `$N`
//! placeholders, portable SQL; the two schemas differ only in identity columns and BYTEA).
//!
//! SQLite allows one writer at a time, so writes go through a pool of one connection (no
//! `SQLITE_BUSY` upgrades) while reads use their own pool. On PostgreSQL both are one pool,
//! and several servers may share the database: every state change is a conditional
//! `UPDATE … WHERE state = …` whose row count says who won.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

/// What can go wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("connecting to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("stored data is malformed: {0}")]
    Corrupt(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The pools, and which database they talk to.
#[derive(Clone, Debug)]
pub struct Db {
    pub read: AnyPool,
    pub write: AnyPool,
    pub dialect: Dialect,
    /// The URL without its password, for messages.
    pub display: String,
    /// For PostgreSQL: the URL, for `LISTEN`.
    pub url: Option<String>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn redact(url: &str) -> String {
    // scheme://user:password@host → scheme://user:***@host
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((creds, host)) = rest.split_once('@')
        && let Some((user, _)) = creds.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

impl Db {
    /// The SQLite database `coordinator.db` in `dir`.
    pub async fn open_sqlite(dir: &Path) -> Result<Db, DbError> {
        let path = dir.join("coordinator.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Db::open(&url).await
    }

    /// Opens `url` (`sqlite://PATH[?mode=rwc]` or `postgres://…`) and brings its schema up to
    /// date.
    pub async fn open(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let display = redact(url);
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else {
            return Err(DbError::Url {
                url: display,
                message: "expected sqlite://PATH or postgres://USER@HOST/DB".into(),
            });
        };
        let opts = AnyConnectOptions::from_str(url).map_err(|e| DbError::Url {
            url: display.clone(),
            message: e.to_string(),
        })?;
        let connect = |e| DbError::Connect {
            url: display.clone(),
            source: e,
        };
        let db = match dialect {
            Dialect::Sqlite => {
                let pragmas = |max: u32| {
                    AnyPoolOptions::new()
                        .max_connections(max)
                        .min_connections(1)
                        .acquire_timeout(Duration::from_secs(30))
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                // WAL: readers never block the writer. synchronous=NORMAL keeps
                                // every commit across a process crash (kill -9); only a power
                                // loss can lose the last transactions.
                                conn.execute(
                                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                                )
                                .await?;
                                Ok(())
                            })
                        })
                };
                let write = pragmas(1)
                    .connect_with(opts.clone())
                    .await
                    .map_err(connect)?;
                sqlx::migrate!("./migrations/sqlite").run(&write).await?;
                let read = pragmas(8).connect_with(opts).await.map_err(connect)?;
                Db {
                    read,
                    write,
                    dialect,
                    display,
                    url: None,
                }
            }
            Dialect::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(opts)
                    .await
                    .map_err(connect)?;
                // sqlx takes an advisory lock, so servers starting together migrate once.
                sqlx::migrate!("./migrations/postgres").run(&pool).await?;
                Db {
                    read: pool.clone(),
                    write: pool,
                    dialect,
                    display,
                    url: Some(url.to_owned()),
                }
            }
        };
        Ok(db)
    }

    /// `FOR UPDATE SKIP LOCKED` where the database has row locks (PostgreSQL); SQLite's single
    /// writer needs none.
    pub fn skip_locked(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://archway:s3cret@db:5432/ci"),
            "postgres://archway:***@db:5432/ci"
        );
        assert_eq!(redact("sqlite:///var/lib/a.db"), "sqlite:///var/lib/a.db");
    }

    #[tokio::test]
    async fn sqlite_opens_and_migrates_twice() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_sqlite(dir.path()).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
            .fetch_one(&db.read)
            .await
            .unwrap();
        assert_eq!(n, 0);
        drop(db);
        Db::open_sqlite(dir.path()).await.unwrap();
    }

    #[tokio::test]
    async fn unknown_schemes_are_refused_with_the_expected_forms() {
        let e = Db::open("mysql://x").await.unwrap_err().to_string();
        assert!(e.contains("expected sqlite://PATH or postgres://"), "{e}");
    }
}
