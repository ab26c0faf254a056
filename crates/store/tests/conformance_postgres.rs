//! The PostgreSQL event store passes the shared conformance suite against the real server named
//! by `FICUS_TEST_PG_URL`, each check in a schema of its own that is dropped afterwards.
//! Without the variable the checks are skipped (CI always sets it).

use std::any::Any;
use std::sync::Arc;

use ficus_store::postgres::testing::{fresh_schema, test_url};
use ficus_store::postgres::PgEventStore;
use ficus_store::EventStore;

async fn make() -> Option<(Arc<dyn EventStore>, Box<dyn Any + Send>)> {
    let url = test_url()?;
    let (mut config, guard) = fresh_schema(&url, "conf");
    config.pool_size = 8;
    let store = PgEventStore::open(config)
        .await
        .expect("open the PostgreSQL event store");
    // The store goes before the guard drops the schema (fields drop in order).
    Some((Arc::new(store), Box::new(guard)))
}

ficus_store::event_store_conformance!(optional make);
