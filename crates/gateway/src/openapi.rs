//! The OpenAPI 3.1 document of the public HTTP contract, written by hand next to the routes.
//!
//! Keep it in step with `lib.rs`, `streams.rs`, `shop.rs`, `bulk.rs` and `queues.rs`: every route
//! registered there has an operation here, with the query parameters, bodies, headers and
//! statuses its handler uses.
//! The unit tests below pin the list of operations and check that every `$ref` resolves.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

/// The gateway's own admin API (rollouts) has a document of its own: it is served on the
/// gateway's address, not the API's.
pub(crate) mod gateway_admin;
mod storage_faults;

/// `GET /v1/openapi.json`.
pub async fn document() -> axum::Json<Value> {
    axum::Json(spec().clone())
}

/// The OpenAPI document, built once.
pub fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(build)
}

const INFO_DESCRIPTION: &str = "Ficus is an event store with a reference shop domain on top: \
raw streams and the global log for admins, product and order commands, and queries on read \
models. Versions (of an event within its stream) and positions (of an event in the global log) \
start at 1 and have no gaps; 0 means \"nothing yet\". Money is a JSON number with at most two \
decimals and no exponent (e.g. 19.99), held exactly as integer minor units, never through a \
float. Commands answer the new version and position; a query given `min_position` waits \
(bounded) until its read model has reached that position, so a client reads its own writes, \
and every query answer says in `Ficus-Position` which position it reflects. Errors are JSON \
`{code, message}` with a machine-readable `code`; unknown routes answer 404 `route_not_found` \
and known routes called with another method 405 `method_not_allowed`. Every response carries \
`X-Correlation-Id` (the request's, or a new one).";

fn build() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Ficus",
            "version": env!("CARGO_PKG_VERSION"),
            "description": INFO_DESCRIPTION,
        },
        "tags": [
            {"name": "health", "description": "Liveness and readiness probes."},
            {"name": "meta", "description": "This document."},
            {"name": "events", "description": "Raw event-store access (admin)."},
            {"name": "projections", "description": "Read-model status and rebuilds (admin)."},
            {"name": "products", "description": "Product commands and catalog queries."},
            {"name": "views", "description": "Backend-for-frontend views of the catalog, shaped per client."},
            {"name": "orders", "description": "Order commands and queries."},
            {"name": "queues", "description": "Job queues, their dead-letter queues and job items (admin)."},
            {"name": "jobs", "description": "Bulk jobs: submit one, follow its progress and result, cancel it."},
            {"name": "blobs", "description": "The claim check: large job parameters and results stored once, fetched by reference."},
            {"name": "accounts", "description": "The bank-account ledger: money in exact minor units, no overdraft, and an account's state as of any past version or instant (time travel)."},
            {"name": "sagas", "description": "Sagas: the order-fulfilment saga's state, event-sourced in its own stream."},
            {"name": "subjects", "description": "Data subjects (admin): crypto-shredding of personal fields (docs/adr/0011-crypto-shredding.md)."},
        ],
        "paths": paths(),
        "components": {
            "schemas": schemas(),
            "parameters": parameters(),
            "headers": headers(),
            "responses": error_responses(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A JWT signed with HS256 (no other algorithm is accepted) \
                        carrying `sub` (the user id), `roles` (e.g. admin, seller, customer) \
                        and optionally `exp` / `nbf`. Missing or bad → 401 `unauthorized`.",
                },
            },
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Small builders

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn param_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/parameters/{name}")})
}

fn header_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/headers/{name}")})
}

/// A JSON request body. `required: false` for bodies that may be empty.
fn json_body(schema: &str, required: bool) -> Value {
    json!({
        "required": required,
        "content": {"application/json": {"schema": schema_ref(schema)}},
    })
}

/// A query parameter declared inline.
fn query_param(name: &str, required: bool, description: &str, schema: Value) -> Value {
    json!({
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    })
}

/// A success response: JSON `schema`, the named response headers (components.headers), and
/// always `X-Correlation-Id`.
fn success(description: &str, schema: Value, with_headers: &[&str]) -> Value {
    json!({
        "description": description,
        "headers": response_headers(with_headers),
        "content": {"application/json": {"schema": schema}},
    })
}

fn response_headers(names: &[&str]) -> Value {
    let mut h = Map::new();
    for name in names {
        h.insert((*name).to_owned(), header_ref(header_component(name)));
    }
    h.insert("X-Correlation-Id".into(), header_ref("XCorrelationId"));
    Value::Object(h)
}

fn header_component(name: &str) -> &'static str {
    match name {
        "Ficus-Position" => "FicusPosition",
        "ETag" => "ETag",
        "Retry-After" => "RetryAfter",
        "Idempotent-Replayed" => "IdempotentReplayed",
        other => panic!("no header component for {other}"),
    }
}

/// The component response of an error status.
fn error_component(status: u16) -> &'static str {
    match status {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        413 => "PayloadTooLarge",
        415 => "UnsupportedMediaType",
        422 => "UnprocessableEntity",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        other => panic!("no error response for {other}"),
    }
}

/// One operation, assembled into its OpenAPI object by [`Op::build`].
struct Op {
    id: &'static str,
    tag: &'static str,
    summary: &'static str,
    description: Option<&'static str>,
    /// Needs a bearer token (the handler extracts `Caller`).
    secured: bool,
    params: Vec<Value>,
    body: Option<Value>,
    success: Option<(u16, Value)>,
    /// Error statuses, each with the `code`s it may carry ("" for the component's text).
    errors: Vec<(u16, &'static str)>,
    /// Takes `Idempotency-Key` (a command whose effect is recorded with the key).
    idempotent: bool,
}

/// What an `Idempotency-Key` adds to a command's errors.
const IDEMPOTENCY_ERRORS: [(u16, &str); 3] = [
    (400, "`invalid_idempotency_key`"),
    (
        409,
        "`request_in_progress`: a request with this key is still in flight (after a bounded wait)",
    ),
    (
        422,
        "`idempotency_key_reused`: the key was used for another method, path or body",
    ),
];

impl Op {
    fn new(id: &'static str, tag: &'static str, summary: &'static str) -> Self {
        Self {
            id,
            tag,
            summary,
            description: None,
            secured: false,
            params: Vec::new(),
            body: None,
            success: None,
            errors: Vec::new(),
            idempotent: false,
        }
    }

    fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    fn describe(mut self, text: &'static str) -> Self {
        self.description = Some(text);
        self
    }

    fn secured(mut self) -> Self {
        self.secured = true;
        self
    }

    fn param(mut self, p: Value) -> Self {
        self.params.push(p);
        self
    }

    fn body(mut self, b: Value) -> Self {
        self.body = Some(b);
        self
    }

    fn success(mut self, status: u16, response: Value) -> Self {
        self.success = Some((status, response));
        self
    }

