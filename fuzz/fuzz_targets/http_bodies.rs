//! Fuzzes the gateway's request bodies: byte 0 picks a route, the rest is its body, decoded
//! through `JsonBody`'s parser (depth limit, serde) and the handler's own checks (money,
//! currency, quantities, expected versions, event types, the domain's check of raw appends).
//! Nothing may panic, and every refusal is a 4xx with a machine-readable code.
#![no_main]

use ficus_gateway::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [kind, body @ ..] = data else {
        return;
    };
    if let Err(e) = fuzzing::http_body(*kind, body) {
        assert!(
            e.status.is_client_error(),
            "a bad body is a 4xx, not {} ({}: {})",
            e.status,
            e.code,
            e.message
        );
        assert!(!e.code.is_empty(), "a refusal names its code");
    }
});
