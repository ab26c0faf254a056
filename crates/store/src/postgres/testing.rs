//! Throwaway schemas for tests against a shared PostgreSQL: each test gets its own schema,
//! named uniquely per run, dropped when the guard goes.

use super::PgConfig;

/// Environment variable naming the PostgreSQL that tests use.
pub const TEST_PG_URL_ENV: &str = "FICUS_TEST_PG_URL";

/// The test database URL, or `None` (tests then skip; CI always sets it).
pub fn test_url() -> Option<String> {
    std::env::var(TEST_PG_URL_ENV)
        .ok()
        .filter(|s| !s.is_empty())
}

/// A config for a fresh schema `t_<tag>_<unique>`, and a guard that drops the schema.
pub fn fresh_schema(url: &str, tag: &str) -> (PgConfig, SchemaGuard) {
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let tag: String = tag
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase();
    let schema = format!("t_{tag}_{}", &unique[unique.len() - 16..]);
    let config = PgConfig::new(url).with_schema(schema.clone());
    let guard = SchemaGuard {
        config: config.clone(),
    };
    (config, guard)
}

/// Drops its schema (and everything in it) when dropped.
pub struct SchemaGuard {
    config: PgConfig,
}

impl SchemaGuard {
    pub fn schema(&self) -> &str {
        &self.config.schema
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let config = self.config.clone();
        crate::run_detached(async move {
            let Ok(cfg) = config.client_config() else {
                return;
            };
            let Ok((client, connection)) = cfg.connect(tokio_postgres::NoTls).await else {
                return;
            };
            tokio::spawn(connection);
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", config.schema))
                .await;
            // A blue/green rebuild left unfinished keeps its new copy in a schema of its own,
            // `{schema}__{projection}_r{n}` (see ficus_runtime::pg_projection).
            let _ = client
                .batch_execute(&format!(
                    "DO $$ DECLARE s text; BEGIN
                       FOR s IN SELECT nspname FROM pg_namespace
                                WHERE starts_with(nspname, '{}__') LOOP
                         EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', s);
                       END LOOP;
                     END $$",
                    config.schema
                ))
                .await;
        });
    }
}