    fn errors(mut self, errors: &[(u16, &'static str)]) -> Self {
        self.errors.extend_from_slice(errors);
        self
    }

    fn build(self) -> Value {
        let mut responses = Map::new();
        let (status, response) = self.success.expect("every operation has a success answer");
        responses.insert(status.to_string(), response);
        if self.secured {
            responses.insert(
                "401".into(),
                json!({"$ref": "#/components/responses/Unauthorized"}),
            );
        }
        for (status, codes) in self.errors {
            let mut r = Map::new();
            r.insert(
                "$ref".into(),
                json!(format!(
                    "#/components/responses/{}",
                    error_component(status)
                )),
            );
            if !codes.is_empty() {
                r.insert("description".into(), json!(codes));
            }
            responses.insert(status.to_string(), Value::Object(r));
        }
        if self.idempotent {
            for (status, code) in IDEMPOTENCY_ERRORS {
                let r = responses.entry(status.to_string()).or_insert_with(|| {
                    json!({"$ref": format!("#/components/responses/{}", error_component(status))})
                });
                let text = match r["description"].as_str() {
                    Some(codes) => format!("{codes} {code}."),
                    None => format!("{code}."),
                };
                r["description"] = json!(text);
            }
            let ok = responses
                .get_mut(&status.to_string())
                .expect("the success answer");
            if let Some(h) = ok["headers"].as_object_mut() {
                h.insert(
                    "Idempotent-Replayed".into(),
                    header_ref(header_component("Idempotent-Replayed")),
                );
            }
        }
        let mut op = Map::new();
        op.insert("operationId".into(), json!(self.id));
        op.insert("tags".into(), json!([self.tag]));
        op.insert("summary".into(), json!(self.summary));
        if let Some(d) = self.description {
            op.insert("description".into(), json!(d));
        }
        let mut params = self.params;
        if self.idempotent {
            params.push(param_ref("IdempotencyKey"));
        }
        params.push(param_ref("XCorrelationId"));
        op.insert("parameters".into(), Value::Array(params));
        if let Some(b) = self.body {
            op.insert("requestBody".into(), b);
        }
        op.insert("responses".into(), Value::Object(responses));
        op.insert(
            "security".into(),
            if self.secured {
                json!([{"bearer": []}])
            } else {
                json!([])
            },
        );
        Value::Object(op)
    }
}

fn path_item(ops: Vec<(&str, Op)>) -> Value {
    let mut item = Map::new();
    for (method, op) in ops {
        item.insert(method.to_owned(), op.build());
    }
    Value::Object(item)
}

// ---------------------------------------------------------------------------------------------
// Paths

fn paths() -> Value {
    let mut p = Map::new();
    for (path, item) in health_paths()
        .into_iter()
        .chain(event_paths())
        .chain(projection_paths())
        .chain(product_paths())
        .chain(order_paths())
        .chain(queue_paths())
        .chain(job_paths())
        .chain(blob_paths())
        .chain(account_paths())
        .chain(saga_paths())
        .chain(subject_paths())
        .chain(storage_faults::paths())
    {
        p.insert(path.to_owned(), item);
    }
    Value::Object(p)
}

fn health_paths() -> Vec<(&'static str, Value)> {
    let ready = json!({
        "description": "Not ready: shutting down, or a projection failed or stopped.",
        "headers": response_headers(&[]),
        "content": {"application/json": {"schema": schema_ref("Readiness")}},
    });
    let mut ready_op = Op::new("ready", "health", "Readiness probe")
        .describe("Ready unless the server is shutting down or a projection has failed or stopped. A projection still catching up counts as ready; see its `lag_events`.")
        .success(200, success("Ready.", schema_ref("Readiness"), &[]))
        .build();
    ready_op["responses"]["503"] = ready;
    vec![
        (
            "/health/live",
            path_item(vec![(
                "get",
                Op::new("live", "health", "Liveness probe")
                    .describe("Answers as long as the process serves HTTP.")
                    .success(200, success("Alive.", schema_ref("Liveness"), &[])),
            )]),
        ),
        ("/health/ready", json!({"get": ready_op})),
        (
            "/v1/openapi.json",
            path_item(vec![(
                "get",
                Op::new("openapi", "meta", "This OpenAPI 3.1 document").success(
                    200,
                    success("The document.", json!({"type": "object"}), &[]),
                ),
            )]),
        ),
    ]
}

fn event_paths() -> Vec<(&'static str, Value)> {
    let limit = || {
        query_param(
            "limit",
            false,
            "Most events returned. Outside 1..=1000 → 400 `invalid_limit`.",
            json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
        )
    };
    let sse = json!({
        "description": "A Server-Sent Events stream, one message per event from the start \
            position on, then live ones. Each message has `id:` = the event's position and \
            `data:` = the event as JSON (schema `Event`). A subscriber too slow for the live \
            feed, or one whose store closes, gets a last message `event: error` whose data is \
            `{code, message, next_position}` (`subscriber_fell_behind`, `store_closed`, \
            `store_unavailable`) and the stream ends; reconnecting with `Last-Event-ID` loses \
            nothing. Keep-alive comments are sent while idle.",
        "headers": response_headers(&[]),
        "content": {
            "text/event-stream": {
                // One server-sent event, in the shape OpenAPI 3.2 gives SSE items (before 3.2,
                // `schema` of an event stream describes each event): `data` is the JSON text of
                // an `Event`, or of an error body when `event` is `error`.
                "schema": {
                    "type": "object",
                    "properties": {
                        "data": {"type": "string", "contentMediaType": "application/json"},
                        "event": {"type": "string"},
                        "id": {"type": "string"},
                        "retry": {"type": "integer", "minimum": 0},
                    },
                },
                "x-ficus-event-schema": schema_ref("Event"),
            },
        },
    });
    vec![
        (
            "/v1/streams/{stream}",
            path_item(vec![
                (
                    "get",
                    Op::new("readStream", "events", "Read a stream")
                        .describe("Events of one stream in version order. Needs the admin role.")
                        .secured()
                        .param(param_ref("Stream"))
                        .param(query_param(
                            "from_version",
                            false,
                            "First version returned (0 is taken as 1).",
                            json!({"type": "integer", "minimum": 0, "default": 1}),
                        ))
                        .param(limit())
                        .success(200, success("A page of the stream's events.", schema_ref("EventPage"), &[]))
                        .errors(&[
                            (400, "`invalid_stream_id`, `invalid_query`, `invalid_limit`, `invalid_path`."),
                            (403, "`forbidden`: not an admin."),
                            (404, "`stream_not_found`: the stream has no events."),
                            (500, ""),
                            (503, "`store_unavailable`."),
                        ]),
                ),
                (
                    "post",
                    Op::new("appendToStream", "events", "Append events to a stream")
                        .describe("Appends events atomically, checking `expected_version` first. Each event's metadata gets the request's correlation id and the caller's user id unless it sets them. Needs the admin role.")
                        .secured()
                        .param(param_ref("Stream"))
                        .body(json_body("AppendRequest", true))
                        .success(201, success("Appended.", schema_ref("AppendResult"), &[]))
                        .errors(&[
                            (400, "`invalid_json`, `invalid_body`, `invalid_stream_id`, `invalid_expected_version`, `invalid_event_type`, `invalid_request` (e.g. no events), `invalid_path`, `unknown_blob` (data names a blob that was not uploaded), `too_many_attachments`."),
                            (403, "`forbidden`: not an admin."),
                            (409, "`wrong_expected_version`, with `actual_version`."),
                            (413, ""),
                            (415, ""),
                            (500, ""),
                            (503, "`store_unavailable`."),
                        ]),
                ),
            ]),
        ),
        (
            "/v1/all",
            path_item(vec![(
                "get",
                Op::new("readAll", "events", "Read the global log")
                    .describe("Events of all streams in position order. Needs the admin role.")
                    .secured()
                    .param(query_param(
                        "from_position",
                        false,
                        "First position returned (0 is taken as 1).",
                        json!({"type": "integer", "minimum": 0, "default": 1}),
                    ))
                    .param(limit())
                    .success(200, success("A page of the global log.", schema_ref("AllEventsPage"), &[]))
                    .errors(&[
                        (400, "`invalid_query`, `invalid_limit`."),
                        (403, "`forbidden`: not an admin."),
                        (500, ""),
                        (503, "`store_unavailable`."),
                    ]),
            )]),
        ),
        (
            "/v1/subscribe",
            path_item(vec![(
                "get",
                Op::new("subscribe", "events", "Subscribe to the global log (SSE)")
                    .describe("Live subscription over Server-Sent Events. Starts at `Last-Event-ID` + 1 when that header is sent (a reconnect), else at `from_position`. Needs the admin role.")
                    .secured()
                    .param(query_param(
                        "from_position",
                        false,
                        "First position delivered when no `Last-Event-ID` is sent.",
                        json!({"type": "integer", "minimum": 0, "default": 1}),
                    ))
                    .param(param_ref("LastEventId"))
                    .success(200, sse)
                    .errors(&[
                        (400, "`invalid_query`, `invalid_last_event_id`."),
                        (403, "`forbidden`: not an admin."),
                        (503, "`too_many_subscribers`: the server already serves its limit of live subscribers."),
                    ]),
            )]),
        ),
    ]
}

fn projection_paths() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/v1/projections",
            path_item(vec![(
                "get",
                Op::new("listProjections", "projections", "Projection status")
                    .describe("Each read model's checkpoint, state and lag. Needs the admin role.")
                    .secured()
                    .success(200, success("The projections.", schema_ref("ProjectionList"), &[]))
                    .errors(&[(403, "`forbidden`: not an admin.")]),
            )]),
        ),
        (
            "/v1/projections/{name}/rebuild",
            path_item(vec![(
                "post",
                Op::new("rebuildProjection", "projections", "Rebuild a projection")
                    .describe("Builds a new copy of the read model from the start of the log while the current copy keeps serving and applying live events, then switches to the new copy atomically once it has caught up (blue/green; progress in the projection's `rebuild`); answers once the rebuild has begun. Replaying fires no side effect: projections only write their read model. On PostgreSQL any process may ask: the active runner, in whichever process, performs it. Queries keep answering meanwhile, and `min_position` waits still hold. Needs the admin role.")
                    .secured()
                    .param(param_ref("ProjectionName"))
                    .success(202, success("The rebuild started.", schema_ref("RebuildAccepted"), &[]))
                    .errors(&[
                        (400, "`invalid_path`."),
                        (403, "`forbidden`: not an admin."),
                        (404, "`projection_not_found`."),
                        (503, "`rebuild_failed`; `rebuild_pending`: recorded, but no runner performed it in time (it will, once one is active)."),
                    ]),
            )]),
        ),
    ]
}

/// Errors shared by every query on a read model.
const QUERY_503: (u16, &str) = (
    503,
    "`read_model_lagging` (with `position` and `min_position`): the read model did not reach `min_position` in time; `read_model_stopped`; `store_unavailable`.",
);

/// Errors shared by every command on an existing product or order.
const COMMAND_409: (u16, &str) = (
    409,
    "`wrong_expected_version` (with `actual_version`): `If-Match` is stale, or another writer won the race.",
);

fn product_paths() -> Vec<(&'static str, Value)> {
    let command_ok = || {
        success(
            "Done; the new version and position. `ETag` is the new version.",
            schema_ref("CommandResult"),
            &["ETag"],
        )
    };
    vec![
        (
            "/v1/products",
            path_item(vec![
                (
                    "post",
                    Op::new("createProduct", "products", "Create a product")
                        .describe("Creates a product owned by the caller, with a new id. Needs the seller role.")
                        .secured()
                        .idempotent()
                        .body(json_body("CreateProduct", true))
                        .success(201, success(
                            "Created; the new product's id, version and position. `ETag` is the version.",
                            schema_ref("CommandResult"),
                            &["ETag"],
                        ))
                        .errors(&[
                            (400, "`invalid_json`, `invalid_body`, `invalid_field`, `invalid_amount`, `invalid_currency`."),
                            (403, "`forbidden`: not a seller."),
                            (409, "`product_already_exists`, `wrong_expected_version`."),
                            (413, ""),
                            (415, ""),
                            (422, "`price_out_of_range`, `stock_limit_exceeded`."),
                            (500, ""),
                            (503, "`store_unavailable`."),
                        ]),
                ),
                (
                    "get",
                    Op::new("searchProducts", "products", "Search the catalog")
                        .describe("Public. Products not deleted, filtered by text, category and price range, paged.")
                        .param(query_param(
                            "q",
                            false,
                            "Free text matched against name and description; at most 256 bytes.",
                            json!({"type": "string", "maxLength": 256}),
                        ))
                        .param(query_param(
                            "category",
                            false,
                            "Exact category; empty means any.",
                            json!({"type": "string"}),
                        ))
                        .param(query_param(
                            "min_price",
                            false,
                            "Lowest price, a decimal with at most two decimals (e.g. 10.50).",
                            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,2})?$"}),
                        ))
                        .param(query_param(
                            "max_price",
                            false,
                            "Highest price, a decimal with at most two decimals.",
                            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,2})?$"}),
                        ))
                        .param(query_param(
                            "limit",
                            false,
                            "Most products returned. Outside 1..=100 → 400 `invalid_limit`.",
                            json!({"type": "integer", "minimum": 1, "maximum": 100, "default": 20}),
                        ))
                        .param(query_param(
                            "offset",
                            false,
                            "Products skipped. Over 10000 → 400 `invalid_offset`.",
                            json!({"type": "integer", "minimum": 0, "maximum": 10000, "default": 0}),
                        ))
                        .param(param_ref("MinPosition"))
                        .success(200, success("Matching products.", schema_ref("SearchResult"), &["Ficus-Position"]))
                        .errors(&[
                            (400, "`invalid_query`, `invalid_limit`, `invalid_offset`."),
                            (500, ""),
                            QUERY_503,
                        ]),
                ),
            ]),
        ),
        (
            "/v1/mobile/products/{id}",
            path_item(vec![(
                "get",
                Op::new("getMobileProduct", "views", "A product, shaped for mobile clients")
                    .describe("Public. A view of the product page (see `views.rs`): compact. `ETag` is the product's version; `If-None-Match` → `304`; `min_position` as for every query.")
                    .param(param_ref("ProductId"))
                    .param(param_ref("MinPosition"))
                    .success(200, success("The compact product.", schema_ref("MobileProduct"), &["ETag", "Ficus-Position"]))
                    .errors(&[
                        (400, "`invalid_query`, `invalid_path`."),
                        (404, "`product_not_found` (also when deleted)."),
                        (500, ""),
                        QUERY_503,
                    ]),
            )]),
        ),
        (
            "/v1/web/products/{id}",
            path_item(vec![(
                "get",
                Op::new("getWebProduct", "views", "A product, shaped for the web product page")
                    .describe("Public. A view of the product page: description, stock per warehouse, the newest prices (at most 20), related products of the same category (at most 5). `ETag` is the catalog's position (related products change with other products); `If-None-Match` → `304`.")
                    .param(param_ref("ProductId"))
                    .param(param_ref("MinPosition"))
                    .success(200, success("The rich product page.", schema_ref("WebProduct"), &["ETag", "Ficus-Position"]))
                    .errors(&[
                        (400, "`invalid_query`, `invalid_path`."),
                        (404, "`product_not_found` (also when deleted)."),
                        (500, ""),
                        QUERY_503,
                    ]),
            )]),
        ),
        (
            "/v1/products/{id}",
            path_item(vec![
                (
                    "get",
                    Op::new("getProduct", "products", "Get a product")
                        .describe("Public. `ETag` is the product's version, for `If-Match` on later commands. Every query answers `Cache-Control: private, no-cache` and an `ETag` (lists: `\"p<position>\"`, the read model's position); a matching `If-None-Match` (a list, weak tags or `*`) gets `304` with no body.")
                        .param(param_ref("ProductId"))
                        .param(param_ref("MinPosition"))
                        .success(200, success("The product.", schema_ref("Product"), &["ETag", "Ficus-Position"]))
                        .errors(&[
                            (400, "`invalid_query`, `invalid_path`."),
                            (404, "`product_not_found` (also when deleted)."),
                            (500, ""),
                            QUERY_503,
                        ]),
                ),
                (
                    "delete",
                    Op::new("deleteProduct", "products", "Delete a product")
                        .describe("Marks the product deleted. Only its seller may.")
                        .secured()
                        .idempotent()
                        .param(param_ref("ProductId"))
                        .param(param_ref("IfMatch"))
                        .body(json_body("Delete", true))
                        .success(200, command_ok())
                        .errors(&[
                            (400, "`invalid_json`, `invalid_body`, `invalid_field`, `invalid_if_match`."),
                            (403, "`not_product_owner`."),
                            (404, "`product_not_found`."),
                            COMMAND_409,
                            (413, ""),
                            (415, ""),
                            (422, "`product_deleted`."),
                            (500, ""),
                            (503, "`store_unavailable`."),
                        ]),
                ),
            ]),
        ),
        (
            "/v1/products/{id}/price",
            path_item(vec![(
                "put",
                Op::new("changePrice", "products", "Change a product's price")
                    .describe("Only its seller may. The price bounds and the largest cut allowed at once are business rules (422).")
                    .secured()
                        .idempotent()
                    .param(param_ref("ProductId"))
                    .param(param_ref("IfMatch"))
                    .body(json_body("Price", true))
                    .success(200, command_ok())
                    .errors(&[
                        (400, "`invalid_json`, `invalid_body`, `invalid_field`, `invalid_amount`, `invalid_if_match`."),
                        (403, "`not_product_owner`."),
                        (404, "`product_not_found`."),
                        COMMAND_409,
                        (413, ""),
                        (415, ""),
                        (422, "`price_out_of_range`, `price_cut_too_large`, `product_deleted`."),
                        (500, ""),
                        (503, "`store_unavailable`."),
                    ]),
            )]),
        ),
        (
            "/v1/products/{id}/stock",
            path_item(vec![(
                "post",
                Op::new("adjustStock", "products", "Adjust a product's stock")
                    .describe("Adds `delta` (negative to remove) to the stock of one warehouse. Only its seller may.")
                    .secured()
                        .idempotent()
                    .param(param_ref("ProductId"))
                    .param(param_ref("IfMatch"))
                    .body(json_body("Stock", true))
                    .success(200, command_ok())
                    .errors(&[
                        (400, "`invalid_json`, `invalid_body`, `invalid_field`, `invalid_if_match`."),
                        (403, "`not_product_owner`."),
                        (404, "`product_not_found`."),
                        COMMAND_409,
                        (413, ""),
                        (415, ""),
                        (422, "`insufficient_stock`, `stock_limit_exceeded`, `product_deleted`."),
                        (500, ""),
                        (503, "`store_unavailable`."),
                    ]),
            )]),
        ),
    ]
}

