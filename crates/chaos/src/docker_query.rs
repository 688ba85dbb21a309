//! Rewriting Docker API query strings: adding label filters so a relay in
//! front of an engine shows a bridge only the containers of one test, bench
//! phase or run. Used by the e2e test relay and the bench relay.

use serde_json::Value;

/// Adds `labels` to the `label` filter of a Docker API query string
/// (`filters` is URL-encoded JSON; both Docker's list and map forms of the
/// `label` filter are kept).
pub fn add_label_filters(query: Option<&str>, labels: &[String]) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let idx = match pairs.iter().position(|(k, _)| k == "filters") {
        Some(i) => i,
        None => {
            pairs.push(("filters".into(), "{}".into()));
            pairs.len() - 1
        }
    };
    let mut filters: Value =
        serde_json::from_str(&pairs[idx].1).unwrap_or(Value::Object(Default::default()));
    if !filters.is_object() {
        filters = Value::Object(Default::default());
    }
    if let Some(obj) = filters.as_object_mut() {
        let entry = obj
            .entry("label")
            .or_insert_with(|| Value::Array(Vec::new()));
        match entry {
            Value::Array(a) => a.extend(labels.iter().map(|l| Value::String(l.clone()))),
            Value::Object(m) => {
                for l in labels {
                    m.insert(l.clone(), Value::Bool(true));
                }
            }
            other => {
                *other = Value::Array(labels.iter().map(|l| Value::String(l.clone())).collect());
            }
        }
    }
    pairs[idx].1 = filters.to_string();
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// URL-encodes one query-string value.
pub fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(q: &str) -> Value {
        let (_, v) = form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "filters")
            .expect("filters kept");
        serde_json::from_str(&v).expect("json")
    }

    #[test]
    fn adds_to_list_and_map_forms_and_keeps_other_keys() {
        let labels = vec!["t=1".to_string()];
        let q = add_label_filters(None, &labels);
        assert_eq!(filters(&q)["label"], serde_json::json!(["t=1"]));

        let given = format!(
            "all=1&filters={}",
            encode(r#"{"label":["a"],"type":["container"]}"#)
        );
        let q = add_label_filters(Some(&given), &labels);
        assert!(q.starts_with("all=1&"));
        let f = filters(&q);
        assert_eq!(f["label"], serde_json::json!(["a", "t=1"]));
        assert_eq!(f["type"], serde_json::json!(["container"]));

        let given = format!("filters={}", encode(r#"{"label":{"a":true}}"#));
        let f = filters(&add_label_filters(Some(&given), &labels));
        assert_eq!(f["label"], serde_json::json!({"a": true, "t=1": true}));
    }
}
