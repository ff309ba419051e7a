//! A plugin's declared settings: the JSON Schema its component carries (the custom section
//! `tocsin-settings`, written by the SDK's `declare_settings!`), and a stage's `config` checked
//! against it before anything runs — the same check for `tocsin validate` and `tocsin run`.
//!
//! A plugin that declares no schema (every contract 0.1.0 plugin built before the SDK could)
//! still loads; its `config` is handed over unchecked and `validate` says so.

use serde_json::Value;

/// The custom section holding a component's settings schema.
pub const SECTION: &str = "tocsin-settings";

/// The settings schema a component carries, if any. `Err` when its schema is not JSON. Bytes
/// that are not WebAssembly carry none (loading the plugin reports them, with more to say).
pub fn schema_in(component: &[u8]) -> Result<Option<Value>, String> {
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        let Ok(payload) = payload else {
            return Ok(None);
        };
        if let wasmparser::Payload::CustomSection(section) = payload {
            if section.name() == SECTION {
                return serde_json::from_slice(section.data())
                    .map(Some)
                    .map_err(|e| format!("its `{SECTION}` section is not JSON: {e}"));
            }
        }
    }
    Ok(None)
}

/// One way a `config` breaks its plugin's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    /// Where, as keys from the top of `config`: `["above", "warm"]`.
    pub path: Vec<String>,
    /// What is wrong, in words.
    pub message: String,
}

/// Every way `config` breaks `schema`, worded for an operator: unknown keys with the nearest
/// known one, wrong types, missing required keys, values out of range. Empty when it is valid.
pub fn check(schema: &Value, config: &Value) -> Vec<SettingsError> {
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => {
            return vec![SettingsError {
                path: Vec::new(),
                message: format!("the plugin's settings schema is not valid: {e}"),
            }]
        }
    };
    let mut out = Vec::new();
    for error in validator.iter_errors(config) {
        let path = pointer_keys(error.instance_path().as_str());
        let here = value_at(config, &path);
        out.extend(explain(
            schema,
            &path,
            here,
            error.kind(),
            &error.to_string(),
        ));
    }
    out
}

fn explain(
    schema: &Value,
    path: &[String],
    value: Option<&Value>,
    kind: &jsonschema::error::ValidationErrorKind,
    fallback: &str,
) -> Vec<SettingsError> {
    use jsonschema::error::ValidationErrorKind as K;
    let at = |message: String| SettingsError {
        path: path.to_vec(),
        message,
    };
    match kind {
        K::AdditionalProperties { unexpected } => unknown_keys(schema, path, unexpected.iter()),
        // `additionalProperties: false` on a table that takes no keys at all is reported as
        // a false schema: at the table, or at the key.
        K::FalseSchema => match (value, path.split_last()) {
            (Some(Value::Object(map)), _) => {
                let known = properties_at(schema, path);
                unknown_keys(schema, path, map.keys().filter(|key| !known.contains(key)))
            }
            (_, Some((key, parent))) => vec![at(unknown_key(key, &properties_at(schema, parent)))],
            _ => vec![at(fallback.to_string())],
        },
        K::Required { property } => {
            let name = property.as_str().unwrap_or_default().to_string();
            let mut key_path = path.to_vec();
            key_path.push(name.clone());
            let what = describe(subschema_at(schema, &key_path));
            vec![SettingsError {
                path: key_path,
                message: format!("is required{what}"),
            }]
        }
        K::Type { .. } | K::AnyOf { .. } | K::OneOfNotValid { .. } => {
            // An optional setting is `anyOf [its schema, null]`: say what is wrong inside it.
            if let (Some(inner), Some(value)) = (non_null_branch(schema, path), value) {
                let nested = nested_errors(schema, inner, value, path);
                if !nested.is_empty() {
                    return nested;
                }
            }
            vec![at(format!(
                "expected {}, found {}",
                expected_type(subschema_at(schema, path)),
                found(value)
            ))]
        }
        K::Enum { options } => vec![at(format!(
            "{} is not one of {}",
            found(value),
            options
                .as_array()
                .map(|o| o
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ))],
        K::Pattern { pattern } if pattern == "^https?://" => {
            vec![at(format!(
                "{} must start with https:// or http://",
                found(value)
            ))]
        }
        K::Pattern { pattern } => vec![at(format!(
            "{} does not match the pattern `{pattern}`",
            found(value)
        ))],
        K::Minimum { limit } | K::ExclusiveMinimum { limit } => {
            vec![at(format!(
                "{} is below the least allowed, {limit}",
                found(value)
            ))]
        }
        K::Maximum { limit } | K::ExclusiveMaximum { limit } => {
            vec![at(format!(
                "{} is above the most allowed, {limit}",
                found(value)
            ))]
        }
        _ => vec![at(fallback.to_string())],
    }
}

/// The errors of `value` against `inner` (a branch of an optional setting), with their paths
/// below `path`.
fn nested_errors(
    root: &Value,
    inner: &Value,
    value: &Value,
    path: &[String],
) -> Vec<SettingsError> {
    let mut standalone = inner.clone();
    if let (Some(object), Some(defs)) = (standalone.as_object_mut(), root.get("$defs")) {
        object.insert("$defs".into(), defs.clone());
    }
    check(&standalone, value)
        .into_iter()
        .map(|mut e| {
            let mut full = path.to_vec();
            full.append(&mut e.path);
            e.path = full;
            e
        })
        .collect()
}

/// An error for each of `keys`, unknown in the table at `path`.
fn unknown_keys<'k>(
    schema: &Value,
    path: &[String],
    keys: impl Iterator<Item = &'k String>,
) -> Vec<SettingsError> {
    let known = properties_at(schema, path);
    keys.map(|key| {
        let mut key_path = path.to_vec();
        key_path.push(key.clone());
        SettingsError {
            path: key_path,
            message: unknown_key(key, &known),
        }
    })
    .collect()
}