fn order_paths() -> Vec<(&'static str, Value)> {
    let command_ok = || {
        success(
            "Done; the new version and position. `ETag` is the new version.",
            schema_ref("CommandResult"),
            &["ETag"],
        )
    };
    let order_rules = "`invalid_quantity`, `quantity_limit_exceeded`, `too_many_items`, `currency_mismatch`, `order_total_too_large`, `unknown_product`, `product_deleted`, `order_already_placed`, `order_cancelled`.";
    vec![
        (
            "/v1/orders",
            path_item(vec![(
                "post",
                Op::new("createOrder", "orders", "Create an order")
                    .describe("Opens a draft order for the caller, with a new id, at the products' current prices. `items` may be empty. Needs the customer role.")
                    .secured()
                        .idempotent()
                    .body(json_body("CreateOrder", true))
                    .success(201, success(
                        "Created; the new order's id, version and position. `ETag` is the version.",
                        schema_ref("CommandResult"),
                        &["ETag"],
                    ))
                    .errors(&[
                        (400, "`invalid_json`, `invalid_body`, `invalid_field`."),
                        (403, "`forbidden`: not a customer."),
                        (409, "`order_already_exists`, `wrong_expected_version`."),
                        (413, ""),
                        (415, ""),
                        (422, order_rules),
                        (500, ""),
                        (503, "`store_unavailable`."),
                    ]),
            )]),
        ),
        (
            "/v1/orders/{id}/items",
            path_item(vec![(
                "post",
                Op::new("addItem", "orders", "Add an item to a draft order")
                    .describe("Adds units of a product at its current price. Only the order's customer may.")
                    .secured()
                        .idempotent()
                    .param(param_ref("OrderId"))
                    .param(param_ref("IfMatch"))
                    .body(json_body("Item", true))
                    .success(200, command_ok())
                    .errors(&[
                        (400, "`invalid_json`, `invalid_body`, `invalid_field`, `invalid_if_match`."),
                        (403, "`not_order_owner`."),
                        (404, "`order_not_found`."),
                        COMMAND_409,
                        (413, ""),
                        (415, ""),
                        (422, order_rules),
                        (500, ""),
                        (503, "`store_unavailable`."),
                    ]),
            )]),
        ),
        (
            "/v1/orders/{id}/place",
            path_item(vec![(
                "post",
                Op::new("placeOrder", "orders", "Place a draft order")
                    .describe("No body. Only the order's customer may. When the server runs order fulfilment (`--payments URL`), the order becomes `pending` and its fulfilment saga (`GET /v1/sagas/fulfilment-{id}`) reserves stock, charges the payment and creates the shipment; the order then turns `confirmed`, or `rejected` once every started step was undone. Without it, the order is `placed`.")
                    .secured()
                        .idempotent()
                    .param(param_ref("OrderId"))
                    .param(param_ref("IfMatch"))
                    .success(200, command_ok())
                    .errors(&[
                        (400, "`invalid_field`, `invalid_if_match`."),
                        (403, "`not_order_owner`."),
                        (404, "`order_not_found`."),
                        COMMAND_409,
                        (422, "`empty_order`, `order_already_placed`, `order_cancelled`."),
                        (500, ""),
                        (503, "`store_unavailable`."),
                    ]),
            )]),
        ),
        (
            "/v1/orders/{id}/cancel",
            path_item(vec![(
                "post",
                Op::new("cancelOrder", "orders", "Cancel an order")
                    .describe("Cancels a draft or placed order. The body is optional (an empty body is no reason); when sent it must be JSON. Only the order's customer may.")
                    .secured()
                        .idempotent()
                    .param(param_ref("OrderId"))
                    .param(param_ref("IfMatch"))
                    .body(json_body("Cancel", false))
                    .success(200, command_ok())
                    .errors(&[
                        (400, "`invalid_json`, `invalid_body`, `invalid_field`, `invalid_if_match`."),
                        (403, "`not_order_owner`."),
                        (404, "`order_not_found`."),
                        COMMAND_409,
                        (413, ""),
                        (422, "`order_cancelled`, `order_in_fulfilment` (pending, confirmed or rejected: the fulfilment saga decides)."),
                        (500, ""),
                        (503, "`store_unavailable`."),
                    ]),
            )]),
        ),
        (
            "/v1/customers/{id}/orders",
            path_item(vec![(
                "get",
                Op::new("customerOrders", "orders", "A customer's orders")
                    .describe("Newest first. A customer may list only their own orders; an admin any customer's.")
                    .secured()
                    .param(param_ref("CustomerId"))
                    .param(query_param(
                        "limit",
                        false,
                        "Most orders returned. Outside 1..=50 → 400 `invalid_limit`.",
                        json!({"type": "integer", "minimum": 1, "maximum": 50, "default": 50}),
                    ))
                    .param(param_ref("MinPosition"))
                    .success(200, success("The orders.", schema_ref("OrderList"), &["Ficus-Position"]))
                    .errors(&[
                        (400, "`invalid_query`, `invalid_limit`, `invalid_path`."),
                        (403, "`forbidden`: another customer's orders."),
                        (500, ""),
                        QUERY_503,
                    ]),
            )]),
        ),
        (
            "/v1/analytics/orders",
            path_item(vec![(
                "get",
                Op::new("orderAnalytics", "orders", "Placed orders per day")
                    .describe("Per day (UTC) and currency: how many orders were placed and their total. Needs the admin role.")
                    .secured()
                    .param(query_param(
                        "from",
                        true,
                        "First day, YYYY-MM-DD.",
                        json!({"type": "string", "format": "date"}),
                    ))
                    .param(query_param(
                        "to",
                        true,
                        "Last day, YYYY-MM-DD, included; not before `from`, and at most 3660 days in all.",
                        json!({"type": "string", "format": "date"}),
                    ))
                    .param(param_ref("MinPosition"))
                    .success(200, success("The days that had orders.", schema_ref("AnalyticsResult"), &["Ficus-Position"]))
                    .errors(&[
                        (400, "`invalid_query`."),
                        (403, "`forbidden`: not an admin."),
                        (500, ""),
                        QUERY_503,
                    ]),
            )]),
        ),
    ]
}

