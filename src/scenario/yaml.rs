//! YAML reading with field paths in every error, and `--set path=value` overrides.
//!
//! A document is parsed with serde-saphyr (duplicate keys are errors, parse errors carry a
//! line and column) into a JSON value tree; overrides edit the tree; the typed structure is
//! then read from the tree with serde_path_to_error, so a wrong field is reported as
//! `cluster.engines[1].gpu: ...`.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Parse YAML text into a value tree.
pub fn parse_tree(text: &str) -> Result<Value> {
    serde_saphyr::from_str::<Value>(text).map_err(|e| Error::bad(format!("YAML: {e}")))
}

/// Read a typed structure from a value tree; errors name the field path.
pub fn from_tree<T: DeserializeOwned>(tree: Value) -> Result<T> {
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            Error::bad(inner)
        } else {
            Error::bad(format!("{path}: {inner}"))
        }
    })
}

/// Parse YAML text straight into a typed structure.
pub fn from_yaml_str<T: DeserializeOwned>(text: &str) -> Result<T> {
    from_tree(parse_tree(text)?)
}

/// Apply one `path.to.field=value` override. Path segments are map keys or list indices
/// (`cluster.engines.0.gpu` or `cluster.engines[0].gpu`); the value is read as YAML, so
/// `0.5` is a number, `A40` a string and `{dist: constant, value: 3}` a map.
pub fn apply_set(tree: &mut Value, assignment: &str) -> Result<()> {
    let (path, raw) = assignment
        .split_once('=')
        .ok_or_else(|| Error::bad(format!("--set {assignment}: expected path.to.field=value")))?;
    let path = path.trim();
    if path.is_empty() {
        return Err(Error::bad(format!("--set {assignment}: empty path")));
    }
    let value: Value = if raw.trim().is_empty() {
        Value::String(String::new())
    } else {
        parse_tree(raw).map_err(|e| e.context(format!("--set {path}")))?
    };
    let segs: Vec<String> = path.replace('[', ".").replace(']', "").split('.').filter(|s| !s.is_empty()).map(String::from).collect();
    let mut cur = tree;
    let mut walked = String::new();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let here = if walked.is_empty() { seg.clone() } else { format!("{walked}.{seg}") };
        cur = match cur {
            Value::Object(map) => {
                if last {
                    map.insert(seg.clone(), value);
                    return Ok(());
                }
                map.entry(seg.clone()).or_insert_with(|| Value::Object(Default::default()))
            }
            Value::Array(items) => {
                let idx: usize = seg.parse().map_err(|_| {
                    Error::bad(format!("--set {path}: `{walked}` is a list; `{seg}` is not an index"))
                })?;
                let len = items.len();
                let slot = items.get_mut(idx).ok_or_else(|| {
                    Error::bad(format!("--set {path}: `{walked}` has {len} entries; index {idx} is out of range"))
                })?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
            other => {
                return Err(Error::bad(format!(
                    "--set {path}: `{walked}` is a {} value, not a map or list, so `{here}` cannot be set",
                    kind(other)
                )))
            }
        };
        walked = here;
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_edits_maps_lists_and_parses_values_as_yaml() {
        let mut t = parse_tree("a: {b: 1}\nl: [{x: 1}, {x: 2}]\n").unwrap();
        apply_set(&mut t, "a.b=0.5").unwrap();
        apply_set(&mut t, "l[1].x=hello").unwrap();
        apply_set(&mut t, "l.0.x={dist: constant, value: 3}").unwrap();
        apply_set(&mut t, "new.deep=true").unwrap();
        assert_eq!(t["a"]["b"], serde_json::json!(0.5));
        assert_eq!(t["l"][1]["x"], serde_json::json!("hello"));
        assert_eq!(t["l"][0]["x"]["value"], serde_json::json!(3));
        assert_eq!(t["new"]["deep"], serde_json::json!(true));
    }

    #[test]
    fn set_errors_say_what_went_wrong() {
        let mut t = parse_tree("a: 1\nl: [1]\n").unwrap();
        let cases = [
            ("nothing", "expected path.to.field=value"),
            ("a.b=2", "`a` is a number value"),
            ("l.5=2", "index 5 is out of range"),
            ("l.x=2", "`x` is not an index"),
        ];
        for (arg, want) in cases {
            let e = apply_set(&mut t, arg).unwrap_err().to_string();
            assert!(e.contains(want), "{arg}: {e}");
        }
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        assert!(parse_tree("a: 1\na: 2\n").is_err());
    }
}
