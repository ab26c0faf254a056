//! The OpenAPI document of the gateway's own admin API (served by `ficus gateway`, or the
//! gateway of `ficus serve --gateway-routes`, at `GET /v1/admin/openapi.json`): the rollout
//! endpoints of `proxy/rollout_ctl.rs`. It is a document of its own because the façade listens
//! on its own address; the shared pieces (errors, the bearer scheme, the correlation id) are
//! the main document's.

use std::sync::OnceLock;

use serde_json::{json, Value};

use super::{path_item, schema_ref, spec, success, Op};

/// `GET /v1/admin/openapi.json` on the gateway.
pub async fn document() -> axum::Json<Value> {
    axum::Json(gateway_admin_spec().clone())
}

/// The gateway admin document, built once.
pub fn gateway_admin_spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(build)
}

const ROUTE_NAME: &str = "^[A-Za-z0-9_.-]{1,64}$";

fn route_param() -> Value {
    json!({
        "name": "name",
        "in": "path",
        "required": true,
        "description": "The route's name.",
        "schema": {"type": "string", "pattern": ROUTE_NAME},
    })
}

fn build() -> Value {
    let main = spec();
    let get = Op::new("getRollout", "rollouts", "A route's rollout")
        .describe("The route's rollout plan, its state (`not_started` until an admin starts it), the step and weight, the live window metrics of each side and of the shadow comparisons, the latest evaluation and the decision history. Needs the admin role.")
        .secured()
        .param(route_param())
        .success(200, success("The rollout.", schema_ref("Rollout"), &[]))
        .errors(&[
            (400, "`invalid_path`"),
            (403, "`forbidden`: not an admin."),
            (404, "`route_not_found`, `rollout_not_configured`: the route has no `rollout` plan."),
        ]);
    let act = Op::new("actOnRollout", "rollouts", "Start, pause, resume or abort a rollout")
        .describe("`start` begins at the first step (allowed when not started, rolled back, aborted or succeeded: restarting a rolled-back plan is always this explicit call); `pause` holds the step and its dwell; `resume` goes on with the dwell served so far; `abort` sets 0 % on the new side. The change is written durably before the answer, which is the rollout as `GET` shows it. Needs the admin role.")
        .secured()
        .param(route_param())
        .param(json!({
            "name": "action",
            "in": "path",
            "required": true,
            "schema": {"type": "string", "enum": ["start", "pause", "resume", "abort"]},
        }))
        .success(200, success("The rollout after the change.", schema_ref("Rollout"), &[]))
        .errors(&[
            (400, "`invalid_path`"),
            (403, "`forbidden`: not an admin."),
            (404, "`route_not_found`, `rollout_not_configured`, `unknown_action`"),
            (409, "`rollout_in_progress` (start while running or paused), `rollout_not_active` (pause, resume or abort in the wrong state)"),
            (500, "`rollout_not_saved`, `route_not_saved`: the state or route file could not be written; nothing changed"),
        ]);
    let components = &main["components"];
    let mut schemas = schemas();
    schemas["Error"] = components["schemas"]["Error"].clone();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Ficus gateway admin",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The strangler-fig gateway's admin API: progressive delivery of a route (canary analysis with automatic rollback). A route's `rollout` plan is set with the route itself (`PUT /v1/admin/routes/{name}` or the route file); these endpoints run it and report on it. Errors are JSON `{code, message}`.",
        },
        "tags": [{"name": "rollouts", "description": "A route's rollout plan: steps, dwell, bounds, decisions."}],
        "paths": {
            "/v1/admin/routes/{name}/rollout": path_item(vec![("get", get)]),
            "/v1/admin/routes/{name}/rollout/{action}": path_item(vec![("post", act)]),
        },
        "components": {
            "schemas": schemas,
            "parameters": {"XCorrelationId": components["parameters"]["XCorrelationId"].clone()},
            "headers": components["headers"].clone(),
            "responses": components["responses"].clone(),
            "securitySchemes": components["securitySchemes"].clone(),
        },
    })
}

