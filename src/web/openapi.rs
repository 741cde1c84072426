//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, checked in beside the code
//! (`openapi.json`) and held to the routes by `tests/openapi.rs`, so clients and schemathesis
//! (`scripts/testing/schemathesis.sh`) test against what is served.

use actix_web::HttpResponse;

/// The document, as checked in.
pub const DOCUMENT: &str = include_str!("openapi.json");

super::route_group! {
    get "/openapi.json" => document,
}

/// Open like `/health/*`: the document holds no data, and tools fetch it before they have keys.
async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT)
}
