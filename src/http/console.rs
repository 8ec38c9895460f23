//! The dispatcher console at `/console`: a page and its scripts, compiled into the binary
//! from `console/` (with the browser libraries in `console/vendor/`, see its README), so that
//! the server alone serves it. The page signs in over the REST API and watches the city over
//! the `/dispatch` socket; `/console/config.json` hands it the `[console]` settings.
//!
//! Its Content-Security-Policy lets in this origin's scripts, styles, REST and WebSocket, and
//! the configured tile server's images, and nothing else: no inline script, no other host.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::config::ConfigError;
use crate::http::extract::Path;

/// `[console]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    pub tile_url: String,
    pub tile_attribution: String,
    pub center: [f64; 2],
    pub zoom: u8,
    pub alert_search_secs: u64,
    pub alert_refused_offers: u32,
}

impl ConsoleConfig {
    pub fn check(&self) -> Result<(), ConfigError> {
        tile_source(&self.tile_url).map_err(|message| ConfigError::new("console.tile_url", message))?;
        let [lat, lng] = self.center;
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lng) {
            return Err(ConfigError::new("console.center", "must be [lat, lng] on the globe"));
        }
        if !(1..=18).contains(&self.zoom) {
            return Err(ConfigError::new("console.zoom", "must be 1 to 18"));
        }
        if self.alert_search_secs == 0 || self.alert_refused_offers == 0 {
            return Err(ConfigError::new("console.alert_search_secs", "alert thresholds must be > 0"));
        }
        Ok(())
    }
}

/// The CSP source of a tile URL template (`https://{s}.tile.example.org/{z}/{x}/{y}.png` →
/// `https://*.tile.example.org`), or `None` without one.
fn tile_source(url: &str) -> Result<Option<String>, &'static str> {
    if url.is_empty() {
        return Ok(None);
    }
    let (scheme, rest) = url.split_once("://").ok_or("must be an http(s) URL template")?;
    if scheme != "https" && scheme != "http" {
        return Err("must be an http(s) URL template");
    }
    let host = rest.split('/').next().unwrap_or_default();
    let host = host.strip_prefix("{s}.").map_or_else(|| host.to_owned(), |rest| format!("*.{rest}"));
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '*');
    if host.is_empty() || !host.chars().all(allowed) || host.matches('*').count() > 1 {
        return Err("the host may hold only {s}, as its leftmost label");
    }
    Ok(Some(format!("{scheme}://{host}")))
}

/// One file of the console.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset { path: $path, content_type: $type, body: include_bytes!(concat!("../../console/", $path)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");
const ASSETS: [Asset; 5] = [
    asset!("console.js", JS),
    asset!("console.css", CSS),
    asset!("vendor/leaflet/leaflet.js", JS),
    asset!("vendor/leaflet/leaflet.css", CSS),
    asset!("vendor/socket.io/socket.io.min.js", JS),
];

/// `/`, `/console` and what the page loads.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(async || Redirect::to("/console")))
        .route("/console", get(index))
        .route("/console/config.json", get(settings))
        .route("/console/{*path}", get(file))
}

/// What the page may load: see the module's doc.
fn policy(config: &ConsoleConfig) -> String {
    let tiles = tile_source(&config.tile_url).ok().flatten().map(|source| format!(" {source}")).unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:{tiles}; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut response = serve(&INDEX, &headers);
    if let Ok(policy) = HeaderValue::from_str(&policy(&state.config.console)) {
        response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    response
}

async fn settings(State(state): State<AppState>) -> impl IntoResponse {
    let config = &state.config.console;
    Json(json!({
        "tile_url": config.tile_url,
        "tile_attribution": config.tile_attribution,
        "center": config.center,
        "zoom": config.zoom,
        "alert_search_secs": config.alert_search_secs,
        "alert_refused_offers": config.alert_refused_offers,
        "viewport_interval_ms": state.config.realtime.viewport_interval_ms,
        "viewport_max_pilots": state.config.realtime.viewport_max_pilots,
    }))
}

async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|asset| asset.path == path) {
        Some(asset) => serve(asset, &headers),
        None => crate::error::Error::not_found("NOT_FOUND", "no such file").into_response(),
    }
}

/// The file, revalidated by its content's hash (a new build serves new files at once).
fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", fnv1a(asset.body));
    if headers.get(header::IF_NONE_MATCH).is_some_and(|tag| tag.as_bytes() == etag.as_bytes()) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let cache = (header::CACHE_CONTROL, "no-cache");
    ([(header::CONTENT_TYPE, asset.content_type.to_owned()), (header::ETAG, etag)], [cache], asset.body).into_response()
}

/// FNV-1a, 64 bits: an ETag, not a security measure.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::tile_source;

    #[test]
    fn the_tile_host_is_the_only_one_let_in() {
        assert_eq!(tile_source(""), Ok(None));
        let osm = tile_source("https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png");
        assert_eq!(osm, Ok(Some("https://*.tile.openstreetmap.org".to_owned())));
        assert_eq!(tile_source("http://tiles.local:8081/{z}/{x}/{y}.png"), Ok(Some("http://tiles.local:8081".into())));
        for bad in ["ftp://x/{z}", "tiles/{z}/{x}/{y}.png", "https://a.{s}.b/{z}", "https://x; script-src *"] {
            assert!(tile_source(bad).is_err(), "{bad}");
        }
    }
}