fn schemas() -> Value {
    let rate = |d: &str| json!({"type": "number", "minimum": 0, "maximum": 1, "description": d});
    json!({
        "RolloutBounds": {
            "type": "object",
            "description": "What the new side may not exceed; at least one is set. A value exactly at a bound is within it.",
            "properties": {
                "max_error_rate": rate("Largest error rate (5xx and transport failures) of the new side."),
                "max_error_rate_increase": rate("Largest amount the new side's error rate may exceed legacy's by (judged when legacy has `min_requests` too)."),
                "max_p99_ms": {"type": "integer", "minimum": 1, "maximum": 600000},
                "max_p99_ratio": {"type": "number", "minimum": 1, "maximum": 1000, "description": "Largest new p99 over legacy p99."},
                "max_mismatch_rate": rate("Largest share of shadow comparisons that differed (judged once `min_requests` comparisons were made)."),
            },
            "additionalProperties": false,
        },
        "RolloutPlan": {
            "type": "object",
            "required": ["steps", "dwell_ms"],
            "properties": {
                "steps": {"type": "array", "minItems": 1, "maxItems": 20, "items": {"type": "integer", "minimum": 1, "maximum": 100}, "description": "Percent on the new side per step, strictly increasing; passing the last sets 100 %."},
                "dwell_ms": {"type": "integer", "minimum": 1},
                "window_ms": {"type": "integer", "minimum": 200, "maximum": 3600000},
                "min_requests": {"type": "integer", "minimum": 1, "maximum": 1000000},
                "bounds": schema_ref("RolloutBounds"),
            },
            "additionalProperties": false,
        },
        "SideMetrics": {
            "type": "object",
            "required": ["requests", "errors"],
            "properties": {
                "requests": {"type": "integer", "minimum": 0},
                "errors": {"type": "integer", "minimum": 0},
                "p99_ms": {"type": "integer", "minimum": 0, "description": "Upper edge of the latency bin holding the 99th percentile."},
            },
        },
        "WindowMetrics": {
            "type": "object",
            "required": ["legacy", "new", "shadow"],
            "properties": {
                "legacy": schema_ref("SideMetrics"),
                "new": schema_ref("SideMetrics"),
                "shadow": {"$ref": "#/components/schemas/SideMetrics", "description": "`requests`: comparisons made; `errors`: those that differed."},
            },
        },
        "RolloutDecision": {
            "type": "object",
            "required": ["at_ms", "at", "outcome", "step", "weight_new", "reason"],
            "properties": {
                "at_ms": {"type": "integer"},
                "at": {"type": "string", "format": "date-time"},
                "outcome": {"type": "string", "enum": ["started", "hold", "advance", "succeeded", "rollback", "paused", "resumed", "aborted"]},
                "step": {"type": "integer", "minimum": 0, "description": "Step index from 0, after the decision."},
                "weight_new": {"type": "integer", "minimum": 0, "maximum": 100},
                "reason": {"type": "string"},
                "metrics": schema_ref("WindowMetrics"),
            },
        },
        "Rollout": {
            "type": "object",
            "required": ["route", "plan", "status", "steps", "weight_new", "window", "history"],
            "properties": {
                "route": {"type": "string"},
                "plan": schema_ref("RolloutPlan"),
                "status": {"type": "string", "enum": ["not_started", "running", "paused", "rolled_back", "succeeded", "aborted"]},
                "step": {"type": ["integer", "null"], "minimum": 0},
                "steps": {"type": "integer", "minimum": 1},
                "weight_new": {"type": "integer", "minimum": 0, "maximum": 100, "description": "The route's weight now."},
                "started_at": {"type": ["string", "null"], "format": "date-time"},
                "entered_at": {"type": ["string", "null"], "format": "date-time", "description": "When the current step began; the dwell counts from here, across restarts."},
                "dwell_remaining_ms": {"type": ["integer", "null"], "minimum": 0},
                "reason": {"type": ["string", "null"], "description": "Why the plan rolled back or was aborted."},
                "window": schema_ref("WindowMetrics"),
                "last_evaluation": {"oneOf": [schema_ref("RolloutDecision"), {"type": "null"}]},
                "history": {"type": "array", "maxItems": 50, "items": schema_ref("RolloutDecision")},
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_ref_resolves_and_every_operation_is_secured() {
        let doc = gateway_admin_spec();
        let mut found = Vec::new();
        refs(doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            assert!(doc.pointer(&r[1..]).is_some(), "{r} does not resolve");
        }
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                assert_eq!(op["security"], json!([{"bearer": []}]));
                assert!(op["responses"]["401"].is_object());
                assert!(op["responses"]["200"].is_object());
            }
        }
    }

    #[test]
    fn the_plan_schema_names_every_field_of_the_plan() {
        let plan = crate::proxy::rollout::RolloutPlan {
            steps: vec![1, 100],
            dwell_ms: 1,
            window_ms: 1000,
            min_requests: 1,
            bounds: crate::proxy::rollout::RolloutBounds {
                max_error_rate: Some(0.1),
                max_error_rate_increase: Some(0.1),
                max_p99_ms: Some(1),
                max_p99_ratio: Some(1.0),
                max_mismatch_rate: Some(0.1),
            },
        };
        let v = serde_json::to_value(&plan).unwrap();
        let schemas = &gateway_admin_spec()["components"]["schemas"];
        for (name, value) in [("RolloutPlan", &v), ("RolloutBounds", &v["bounds"])] {
            let props = schemas[name]["properties"].as_object().unwrap();
            for k in value.as_object().unwrap().keys() {
                assert!(props.contains_key(k), "{name}.{k} is not documented");
            }
        }
    }
}
