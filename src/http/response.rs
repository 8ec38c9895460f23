//! The success envelope: `{"success": true, "data": …}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A successful answer with its status.
#[derive(Debug)]
pub struct Reply<T>(pub StatusCode, pub T);

/// 200 with `data`.
pub fn ok<T: Serialize>(data: T) -> Reply<T> {
    Reply(StatusCode::OK, data)
}

/// 201 with `data`.
pub fn created<T: Serialize>(data: T) -> Reply<T> {
    Reply(StatusCode::CREATED, data)
}

#[derive(Serialize)]
struct Success<T> {
    success: bool,
    data: T,
}

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        (self.0, axum::Json(Success { success: true, data: self.1 })).into_response()
    }
}

/// One page of a newest-first list and the cursor of the next, if any.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` fetched items: the extra one only says that more
    /// exist, and the cursor is the last item kept.
    pub fn from_overfetch(mut items: Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> String) -> Self {
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_cursor = if more { items.last().map(cursor_of) } else { None };
        Self { items, next_cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overfetch_makes_the_cursor() {
        let page = Page::from_overfetch(vec![5, 4, 3], 2, |n| n.to_string());
        assert_eq!((page.items, page.next_cursor), (vec![5, 4], Some("4".to_owned())));
        let last = Page::from_overfetch(vec![2, 1], 2, |n| n.to_string());
        assert_eq!((last.items, last.next_cursor), (vec![2, 1], None));
    }
}
