//! The API's own documentation: the OpenAPI 3 document (`docs/openapi.json`, compiled in) at
//! `/docs/openapi.json`, and a page that renders it at `/docs`, with nothing loaded from
//! elsewhere, so it works on a machine with no internet.

use axum::http::header;
use axum::response::{Html, IntoResponse};

const OPENAPI: &str = include_str!("../../docs/openapi.json");
const PAGE: &str = include_str!("../../docs/api.html");

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// The API's policy forbids scripts and styles; this static page (no user data in it) needs
/// its own inline ones and a fetch of the document, nothing more.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                           connect-src 'self'; frame-ancestors 'none'";

pub async fn page() -> impl IntoResponse {
    ([(header::CONTENT_SECURITY_POLICY, PAGE_POLICY)], Html(PAGE))
}
