//! The HTTP API described as OpenAPI 3.1: generated from the handlers'
//! `#[utoipa::path]` attributes and the body types below, served at
//! `GET /openapi.json` with a browsable Swagger UI at `GET /docs` (assets
//! compiled into the binary: it works offline). Both are unauthenticated,
//! as upstream's FastAPI pages are.
//!
//! The request and response types here exist to describe the wire; the
//! handlers parse bodies with pydantic-compatible validation
//! ([`crate::validate`]) and answer JSON. What keeps the two from drifting:
//! the e2e test `openapi` drives every operation over HTTP and validates
//! each request and answer against the served document (response schemas
//! forbid unknown fields), and checks that the router serves exactly the
//! documented methods and paths.

use std::sync::LazyLock;

use serde_json::Value;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

mod key_schemas;
mod run_schemas;
mod schemas;
pub use key_schemas::*;
pub use run_schemas::*;
pub use schemas::*;

/// Path of the OpenAPI document.
pub const OPENAPI_PATH: &str = "/openapi.json";
/// Path of the Swagger UI page.
pub const DOCS_PATH: &str = "/docs";

/// The OpenAPI document of the HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "exo API",
        description = "The HTTP API of exo, wire-compatible with Exosphere's state manager \
                       (`/v0`). Every `/v0` route needs the API key in header `x-api-key`. \
                       Errors answer `{\"detail\": \"...\"}` (400, 401, 404, 409), \
                       `{\"detail\": [...]}` (422, pydantic's validation errors) or \
                       `{\"success\": false, \"detail\": \"...\"}` (500). \
                       A guide with examples: docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&ApiKeyScheme),
    components(schemas(ErrorDetail, ValidationErrors, ServerError)),
    paths(livez, readyz),
    tags(
        (name = "graphs", description = "Graph templates: upsert, read, list."),
        (name = "runs", description = "Start runs and follow them."),
        (name = "nodes", description = "Nodes registered by runtimes."),
        (name = "states", description = "What runtimes call: take work, report results."),
        (name = "keys", description = "API keys scoped to namespaces and to admin or runtime use (ours; need an admin key for every namespace)."),
        (name = "health", description = "Probes (no API key)."),
    ),
)]
pub struct ApiDoc;

/// Registers each `;`-separated group of handlers (one path) on a router,
/// with its OpenAPI operation.
macro_rules! register {
    ($router:expr; $($($handler:path),+);+ $(;)?) => {
        $router$(.routes(routes!($($handler),+)))+
    };
}

/// The routes of the API and their description, from one list: each
/// handler's `#[utoipa::path]` gives both its route and its operation.
/// `key` guards the `/v0` routes (the API key check); `/health` and the
/// documents are open.
pub fn routes(
    key: impl FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
) -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    use crate::routes::{
        enqueue, graphs, keys, nodes, run_nodes, runs, schedules, states, trigger, watch, webhooks,
    };
    // One `routes!` per path (its handlers separated by `,`), paths by `;`.
    #[rustfmt::skip]
    let v0 = register!(OpenApiRouter::with_openapi(ApiDoc::openapi());
        nodes::namespaces; nodes::list, nodes::register;
        graphs::get_graph, graphs::upsert; graphs::list; schedules::triggers; webhooks::deliveries;
        trigger::trigger;
        runs::list; runs::get_run; runs::cancel; watch::events; runs::graph_structure; runs::node_details;
        run_nodes::summary; run_nodes::states;
        enqueue::enqueue; states::executed; states::errored; states::prune; states::re_enqueue_after;
        states::manual_retry; states::secrets;
        keys::create, keys::list; keys::revoke;
    );
    let (router, mut doc) = key(v0)
        .routes(routes!(crate::routes::health))
        .split_for_parts();
    CommonResponses.modify(&mut doc);
    (router, doc)
}

/// The document as JSON, built once.
pub fn document() -> &'static Value {
    static DOC: LazyLock<Value> = LazyLock::new(|| {
        serde_json::to_value(routes(|r| r).1).unwrap_or_else(|_| Value::Object(Default::default()))
    });
    &DOC
}

/// Every documented path, in axum's `{param}` syntax (the parameter names
/// are the document's).
pub fn paths() -> &'static [String] {
    static PATHS: LazyLock<Vec<String>> = LazyLock::new(|| {
        document()["paths"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    });
    &PATHS
}

/// Adds the `x-api-key` security scheme.
struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "The API key (`STATE_MANAGER_SECRET` / `api.key`).",
            ))),
        );
    }
}