fn queue_paths() -> Vec<(&'static str, Value)> {
    let filter_body = || json_body("DeadFilter", false);
    vec![
        (
            "/v1/queues",
            path_item(vec![(
                "get",
                Op::new("listQueues", "queues", "Queue depths")
                    .describe("Every queue that holds jobs, with its ready, delayed, in-flight and dead counts and how long its oldest ready job has waited. Needs the admin role.")
                    .secured()
                    .success(200, success("The queues.", schema_ref("QueueList"), &[]))
                    .errors(&[
                        (403, "`forbidden`: not an admin."),
                        (500, ""),
                        (503, "`store_unavailable`."),
                    ]),
            )]),
        ),
        (
            "/v1/queues/{name}/dead",
            path_item(vec![
                (
                    "get",
                    Op::new("listDeadJobs", "queues", "List a dead-letter queue")
                        .describe("Dead jobs of one queue, oldest first, with their last error and attempt count. Needs the admin role.")
                        .secured()
                        .param(param_ref("QueueName"))
                        .param(query_param(
                            "limit",
                            false,
                            "Most jobs returned. Outside 1..=1000 → 400 `invalid_limit`.",
                            json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
                        ))
                        .success(200, success("The queue's dead jobs.", schema_ref("DeadJobList"), &[]))
                        .errors(&[
                            (400, "`invalid_queue`, `invalid_query`, `invalid_limit`."),
                            (403, "`forbidden`: not an admin."),
                            (500, ""),
                            (503, "`store_unavailable`."),
                        ]),
                ),
                (
                    "delete",
                    Op::new("purgeDeadJobs", "queues", "Purge a dead-letter queue")
                        .describe("Deletes the queue's dead jobs that match the filter; no body (or `{}`) deletes all of them. Needs the admin role.")
                        .secured()
                        .param(param_ref("QueueName"))
                        .body(filter_body())
                        .success(200, success("How many dead jobs were deleted.", schema_ref("PurgeResult"), &[]))
                        .errors(&[
                            (400, "`invalid_queue`, `invalid_json`, `invalid_body`, `invalid_filter` (over 1000 ids, or a kind not 1-128 bytes)."),
                            (403, "`forbidden`: not an admin."),
                            (413, ""),
                            (415, ""),
                            (500, ""),
                            (503, "`store_unavailable`."),
                        ]),
                ),
            ]),
        ),
        (
            "/v1/queues/{name}/dead/redrive",
            path_item(vec![(
                "post",
                Op::new("redriveDeadJobs", "queues", "Redrive a dead-letter queue")
                    .describe("Moves the queue's dead jobs that match the filter back to ready, runnable now, with a fresh attempt budget; no body (or `{}`) redrives all of them. A dead job whose unique key is live again stays dead. Needs the admin role.")
                    .secured()
                    .param(param_ref("QueueName"))
                    .body(filter_body())
                    .success(200, success("How many dead jobs were redriven.", schema_ref("RedriveResult"), &[]))
                    .errors(&[
                        (400, "`invalid_queue`, `invalid_json`, `invalid_body`, `invalid_filter` (over 1000 ids, or a kind not 1-128 bytes)."),
                        (403, "`forbidden`: not an admin."),
                        (413, ""),
                        (415, ""),
                        (500, ""),
                        (503, "`store_unavailable`."),
                    ]),
            )]),
        ),
        (
            "/v1/jobs/items/{id}",
            path_item(vec![(
                "get",
                Op::new("getJobItem", "queues", "One job item")
                    .describe("A job item by id, whether ready, leased or dead. Completed and purged items are gone (404). Needs the admin role.")
                    .secured()
                    .param(param_ref("JobItemId"))
                    .success(200, success("The job item.", schema_ref("JobItem"), &[]))
                    .errors(&[
                        (400, "`invalid_path`: the id is not an integer."),
                        (403, "`forbidden`: not an admin."),
                        (404, "`job_not_found`."),
                        (500, ""),
                        (503, "`store_unavailable`."),
                    ]),
            )]),
        ),
    ]
}

fn job_paths() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/v1/jobs",
            path_item(vec![(
                "post",
                Op::new("submitBulkJob", "jobs", "Submit a bulk job")
                    .describe("Plans the job from the read models and enqueues its items on the `shop` queue at once, one per product, customer or day; a worker pool runs them and, once every item is done or dead, a final step records the job's `result`. `reprice_category` (seller role): every product of the caller in `category` gets its price changed by `percent`, each through the product's rules (an item the rules refuse goes to the dead-letter queue). `export_orders` (admin role): the placed orders of each UTC day from `from` to `to` (at most 366 days) are joined into one CSV file stored in the blob store: the result is `blob` (its reference, with `href`, `GET /v1/blobs/{id}`) and `rows`. `sample_report` (admin role): no items; the final step writes a report of `size_bytes` bytes (at most 256 MiB): `preface`, then the lines `000000000000000\\n`, `000000000000001\\n`, ... (16 bytes each), cut at `size_bytes`; the result is `blob` and `size_bytes`. Parameters (and item payloads) whose JSON text is over the claim-check size (`--claim-check-bytes`) are stored in the blob store and travel by reference, `{\"$blob\": \"sha256:..\", \"size\": N}`, also in the job's `params`. `notify_buyers` (the product's seller, or an admin): one `CustomerNotified` event per customer who ever ordered `product_id`, in the stream `notification-{job id}-{customer id}`. The planner reads the read models, which may lag the latest writes by a moment.")
                    .secured()
                    .idempotent()
                    .body(json_body("SubmitBulkJob", true))
                    .success(202, success(
                        "Accepted: the job, `running` while it has items (or already finished when it has none).",
                        schema_ref("BulkJob"),
                        &[],
                    ))
                    .errors(&[
                        (400, "`invalid_json`, `invalid_body`, `invalid_job`: an unknown kind, or missing or bad params."),
                        (403, "`forbidden`: the caller's role may not start this kind of job (or does not own the product)."),
                        (404, "`product_not_found`: `notify_buyers` names a product that does not exist or was deleted."),
                        (413, ""),
                        (415, ""),
                        (422, "`too_many_items`: the job would have more than 10000 items."),
                        (500, ""),
                        (503, "`store_unavailable`."),
                    ]),
            )]),
        ),
        (
            "/v1/jobs/{id}",
            path_item(vec![(
                "get",
                Op::new("getBulkJob", "jobs", "Get a bulk job")
                    .describe("The job's state, item counts, progress and, once its final step ran, its result. Only the caller who submitted it, or an admin, may see it.")
                    .secured()
                    .param(param_ref("BulkJobId"))
                    .success(200, success("The job.", schema_ref("BulkJob"), &[]))
                    .errors(&[
                        (404, "`job_not_found`: no such job, or the caller neither submitted it nor is an admin."),
                        (500, ""),
                        (503, "`store_unavailable`."),
                    ]),
            )]),
        ),
        (
            "/v1/jobs/{id}/cancel",
            path_item(vec![(
                "post",
                Op::new("cancelBulkJob", "jobs", "Cancel a bulk job")
                    .describe("No body. Removes the job's items that have not started and marks it `cancelled`; items already running finish (and count as done or dead), and no final step runs. A job already finished is answered unchanged. Only the caller who submitted it, or an admin, may cancel it.")
                    .secured()
                    .param(param_ref("BulkJobId"))
                    .success(200, success("The job after the cancellation.", schema_ref("BulkJob"), &[]))
                    .errors(&[
                        (404, "`job_not_found`: no such job, or the caller neither submitted it nor is an admin."),
                        (500, ""),
                        (503, "`store_unavailable`."),
                    ]),
            )]),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Components

fn blob_paths() -> Vec<(&'static str, Value)> {
    let id = || {
        json!({"name": "id", "in": "path", "required": true,
               "description": "The blob's id: `sha256:` and the 64 lowercase hex digits of its content's SHA-256.",
               "schema": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}})
    };
    vec![
        (
            "/v1/blobs",
            path_item(vec![(
                "post",
                Op::new("uploadBlob", "blobs", "Upload a blob: an event attachment (admin)")
                    .describe("Streams the body into the blob store (up to `--max-blob-bytes`, not the JSON body limit) and answers its claim-check reference. Identical content is stored once. Put the reference (`{\"$blob\": id, \"size\": N}`) anywhere in an event's `data` appended through `POST /v1/streams/{stream}`: the append records that the event refers to it, so it is kept for good; an upload that no event refers to within the garbage collector's grace period is deleted.")
                    .secured()
                    .body(json!({"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}))
                    .success(201, success("Stored.", schema_ref("BlobReference"), &[]))
                    .errors(&[
                        (403, "`forbidden`: admins only."),
                        (413, "`blob_too_large`: more than `--max-blob-bytes`."),
                        (500, ""),
                        (503, "`blob_store_unavailable`."),
                    ]),
            )]),
        ),
        (
            "/v1/blobs/{id}",
            path_item(vec![
                (
                    "get",
                    Op::new("getBlob", "blobs", "Fetch a blob by reference")
                        .describe("Streams the blob a claim-check reference names (`{\"$blob\": id, \"size\": N}`, e.g. a bulk job's `result.blob`), verified against its hash as it is read: a corrupt blob cuts the connection rather than end the body normally. `Content-Length` is its size and `ETag` its id. An admin may fetch any blob; anyone else only one that a bulk job they submitted references (anything else is a 404).")
                        .secured()
                        .param(id())
                        .success(200, json!({
                            "description": "The blob's bytes.",
                            "headers": {
                                "ETag": header_ref("ETag"),
                                "X-Correlation-Id": header_ref("XCorrelationId"),
                            },
                            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                        }))
                        .errors(&[
                            (400, "`invalid_blob`: a malformed id."),
                            (404, "`blob_not_found`."),
                            (500, ""),
                            (503, "`blob_store_unavailable`, `store_unavailable`."),
                        ]),
                ),
                (
                    "delete",
                    Op::new("deleteBlob", "blobs", "Delete a blob (admin)")
                        .describe("Releases every reference to the blob and deletes it at once, whatever its age; a bulk job whose result it was then answers 404 for it.")
                        .secured()
                        .param(id())
                        .success(200, success("Deleted.", schema_ref("BlobDeleted"), &[]))
                        .errors(&[
                            (400, "`invalid_blob`: a malformed id."),
                            (403, "`forbidden`: admins only."),
                            (404, "`blob_not_found`."),
                            (500, ""),
                            (503, "`blob_store_unavailable`, `store_unavailable`."),
                        ]),
                ),
            ]),
        ),
        (
            "/v1/blobs/gc",
            path_item(vec![(
                "post",
                Op::new("collectBlobs", "blobs", "Run a blob garbage-collection pass (admin)")
                    .describe("Releases the references of bulk jobs that no longer need them (parameters once the job has its result or was cancelled; anything of a job that is gone), then deletes every blob that nothing references and that was stored longer ago than the grace period: `grace_ms` when given, else the server's (`--blob-gc-grace-secs`, 24 h by default). `ficus serve` also runs a pass every `--blob-gc-interval-secs`. No body is `{}`.")
                    .secured()
                    .body(json_body("CollectBlobs", false))
                    .success(200, success("What the pass did.", schema_ref("GcReport"), &[]))
                    .errors(&[
                        (400, "`invalid_json`, `invalid_grace`: a body that is not `{\"grace_ms\"?: n ≥ 0}`."),
                        (403, "`forbidden`: admins only."),
                        (413, ""),
                        (415, ""),
                        (500, ""),
                        (503, "`blob_store_unavailable`, `store_unavailable`."),
                    ]),
            )]),
        ),
    ]
}

fn blob_schemas() -> Value {
    let count = || json!({"type": "integer", "minimum": 0});
    json!({
        "CollectBlobs": {
            "type": "object",
            "additionalProperties": false,
            "properties": {"grace_ms": {"type": "integer", "minimum": 0, "maximum": 9007199254740991i64,
                                        "description": "Instead of the server's grace period, for this pass."}},
        },
        "GcReport": {
            "type": "object",
            "required": ["released_refs", "scanned_blobs", "deleted_blobs", "deleted_bytes", "kept_referenced", "kept_young"],
            "properties": {
                "released_refs": count(), "scanned_blobs": count(), "deleted_blobs": count(),
                "deleted_bytes": count(), "kept_referenced": count(), "kept_young": count(),
            },
        },
        "BlobReference": {
            "type": "object",
            "required": ["$blob", "size", "href"],
            "properties": {
                "$blob": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
                "size": count(),
                "href": {"type": "string", "description": "Where to fetch it: `/v1/blobs/{id}`."},
            },
        },
        "BlobDeleted": {
            "type": "object",
            "required": ["id", "released_refs"],
            "properties": {"id": {"type": "string"}, "released_refs": count()},
        },
    })
}

fn saga_paths() -> Vec<(&'static str, Value)> {
    vec![(
        "/v1/sagas/{id}",
        path_item(vec![(
            "get",
            Op::new("getSaga", "sagas", "Read a saga's state")
                .describe("Folds the saga's stream `saga-{id}`: its status (`running`, `compensating`, `completed`, `failed`), each step's status, attempts, last error and output, and the step that failed. An order's fulfilment saga is `fulfilment-{order_id}`. An admin may read any saga, a customer only the fulfilment of their own order (anything else is a 404).")
                .secured()
                .param(json!({"name": "id", "in": "path", "required": true, "description": "Saga id.",
                              "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[A-Za-z0-9_.:@-]+$"}}))
                .success(200, success("The saga's state.", schema_ref("Saga"), &[]))
                .errors(&[
                    (400, "`invalid_field`: a malformed id."),
                    (404, "`saga_not_found`."),
                    (500, ""),
                    (503, "`store_unavailable`."),
                ]),
        )]),
    )]
}

fn saga_schemas() -> Value {
    json!({
        "Saga": {
            "type": "object",
            "required": ["id", "kind", "status", "steps", "version"],
            "properties": {
                "id": {"type": "string"},
                "kind": {"type": "string", "examples": ["order_fulfilment"]},
                "status": {"type": "string", "enum": ["running", "compensating", "completed", "failed"]},
                "input": {"description": "What the saga was started with, e.g. `{\"order_id\": ...}`."},
                "steps": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "examples": ["reserve_stock", "charge_payment"]},
                        "status": {"type": "string", "enum": ["pending", "running", "retrying", "succeeded", "failed", "compensating", "compensation_failed", "compensated"]},
                        "attempts": {"type": "integer"},
                        "compensation_attempts": {"type": "integer"},
                        "last_error": {"type": ["string", "null"]},
                        "output": {"description": "What the step returned (null until it succeeded)."}
                    }
                }},
                "failure": {"type": ["object", "null"], "properties": {"step": {"type": "string"}, "reason": {"type": "string"}}},
                "started_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "version": {"type": "integer", "description": "Version of the saga's stream."}
            }
        }
    })
}

