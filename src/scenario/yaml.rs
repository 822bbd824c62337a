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

/// Join a serde path and an error message that may carry a deeper path as `@sub: message`
/// (from [`nested`]) into `path.sub: message`.
fn join_path(path: &str, msg: &str) -> String {
    let path = if path == "." { "" } else { path };
    let (sub, rest) = match msg.strip_prefix('@').and_then(|m| m.split_once(": ")) {
        Some((sub, rest)) => (sub, rest),
        None => ("", msg),
    };
    let full = match (path.is_empty(), sub.is_empty()) {
        (true, true) => String::new(),
        (true, false) => sub.to_string(),
        (false, true) => path.to_string(),
        (false, false) => format!("{path}.{sub}"),
    };
    if full.is_empty() {
        rest.to_string()
    } else {
        format!("{full}: {rest}")
    }
}

/// Read a typed structure from a value tree; errors name the field path.
pub fn from_tree<T: DeserializeOwned>(tree: Value) -> Result<T> {
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        Error::bad(join_path(&path, &e.into_inner().to_string()))
    })
}

/// Read a part of a document inside a hand-written `TryFrom<Value>`; the error keeps the
/// part's inner path as `@path: message`, which [`from_tree`] joins to the outer path.
pub fn nested<T: DeserializeOwned>(v: Value) -> std::result::Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let msg = join_path(&path, &e.into_inner().to_string());
        if path == "." || path.is_empty() {
            msg
        } else {
            format!("@{msg}")
        }
    })
}

/// Parse YAML text straight into a typed structure.
pub fn from_yaml_str<T: DeserializeOwned>(text: &str) -> Result<T> {
    from_tree(parse_tree(text)?)
}

/// Apply one `path.to.field=value` override. Path segments are map keys or list indices
/// (`cluster.engines.0.gpu` or `cluster.engines[0].gpu`); the value is read as YAML, so
/// `0.5` is a number, `A40` a string and `{dist: constant, value: 3}` a map. A `[*]` index sets
/// the field in every entry of a list (`cluster.engines[*].gpu=H100`).
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
    let segs = split_path(path).map_err(|m| Error::bad(format!("--set {path}: {m}")))?;
    set_at(tree, &segs, &value, path, "")
}

/// Set `value` at `segs` under `cur`; `*` as a list index sets every entry of the list.
fn set_at(cur: &mut Value, segs: &[String], value: &Value, path: &str, walked: &str) -> Result<()> {
    let Some((seg, rest)) = segs.split_first() else {
        *cur = value.clone();
        return Ok(());
    };
    let here = if walked.is_empty() {
        seg.clone()
    } else {
        format!("{walked}.{seg}")
    };
    match cur {
        Value::Object(map) => {
            let slot = map.entry(seg.clone()).or_insert_with(|| {
                if rest.is_empty() {
                    Value::Null
                } else {
                    Value::Object(Default::default())
                }
            });
            set_at(slot, rest, value, path, &here)
        }
        Value::Array(items) if seg == "*" => {
            for (k, item) in items.iter_mut().enumerate() {
                set_at(item, rest, value, path, &format!("{walked}[{k}]"))?;
            }
            Ok(())
        }
        Value::Array(items) => {
            let idx: usize = seg.parse().map_err(|_| {
                Error::bad(format!(
                    "--set {path}: `{walked}` is a list; `{seg}` is not an index (or `*` for all)"
                ))
            })?;
            let len = items.len();
            let slot = items.get_mut(idx).ok_or_else(|| {
                Error::bad(format!(
                    "--set {path}: `{walked}` has {len} entries; index {idx} is out of range"
                ))
            })?;
            set_at(slot, rest, value, path, &here)
        }
        other => Err(Error::bad(format!(
            "--set {path}: `{walked}` is a {} value, not a map or list, so `{here}` cannot be set",
            kind(other)
        ))),
    }
}

/// Split `a.b[0]."x.y"[Qwen2.5-7B]` into `a`, `b`, `0`, `x.y`, `Qwen2.5-7B`: dots separate
/// segments; brackets and double quotes take their content literally (model names have dots).
fn split_path(path: &str) -> std::result::Result<Vec<String>, String> {
    let mut segs = Vec::new();
    let mut cur = String::new();
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                if !cur.is_empty() {
                    segs.push(std::mem::take(&mut cur));
                }
            }
            '[' | '"' => {
                if !cur.is_empty() {
                    segs.push(std::mem::take(&mut cur));
                }
                let close = if c == '[' { ']' } else { '"' };
                let mut lit = String::new();
                loop {
                    match chars.next() {
                        Some(x) if x == close => break,
                        Some(x) => lit.push(x),
                        None => return Err(format!("unclosed `{c}`")),
                    }
                }
                let lit = lit.trim_matches('"').to_string();
                segs.push(lit);
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        segs.push(cur);
    }
    if segs.is_empty() {
        return Err("empty path".into());
    }
    Ok(segs)
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
        apply_set(&mut t, "m[Qwen2.5-7B]=0.25").unwrap();
        apply_set(&mut t, "m.\"Qwen2.5-1.5B\"=0.75").unwrap();
        assert_eq!(t["m"]["Qwen2.5-7B"], serde_json::json!(0.25));
        assert_eq!(t["m"]["Qwen2.5-1.5B"], serde_json::json!(0.75));
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