/// The path parameters, described once: every `{name}` of a documented path
/// is declared from this table (whether integer, and its description).
const PATH_PARAMS: &[(&str, bool, &str)] = &[
    (
        "namespace_name",
        false,
        "Namespace (a NATS subject token: letters, digits, `-`, `_`).",
    ),
    ("graph_name", false, "Graph name."),
    ("run_id", false, "Run id."),
    ("state_id", false, "State id (24 hex digits)."),
    ("node_id", false, "State id (24 hex digits)."),
    ("key_id", false, "API key id (12 hex digits)."),
    ("page", true, "Page, from 1."),
    ("size", true, "Page size, ≥ 1."),
];

/// Adds what the operations share: their path parameters (from
/// [`PATH_PARAMS`]); for `/v0` operations the API key requirement, its 401,
/// 403 and 429, the 500, and the 422 of operations with a body (malformed JSON or
/// fields, in pydantic's format).
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{
            ContentBuilder, Ref, ResponseBuilder, security::SecurityRequirement,
        };
        let response = |description: &str, schema: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(schema)))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let params = path_parameters(path);
                op.parameters = (!params.is_empty()).then_some(params);
                if !path.starts_with("/v0") {
                    continue;
                }
                op.security = Some(vec![SecurityRequirement::new(
                    "api_key",
                    Vec::<String>::new(),
                )]);
                let r = &mut op.responses.responses;
                r.insert(
                    "401".into(),
                    response("Missing or wrong `x-api-key`.", "ErrorDetail").into(),
                );
                r.entry("403".into()).or_insert_with(|| {
                    response(
                        "A scoped key that does not reach the namespace or lacks the scope.",
                        "ErrorDetail",
                    )
                    .into()
                });
                r.insert(
                    "429".into(),
                    response(
                        "Over the key's requests per second (`Retry-After` says when to retry).",
                        "ErrorDetail",
                    )
                    .into(),
                );
                if op.request_body.is_some() {
                    r.insert(
                        "422".into(),
                        response(
                            "The body is not JSON or a field is invalid.",
                            "ValidationErrors",
                        )
                        .into(),
                    );
                }
                r.insert(
                    "500".into(),
                    response("Server failure.", "ServerError").into(),
                );
            }
        }
    }
}

/// The parameters of `path`'s `{name}` segments, in order, from
/// [`PATH_PARAMS`] (an undescribed name is a string without description).
fn path_parameters(path: &str) -> Vec<utoipa::openapi::RefOr<utoipa::openapi::path::Parameter>> {
    use utoipa::openapi::Required;
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let (integer, description) = PATH_PARAMS
                .iter()
                .find(|(n, ..)| *n == name)
                .map_or((false, None), |(_, i, d)| (*i, Some(*d)));
            let schema = if integer {
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            } else {
                ObjectBuilder::new().schema_type(Type::String)
            };
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(description)
                .schema(Some(schema.build()))
                .build()
                .into()
        })
        .collect()
}

/// `GET /livez`: the process is alive (no API key, no dependency check).
#[utoipa::path(get, path = "/livez", tag = "health", operation_id = "livez", summary = "Liveness probe",
    responses((status = 200, description = "Alive.", body = String, content_type = "text/plain")))]
#[allow(dead_code)]
fn livez() {}

/// `GET /readyz`: the service is connected and serving (no API key).
#[utoipa::path(get, path = "/readyz", tag = "health", operation_id = "readyz", summary = "Readiness probe",
    responses(
        (status = 200, description = "Ready.", body = String, content_type = "text/plain"),
        (status = 503, description = "Starting or draining.", body = String, content_type = "text/plain"),
    ))]
#[allow(dead_code)]
fn readyz() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn enum_of(schema: &str) -> Vec<String> {
        document()["components"]["schemas"][schema]["enum"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn enums_list_what_the_types_know() {
        let all = |v: Vec<&str>| v.into_iter().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            enum_of("StateStatus"),
            all(exo_types::status::StateStatus::ALL
                .iter()
                .map(|s| s.as_str())
                .chain(["CANCELLED"])
                .collect())
        );
        assert_eq!(
            enum_of("RetryStrategy"),
            all(exo_types::retry::RetryStrategy::ALL
                .map(exo_types::retry::RetryStrategy::as_str)
                .to_vec())
        );
        assert_eq!(
            enum_of("RunStatus"),
            ["PENDING", "SUCCESS", "FAILED", "CANCELLED"]
        );
        assert_eq!(enum_of("ValidationStatus"), ["VALID", "INVALID", "PENDING"]);
        assert_eq!(enum_of("UnitesStrategy"), ["ALL_SUCCESS", "ALL_DONE"]);
    }

    #[test]
    fn every_v0_operation_needs_the_key_and_probes_do_not() {
        let doc = document();
        let mut seen = 0;
        for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in ops.as_object().into_iter().flatten() {
                let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
                assert_eq!(secured, path.starts_with("/v0"), "{method} {path}");
                seen += 1;
            }
        }
        assert_eq!(seen, 30);
    }
}
