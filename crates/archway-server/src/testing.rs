//! Helpers for tests of the coordinator (behind the `testing` feature): a fresh database on
//! each backend the machine offers.

/// The database backends a test can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The environment variable `scripts/test.sh` sets to a throwaway cluster's URL.
pub const POSTGRES_ENV: &str = "ARCHWAY_TEST_POSTGRES";

/// A new, empty PostgreSQL database on the test cluster, as a URL; `None` (and a note on
/// stderr, so the skip is visible) when no cluster is configured.
pub async fn postgres_database(test: &str) -> Option<String> {
    let Ok(admin) = std::env::var(POSTGRES_ENV) else {
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "SKIPPED on PostgreSQL: {test} ({POSTGRES_ENV} is not set; scripts/test.sh starts a cluster)"
            );
        }
        return None;
    };
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("connecting to {admin}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("creating a test database: {e}"));
    pool.close().await;
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    Some(format!("{base}/{name}"))
}
