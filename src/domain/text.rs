//! Text that may be stored or shown: no control characters. A NUL cannot be stored in a
//! Postgres `text` column at all, and the others (escape, backspace, bidi-less C0/C1 codes)
//! are never meant in a name, an address, a code or a note; they only garble logs and
//! screens. Tabs and line breaks stay allowed: people write notes on several lines.
//!
//! Every way a string comes in passes here before anything is written: JSON bodies and
//! socket payloads ([`control_character_in`]), path and query parameters and the fields
//! read from signed gateway events ([`check`]).

use std::fmt::Write as _;

use serde_json::Value;

use crate::error::Error;

const MESSAGE: &str = "must not contain control characters (only tab and line breaks are allowed)";

/// Whether `c` is refused in text.
fn refused(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// `VALIDATION_ERROR` for `field` when `text` holds a control character.
pub fn check(field: &str, text: &str) -> Result<(), Error> {
    if text.chars().any(refused) { Err(Error::validation(field, MESSAGE)) } else { Ok(()) }
}

/// Whether a JSON document's bytes may hold a refused character in a string. Inside JSON
/// strings, C0 characters can only come escaped (`\u0000`, `\b`, `\f`); DEL and the C1
/// characters come raw (DEL is 0x7F, C1 is 0xC2 0x80–0x9F in UTF-8). A body with none of
/// these bytes, nearly every body, needs no closer look.
pub fn may_hold_control_characters(json: &[u8]) -> bool {
    json.iter().any(|&byte| matches!(byte, b'\\' | 0x7f | 0xc2))
}

/// The first string in `value` (object keys included) holding a control character, as a
/// `VALIDATION_ERROR` naming its field the way shape errors do (`pickup.address`,
/// `points[2].note`).
pub fn control_character_in(value: &Value) -> Result<(), Error> {
    match find(value, &mut String::new()) {
        Some(field) => Err(Error::validation(field, MESSAGE)),
        None => Ok(()),
    }
}

fn find(value: &Value, path: &mut String) -> Option<String> {
    match value {
        Value::String(text) if text.chars().any(refused) => Some(field_or_body(path)),
        Value::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
            let len = path.len();
            // Written into the path in place: a report of many points costs no string each.
            let _ = write!(path, "[{index}]");
            let found = find(item, path);
            path.truncate(len);
            found
        }),
        Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key);
            let found = if key.chars().any(refused) { Some(field_or_body(path)) } else { find(item, path) };
            path.truncate(len);
            found
        }),
        _ => None,
    }
}

fn field_or_body(path: &str) -> String {
    if path.is_empty() { "body".to_owned() } else { path.to_owned() }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field(value: Value) -> Option<String> {
        match control_character_in(&value) {
            Err(Error::Validation { field, .. }) => Some(field),
            _ => None,
        }
    }

    #[test]
    fn names_the_field_holding_a_control_character() {
        assert_eq!(field(json!({ "notes": "a\u{0}b" })).as_deref(), Some("notes"));
        assert_eq!(field(json!({ "pickup": { "address": "x\u{1b}[31m" } })).as_deref(), Some("pickup.address"));
        assert_eq!(field(json!({ "points": [{}, { "note": "\u{7f}" }] })).as_deref(), Some("points[1].note"));
        assert_eq!(field(json!("\u{85}")).as_deref(), Some("body"));
        assert_eq!(field(json!({ "a\u{0}": 1 })).as_deref(), Some("a\u{0}"));
        assert_eq!(field(json!({ "notes": "line one\nline two\ttabbed\r\n", "n": 1, "ok": [true, null] })), None);
    }

    #[test]
    fn only_bodies_with_escapes_or_raw_del_or_c1_need_a_look() {
        assert!(!may_hold_control_characters(br#"{"name":"Ravi","address":"MG Road, 2nd floor"}"#));
        assert!(may_hold_control_characters(br#"{"name":"R\u0000"}"#));
        assert!(may_hold_control_characters("{\"name\":\"R\u{7f}\"}".as_bytes()));
        assert!(may_hold_control_characters("{\"name\":\"R\u{85}\"}".as_bytes()));
        assert!(check("code", "SAVE10").is_ok());
        assert!(check("code", "SAVE\u{0}").is_err());
    }
}
