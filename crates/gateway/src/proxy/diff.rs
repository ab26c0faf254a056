//! Comparing two answers the way a reviewer would: status, chosen headers, and JSON bodies
//! field by field, leaving out the fields that are expected to differ (ids, timestamps), and,
//! as Diffy does, whatever also differs between two answers of the legacy system itself.

use std::collections::BTreeSet;

use serde_json::Value;

/// Most differing paths kept per comparison.
pub const MAX_DIFF_PATHS: usize = 64;

/// One captured answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// Headers chosen for comparison, lower-case name → value.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Where two answers differ, as paths: `status`, `header:NAME`, `body` (not JSON, bytes
/// differ), `$.a.b[2]` (a JSON field).
pub fn differences(a: &Answer, b: &Answer, ignore: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if a.status != b.status {
        out.insert("status".to_owned());
    }
    for (name, value) in &a.headers {
        let other = b.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        if other != Some(value) {
            out.insert(format!("header:{name}"));
        }
    }
    for (name, _) in &b.headers {
        if !a.headers.iter().any(|(n, _)| n == name) {
            out.insert(format!("header:{name}"));
        }
    }
    match (
        serde_json::from_slice::<Value>(&a.body),
        serde_json::from_slice::<Value>(&b.body),
    ) {
        (Ok(x), Ok(y)) => json_paths("$", &x, &y, ignore, &mut out),
        _ if a.body != b.body => {
            out.insert("body".to_owned());
        }
        _ => {}
    }
    out
}

fn ignored(path: &str, key: &str, ignore: &[String]) -> bool {
    ignore
        .iter()
        .any(|i| i == key || i == path || format!("$.{i}") == path)
}

fn json_paths(path: &str, a: &Value, b: &Value, ignore: &[String], out: &mut BTreeSet<String>) {
    if out.len() >= MAX_DIFF_PATHS {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                if ignored(&p, k, ignore) {
                    continue;
                }
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => json_paths(&p, u, v, ignore, out),
                    _ => {
                        out.insert(p);
                    }
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                out.insert(format!("{path}[len]"));
            }
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                json_paths(&format!("{path}[{i}]"), u, v, ignore, out);
            }
        }
        (x, y) if x != y => {
            out.insert(path.to_owned());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn finds_field_level_differences_and_skips_ignored_ones() {
        let a = answer(
            200,
            r#"{"id":"1","name":"Kettle","price":19.99,"updated_at":"x","tags":["a","b"]}"#,
        );
        let b = answer(
            200,
            r#"{"id":"2","name":"Kettle","price":21.00,"updated_at":"y","tags":["a"]}"#,
        );
        let d = differences(&a, &b, &["id".into(), "updated_at".into()]);
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            ["$.price", "$.tags[len]"]
        );
        assert!(differences(&a, &a, &[]).is_empty());
        let c = answer(500, "oops");
        let d = differences(&a, &c, &[]);
        assert!(d.contains("status") && d.contains("body"));
    }

    #[test]
    fn nested_paths_can_be_ignored_exactly() {
        let a = answer(200, r#"{"order":{"id":"1","total":5},"id":"k"}"#);
        let b = answer(200, r#"{"order":{"id":"2","total":5},"id":"z"}"#);
        let d = differences(&a, &b, &["order.id".into()]);
        assert_eq!(d.into_iter().collect::<Vec<_>>(), ["$.id"]);
    }
}