fn unknown_key(key: &str, known: &[String]) -> String {
    let nearest = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min();
    match nearest {
        Some((_, k)) => format!("unknown setting `{key}`; did you mean `{k}`?"),
        None if known.is_empty() => format!("unknown setting `{key}`: this takes no settings"),
        None => format!(
            "unknown setting `{key}`; the settings are {}",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// ", a string: the metric to compare" — what a missing setting is, for its error.
fn describe(schema: Option<&Value>) -> String {
    let Some(schema) = schema else {
        return String::new();
    };
    let description = schema
        .get("description")
        .and_then(Value::as_str)
        .and_then(|d| d.lines().next())
        .map(|d| format!(": {}", d.trim_end_matches('.').to_lowercase()))
        .unwrap_or_default();
    format!(" ({}{description})", expected_type(Some(schema)))
}

/// The type a schema asks for, in words: "a string", "a number", "a table", …
pub fn expected_type(schema: Option<&Value>) -> String {
    let Some(schema) = schema else {
        return "a value".into();
    };
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return format!(
            "one of {}",
            values
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let word = |t: &str| match t {
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "true or false",
        "array" => "an array",
        "object" => "a table",
        "null" => "",
        _ => "a value",
    };
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![word(t)],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).map(word).collect(),
        _ => Vec::new(),
    };
    let types: Vec<&str> = types.into_iter().filter(|t| !t.is_empty()).collect();
    if !types.is_empty() {
        return types.join(" or ");
    }
    if schema.get("$ref").is_some() || schema.get("properties").is_some() {
        return "a table".into();
    }
    "a value".into()
}

fn found(value: Option<&Value>) -> String {
    match value {
        None => "nothing".into(),
        Some(Value::String(s)) => format!("the string {:?}", s),
        Some(Value::Object(_)) => "a table".into(),
        Some(Value::Array(_)) => "an array".into(),
        Some(other) => other.to_string(),
    }
}

/// `/above/warm` → `["above", "warm"]` (JSON pointer escapes undone).
fn pointer_keys(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|k| k.replace("~1", "/").replace("~0", "~"))
        .collect()
}

fn value_at<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, key| match v {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// `schema` itself, or what its local `$ref` (`#/$defs/Name`) points at in `root`.
fn resolve<'s>(root: &'s Value, schema: &'s Value) -> &'s Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => reference
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer))
            .unwrap_or(schema),
        None => schema,
    }
}

/// The branch of an `anyOf`/`oneOf` that is not `{"type": "null"}`, when there is one such.
fn non_null_branch<'s>(root: &'s Value, path: &[String]) -> Option<&'s Value> {
    let schema = subschema_at(root, path)?;
    let branches = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))?
        .as_array()?;
    let mut others = branches
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"));
    let only = others.next()?;
    others.next().is_none().then(|| resolve(root, only))
}

/// The schema of the value at `path` below the top of `root`, following local `$ref`s and the
/// non-null branch of optional settings.
pub fn subschema_at<'s>(root: &'s Value, path: &[String]) -> Option<&'s Value> {
    let mut schema = resolve(root, root);
    for key in path {
        schema = object_schema(root, schema);
        schema = match schema.get("properties").and_then(|p| p.get(key)) {
            Some(property) => resolve(root, property),
            None => resolve(root, schema.get("items")?),
        };
    }
    Some(schema)
}

