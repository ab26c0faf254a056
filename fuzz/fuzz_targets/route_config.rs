//! Fuzzes the strangler-fig route table: arbitrary bytes → TOML → `GatewayConfig` → the
//! validation `Gateway::new` and `Gateway::replace` apply (routes, upstreams, resilience
//! settings, rollout plans). Nothing may panic; a table that is accepted must print back to
//! TOML that is accepted again as the same table.
#![no_main]

use std::sync::Arc;

use ficus_gateway::proxy::config::GatewayConfig;
use ficus_gateway::proxy::Gateway;
use ficus_gateway::Auth;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = GatewayConfig::from_toml(text) else {
        return;
    };
    let auth = Arc::new(Auth::new(b"fuzz".to_vec()));
    // Building the gateway indexes the table (upstream URIs, sticky keys, guards): what
    // validation let through must not trip an `expect` there.
    let gateway = Gateway::new(cfg.clone(), None, auth).expect("a validated table builds");
    gateway
        .replace(cfg.clone())
        .expect("a validated table replaces the running one");
    let printed = cfg.to_toml();
    let again = GatewayConfig::from_toml(&printed).expect("a printed table parses back");
    assert_eq!(
        again.to_toml(),
        printed,
        "to_toml is stable across a round trip"
    );
});
