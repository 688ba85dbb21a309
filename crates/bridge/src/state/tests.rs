//! Tests of the state formats: parsing, round trips and refusals.

use super::*;

fn parse(text: &str) -> (Vec<Entry>, Vec<String>) {
    let json: Json = serde_json::from_str(text).expect("json");
    let mut problems = Vec::new();
    let entries = match &json {
        Json::Obj(top) if top.iter().any(|(k, _)| k == "reservations") => v1(top, &mut problems),
        Json::Obj(top) => legacy(top, &mut problems),
        _ => panic!("not an object"),
    };
    validate(
        &entries,
        &"11100-11199".parse().expect("ranges"),
        &mut problems,
    );
    (entries, problems)
}

#[test]
fn legacy_duplicates_are_seen() {
    let (_, p) = parse(r#"{"a": 11100, "a": 11101, "b": 11100}"#);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].contains("service `a` is given twice"), "{p:?}");
    assert!(p[1].contains("port 11100 is given twice"), "{p:?}");
}

#[test]
fn v1_entries() {
    let (e, p) = parse(
        r#"{"version":1,"reservations":[
            {"service":"docs","port":11117,"state":"reserved","until":null,"since":"2024-01-01T00:00:00.250Z"},
            {"service":"old","port":11100,"state":"quarantined","until":"2024-01-01T00:05:00Z","since":"2024-01-01T00:00:00Z"}]}"#,
    );
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(e[0].since_ms, Some(1_704_067_200_250));
    assert_eq!(
        e[1].state,
        RecordState::Quarantined {
            until_ms: 1_704_067_500_000
        }
    );
    let (_, p) = parse(
        r#"{"version":2,"reservations":[{"service":"x","port":11100,"state":"quarantined","extra":1}]}"#,
    );
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p[0].starts_with("$.version"), "{p:?}");
    assert!(p[1].starts_with("$.reservations[0].extra"), "{p:?}");
    assert!(p[2].starts_with("$.reservations[0].until"), "{p:?}");
}

#[test]
fn paths_are_bounded() {
    assert_eq!(key_path("$", "docs"), "$.docs");
    assert_eq!(key_path("$", "a-b"), "$[\"a-b\"]");
    assert!(key_path("$", &"x".repeat(10_000)).len() < 100);
    assert_eq!(key_path("$", "\"\n"), "$[\"\\\"\\n\"]");
}
