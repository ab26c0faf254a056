//! Versioned schema migrations, applied in order, each in its own transaction, recorded in
//! `ficus_migrations`. Several processes may call [`migrate`] at once: a session advisory lock
//! keyed by the schema name makes them take turns, and each applies only what is missing.

use deadpool_postgres::Pool;

use super::{conn, unavailable};
use crate::StoreError;

/// One schema change. `sql` may contain `__SCHEMA__`, replaced with the schema's name.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first. Never edit a released one: add a new version.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "event log",
        sql: EVENT_LOG,
    },
    Migration {
        version: 2,
        name: "job queue",
        sql: super::jobs::SCHEMA,
    },
    Migration {
        version: 3,
        name: "idempotency keys",
        sql: super::idempotency::SCHEMA,
    },
    Migration {
        version: 4,
        name: "snapshots",
        sql: super::snapshots::SCHEMA,
    },
    Migration {
        version: 6,
        name: "subject keys",
        sql: crate::shredding::PG_SCHEMA,
    },
    Migration {
        version: 7,
        name: "blob references",
        sql: crate::blobs::PG_SCHEMA,
    },
    Migration {
        version: 8,
        name: "ficus_append on a generic plan",
        sql: APPEND_GENERIC_PLAN,
    },
    Migration {
        version: 9,
        name: "ficus_append's plan independent of table statistics",
        sql: APPEND_INDEX_PLAN,
    },
];

/// `ficus_append`'s generic plan looks each stream up by its index whatever the tables'
/// statistics were when it was made (docs/adr/0020). A connection makes the plan on its first
/// append and keeps it: made while the schema was young, it joined `ficus_streams` with a
/// sequential scan or a hash join over all of it (cheapest on a table of a few pages), so an
/// append on a connection opened then grew linearly with the streams, to 36 ms at 200,000
/// streams against 4 ms on a new connection. The function is the same but for two things: each
/// stream's version is a subquery on `ficus_streams`' primary key (a per-stream lookup the
/// planner cannot turn into a scan of the table), and sequential scans are off inside it.
/// Hash joins stay on: the join of a batch's events to its appends needs them (a nested loop
/// there made a batch of 4,000 appends take 2.9 s instead of 0.1 s).
const APPEND_INDEX_PLAN: &str = r#"
CREATE OR REPLACE FUNCTION ficus_append(
    a_stream text[], a_expected bigint[], a_count integer[],
    e_append integer[], e_id uuid[], e_type text[], e_schema integer[],
    e_metadata text[], e_payload text[], at_ms bigint, with_outbox boolean)
RETURNS TABLE (ok boolean, actual bigint, first_version bigint, first_position bigint)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $fn$
DECLARE
    head_pos bigint;
    new_head bigint;
