//! The API's own documentation: `GET /docs/openapi.json` serves the OpenAPI document
//! (`docs/openapi.json`), `GET /docs` a self-contained page rendering it, and the document and
//! the router agree — every documented operation is routed, and every `.route(...)` in
//! `src/http/mod.rs` is documented with its methods.

mod common;

use std::collections::BTreeSet;

use common::{Database, Options, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const DOCUMENT: &str = include_str!("../docs/openapi.json");
const ROUTER_SOURCE: &str = include_str!("../src/http/mod.rs");

/// The operation keys of an OpenAPI path item.
const HTTP_METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The documentation needs no database of its own: SQLite keeps these tests light.
async fn spawn() -> TestApp {
    TestApp::spawn_with(Options { database: Database::Sqlite, ..Options::default() }).await
}

/// Every `(path, method)` the document describes, methods lower-case.
fn documented_operations(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("the document has paths");
    let mut operations = BTreeSet::new();
    for (path, item) in paths {
        for method in HTTP_METHODS {
            if item.get(method).is_some() {
                operations.insert((path.clone(), method.to_owned()));
            }
        }
    }
    operations
}

#[tokio::test]
async fn the_document_is_served_as_openapi_json() {
    let app = spawn().await;
    let reply = app.get("/docs/openapi.json", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("application/json"), "content-type is {content_type:?}");
    let version = reply.body["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "openapi is {version:?}, in {:?}", reply.body);

    let file: Value = serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON");
    assert_eq!(
        documented_operations(&reply.body),
        documented_operations(&file),
        "the served document describes the operations of docs/openapi.json"
    );
}

#[tokio::test]
async fn the_page_is_html_that_loads_nothing_from_elsewhere() {
    let app = spawn().await;
    let response = app.client.get(app.url("/docs")).send().await.expect("the server answers");
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| response.headers().get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let content_type = header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/html"), "content-type is {content_type:?}");
    let csp = header("content-security-policy");
    let html = response.text().await.expect("a body");

    assert!(html.to_ascii_lowercase().contains("<html"), "not an HTML page: {html:.200}");
    assert!(html.contains("/docs/openapi.json"), "the page does not load the document");
    for (attribute, value) in url_attributes(&html) {
        let value = value.to_ascii_lowercase();
        let remote = value.starts_with("http://") || value.starts_with("https://") || value.starts_with("//");
        assert!(!remote, "the page must work offline, but {attribute}={value:?} loads from elsewhere");
    }
    // The API's default policy (`default-src 'none'`) would block the page's own inline
    // script and style and its fetch of the document: /docs must answer with a policy of its own.
    if let Some(csp) = csp {
        for directive in ["script-src", "style-src", "connect-src"] {
            assert!(csp_allows(&csp, directive), "the Content-Security-Policy of /docs blocks {directive}: {csp:?}");
        }
    }
}

/// The values of every `src=` and `href=` attribute (or script assignment) in `html`.
fn url_attributes(html: &str) -> Vec<(&'static str, String)> {
    let lower = html.to_ascii_lowercase();
    let mut found = Vec::new();
    for attribute in ["src", "href"] {
        let mut from = 0;
        while let Some(offset) = lower[from..].find(attribute) {
            let start = from + offset;
            from = start + attribute.len();
            let preceded_by_name_char =
                lower[..start].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            let Some(value) = lower[from..].trim_start().strip_prefix('=').map(str::trim_start) else {
                continue;
            };
            if preceded_by_name_char {
                continue;
            }
            let text = match value.chars().next() {
                Some(quote @ ('"' | '\'')) => value.split(quote).nth(1).unwrap_or_default(),
                _ => value.split(|c: char| c.is_whitespace() || c == '>').next().unwrap_or_default(),
            };
            found.push((attribute, text.to_owned()));
        }
    }
    found
}

/// Whether a Content-Security-Policy lets `directive` load anything at all (its own sources,
/// or `default-src` when it has none).
fn csp_allows(csp: &str, directive: &str) -> bool {
    let directives: Vec<(String, String)> = csp
        .split(';')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, sources) = part.split_once(char::is_whitespace).unwrap_or((part, ""));
            (name.to_ascii_lowercase(), sources.trim().to_owned())
        })
        .collect();
    let sources_of =
        |name: &str| directives.iter().find(|(known, _)| known.as_str() == name).map(|(_, sources)| sources.as_str());
    match sources_of(directive).or_else(|| sources_of("default-src")) {
        Some(sources) => !sources.is_empty() && sources != "'none'",
        None => true,
    }
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let app = spawn().await;
    let served = app.get("/docs/openapi.json", None).await;
    assert_eq!(served.status, StatusCode::OK, "{:?}", served.body);
    let operations = documented_operations(&served.body);
    assert!(!operations.is_empty(), "the document describes no operation");
    for (path, method) in operations {
        // Any value fits a path parameter as far as routing goes; a UUID also passes the
        // handlers' id parsing, so the request gets as far as it can without credentials.
        let concrete = fill_path_parameters(&path, &uuid::Uuid::new_v4().to_string());
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("a valid method");
        let mut request = app.client.request(method.clone(), app.url(&concrete));
        if [Method::POST, Method::PUT, Method::PATCH].contains(&method) {
            request = request.json(&json!({}));
        }
        let reply = app.send(request).await;
        let code = reply.body["error"]["code"].as_str().unwrap_or_default().to_owned();
        assert_ne!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is documented but the router does not take {method} there: {:?}",
            reply.body
        );
        // A handler's own 404s have codes of their own (ORDER_NOT_FOUND, WEBHOOK_NOT_CONFIGURED...);
        // the router's fallback says NOT_FOUND.
        let no_such_route = reply.status == StatusCode::NOT_FOUND && code == "NOT_FOUND";
        assert!(!no_such_route, "{method} {path} is documented but no route matches {concrete}");
    }
}

