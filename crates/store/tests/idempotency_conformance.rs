//! Every idempotency-key adapter — in memory, SQLite (a real file, through its group-commit
//! writer) and PostgreSQL (a fresh schema on the server named by `FICUS_TEST_PG_URL`, skipped
//! without it) — passes the shared conformance suite.

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
}
