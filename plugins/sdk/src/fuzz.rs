//! Property-test ("fuzzing") support for decoder plugins (feature `fuzz`; enable it in a
//! plugin's `[dev-dependencies]` only).
//!
//! A decoder reads what anyone on the network sends. These strategies make such input —
//! arbitrary bytes, any JSON, *near-valid* documents (a valid one with values retyped, keys
//! removed or added, strings made huge, values nested deeper), and JSON nested past every
//! parser's limit — and [`check_decoded`] is the property every decoder keeps: messages the
//! host accepts, or a 4xx [`Rejection`] with a reason; never a panic (which traps the call,
//! and the host answers 500).
//!
//! ```ignore
//! use proptest::prelude::*;
//! use tocsin_sdk::fuzz;
//!
//! proptest! {
//!     #![proptest_config(fuzz::config(256))]
//!     #[test]
//!     fn prop_any_body_decodes_or_is_refused(body in fuzz::body(fuzz::near(valid_doc()))) {
//!         fuzz::check_decoded(&MyDecoder.decode(fuzz::request(&[], body)))?;
//!     }
//! }
//! ```

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{Map, Value};

use crate::{HttpRequest, Message, MessageExt, Rejection, MAX_OUTPUT_BYTES, MAX_OUTPUT_MESSAGES};

/// A proptest configuration with `default_cases` cases, unless the `PROPTEST_CASES`
/// environment variable says otherwise. (Since proptest 1.2 `proptest!` applies `PROPTEST_*`
/// variables over a test's own configuration anyway, even over `ProptestConfig::with_cases`;
/// reading the variable here keeps that behaviour whichever way the test is run.)
pub fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Runs `test` on cases of `strategy`, as `proptest!` does, but on `PROPTEST_CASES / divisor`
/// cases (at least `default_cases`): for tests whose every case is megabytes, so that a long
/// run (`make fuzz-long`) scales them too without taking days. (`proptest!` would apply
/// `PROPTEST_CASES` itself.) Panics with the minimal failing input; a failure's seed is saved
/// beside the calling test's file and replayed first by later runs.
#[track_caller]
pub fn run_scaled<S: Strategy>(
    default_cases: u32,
    divisor: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default_cases, |n| (n / divisor.max(1)).max(default_cases));
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        source_file: Some(std::panic::Location::caller().file()),
        ..ProptestConfig::default()
    });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}\n{runner}");
    }
}

/// Text of any Unicode, mostly short, sometimes huge (up to 64 KiB of one character).
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => any::<String>(),
        2 => "[a-z0-9_.:/-]{0,16}",
        1 => (any::<char>(), 0..(64usize << 10))
            .prop_map(|(c, n)| c.to_string().repeat(n / c.len_utf8())),
    ]
}

/// Any JSON value: every type (any `i64`, `u64` and finite `f64`), objects and arrays nested
/// up to five levels, strings from [`text`].
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// One change to a JSON document, at a place picked by `path`.
#[derive(Debug, Clone)]
pub enum JsonEdit {
    /// The value there becomes another one (usually of another type).
    Replace(Vec<Index>, Value),
    /// The value there is removed from its object or array (the whole document becomes
    /// `null`).
    Remove(Vec<Index>),
    /// A key is added to the object there (or an element to the array).
    Add(Vec<Index>, String, Value),
    /// The value there becomes a huge string (its own text repeated, if it is a string).
    Huge(Vec<Index>, usize),
    /// The value there is wrapped in `depth` arrays.
    Nest(Vec<Index>, usize),
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    let path = || prop::collection::vec(any::<Index>(), 0..5);
    prop_oneof![
        4 => (path(), any_json()).prop_map(|(p, v)| JsonEdit::Replace(p, v)),
        3 => path().prop_map(JsonEdit::Remove),
        2 => (path(), text(), any_json()).prop_map(|(p, k, v)| JsonEdit::Add(p, k, v)),
        1 => (path(), 1..(256usize << 10)).prop_map(|(p, n)| JsonEdit::Huge(p, n)),
        1 => (path(), 1..40usize).prop_map(|(p, d)| JsonEdit::Nest(p, d)),
    ]
}

impl JsonEdit {
    /// Applies the edit to `doc`.
    pub fn apply(&self, doc: &mut Value) {
        match self {
            JsonEdit::Replace(path, v) => edit_at(doc, path, false, &mut |x| *x = v.clone()),
            JsonEdit::Remove(path) => edit_at(doc, path, true, &mut |x| *x = Value::Null),
            JsonEdit::Add(path, k, v) => edit_at(doc, path, false, &mut |x| match x {
                Value::Object(map) => {
                    map.insert(k.clone(), v.clone());
                }
                Value::Array(items) => items.push(v.clone()),
                other => {
                    let mut map = Map::new();
                    map.insert(k.clone(), v.clone());
                    *other = Value::Object(map);
                }
            }),
            JsonEdit::Huge(path, n) => edit_at(doc, path, false, &mut |x| {
                let seed = match x {
                    Value::String(s) if !s.is_empty() => s.clone(),
                    _ => "x".to_string(),
                };
                *x = Value::String(seed.repeat(n / seed.len() + 1));
            }),
            JsonEdit::Nest(path, depth) => edit_at(doc, path, false, &mut |x| {
                for _ in 0..*depth {
                    *x = Value::Array(vec![x.take()]);
                }
            }),
        }
    }
}