/// `path` with every `{name}` replaced by `value`.
fn fill_path_parameters(path: &str, value: &str) -> String {
    let mut filled = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').map(|at| open + at).expect("path parameters are closed");
        filled.push_str(&rest[..open]);
        filled.push_str(value);
        rest = &rest[close + 1..];
    }
    filled.push_str(rest);
    filled
}

#[test]
fn every_route_is_documented() {
    let document: Value = serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON");
    let documented = documented_operations(&document);
    let routes = router_operations(ROUTER_SOURCE);
    for expected in [("/healthz", "get"), ("/api/v1/auth/login", "post"), ("/api/v1/webhooks/stripe", "post")] {
        let expected = (expected.0.to_owned(), expected.1.to_owned());
        assert!(routes.contains(&expected), "reading src/http/mod.rs went wrong: {expected:?} not in {routes:?}");
    }
    let missing: Vec<String> = routes
        .iter()
        .filter(|route| !documented.contains(*route))
        .map(|(path, method)| format!("{} {path}", method.to_ascii_uppercase()))
        .collect();
    assert!(missing.is_empty(), "routed but missing from docs/openapi.json: {missing:#?}");
}

/// The `(path, method)` of every `.route("...", ...)` in the router's source, with the prefix
/// of the `.nest(...)` it ends up under, in OpenAPI's spelling of path parameters.
fn router_operations(source: &str) -> BTreeSet<(String, String)> {
    // Comment lines go first, so that examples in comments do not count.
    let source: String = source
        .lines()
        .map(|line| if line.trim_start().starts_with("//") { "" } else { line })
        .collect::<Vec<_>>()
        .join("\n");
    let source = source.as_str();
    let lets = let_statements(source);
    let fns = fn_items(source);
    let is_router_name = |ident: &str| lets.iter().chain(&fns).any(|block| block.name == ident);
    let nests: Vec<Nest> = occurrences(source, ".nest(\"")
        .into_iter()
        .map(|at| {
            let literal_end = string_end(source, at + 6);
            let end = matching_close(source, at + 5);
            let mut routers: BTreeSet<String> = identifiers(&source[literal_end..end]).into_iter().collect();
            // A nested router variable pulls in the routers its value is built from
            // (`let api = api_routes();` nests the routes of `fn api_routes`).
            loop {
                let before = routers.len();
                for binding in &lets {
                    if routers.contains(&binding.name) {
                        routers.extend(
                            identifiers(&binding.value).into_iter().filter(|ident| is_router_name(ident.as_str())),
                        );
                    }
                }
                if routers.len() == before {
                    break;
                }
            }
            Nest { prefix: source[at + 7..literal_end - 1].to_owned(), span: (at, end), routers }
        })
        .collect();

    let mut operations = BTreeSet::new();
    for at in occurrences(source, ".route(\"") {
        let literal_end = string_end(source, at + 7);
        let path = &source[at + 8..literal_end - 1];
        let handlers = &source[literal_end..matching_close(source, at + 6)];
        // The innermost `let` holding the route, else the `fn` it is in.
        let block = innermost(&lets, at).or_else(|| innermost(&fns, at)).map(|block| block.name.as_str());
        let prefix = nests
            .iter()
            .find(|nest| {
                let inside_call = nest.span.0 <= at && at < nest.span.1;
                inside_call || block.is_some_and(|name| nest.routers.contains(name))
            })
            .map_or("", |nest| nest.prefix.as_str());
        let full = match path {
            "/" if !prefix.is_empty() => prefix.to_owned(),
            _ => format!("{prefix}{path}"),
        };
        let full = full.replace("{*", "{");
        let methods = routed_methods(handlers);
        assert!(!methods.is_empty(), "cannot tell the methods of .route(\"{path}\"{handlers})");
        for method in methods {
            operations.insert((full.clone(), method));
        }
    }
    operations
}

/// A `.nest(prefix, routers)` call.
struct Nest {
    prefix: String,
    /// Byte range of the whole call.
    span: (usize, usize),
    /// Names of the router variables and functions nested under `prefix`.
    routers: BTreeSet<String>,
}

/// A `let name = value;` statement or a `fn name(...) { ... }` item.
struct Block {
    name: String,
    /// Byte range of the whole statement or item.
    span: (usize, usize),
    /// What a `let` binds (empty for a `fn`).
    value: String,
}