fn account_paths() -> Vec<(&'static str, Value)> {
    let id = || {
        json!({"name": "id", "in": "path", "required": true, "description": "Account id.",
               "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9_.:@-]+$"}})
    };
    let movement = |op_id, summary, description, rules| {
        Op::new(op_id, "accounts", summary)
            .describe(description)
            .secured()
            .param(id())
            .param(param_ref("IfMatch"))
            .body(json_body("Movement", true))
            .success(
                201,
                success(
                    "Recorded; the account's new version and position. `ETag` is the new version.",
                    schema_ref("CommandResult"),
                    &["ETag"],
                ),
            )
            .errors(&[
                (400, "`invalid_json`, `invalid_body`, `invalid_field`, `invalid_amount` (not a plain decimal with at most 2 decimals, or not > 0), `invalid_if_match`."),
                (403, "`not_account_owner`: only the owner (the token's `sub`) or an admin."),
                (404, "`account_not_found`."),
                COMMAND_409,
                (413, ""),
                (415, ""),
                (422, rules),
                (500, ""),
                (503, "`store_unavailable`."),
            ])
    };
    vec![
        (
            "/v1/accounts",
            path_item(vec![(
                "post",
                Op::new("openAccount", "accounts", "Open an account")
                    .describe("Opens an account in one currency with a zero balance, owned by the caller (the token's `sub`); an admin may name another `owner_id`. The id is chosen by the server.")
                    .secured()
                    .body(json_body("OpenAccount", true))
                    .success(
                        201,
                        success("Opened: its id, version 1 and position.", schema_ref("CommandResult"), &["ETag"]),
                    )
                    .errors(&[
                        (400, "`invalid_json`, `invalid_body`, `invalid_currency`, `invalid_field`."),
                        (403, "`not_account_owner`: only an admin opens an account for someone else."),
                        (413, ""),
                        (415, ""),
                        (500, ""),
                        (503, "`store_unavailable`."),
                    ]),
            )]),
        ),
        (
            "/v1/accounts/{id}",
            path_item(vec![(
                "get",
                Op::new("getAccount", "accounts", "Read an account, now or as it was")
                    .describe("Folds the account's event stream (from its latest snapshot). With `as_of_version` or `as_of` (not both), answers the state right after that version, or after the last event committed at or before that instant: time travel. Only the owner or an admin may read it. The current state comes with an `ETag` (its version) for `If-Match`.")
                    .secured()
                    .param(id())
                    .param(query_param(
                        "as_of_version",
                        false,
                        "A stream version ≥ 1. Past the stream's end → 404 `version_not_found` (with `current_version`); not an integer ≥ 1 → 400 `invalid_query`.",
                        json!({"type": "integer", "minimum": 1}),
                    ))
                    .param(query_param(
                        "as_of",
                        false,
                        "An instant: an RFC 3339 timestamp (`2026-01-01T12:00:00Z`, offsets allowed) or milliseconds since the Unix epoch. Before the account was opened → 404 `account_not_found`; unparsable → 400 `invalid_query`.",
                        json!({"type": "string", "maxLength": 64, "examples": ["2026-01-01T12:00:00Z", "1767268800000"]}),
                    ))
                    .success(200, success("The account's state.", schema_ref("Account"), &["ETag"]))
                    .errors(&[
                        (400, "`invalid_query`."),
                        (403, "`not_account_owner`."),
                        (404, "`account_not_found`, `version_not_found`."),
                        (500, ""),
                        (503, "`store_unavailable`."),
                    ]),
            )]),
        ),
        (
            "/v1/accounts/{id}/deposits",
            path_item(vec![(
                "post",
                movement(
                    "deposit",
                    "Deposit money",
                    "Adds `amount` (> 0, in the account's currency) to the balance.",
                    "`balance_limit_exceeded`: the balance would pass 1 000 000 000.00.",
                ),
            )]),
        ),
        (
            "/v1/accounts/{id}/withdrawals",
            path_item(vec![(
                "post",
                movement(
                    "withdraw",
                    "Withdraw money",
                    "Takes `amount` (> 0) from the balance; never below zero.",
                    "`insufficient_funds`: the balance does not cover the amount (no overdraft).",
                ),
            )]),
        ),
    ]
}

fn subject_paths() -> Vec<(&'static str, Value)> {
    vec![(
        "/v1/subjects/{id}/keys",
        path_item(vec![(
            "delete",
            Op::new("forgetSubject", "subjects", "Destroy a data subject's keys")
                .describe("Destroys the encryption keys of data subject `id` (a customer or user id), durably, before answering. Personal fields of the events naming the subject (today `AccountOpened.holder_name`) are stored encrypted under those keys; from now on they read as the string `\"[erased]\"` in stream reads, subscriptions, aggregates and read models (also after a rebuild), while the events, their versions and positions stay. Idempotent: `204` whether or not the subject had keys. A subject that comes back later gets a new key. Needs the admin role.")
                .secured()
                .param(json!({"name": "id", "in": "path", "required": true, "description": "The subject's id, as the events name it.",
                              "schema": {"type": "string", "minLength": 1, "maxLength": 255}}))
                .success(
                    204,
                    json!({"description": "The subject's keys are gone (or there were none).", "headers": response_headers(&[])}),
                )
                .errors(&[
                    (400, "`invalid_subject`: empty or longer than 255 bytes; `invalid_path`."),
                    (403, "`forbidden`: not an admin."),
                    (503, "`store_unavailable`."),
                ]),
        )]),
    )]
}

fn account_schemas() -> Value {
    json!({
        "OpenAccount": {
            "type": "object",
            "required": ["currency"],
            "additionalProperties": false,
            "properties": {
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$", "description": "ISO 4217 code; else 400 `invalid_currency`.", "examples": ["EUR"]},
                "owner_id": {"type": "string", "description": "The owner; only an admin may name someone other than itself. Defaults to the caller."},
                "holder_name": {"type": "string", "minLength": 1, "maxLength": 200, "description": "The holder's name: personal data of the owner, stored encrypted under the owner's key (`AccountOpened.holder_name` in the stream); reads `\"[erased]\"` after `DELETE /v1/subjects/{owner_id}/keys`."},
            },
        },
        "Movement": {
            "type": "object",
            "required": ["amount"],
            "additionalProperties": false,
            "properties": {
                "amount": {"type": "number", "multipleOf": 0.01, "exclusiveMinimum": 0, "description": "At most two decimals, no exponent, > 0; else 400 `invalid_amount`.", "examples": [12.5]},
            },
        },
        "Account": {
            "type": "object",
            "required": ["id", "owner_id", "currency", "balance", "movements", "opened_at", "version", "position"],
            "properties": {
                "id": {"type": "string"},
                "owner_id": {"type": "string"},
                "currency": {"type": "string"},
                "balance": {"type": "number", "multipleOf": 0.01, "minimum": 0, "description": "Exact: written from integer minor units, always with two decimals."},
                "movements": {"type": "integer", "minimum": 0, "description": "Deposits and withdrawals folded into `balance`."},
                "opened_at": {"type": "string", "format": "date-time"},
                "version": {"type": "integer", "minimum": 1, "description": "The stream version this state is at."},
                "position": {"type": "integer", "minimum": 1, "description": "The global position of that version's event."},
            },
        },
    })
}

fn parameters() -> Value {
    let id_schema = json!({"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9_.:@-]+$"});
    json!({
        "MinPosition": {
            "name": "min_position",
            "in": "query",
            "required": false,
            "description": "Read your own writes: wait until the read model has applied this \
                position (e.g. the `position` of a command's answer) before answering. The wait \
                is bounded; past it the answer is 503 `read_model_lagging`.",
            "schema": {"type": "integer", "minimum": 0},
        },
        "IdempotencyKey": {
            "name": "Idempotency-Key",
            "in": "header",
            "required": false,
            "description": "Makes the command safe to retry: 1 to 255 printable ASCII characters, \
                scoped to the caller (the token's `sub`). The first request runs and its answer \
                (status and body, also a refusal) is recorded in the same transaction as its \
                events; a repeat with the same method, path and body within the retention \
                window (48 h by default) gets that answer with `Idempotent-Replayed: true` and \
                does nothing. A repeat while the first is in flight waits (bounded), then 409 \
                `request_in_progress`; the same key with another request is 422 \
                `idempotency_key_reused`; a bad key is 400 `invalid_idempotency_key`. Conflicts \
                (409) and server errors (5xx) are not recorded: a retry runs the command again.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
        },
        "IfMatch": {
            "name": "If-Match",
            "in": "header",
            "required": false,
            "description": "Optimistic concurrency: the ETag (version) the command expects, e.g. \
                `\"3\"` (a `W/` prefix or a bare number is accepted too). Stale → 409 \
                `wrong_expected_version`; not a version → 400 `invalid_if_match`.",
            "schema": {"type": "string", "examples": ["\"3\""]},
        },
        "LastEventId": {
            "name": "Last-Event-ID",
            "in": "header",
            "required": false,
            "description": "The position of the last event received, sent by a reconnecting \
                SSE client; delivery resumes right after it. Not a position → 400 \
                `invalid_last_event_id`.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
        "XCorrelationId": {
            "name": "X-Correlation-Id",
            "in": "header",
            "required": false,
            "description": "Correlation id of the request, echoed in the response and recorded \
                in the metadata of the events it causes. Kept when 1-128 visible ASCII \
                characters; otherwise a new one is made.",
            "schema": {"type": "string", "maxLength": 128},
        },
        "Stream": {
            "name": "stream",
            "in": "path",
            "required": true,
            "description": "Stream id: 1-200 bytes of `A-Z a-z 0-9 _ . : @ -`. Else 400 `invalid_stream_id`.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[A-Za-z0-9_.:@-]+$"},
        },
        "ProjectionName": {
            "name": "name",
            "in": "path",
            "required": true,
            "description": "Name of a projection (see `GET /v1/projections`).",
            "schema": {"type": "string", "examples": ["catalog", "orders"]},
        },
        "ProductId": {"name": "id", "in": "path", "required": true, "description": "Product id.", "schema": id_schema.clone()},
        "OrderId": {"name": "id", "in": "path", "required": true, "description": "Order id.", "schema": id_schema.clone()},
        "CustomerId": {"name": "id", "in": "path", "required": true, "description": "Customer (user) id.", "schema": id_schema},
        "QueueName": {
            "name": "name",
            "in": "path",
            "required": true,
            "description": "Queue name: 1-128 bytes. Else 400 `invalid_queue`.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 128},
        },
        "BulkJobId": {
            "name": "id",
            "in": "path",
            "required": true,
            "description": "Bulk job id, as answered by `POST /v1/jobs`.",
            "schema": {"type": "string", "minLength": 1},
        },
        "JobItemId": {
            "name": "id",
            "in": "path",
            "required": true,
            "description": "Job item id. Not an integer → 400 `invalid_path`.",
            "schema": {"type": "integer", "minimum": 1},
        },
    })
}