/// A schema that may be an optional table (`anyOf [table, null]`) → the table's schema.
fn object_schema<'s>(root: &'s Value, schema: &'s Value) -> &'s Value {
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
        if let Some(table) = branches
            .iter()
            .map(|b| resolve(root, b))
            .find(|b| b.get("properties").is_some())
        {
            return table;
        }
    }
    schema
}

/// The setting names a table at `path` takes.
pub fn properties_at(root: &Value, path: &[String]) -> Vec<String> {
    subschema_at(root, path)
        .map(|s| object_schema(root, s))
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// One setting as a reference lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingRow {
    /// Its key; a nested table's keys are dotted: `above.warn`.
    pub name: String,
    /// Its type, in words: "a string", "an array of strings", "a table", …
    pub kind: String,
    /// Its default as TOML would write it, when the schema states one.
    pub default: Option<String>,
    /// Whether a `config` must set it.
    pub required: bool,
    /// What it means: the first paragraph of its description, on one line.
    pub description: String,
}

/// Every setting `schema` declares, nested tables' keys after their table's, in the schema's
/// order of properties (alphabetical, as `schemars` writes them).
pub fn settings_rows(schema: &Value) -> Vec<SettingRow> {
    let mut rows = Vec::new();
    collect_rows(schema, &[], &mut rows);
    rows
}

fn collect_rows(root: &Value, path: &[String], rows: &mut Vec<SettingRow>) {
    let Some(table) = subschema_at(root, path).map(|s| object_schema(root, s)) else {
        return;
    };
    let required: Vec<&str> = table
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = table.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (key, property) in properties {
        let mut key_path = path.to_vec();
        key_path.push(key.clone());
        let resolved = object_schema(root, resolve(root, property));
        let description = property
            .get("description")
            .or_else(|| resolved.get("description"))
            .and_then(Value::as_str)
            .map(|d| {
                d.split("\n\n")
                    .next()
                    .unwrap_or_default()
                    .replace('\n', " ")
            })
            .unwrap_or_default();
        rows.push(SettingRow {
            name: key_path.join("."),
            kind: kind_words(root, property),
            default: property.get("default").map(toml_literal),
            required: required.contains(&key.as_str()),
            description,
        });
        if resolved.get("properties").is_some() {
            collect_rows(root, &key_path, rows);
        }
    }
}

/// A property's type in words, `$ref`s, optional branches and array items followed.
fn kind_words(root: &Value, property: &Value) -> String {
    let schema = match non_null_of(root, property) {
        Some(inner) => inner,
        None => resolve(root, property),
    };
    let is_array = match schema.get("type") {
        Some(Value::String(t)) => t == "array",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "array"),
        _ => false,
    };
    if is_array {
        if let Some(items) = schema.get("items") {
            let item = kind_words(root, items);
            let plural = item
                .trim_start_matches("a ")
                .trim_start_matches("an ")
                .to_string();
            return format!("an array of {plural}s");
        }
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        return format!("a table of {}", kind_words(root, values));
    }
    expected_type(Some(schema))
}

/// The non-null branch of an optional property, resolved.
fn non_null_of<'s>(root: &'s Value, property: &'s Value) -> Option<&'s Value> {
    let branches = property.get("anyOf")?.as_array()?;
    let mut others = branches
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"));
    let only = others.next()?;
    others.next().is_none().then(|| resolve(root, only))
}

