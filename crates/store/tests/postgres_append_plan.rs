//! `ficus_append` reads `ficus_streams` through its index on a connection whose plan was made
//! while the schema was young: a plan frozen on a young schema must not turn every later
//! append into a sequential scan of all streams (docs/adr/0020). Needs `FICUS_TEST_PG_URL`
//! (skipped without it).

use ficus_store::postgres::testing::{fresh_schema, test_url};
use ficus_store::postgres::{migrate, pool};

/// One single-event append with any expected version, as the store's group commit calls it.
const APPEND: &str = "SELECT ok FROM ficus_append(ARRAY[$1::text], ARRAY[-1::bigint], ARRAY[1],
    ARRAY[1], ARRAY[gen_random_uuid()], ARRAY['PlanProbe'], ARRAY[1], ARRAY['{}'], ARRAY['{}'],
    0, false)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_plan_made_on_a_young_schema_still_uses_the_streams_index() {
    let Some(url) = test_url() else {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    };
    let (config, _guard) = fresh_schema(&url, "appendplan");
    let p = pool(&config).expect("pool");
    migrate(&p, &config.schema).await.expect("migrate");
    let mut conn = p.get().await.expect("connection");
    // A young schema: a few streams, analyzed (on a table this small a scan of all of it is
    // the cheapest plan). The first append on this connection makes the function's plan now.
    conn.batch_execute(
        "INSERT INTO ficus_streams SELECT 'young-' || g, 1 FROM generate_series(1, 30) g;
         ANALYZE ficus_streams;",
    )
    .await
    .unwrap();
    let first = conn.query_one(APPEND, &[&"plan-0"]).await.unwrap();
    assert!(first.get::<_, bool>(0));
    // The schema grows (without ANALYZE, which would make the plan again).
    conn.execute(
        "INSERT INTO ficus_streams SELECT 'grown-' || g, 100 FROM generate_series(1, 20000) g",
        &[],
    )
    .await
    .unwrap();
    // Scans of `ficus_streams` this backend has counted and not yet reported (they include
    // earlier transactions' until the backend reports them, so only a difference is read).
    const SCANS: &str = "SELECT coalesce(seq_scan, 0), coalesce(idx_scan, 0)
                           FROM pg_stat_xact_user_tables
                          WHERE schemaname = current_schema() AND relname = 'ficus_streams'";
    for i in 1..=3 {
        let tx = conn.transaction().await.unwrap();
        let before = tx.query_one(SCANS, &[]).await.unwrap();
        let stream = format!("plan-{i}");
        let row = tx.query_one(APPEND, &[&stream]).await.unwrap();
        assert!(row.get::<_, bool>(0), "append {i} accepted");
        let after = tx.query_one(SCANS, &[]).await.unwrap();
        let seq = after.get::<_, i64>(0) - before.get::<_, i64>(0);
        let idx = after.get::<_, i64>(1) - before.get::<_, i64>(1);
        assert_eq!(
            seq, 0,
            "append {i} scanned all of ficus_streams ({idx} index scans)"
        );
        assert!(idx > 0, "append {i} looked its stream up by the index");
        tx.commit().await.unwrap();
    }
    let version: i64 = conn
        .query_one(
            "SELECT version FROM ficus_streams WHERE stream_id = 'plan-3'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 1);
}