fn headers() -> Value {
    json!({
        "FicusPosition": {
            "description": "The position of the global log the answer reflects; pass it as \
                `min_position` to read at least this far later.",
            "schema": {"type": "integer", "minimum": 0},
        },
        "ETag": {
            "description": "The version of the resource, quoted (e.g. `\"3\"`); send it back in \
                `If-Match`.",
            "schema": {"type": "string", "pattern": "^\"[0-9]+\"$"},
        },
        "RetryAfter": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer", "minimum": 0},
        },
        "IdempotentReplayed": {
            "description": "`true` when the answer is the recorded one of an earlier request \
                with the same `Idempotency-Key` (nothing was done again).",
            "schema": {"type": "string", "enum": ["true"]},
        },
        "XCorrelationId": {
            "description": "Correlation id of the request (the one sent, or a new one).",
            "schema": {"type": "string"},
        },
    })
}

fn error_responses() -> Value {
    let e = |description: &str| {
        json!({
            "description": description,
            "headers": {"X-Correlation-Id": header_ref("XCorrelationId")},
            "content": {"application/json": {"schema": schema_ref("Error")}},
        })
    };
    let mut unavailable = e("The service cannot answer now; retry after `Retry-After` seconds.");
    unavailable["headers"]["Retry-After"] = header_ref("RetryAfter");
    json!({
        "BadRequest": e("The request is malformed: body, query, path, header or a field value."),
        "Unauthorized": e("`unauthorized`: the bearer token is missing, malformed, badly signed, expired or not valid yet."),
        "Forbidden": e("The caller may not do this."),
        "NotFound": e("No such resource. Unknown routes answer 404 `route_not_found` too."),
        "MethodNotAllowed": e("`method_not_allowed`: the route exists but does not take this method."),
        "Conflict": e("A concurrency conflict or a duplicate."),
        "PayloadTooLarge": e("`body_too_large`: the body is over the server's limit."),
        "UnsupportedMediaType": e("`unsupported_media_type`: send the body as `Content-Type: application/json`."),
        "UnprocessableEntity": e("A business rule refused the command."),
        "InternalError": e("`internal`: a server fault, e.g. data the server cannot decode."),
        "ServiceUnavailable": unavailable,
    })
}

fn schemas() -> Value {
    let mut s = Map::new();
    for part in [
        common_schemas(),
        event_schemas(),
        ops_schemas(),
        read_schemas(),
        request_schemas(),
        queue_schemas(),
        account_schemas(),
        saga_schemas(),
        blob_schemas(),
    ] {
        if let Value::Object(m) = part {
            s.extend(m);
        }
    }
    Value::Object(s)
}

fn common_schemas() -> Value {
    json!({
        "Error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Machine-readable, snake_case.", "examples": ["wrong_expected_version"]},
                "message": {"type": "string", "description": "For humans; may change."},
                "actual_version": {"type": "integer", "minimum": 0, "description": "On `wrong_expected_version`: the current version."},
                "position": {"type": "integer", "minimum": 0, "description": "On `read_model_lagging`: where the read model is."},
                "min_position": {"type": "integer", "minimum": 0, "description": "On `read_model_lagging`: the position asked for."},
            },
            "additionalProperties": true,
        },
        "Money": {
            "type": "number",
            "multipleOf": 0.01,
            "description": "An amount: a JSON number with at most two decimals and no exponent \
                (e.g. 19.99), held exactly as integer minor units.",
            "examples": [19.99],
        },
        "CommandResult": {
            "type": "object",
            "required": ["id", "version", "position"],
            "properties": {
                "id": {"type": "string", "description": "The aggregate's id."},
                "version": {"type": "integer", "minimum": 1, "description": "Its version after the command."},
                "position": {"type": "integer", "minimum": 1, "description": "Global position of the command's last event; use it as `min_position`."},
            },
        },
        "Liveness": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "up"}},
        },
        "Readiness": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not_ready"]},
                "checks": {
                    "type": "object",
                    "description": "`shutting_down`, the backends, and one `projection:<name>` entry per projection (not ok when failed, stopped or behind the lag bound).",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["ok"],
                        "properties": {
                            "ok": {"type": "boolean"},
                            "checkpoint": {"type": "integer", "minimum": 0},
                            "lag_events": {"type": "integer", "minimum": 0},
                            "last_lag_ms": {"type": "integer", "minimum": 0, "description": "Commit-to-apply delay of the last applied event."},
                            "max_lag_events": {"type": ["integer", "null"], "minimum": 0, "description": "The readiness bound on `lag_events` (`--ready-max-lag-events`); null when unbounded."},
                            "max_lag_ms": {"type": ["integer", "null"], "minimum": 0, "description": "The readiness bound on `last_lag_ms` while behind (`--ready-max-lag-ms`); null when unbounded."},
                            "error": {"type": "string", "description": "Why the check failed, e.g. `lagging: ...`."},
                            "state": {"type": "string", "description": "As `ProjectionStatus.state`."},
                            "mode": schema_ref("ProjectionMode"),
                        },
                    },
                },
            },
        },
    })
}

fn event_schemas() -> Value {
    json!({
        "Metadata": {
            "type": "object",
            "description": "Event metadata: the well-known fields below plus any others.",
            "properties": {
                "correlation_id": {"type": "string"},
                "causation_id": {"type": "string"},
                "user_id": {"type": "string"},
            },
            "additionalProperties": true,
        },
        "Event": {
            "type": "object",
            "required": ["id", "stream", "version", "position", "type", "schema_version", "data", "metadata", "recorded_at"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "stream": {"type": "string"},
                "version": {"type": "integer", "minimum": 1, "description": "Version within its stream."},
                "position": {"type": "integer", "minimum": 1, "description": "Position in the global log."},
                "type": {"type": "string", "examples": ["ProductCreated"]},
                "schema_version": {"type": "integer", "minimum": 1},
                "data": {"description": "The event's payload, any JSON."},
                "metadata": schema_ref("Metadata"),
                "recorded_at": {"type": "string", "format": "date-time", "description": "Commit time, RFC 3339 UTC with milliseconds."},
            },
        },
        "EventPage": {
            "type": "object",
            "required": ["events"],
            "properties": {"events": {"type": "array", "items": schema_ref("Event")}},
        },
        "AllEventsPage": {
            "type": "object",
            "required": ["events", "head_position"],
            "properties": {
                "events": {"type": "array", "items": schema_ref("Event")},
                "head_position": {"type": "integer", "minimum": 0, "description": "Position of the last committed event."},
            },
        },
        "AppendRequest": {
            "type": "object",
            "required": ["events"],
            "additionalProperties": false,
            "properties": {
                "expected_version": {
                    "description": "The stream's version before the append: an exact version \
                        (0 = the stream must not exist), or `any` (the default), `no_stream`, \
                        `exists`. Else 400 `invalid_expected_version`; mismatch → 409.",
                    "oneOf": [
                        {"type": "integer", "minimum": 0},
                        {"type": "string", "enum": ["any", "no_stream", "exists"]},
                    ],
                },
                "events": {"type": "array", "minItems": 1, "items": schema_ref("AppendEvent")},
            },
        },
        "AppendEvent": {
            "type": "object",
            "required": ["type"],
            "additionalProperties": false,
            "properties": {
                "id": {"type": "string", "format": "uuid", "description": "Defaults to a new UUID v7."},
                "type": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[A-Za-z0-9_.:-]+$"},
                "data": {"description": "The payload, any JSON; defaults to null."},
                "metadata": schema_ref("Metadata"),
                "schema_version": {"type": "integer", "minimum": 0, "maximum": 4294967295u64, "default": 1, "description": "0 is taken as 1."},
            },
        },
        "AppendResult": {
            "type": "object",
            "required": ["stream", "first_version", "last_version", "first_position", "position"],
            "properties": {
                "stream": {"type": "string"},
                "first_version": {"type": "integer", "minimum": 1},
                "last_version": {"type": "integer", "minimum": 1, "description": "The stream's version now."},
                "first_position": {"type": "integer", "minimum": 1},
                "position": {"type": "integer", "minimum": 1, "description": "Position of the last event appended; use it as `min_position`."},
            },
        },
    })
}

fn ops_schemas() -> Value {
    json!({
        "ProjectionMode": {
            "type": "string",
            "enum": ["local", "active", "standby", "follower"],
            "description": "How this process takes part: `local` (embedded SQLite, the only runner); on PostgreSQL `active` (this process applies events), `standby` (a runner here waits to take over) or `follower` (no runner here: it reads what another process applies).",
        },
        "ProjectionStatus": {
            "type": "object",
            "required": ["name", "checkpoint", "state", "lag_events", "last_lag_ms", "events_applied", "mode"],
            "properties": {
                "name": {"type": "string", "examples": ["catalog", "orders"]},
                "checkpoint": {"type": "integer", "minimum": 0, "description": "Last position applied."},
                "state": {"type": "string", "description": "`Standby` (PostgreSQL: not applying here; the checkpoint is the table's), `CatchingUp`, `Live`, `Rebuilding { target: N }`, `Failed { error: \"…\" }` or `Stopped`."},
                "mode": schema_ref("ProjectionMode"),
                "lag_events": {"type": "integer", "minimum": 0, "description": "Head position minus checkpoint."},
                "last_lag_ms": {"type": "integer", "minimum": 0, "description": "Milliseconds from the last applied event's commit to its application."},
                "events_applied": {"type": "integer", "minimum": 0, "description": "Since the runner started, a rebuild's replay included."},
                "rebuild": schema_ref("RebuildProgress"),
            },
        },
        "RebuildProgress": {
            "type": "object",
            "description": "Present while a blue/green rebuild runs: the new copy replays the log while the current one keeps serving (`checkpoint`), and replaces it atomically once level.",
            "required": ["position", "target"],
            "properties": {
                "position": {"type": "integer", "minimum": 0, "description": "Last position the new copy has applied."},
                "target": {"type": "integer", "minimum": 0, "description": "The head of the log when the rebuild started."},
                "error": {"type": "string", "description": "The replay's last failure; it is retried."},
            },
        },
        "ProjectionList": {
            "type": "object",
            "required": ["projections", "head_position"],
            "properties": {
                "projections": {"type": "array", "items": schema_ref("ProjectionStatus")},
                "head_position": {"type": "integer", "minimum": 0},
            },
        },
        "RebuildAccepted": {
            "type": "object",
            "required": ["name", "target_position"],
            "properties": {
                "name": {"type": "string"},
                "target_position": {"type": "integer", "minimum": 0, "description": "Head position when the rebuild started; the rebuild is done once the checkpoint reaches it."},
            },
        },
    })
}