/// Walks `path` down `doc` (each index picks a child, while there are children) and applies
/// `f` there; with `remove`, the value reached is removed from its parent instead.
fn edit_at(doc: &mut Value, path: &[Index], remove: bool, f: &mut dyn FnMut(&mut Value)) {
    let len = match doc {
        Value::Object(map) => map.len(),
        Value::Array(items) => items.len(),
        _ => 0,
    };
    let Some((first, rest)) = path.split_first().filter(|_| len > 0) else {
        return f(doc);
    };
    let i = first.index(len);
    if remove && rest.is_empty() {
        match doc {
            Value::Object(map) => {
                let key = map.keys().nth(i).cloned().unwrap_or_default();
                map.remove(&key);
            }
            Value::Array(items) => {
                items.remove(i);
            }
            _ => {}
        }
        return;
    }
    let child = match doc {
        Value::Object(map) => map.values_mut().nth(i),
        Value::Array(items) => items.get_mut(i),
        _ => None,
    };
    if let Some(child) = child {
        edit_at(child, rest, remove, f);
    }
}

/// Documents near `valid` ones: each with one to four [`JsonEdit`]s.
pub fn near(valid: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    (valid, prop::collection::vec(json_edit(), 1..5)).prop_map(|(mut doc, edits)| {
        for e in &edits {
            e.apply(&mut doc);
        }
        doc
    })
}

/// JSON nested 1 to 5000 levels deep (serde_json refuses more than 128), as text: arrays or
/// objects, closed properly or not.
pub fn deeply_nested() -> impl Strategy<Value = Vec<u8>> {
    (1..5000usize, any::<bool>(), any::<bool>()).prop_map(|(depth, objects, closed)| {
        let (open, close) = if objects {
            ("{\"a\":", "}")
        } else {
            ("[", "]")
        };
        let mut out = open.repeat(depth);
        out.push('1');
        if closed {
            out.push_str(&close.repeat(depth));
        }
        out.into_bytes()
    })
}

/// Request bodies: the `docs` as JSON text (most of them), the same text cut short or with
/// bytes changed, deeply nested JSON, and arbitrary bytes.
pub fn body(docs: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Vec<u8>> {
    let docs = docs
        .prop_map(|d| serde_json::to_vec(&d).expect("a Value serialises"))
        .boxed();
    prop_oneof![
        6 => docs.clone(),
        2 => (docs, any::<Index>(), prop::collection::vec((any::<Index>(), any::<u8>()), 0..4))
            .prop_map(|(mut bytes, cut, changes)| {
                for (at, b) in changes {
                    if !bytes.is_empty() {
                        let i = at.index(bytes.len());
                        bytes[i] = b;
                    }
                }
                bytes.truncate(cut.index(bytes.len() + 1));
                bytes
            }),
        1 => deeply_nested(),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// A `POST` request with these headers (names as the host passes them: lower case) and body.
pub fn request(headers: &[(&str, &str)], body: Vec<u8>) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        path: "/ingest/fuzz".into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body,
    }
}

/// The messages of a decode that must succeed; its rejection as the test's failure.
pub fn accepted(result: Result<Vec<Message>, Rejection>) -> Result<Vec<Message>, TestCaseError> {
    result.map_err(|r| TestCaseError::fail(format!("refused with {}: {}", r.status, r.reason)))
}

/// The property of every decoder: messages within the host's output caps
/// ([`MAX_OUTPUT_MESSAGES`], [`MAX_OUTPUT_BYTES`]; beyond them the host fails the call with
/// a 500), or a rejection with a 4xx status and a reason.
pub fn check_decoded(result: &Result<Vec<Message>, Rejection>) -> Result<(), TestCaseError> {
    match result {
        Ok(messages) => {
            prop_assert!(
                messages.len() <= MAX_OUTPUT_MESSAGES,
                "{} messages: the host fails the call (500)",
                messages.len()
            );
            let bytes: usize = messages.iter().map(MessageExt::approx_size).sum();
            prop_assert!(
                bytes <= MAX_OUTPUT_BYTES,
                "{} bytes of messages: the host fails the call (500)",
                bytes
            );
        }
        Err(r) => {
            prop_assert!(
                (400..=499).contains(&r.status),
                "status {} for {}",
                r.status,
                r.reason
            );
            prop_assert!(
                !r.reason.trim().is_empty(),
                "a {} without a reason",
                r.status
            );
        }
    }
    Ok(())
}