/// A JSON default as a pipeline file writes it: `"text"`, `[]`, `5`, `{}`.
fn toml_literal(value: &Value) -> String {
    match value {
        Value::Object(map) if map.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The shape `schemars` gives `threshold`'s config.
    fn schema() -> Value {
        json!({
            "$defs": {"Levels": {"type": "object", "additionalProperties": false,
                "properties": {"warn": {"type": ["number", "null"]}, "error": {"type": ["number", "null"]}}}},
            "type": "object",
            "additionalProperties": false,
            "required": ["metric"],
            "properties": {
                "metric": {"type": "string", "description": "The metric to compare."},
                "above": {"anyOf": [{"$ref": "#/$defs/Levels"}, {"type": "null"}]},
                "key_labels": {"type": "array", "items": {"type": "string"}, "default": []},
                "mode": {"enum": ["strict", "loose"]},
                "count": {"type": "integer", "minimum": 1},
                "url": {"type": "string", "pattern": "^https?://"}
            }
        })
    }

    fn assert_has(found: &[(String, String)], path: &str, message: &str) {
        assert!(
            found.iter().any(|(p, m)| p == path && m == message),
            "`{path}: {message}` not in {found:?}"
        );
    }

    fn errors(config: Value) -> Vec<(String, String)> {
        check(&schema(), &config)
            .into_iter()
            .map(|e| (e.path.join("."), e.message))
            .collect()
    }

    #[test]
    fn a_valid_config_has_no_errors() {
        assert!(
            errors(json!({"metric": "cpu", "above": {"warn": 80}, "key_labels": ["host"]}))
                .is_empty()
        );
    }

    #[test]
    fn typos_get_the_nearest_known_key_at_any_depth() {
        let found = errors(json!({"metrc": "cpu", "abov": {"warn": 80}}));
        assert_has(
            &found,
            "metrc",
            "unknown setting `metrc`; did you mean `metric`?",
        );
        assert_has(
            &found,
            "abov",
            "unknown setting `abov`; did you mean `above`?",
        );
        assert_has(
            &found,
            "metric",
            "is required (a string: the metric to compare)",
        );
        let nested = errors(json!({"metric": "cpu", "above": {"warm": 80}}));
        assert_eq!(
            nested,
            vec![(
                "above.warm".into(),
                "unknown setting `warm`; did you mean `warn`?".into()
            )]
        );
        let far = errors(json!({"metric": "cpu", "zzzzzz": 1}));
        assert!(
            far[0].1.contains("the settings are `above`, `count`"),
            "{far:?}"
        );
    }

    #[test]
    fn a_plugin_that_takes_no_settings_names_each_key_given() {
        let none = json!({"type": "object", "additionalProperties": false});
        let found: Vec<(String, String)> = check(&none, &json!({"zz": 1}))
            .into_iter()
            .map(|e| (e.path.join("."), e.message))
            .collect();
        assert_eq!(
            found,
            vec![(
                "zz".into(),
                "unknown setting `zz`: this takes no settings".into()
            )]
        );
    }

    #[test]
    fn wrong_types_enums_and_ranges_are_named() {
        let found = errors(json!({"metric": 5, "key_labels": "host", "mode": "fast", "count": 0}));
        assert_has(&found, "metric", "expected a string, found 5");
        assert_has(
            &found,
            "key_labels",
            "expected an array, found the string \"host\"",
        );
        assert_has(
            &found,
            "mode",
            "the string \"fast\" is not one of \"strict\", \"loose\"",
        );
        assert_has(&found, "count", "0 is below the least allowed, 1");
        let url = errors(json!({"metric": "cpu", "url": "ftp://x"}));
        assert_has(
            &url,
            "url",
            "the string \"ftp://x\" must start with https:// or http://",
        );
        let inner = errors(json!({"metric": "cpu", "above": {"warn": "high"}}));
        assert_eq!(
            inner,
            vec![(
                "above.warn".into(),
                "expected a number, found the string \"high\"".into()
            )]
        );
    }

    #[test]
    fn rows_list_every_setting_with_its_type_default_and_need() {
        let rows = settings_rows(&schema());
        let row = |name: &str| rows.iter().find(|r| r.name == name).unwrap().clone();
        assert_eq!(
            row("metric"),
            SettingRow {
                name: "metric".into(),
                kind: "a string".into(),
                default: None,
                required: true,
                description: "The metric to compare.".into(),
            }
        );
        assert_eq!(row("above").kind, "a table");
        assert_eq!(row("above.warn").kind, "a number");
        assert_eq!(row("key_labels").kind, "an array of strings");
        assert_eq!(row("key_labels").default.as_deref(), Some("[]"));
        assert!(!row("key_labels").required);
        assert_eq!(row("mode").kind, "one of \"strict\", \"loose\"");
    }

    #[test]
    fn a_component_without_the_section_declares_nothing() {
        // An empty core module: magic and version only.
        let empty = b"\0asm\x01\0\0\0";
        assert_eq!(schema_in(empty).unwrap(), None);
        let mut with = empty.to_vec();
        let name = SECTION.as_bytes();
        let payload = br#"{"type":"object"}"#;
        with.push(0);
        with.push((1 + name.len() + payload.len()) as u8);
        with.push(name.len() as u8);
        with.extend_from_slice(name);
        with.extend_from_slice(payload);
        assert_eq!(schema_in(&with).unwrap(), Some(json!({"type": "object"})));
        assert_eq!(schema_in(b"not wasm").unwrap(), None);
        let mut bad = empty.to_vec();
        bad.extend_from_slice(&[0, 1 + name.len() as u8 + 3, name.len() as u8]);
        bad.extend_from_slice(name);
        bad.extend_from_slice(b"{x}");
        assert!(schema_in(&bad).unwrap_err().contains("not JSON"));
    }
}