fn read_schemas() -> Value {
    json!({
        "Product": {
            "type": "object",
            "required": ["id", "name", "description", "category", "price", "currency", "seller_id", "stock_total", "in_stock", "updated_at", "version"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "description": {"type": "string"},
                "category": {"type": "string"},
                "price": schema_ref("Money"),
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "seller_id": {"type": "string"},
                "stock_total": {"type": "integer", "description": "Units over all warehouses."},
                "in_stock": {"type": "boolean"},
                "updated_at": {"type": "string", "format": "date-time"},
                "version": {"type": "integer", "minimum": 1},
            },
        },
        "MobileProduct": {
            "type": "object",
            "required": ["id", "name", "price", "currency", "thumbnail"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "price": schema_ref("Money"),
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "thumbnail": {"type": ["string", "null"], "description": "Always null: the catalog holds no images yet."},
            },
        },
        "WebProduct": {
            "type": "object",
            "required": ["id", "name", "description", "category", "price", "currency", "seller_id", "stock_total", "in_stock", "stock", "price_history", "related", "updated_at", "version"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "description": {"type": "string"},
                "category": {"type": "string"},
                "price": schema_ref("Money"),
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "seller_id": {"type": "string"},
                "stock_total": {"type": "integer"},
                "in_stock": {"type": "boolean"},
                "stock": {"type": "array", "description": "Per warehouse, by warehouse id.", "items": {
                    "type": "object", "required": ["warehouse", "quantity"],
                    "properties": {"warehouse": {"type": "string"}, "quantity": {"type": "integer"}},
                }},
                "price_history": {"type": "array", "maxItems": 20, "description": "Newest first.", "items": {
                    "type": "object", "required": ["price", "at", "version"],
                    "properties": {"price": schema_ref("Money"), "at": {"type": "string", "format": "date-time"}, "version": {"type": "integer", "minimum": 1}},
                }},
                "related": {"type": "array", "maxItems": 5, "description": "Live products of the same category, by id.", "items": {
                    "type": "object", "required": ["id", "name", "price", "currency", "in_stock"],
                    "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "price": schema_ref("Money"), "currency": {"type": "string"}, "in_stock": {"type": "boolean"}},
                }},
                "updated_at": {"type": "string", "format": "date-time"},
                "version": {"type": "integer", "minimum": 1},
            },
        },
        "SearchResult": {
            "type": "object",
            "required": ["total", "products"],
            "properties": {
                "total": {"type": "integer", "minimum": 0, "description": "Matches in all, not only this page."},
                "products": {"type": "array", "items": schema_ref("Product")},
            },
        },
        "OrderSummary": {
            "type": "object",
            "required": ["id", "status", "total", "currency", "item_count", "created_at"],
            "properties": {
                "id": {"type": "string"},
                "status": {"type": "string", "enum": ["draft", "placed", "cancelled", "pending", "confirmed", "rejected"]},
                "total": schema_ref("Money"),
                "currency": {"type": ["string", "null"], "pattern": "^[A-Z]{3}$", "description": "Null while the order has no items."},
                "item_count": {"type": "integer", "minimum": 0},
                "created_at": {"type": "string", "format": "date-time"},
            },
        },
        "OrderList": {
            "type": "object",
            "required": ["orders"],
            "properties": {"orders": {"type": "array", "items": schema_ref("OrderSummary")}},
        },
        "AnalyticsDay": {
            "type": "object",
            "required": ["date", "currency", "orders", "total"],
            "properties": {
                "date": {"type": "string", "format": "date"},
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "orders": {"type": "integer", "minimum": 0},
                "total": schema_ref("Money"),
            },
        },
        "AnalyticsResult": {
            "type": "object",
            "required": ["days"],
            "properties": {"days": {"type": "array", "items": schema_ref("AnalyticsDay")}},
        },
    })
}

fn request_schemas() -> Value {
    let price = json!({
        "type": "number",
        "multipleOf": 0.01,
        "description": "At most two decimals, no exponent; else 400 `invalid_amount`. \
            0.00..=10000.00, else 422 `price_out_of_range`.",
        "examples": [19.99],
    });
    json!({
        "CreateProduct": {
            "type": "object",
            "required": ["name", "category", "price", "currency"],
            "additionalProperties": false,
            "properties": {
                "name": {"type": "string", "maxLength": 200},
                "description": {"type": "string", "maxLength": 5000, "default": ""},
                "category": {"type": "string", "maxLength": 100},
                "price": price.clone(),
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$", "description": "ISO 4217 code; else 400 `invalid_currency`.", "examples": ["EUR"]},
                "stock": {"type": "integer", "description": "Initial stock in the `main` warehouse."},
            },
        },
        "Price": {
            "type": "object",
            "required": ["price"],
            "additionalProperties": false,
            "properties": {"price": price},
        },
        "Stock": {
            "type": "object",
            "required": ["warehouse", "delta"],
            "additionalProperties": false,
            "properties": {
                "warehouse": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$"},
                "delta": {"type": "integer", "description": "Units added; negative to remove."},
            },
        },
        "Delete": {
            "type": "object",
            "required": ["reason"],
            "additionalProperties": false,
            "properties": {"reason": {"type": "string", "maxLength": 500}},
        },
        "CreateOrder": {
            "type": "object",
            "required": ["items"],
            "additionalProperties": false,
            "properties": {
                "items": {"type": "array", "maxItems": 50, "items": schema_ref("Item")},
            },
        },
        "Item": {
            "type": "object",
            "required": ["product_id", "quantity"],
            "additionalProperties": false,
            "properties": {
                "product_id": {"type": "string"},
                "quantity": {"type": "integer", "minimum": 1, "maximum": 10000, "description": "Outside 1..=10000 → 422 `invalid_quantity` / `quantity_limit_exceeded`."},
            },
        },
        "Cancel": {
            "type": "object",
            "additionalProperties": false,
            "properties": {"reason": {"type": ["string", "null"], "maxLength": 500}},
        },
    })
}