/// The innermost of `blocks` that holds the offset `at`.
fn innermost(blocks: &[Block], at: usize) -> Option<&Block> {
    blocks.iter().filter(|block| block.span.0 <= at && at < block.span.1).max_by_key(|block| block.span.0)
}

/// Every `let name = value;` (not `if let` or `while let`).
fn let_statements(source: &str) -> Vec<Block> {
    occurrences(source, "let ")
        .into_iter()
        .filter(|at| !preceded_by_identifier(source, *at))
        .filter(|at| {
            let before = source[..*at].trim_end();
            !before.ends_with("if") && !before.ends_with("while")
        })
        .filter_map(|at| {
            let rest = source[at + 4..].trim_start();
            let rest = rest.strip_prefix("mut ").unwrap_or(rest);
            let name = identifiers(rest).into_iter().next()?;
            let end = statement_end(source, at);
            let value = source[at..end].split_once('=').map_or("", |(_, value)| value).to_owned();
            Some(Block { name, span: (at, end), value })
        })
        .collect()
}

/// Every `fn name(...) ... { body }`.
fn fn_items(source: &str) -> Vec<Block> {
    occurrences(source, "fn ")
        .into_iter()
        .filter(|at| !preceded_by_identifier(source, *at))
        .filter_map(|at| {
            let name = identifiers(&source[at + 3..]).into_iter().next()?;
            let open = at + source[at..].find('{')?;
            Some(Block { name, span: (at, matching_close(source, open)), value: String::new() })
        })
        .collect()
}

/// The methods a route's handler expression registers, such as `, post(a::b).get(a::c)`.
fn routed_methods(handlers: &str) -> Vec<String> {
    let code = without_strings(handlers);
    let mut methods = Vec::new();
    for (start, word) in words(&code) {
        let end = start + word.len();
        let is_call = code[end..].starts_with('(');
        let is_path_segment = code[..start].ends_with("::");
        if is_call && !is_path_segment && HTTP_METHODS.contains(&word) && !methods.iter().any(|known| known == word) {
            methods.push(word.to_owned());
        }
    }
    methods
}

/// Identifiers in `code` that are not module path segments (`ops` and `healthz` in
/// `ops::healthz` are skipped) and not inside string literals.
fn identifiers(code: &str) -> Vec<String> {
    let code = without_strings(code);
    words(&code)
        .into_iter()
        .filter(|(start, word)| !code[..*start].ends_with("::") && !code[start + word.len()..].starts_with("::"))
        .map(|(_, word)| word.to_owned())
        .collect()
}

/// Every identifier-like word of `code` with its byte offset.
fn words(code: &str) -> Vec<(usize, &str)> {
    let mut found = Vec::new();
    let mut start = None;
    for (at, c) in code.char_indices().chain(std::iter::once((code.len(), ' '))) {
        let word_char = c.is_ascii_alphanumeric() || c == '_';
        match (start, word_char) {
            (None, true) => start = Some(at),
            (Some(from), false) => {
                let word = &code[from..at];
                if word.starts_with(|first: char| first.is_ascii_alphabetic() || first == '_') {
                    found.push((from, word));
                }
                start = None;
            }
            _ => {}
        }
    }
    found
}

/// `code` with the contents of its string literals removed.
fn without_strings(code: &str) -> String {
    let mut out = String::new();
    let mut from = 0;
    while let Some(offset) = code[from..].find('"') {
        let start = from + offset;
        out.push_str(&code[from..start]);
        out.push_str("\"\"");
        from = string_end(code, start);
    }
    out.push_str(&code[from..]);
    out
}

fn preceded_by_identifier(source: &str, at: usize) -> bool {
    source[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn occurrences(source: &str, needle: &str) -> Vec<usize> {
    source.match_indices(needle).map(|(at, _)| at).collect()
}

/// The offset just past the closing quote of the string literal opening at `start`.
fn string_end(source: &str, start: usize) -> usize {
    let bytes = source.as_bytes();
    assert_eq!(bytes[start], b'"', "not a string literal at {start}");
    let mut at = start + 1;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'"' => return at + 1,
            _ => at += 1,
        }
    }
    panic!("unterminated string literal at {start}");
}

/// The offset just past the bracket closing the one at `open`, skipping string literals.
fn matching_close(source: &str, open: usize) -> usize {
    scan_to(source, open, |byte, depth| matches!(byte, b')' | b'}' | b']') && depth == 0)
}

/// The offset just past the `;` ending the statement that starts at `start`.
fn statement_end(source: &str, start: usize) -> usize {
    scan_to(source, start, |byte, depth| byte == b';' && depth <= 0)
}

/// Walks from `start`, skipping string literals and counting bracket depth, to just past the
/// first byte for which `ends(byte, depth after it)` holds.
fn scan_to(source: &str, start: usize, ends: impl Fn(u8, isize) -> bool) -> usize {
    let bytes = source.as_bytes();
    let mut depth = 0isize;
    let mut at = start;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => {
                at = string_end(source, at);
                continue;
            }
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            _ => {}
        }
        if ends(bytes[at], depth) {
            return at + 1;
        }
        at += 1;
    }
    panic!("no end found from {start}");
}
