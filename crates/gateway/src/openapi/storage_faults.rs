//! The OpenAPI paths of the embedded store's fault-injection control (`storage.rs`,
//! docs/adr/0014). They answer `404 fault_injection_disabled` unless the server runs with
//! `--fault-injection`.

use serde_json::{json, Value};

use super::{path_item, success, Op};

fn state_schema() -> Value {
    json!({
        "type": "object",
        "required": ["fault", "delay_ms", "injected", "storage_fault"],
        "properties": {
            "fault": {"type": ["string", "null"], "enum": ["disk_full", "fsync_error", "short_write", "slow_disk", null],
                      "description": "The fault being injected, or null."},
            "delay_ms": {"type": ["integer", "null"], "minimum": 1, "description": "The slow disk's delay per write and fsync."},
            "injected": {"type": "integer", "minimum": 0, "description": "Writes and fsyncs failed or slowed on purpose so far."},
            "storage_fault": {"type": ["string", "null"], "description": "Why the store refuses writes now (as `/health/ready` reports it), or null."},
        },
    })
}

const ERRORS: &[(u16, &str)] = &[
    (403, "`forbidden`: not an admin."),
    (
        404,
        "`fault_injection_disabled`: the server was not started with `--fault-injection`.",
    ),
];

pub(super) fn paths() -> Vec<(&'static str, Value)> {
    let answer = || success("The fault plan now.", state_schema(), &[]);
    vec![(
        "/v1/admin/storage-fault",
        path_item(vec![
            (
                "get",
                Op::new("getStorageFault", "health", "The injected storage fault")
                    .describe("The storage fault injected into the embedded store, and whether the store refuses writes now. Needs the admin role.")
                    .secured()
                    .success(200, answer())
                    .errors(ERRORS),
            ),
            (
                "put",
                Op::new("setStorageFault", "health", "Inject a storage fault")
                    .describe("Drills and tests only. From now on every write and fsync of the embedded event log fails or slows: `disk_full` (writes fail as on a full disk), `fsync_error` (fsyncs fail), `short_write` (writes are torn in half and fail), `slow_disk` (each write and fsync first waits `delay_ms`). Writes then answer 503 `storage_unavailable` (nothing written) or `storage_outcome_unknown` (committed, but its fsync failed); reads keep working; `/health/ready` reports the `storage` check. Needs the admin role.")
                    .secured()
                    .body(json!({
                        "required": true,
                        "content": {"application/json": {"schema": {
                            "type": "object",
                            "required": ["fault"],
                            "additionalProperties": false,
                            "properties": {
                                "fault": {"type": "string", "enum": ["disk_full", "fsync_error", "short_write", "slow_disk"]},
                                "delay_ms": {"type": "integer", "minimum": 1, "maximum": 10000, "description": "`slow_disk` only."},
                            },
                        }}},
                    }))
                    .success(200, answer())
                    .errors(&[
                        (400, "`invalid_field`, `invalid_json`."),
                        (403, "`forbidden`: not an admin."),
                        (404, "`fault_injection_disabled`: the server was not started with `--fault-injection`."),
                        (413, ""),
                        (415, ""),
                    ]),
            ),
            (
                "delete",
                Op::new("clearStorageFault", "health", "Clear the injected storage fault")
                    .describe("Stops injecting. The store takes writes again at the next write (after a failed fsync, once its in-place recovery succeeds), without a restart. Needs the admin role.")
                    .secured()
                    .success(200, answer())
                    .errors(ERRORS),
            ),
        ]),
    )]
}