fn queue_schemas() -> Value {
    let job_props = json!({
        "id": {"type": "integer", "minimum": 1},
        "kind": {"type": "string"},
        "payload": {"description": "The job's payload, any JSON."},
        "attempts": {"type": "integer", "minimum": 0, "description": "Leases so far (the current one included)."},
        "max_attempts": {"type": "integer", "minimum": 1},
        "last_error": {"type": ["string", "null"], "description": "Error text of the last failed attempt."},
        "created_at": {"type": "string", "format": "date-time"},
        "run_at": {"type": "string", "format": "date-time", "description": "Not run before this time."},
    });
    let job_required = [
        "id",
        "kind",
        "payload",
        "attempts",
        "max_attempts",
        "last_error",
        "created_at",
        "run_at",
    ];
    let mut item_props = job_props.clone();
    item_props["queue"] = json!({"type": "string"});
    item_props["state"] = json!({"type": "string", "enum": ["ready", "leased", "dead"]});
    item_props["priority"] = json!({"type": "integer", "description": "Higher runs first."});
    let item_required: Vec<&str> = job_required
        .iter()
        .copied()
        .chain(["queue", "state", "priority"])
        .collect();
    json!({
        "QueueStats": {
            "type": "object",
            "required": ["name", "ready", "delayed", "in_flight", "dead", "oldest_ready_wait_ms"],
            "properties": {
                "name": {"type": "string"},
                "ready": {"type": "integer", "minimum": 0, "description": "Ready to run now."},
                "delayed": {"type": "integer", "minimum": 0, "description": "Ready but not before a future time."},
                "in_flight": {"type": "integer", "minimum": 0, "description": "Leased by a worker."},
                "dead": {"type": "integer", "minimum": 0, "description": "In the dead-letter queue."},
                "oldest_ready_wait_ms": {"type": "integer", "minimum": 0, "description": "How long the oldest job ready now has waited (0 if none)."},
            },
        },
        "QueueList": {
            "type": "object",
            "required": ["queues"],
            "properties": {"queues": {"type": "array", "items": schema_ref("QueueStats")}},
        },
        "DeadJob": {
            "type": "object",
            "required": job_required,
            "properties": job_props,
        },
        "DeadJobList": {
            "type": "object",
            "required": ["jobs"],
            "properties": {"jobs": {"type": "array", "items": schema_ref("DeadJob")}},
        },
        "JobItem": {
            "type": "object",
            "required": item_required,
            "properties": item_props,
        },
        "DeadFilter": {
            "type": "object",
            "additionalProperties": false,
            "description": "Which dead jobs to touch: those with one of `ids` and of `kind`, each when given. No body or `{}` is all of the queue's dead jobs.",
            "properties": {
                "ids": {"type": "array", "maxItems": 1000, "items": {"type": "integer"}},
                "kind": {"type": "string", "minLength": 1, "maxLength": 128},
            },
        },
        "RedriveResult": {
            "type": "object",
            "required": ["redriven"],
            "properties": {"redriven": {"type": "integer", "minimum": 0}},
        },
        "PurgeResult": {
            "type": "object",
            "required": ["purged"],
            "properties": {"purged": {"type": "integer", "minimum": 0}},
        },
        "SubmitBulkJob": {
            "type": "object",
            "required": ["kind"],
            "additionalProperties": false,
            "properties": {
                "kind": {"type": "string", "enum": ["reprice_category", "export_orders", "notify_buyers", "sample_report"], "description": "Anything else → 400 `invalid_job`."},
                "params": {
                    "type": "object",
                    "default": {},
                    "description": "By kind; missing or bad → 400 `invalid_job`. `reprice_category`: `category` (a non-empty string) and `percent` (a non-zero integer in -100..=1000). `export_orders`: `from` and `to` (YYYY-MM-DD, `to` not before `from`, at most 366 days). `notify_buyers`: `product_id` and `message` (a non-empty string of at most 500 characters). `sample_report`: `size_bytes` (an integer in 1..=268435456) and optionally `preface` (a string no longer than `size_bytes`).",
                    "examples": [{"category": "books", "percent": 10}, {"from": "2024-01-01", "to": "2024-01-31"}, {"product_id": "0190a5c2-6f1e-7b3a-9d2e-4c5b6a7d8e9f", "message": "Back in stock"}],
                },
            },
        },
        "BulkJob": {
            "type": "object",
            "required": ["id", "kind", "params", "state", "total", "done", "dead", "cancelled", "progress", "created_at", "finished_at", "result"],
            "properties": {
                "id": {"type": "string"},
                "kind": {"type": "string", "enum": ["reprice_category", "export_orders", "notify_buyers", "sample_report"]},
                "params": {"type": "object", "description": "The params submitted, plus `submitted_by` (the caller's user id)."},
                "state": {
                    "type": "string",
                    "enum": ["running", "completed", "completed_with_failures", "cancelled"],
                    "description": "`running` while items are ready or running; `completed` once every item is done; `completed_with_failures` once every item is done or dead, some dead (in the `shop` dead-letter queue); `cancelled` after a cancellation.",
                },
                "total": {"type": "integer", "minimum": 0, "description": "Items in all."},
                "done": {"type": "integer", "minimum": 0, "description": "Items completed."},
                "dead": {"type": "integer", "minimum": 0, "description": "Items in the dead-letter queue."},
                "cancelled": {"type": "integer", "minimum": 0, "description": "Items removed by a cancellation before they ran."},
                "progress": {"type": "number", "minimum": 0, "maximum": 1, "description": "(done + dead + cancelled) / total; 1 for a job without items."},
                "created_at": {"type": "string", "format": "date-time"},
                "finished_at": {"type": ["string", "null"], "format": "date-time", "description": "When the job left `running`."},
                "result": {
                    "description": "Null until the job's final step ran (shortly after it finished; never for a cancelled job). `reprice_category` and `notify_buyers`: `{done, dead}`. `export_orders`: `{path, rows, days_missing}`: the CSV file (header `order_id,customer_id,total,currency,placed_at`, one row per placed order), its row count, and how many days' items died.",
                    "type": ["object", "null"],
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];

    /// Every route of `router()`, with its methods and success status.
    const EXPECTED: &[(&str, &[(&str, u16)])] = &[
        ("/health/live", &[("get", 200)]),
        ("/health/ready", &[("get", 200)]),
        ("/v1/openapi.json", &[("get", 200)]),
        ("/v1/streams/{stream}", &[("get", 200), ("post", 201)]),
        ("/v1/all", &[("get", 200)]),
        ("/v1/subscribe", &[("get", 200)]),
        ("/v1/projections", &[("get", 200)]),
        ("/v1/projections/{name}/rebuild", &[("post", 202)]),
        ("/v1/products", &[("get", 200), ("post", 201)]),
        ("/v1/products/{id}", &[("get", 200), ("delete", 200)]),
        ("/v1/mobile/products/{id}", &[("get", 200)]),
        ("/v1/web/products/{id}", &[("get", 200)]),
        ("/v1/products/{id}/price", &[("put", 200)]),
        ("/v1/products/{id}/stock", &[("post", 200)]),
        ("/v1/orders", &[("post", 201)]),
        ("/v1/orders/{id}/items", &[("post", 200)]),
        ("/v1/orders/{id}/place", &[("post", 200)]),
        ("/v1/orders/{id}/cancel", &[("post", 200)]),
        ("/v1/customers/{id}/orders", &[("get", 200)]),
        ("/v1/analytics/orders", &[("get", 200)]),
        ("/v1/queues", &[("get", 200)]),
        ("/v1/queues/{name}/dead", &[("get", 200), ("delete", 200)]),
        ("/v1/queues/{name}/dead/redrive", &[("post", 200)]),
        ("/v1/jobs/items/{id}", &[("get", 200)]),
        ("/v1/jobs", &[("post", 202)]),
        ("/v1/jobs/{id}", &[("get", 200)]),
        ("/v1/jobs/{id}/cancel", &[("post", 200)]),
        ("/v1/blobs", &[("post", 201)]),
        ("/v1/blobs/{id}", &[("get", 200), ("delete", 200)]),
        ("/v1/blobs/gc", &[("post", 200)]),
        ("/v1/accounts", &[("post", 201)]),
        ("/v1/accounts/{id}", &[("get", 200)]),
        ("/v1/accounts/{id}/deposits", &[("post", 201)]),
        ("/v1/accounts/{id}/withdrawals", &[("post", 201)]),
        ("/v1/sagas/{id}", &[("get", 200)]),
        ("/v1/subjects/{id}/keys", &[("delete", 204)]),
        (
            "/v1/admin/storage-fault",
            &[("get", 200), ("put", 200), ("delete", 200)],
        ),
    ];

    /// Operations that need no token.
    const PUBLIC: &[(&str, &str)] = &[
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/v1/openapi.json", "get"),
        ("/v1/products", "get"),
        ("/v1/products/{id}", "get"),
        ("/v1/mobile/products/{id}", "get"),
        ("/v1/web/products/{id}", "get"),
    ];

    fn operations() -> Vec<(String, String, &'static Value)> {
        let mut ops = Vec::new();
        for (path, item) in spec()["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if METHODS.contains(&method.as_str()) {
                    ops.push((path.clone(), method.clone(), op));
                }
            }
        }
        ops
    }

    /// Resolves a parameter that may be a `$ref`.
    fn resolve(v: &Value) -> &Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => spec().pointer(&r[1..]).expect("ref resolves"),
            None => v,
        }
    }

    #[test]
    fn is_openapi_31_json() {
        let text = serde_json::to_string(spec()).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, spec());
        assert_eq!(spec()["openapi"], "3.1.0");
        assert_eq!(spec()["info"]["title"], "Ficus");
        assert_eq!(spec()["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(spec()["info"]["description"].as_str().unwrap().len() > 100);
    }

    #[tokio::test]
    async fn handler_serves_the_spec() {
        let axum::Json(v) = document().await;
        assert_eq!(&v, spec());
    }

    #[test]
    fn every_route_and_method_is_documented() {
        let paths = spec()["paths"].as_object().unwrap();
        let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
        let expected: BTreeSet<&str> = EXPECTED.iter().map(|(p, _)| *p).collect();
        assert_eq!(documented, expected);
        for (path, methods) in EXPECTED {
            let item = paths[*path].as_object().unwrap();
            let got: BTreeSet<&str> = item
                .keys()
                .map(String::as_str)
                .filter(|m| METHODS.contains(m))
                .collect();
            let want: BTreeSet<&str> = methods.iter().map(|(m, _)| *m).collect();
            assert_eq!(got, want, "methods of {path}");
            for (method, status) in *methods {
                let responses = item[*method]["responses"].as_object().unwrap();
                assert!(
                    responses.contains_key(&status.to_string()),
                    "{method} {path} answers {status}"
                );
            }
        }
    }

    #[test]
    fn operations_are_well_formed() {
        let mut ids = BTreeSet::new();
        for (path, method, op) in operations() {
            let id = op["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
            let public = PUBLIC.contains(&(path.as_str(), method.as_str()));
            let secured = op["security"] == json!([{"bearer": []}]);
            assert_eq!(secured, !public, "security of {method} {path}");
            let responses = op["responses"].as_object().unwrap();
            assert_eq!(
                responses.contains_key("401"),
                secured,
                "401 of {method} {path}"
            );
            let params: Vec<&Value> = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .map(resolve)
                .collect();
            // Every `{name}` of the path is a required path parameter, and nothing else is.
            let in_path: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let declared: BTreeSet<&str> = params
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| {
                    assert_eq!(p["required"], true);
                    p["name"].as_str().unwrap()
                })
                .collect();
            assert_eq!(in_path, declared, "path parameters of {method} {path}");
            // Read-model queries take min_position and answer Ficus-Position.
            let min_position = params.iter().any(|p| p["name"] == "min_position");
            let success = responses
                .iter()
                .find(|(s, _)| s.starts_with('2'))
                .unwrap()
                .1;
            let position = success["headers"].get("Ficus-Position").is_some();
            assert_eq!(min_position, position, "{method} {path}");
            // Commands on an existing product or order take If-Match and answer an ETag.
            let if_match = params.iter().any(|p| p["name"] == "If-Match");
            let entity_command = method != "get"
                && (path.starts_with("/v1/products/")
                    || path.starts_with("/v1/orders/")
                    || path.starts_with("/v1/accounts/"));
            assert_eq!(if_match, entity_command, "If-Match of {method} {path}");
            if entity_command {
                assert!(success["headers"].get("ETag").is_some());
            }
            // Shop commands and bulk-job submission, and only they, take Idempotency-Key (their
            // effect is tied to the key's record) and document its codes.
            let keyed = params.iter().any(|p| p["name"] == "Idempotency-Key");
            let shop_command = method != "get"
                && (path.starts_with("/v1/products") || path.starts_with("/v1/orders"));
            let bulk_submit = method == "post" && path == "/v1/jobs";
            assert_eq!(
                keyed,
                shop_command || bulk_submit,
                "Idempotency-Key of {method} {path}"
            );
            if keyed {
                assert!(success["headers"].get("Idempotent-Replayed").is_some());
                for (status, code) in [
                    ("400", "invalid_idempotency_key"),
                    ("409", "request_in_progress"),
                    ("422", "idempotency_key_reused"),
                ] {
                    let text = responses[status]["description"].as_str().unwrap_or("");
                    assert!(text.contains(code), "{method} {path} {status}: {text}");
                }
            }
            // Every 503 carries Retry-After (readiness aside, which is not an Error).
            if let Some(r) = responses.get("503") {
                if path != "/health/ready" {
                    assert!(resolve(r)["headers"].get("Retry-After").is_some());
                }
            }
        }
        let subscribe = &spec()["paths"]["/v1/subscribe"]["get"];
        assert!(subscribe["responses"]["200"]["content"]
            .get("text/event-stream")
            .is_some());
        // Before OpenAPI 3.2 the `schema` of an event stream describes ONE event (`data`,
        // `event`, `id`), which is how validators read it; a bare string failed every event
        // (found by schemathesis).
        let event = &subscribe["responses"]["200"]["content"]["text/event-stream"]["schema"];
        assert_eq!(event["type"], "object");
        assert_eq!(event["properties"]["data"]["type"], "string");
        assert_eq!(event["properties"]["id"]["type"], "string");
    }

    #[test]
    fn request_bodies_refuse_unknown_fields() {
        let schemas = spec()["components"]["schemas"].as_object().unwrap();
        for name in [
            "AppendRequest",
            "AppendEvent",
            "CreateProduct",
            "Price",
            "Stock",
            "Delete",
            "CreateOrder",
            "Item",
            "Cancel",
            "DeadFilter",
            "SubmitBulkJob",
        ] {
            assert_eq!(
                schemas[name]["additionalProperties"], false,
                "{name} refuses unknown fields"
            );
        }
        assert_eq!(schemas["Error"]["additionalProperties"], true);
    }

    fn collect_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => collect_refs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_ref_resolves() {
        let mut refs = Vec::new();
        collect_refs(spec(), &mut refs);
        assert!(refs.len() > 50);
        for r in refs {
            assert!(r.starts_with("#/components/"), "local component ref: {r}");
            let target = spec().pointer(&r[1..]);
            assert!(
                target.is_some_and(Value::is_object),
                "{r} resolves to a component"
            );
        }
    }
}