BEGIN
    SELECT h.position INTO head_pos FROM ficus_head h WHERE h.id = 1 FOR UPDATE;
    RETURN QUERY
    WITH req AS (
        SELECT r.i, r.stream, r.expected, r.cnt,
               coalesce((SELECT s.version FROM ficus_streams s WHERE s.stream_id = r.stream), 0)
                   AS cur,
               sum(r.cnt) OVER (ORDER BY r.i) - r.cnt AS events_before
          FROM unnest(a_stream, a_expected, a_count) WITH ORDINALITY AS r(stream, expected, cnt, i)
    ), judged AS (
        SELECT req.*, (req.expected = -1 OR (req.expected = -2 AND req.cur = 0)
                       OR (req.expected = -3 AND req.cur > 0) OR req.expected = req.cur) AS accepted
          FROM req
    ), placed AS (
        SELECT judged.*,
               head_pos + 1 + coalesce(sum(judged.cnt) FILTER (WHERE judged.accepted)
                   OVER (ORDER BY judged.i ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                   AS pos0
          FROM judged
    ), ins AS (
        INSERT INTO ficus_events (position, event_id, stream_id, version, event_type,
                                  schema_version, recorded_at_ms, metadata, payload)
        SELECT p.pos0 + (t.ix - 1 - p.events_before), t.id, p.stream,
               p.cur + 1 + (t.ix - 1 - p.events_before), t.ty, t.sv, at_ms,
               t.md::json, t.pl::json
          FROM unnest(e_append, e_id, e_type, e_schema, e_metadata, e_payload)
               WITH ORDINALITY AS t(a, id, ty, sv, md, pl, ix)
          JOIN placed p ON p.i = t.a AND p.accepted
    ), ups AS (
        INSERT INTO ficus_streams AS s (stream_id, version)
        SELECT p.stream, p.cur + p.cnt FROM placed p WHERE p.accepted
        ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version
    )
    SELECT p.accepted, p.cur,
           CASE WHEN p.accepted THEN p.cur + 1 ELSE 0 END,
           CASE WHEN p.accepted THEN p.pos0 ELSE 0 END
      FROM placed p ORDER BY p.i;
    SELECT coalesce(max(e.position), 0) INTO new_head FROM ficus_events e;
    IF new_head > head_pos THEN
        UPDATE ficus_head SET position = new_head WHERE id = 1;
        IF with_outbox THEN
            INSERT INTO ficus_outbox VALUES (head_pos + 1, new_head);
        END IF;
        PERFORM pg_notify('ficus_events.__SCHEMA__', new_head::text);
    END IF;
END
$fn$;
"#;

/// `ficus_append`'s statements on their generic plan (docs/adr/0020). Under the default
/// `plan_cache_mode = auto`, PL/pgSQL re-plans the append's parameterised statement on every
/// call (its custom plan looks cheaper than the generic one), and that planning grows with the
/// tables: on PostgreSQL 15 it probes `ficus_streams_pkey` several times per call (the
/// planner's look at the index's actual end values, which steps over the dead versions the
/// `ficus_streams` upsert leaves), so a one-event append at 10^6 events in the log cost 240 µs
/// in the server against 90 µs at 10^4. The generic plan does the same index lookups without
/// re-planning and stays flat; batches of 4000 appends are no slower on it.
const APPEND_GENERIC_PLAN: &str = "
ALTER FUNCTION ficus_append(text[], bigint[], integer[], integer[], uuid[], text[], integer[],
                            text[], text[], bigint, boolean)
    SET plan_cache_mode = force_generic_plan;
";

/// The event log. Positions are gap-free because they are handed out under the row lock on
/// `ficus_head`, taken inside `ficus_append` and released at commit, after the transaction is
/// visible: a reader can never see position n+1 without n. The lock is held only inside the
/// server, never across a network round trip.
const EVENT_LOG: &str = r#"
CREATE TABLE ficus_events (
    position       bigint  PRIMARY KEY,
    event_id       uuid    NOT NULL,
    stream_id      text    NOT NULL,
    version        bigint  NOT NULL,
    event_type     text    NOT NULL,
    schema_version integer NOT NULL,
    recorded_at_ms bigint  NOT NULL,
    metadata       json    NOT NULL,
    payload        json    NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE TABLE ficus_streams (
    stream_id text   PRIMARY KEY,
    version   bigint NOT NULL
);
CREATE TABLE ficus_head (
    id       integer PRIMARY KEY CHECK (id = 1),
    position bigint  NOT NULL
);
INSERT INTO ficus_head VALUES (1, 0);
-- The transactional outbox: one row per group commit that asked for it, naming the positions
-- the relay must still publish to the bus. Written in the append's own transaction.
CREATE TABLE ficus_outbox (
    first_position bigint PRIMARY KEY,
    last_position  bigint NOT NULL
);

-- One group commit: many appends, each with its own expectation, to distinct streams (the
-- caller never puts one stream twice in a batch: each append's version check must see the
-- previous one). An expectation that fails rejects that
-- append alone. a_expected: -1 any, -2 no stream, -3 exists, n >= 0 exactly n.
-- e_append[i] is the (1-based) append event i belongs to; an append's events are contiguous.
-- Every statement after the head lock takes a fresh snapshot, so it sees every commit that
-- came before the lock was granted.
CREATE FUNCTION ficus_append(
    a_stream text[], a_expected bigint[], a_count integer[],
    e_append integer[], e_id uuid[], e_type text[], e_schema integer[],
    e_metadata text[], e_payload text[], at_ms bigint, with_outbox boolean)
RETURNS TABLE (ok boolean, actual bigint, first_version bigint, first_position bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    head_pos bigint;
    new_head bigint;
BEGIN
    SELECT h.position INTO head_pos FROM ficus_head h WHERE h.id = 1 FOR UPDATE;
    RETURN QUERY
    WITH req AS (
        SELECT r.i, r.stream, r.expected, r.cnt, coalesce(s.version, 0) AS cur,
               sum(r.cnt) OVER (ORDER BY r.i) - r.cnt AS events_before
          FROM unnest(a_stream, a_expected, a_count) WITH ORDINALITY AS r(stream, expected, cnt, i)
          LEFT JOIN ficus_streams s ON s.stream_id = r.stream
    ), judged AS (
        SELECT req.*, (req.expected = -1 OR (req.expected = -2 AND req.cur = 0)
                       OR (req.expected = -3 AND req.cur > 0) OR req.expected = req.cur) AS accepted
          FROM req
    ), placed AS (
        SELECT judged.*,
               head_pos + 1 + coalesce(sum(judged.cnt) FILTER (WHERE judged.accepted)
                   OVER (ORDER BY judged.i ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                   AS pos0
          FROM judged
    ), ins AS (
        INSERT INTO ficus_events (position, event_id, stream_id, version, event_type,
                                  schema_version, recorded_at_ms, metadata, payload)
        SELECT p.pos0 + (t.ix - 1 - p.events_before), t.id, p.stream,
               p.cur + 1 + (t.ix - 1 - p.events_before), t.ty, t.sv, at_ms,
               t.md::json, t.pl::json
          FROM unnest(e_append, e_id, e_type, e_schema, e_metadata, e_payload)
               WITH ORDINALITY AS t(a, id, ty, sv, md, pl, ix)
          JOIN placed p ON p.i = t.a AND p.accepted
    ), ups AS (
        INSERT INTO ficus_streams AS s (stream_id, version)
        SELECT p.stream, p.cur + p.cnt FROM placed p WHERE p.accepted
        ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version
    )
    SELECT p.accepted, p.cur,
           CASE WHEN p.accepted THEN p.cur + 1 ELSE 0 END,
           CASE WHEN p.accepted THEN p.pos0 ELSE 0 END
      FROM placed p ORDER BY p.i;
    SELECT coalesce(max(e.position), 0) INTO new_head FROM ficus_events e;
    IF new_head > head_pos THEN
        UPDATE ficus_head SET position = new_head WHERE id = 1;
        IF with_outbox THEN
            INSERT INTO ficus_outbox VALUES (head_pos + 1, new_head);
        END IF;
        PERFORM pg_notify('ficus_events.__SCHEMA__', new_head::text);
    END IF;
END
$fn$;
"#;

/// Creates the schema if needed and applies every migration it lacks. Returns how many ran.
pub async fn migrate(pool: &Pool, schema: &str) -> Result<usize, StoreError> {
    let mut client = conn(pool).await?;
    // The lock comes first: two sessions running `CREATE SCHEMA IF NOT EXISTS` at once can
    // both find it missing, and the second fails on the catalog's unique index (seen with
    // three processes started together on a fresh schema).
    let lock_key = format!("ficus-migrate:{schema}");
    client
        .execute("SELECT pg_advisory_lock(hashtext($1))", &[&lock_key])
        .await
        .map_err(unavailable)?;
    let result = match client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
    {
        Ok(()) => apply(&mut client, schema).await,
        Err(e) => Err(unavailable(e)),
    };
    // Unlock even after a failed migration; if this fails too, closing the session unlocks.
    let _ = client
        .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&lock_key])
        .await;
    result
}

async fn apply(client: &mut deadpool_postgres::Object, schema: &str) -> Result<usize, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS ficus_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(unavailable)?;
    let done: Vec<i32> = client
        .query("SELECT version FROM ficus_migrations", &[])
        .await
        .map_err(unavailable)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(newer) = done
        .iter()
        .find(|v| !MIGRATIONS.iter().any(|m| m.version == **v))
    {
        return Err(StoreError::Invalid(format!(
            "schema {schema} has migration {newer}, which this binary does not know: it was \
             migrated by a newer Ficus"
        )));
    }
    let mut applied = 0;
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        let tx = client.transaction().await.map_err(unavailable)?;
        tx.batch_execute(&m.sql.replace("__SCHEMA__", schema))
            .await
            .map_err(|e| unavailable(format!("migration {} ({}): {e}", m.version, m.name)))?;
        tx.execute(
            "INSERT INTO ficus_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        tracing::info!(
            schema,
            version = m.version,
            name = m.name,
            "applied migration"
        );
        applied += 1;
    }
    Ok(applied)
}
