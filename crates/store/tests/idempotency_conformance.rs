//! Every idempotency-key adapter — in memory, SQLite (a real file, through its group-commit
//! writer) and PostgreSQL (a fresh schema on the server named by `FICUS_TEST_PG_URL`, skipped
//! without it) — passes the shared conformance suite. On PostgreSQL a claim waiting on a
//! key another session holds locked gives up after its bound.

use std::any::Any;
use std::sync::Arc;

use ficus_store::{EventStore, IdempotencyStore};

type Made = (
    Arc<dyn IdempotencyStore>,
    Arc<dyn EventStore>,
    Box<dyn Any + Send>,
);

mod mem {
    use super::*;
    use ficus_store::mem::MemEventStore;

    async fn make() -> Made {
        let store = Arc::new(MemEventStore::new());
        (store.clone(), store, Box::new(()))
    }

    ficus_store::idempotency_conformance!(make);
}

mod sqlite {
    use super::*;
    use ficus_store::sqlite::{SqliteConfig, SqliteEventStore};

    async fn make() -> Made {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default())
                .expect("open sqlite store"),
        );
        (store.clone(), store, Box::new(dir))
    }

    ficus_store::idempotency_conformance!(make);
}

mod postgres {
    use super::*;
    use ficus_store::postgres::testing::{fresh_schema, test_url};
    use ficus_store::postgres::PgEventStore;

    async fn make() -> Option<Made> {
        let url = test_url()?;
        let (mut config, guard) = fresh_schema(&url, "idem");
        config.pool_size = 12;
        let store = Arc::new(
            PgEventStore::open(config)
                .await
                .expect("open the PostgreSQL event store"),
        );
        // The check consumes both handles; the guard, dropped after it, drops the schema.
        Some((store.clone(), store, Box::new(guard)))
    }

    ficus_store::idempotency_conformance!(optional make);
    /// A claim judged behind a row lock another session holds (a claim in a process that
    /// stopped answering) answers unavailable after its bound (a few statement timeouts), not
    /// when the lock goes; once it goes, the key is claimed as usual.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_waiting_on_a_locked_key_gives_up_within_its_bound() {
        use ficus_store::idempotency::{Claim, ClaimRequest};
        use std::time::{Duration, Instant};
        let Some(url) = test_url() else { return };
        let (mut config, _guard) = fresh_schema(&url, "idemlock");
        config.statement_timeout = Duration::from_millis(500);
        let store = PgEventStore::open(config.clone()).await.unwrap();
        let req = |now_ms| ClaimRequest {
            scope: "alice",
            key: "k-1",
            fingerprint: "fp",
            now_ms,
            lease_ms: 1_000,
            retention_ms: 86_400_000,
        };
        // Claimed and expired: the next claim must lock the row to judge it.
        assert!(matches!(
            store.claim(&req(1_000)).await.unwrap(),
            Claim::Owned(_)
        ));
        let holder_pool = ficus_store::postgres::pool(&config).unwrap();
        let mut holder = holder_pool.get().await.unwrap();
        let tx = holder.transaction().await.unwrap();
        tx.execute(
            "SELECT 1 FROM ficus_idempotency WHERE scope = 'alice' AND key = 'k-1' FOR UPDATE",
            &[],
        )
        .await
        .unwrap();
        let started = Instant::now();
        let stuck = tokio::time::timeout(Duration::from_secs(10), store.claim(&req(10_000)))
            .await
            .expect("the claim must give up within its bound");
        let waited = started.elapsed();
        let err = stuck.expect_err("the row is locked");
        assert!(err.to_string().contains("no answer"), "{err}");
        assert!(waited < Duration::from_secs(3), "gave up after {waited:?}");
        tx.rollback().await.unwrap();
        assert!(matches!(
            store.claim(&req(10_001)).await.unwrap(),
            Claim::Owned(_)
        ));
    }
}
