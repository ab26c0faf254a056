//! Schema migrations are safe to run from several processes at once: six pools (as six
//! starting processes) migrate one fresh schema concurrently; every one succeeds and each
//! migration is applied exactly once. Needs `FICUS_TEST_PG_URL` (skipped without it).

use ficus_store::postgres::testing::{fresh_schema, test_url};
use ficus_store::postgres::{migrate, pool, MIGRATIONS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_processes_migrating_one_fresh_schema_at_once_all_succeed() {
    let Some(url) = test_url() else {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    };
    for round in 0..3 {
        let (config, _guard) = fresh_schema(&url, "migrate");
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let config = config.clone();
            tasks.push(tokio::spawn(async move {
                let p = pool(&config).expect("pool");
                migrate(&p, &config.schema).await
            }));
        }
        let mut applied = 0;
        for t in tasks {
            applied += t
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        assert_eq!(
            applied,
            MIGRATIONS.len(),
            "round {round}: each applied once"
        );
        let p = pool(&config).unwrap();
        assert_eq!(migrate(&p, &config.schema).await.unwrap(), 0);
    }
}
