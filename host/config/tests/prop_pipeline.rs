//! Property tests ("fuzzing") of pipeline-file parsing and validation.
//!
//! - Arbitrary text, TOML-looking token soup and byte mutations of the real pipeline files
//!   (`pipelines/`, `pipelines/with-servers/`, `tests/fixtures/invalid/`) never panic, and
//!   every diagnostic names the file and, when the problem has a place in the file, a
//!   `line:col` inside the text (`<file>:<line>:<col>: <field>: <sentence>`).
//! - Generated valid pipeline files parse and validate into a spec with the same values.
//!
//! Every test is named `prop_*`, so `cargo test prop_` runs exactly these. The number of
//! cases is small by default and `PROPTEST_CASES` raises it (`make fuzz-long`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::TimeZone;
use proptest::prelude::*;
use proptest::sample::Index;
use sha2::{Digest, Sha256};
use tocsin_config::schedule::parse_cron;
use tocsin_config::*;
use tocsin_message::Severity;

/// `default_cases` cases, unless `PROPTEST_CASES` says otherwise. (Since proptest 1.2
/// `proptest!` applies `PROPTEST_*` variables over a test's own configuration anyway, even over
/// `ProptestConfig::with_cases`; reading the variable here keeps that behaviour explicit.)
fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The world the files are checked in: a plugin directory and a pipelines directory.

struct World {
    /// Where generated pipeline files "live" (relative grants and paths resolve here).
    pipelines: PathBuf,
    /// A resolver that knows every plugin of this repository, and a few test ones.
    resolver: PluginResolver,
}

/// Plugin files of the generated pipelines: (name as written, file it resolves to).
const GEN_PLUGINS: &[(&str, &str)] = &[
    ("gen-source", "gen_source.wasm"),
    ("gen_source", "gen_source.wasm"),
    ("gen-filter", "gen-filter.wasm"),
    ("gensink", "gensink.wasm"),
];
/// A plugin named by path, relative to the pipeline file.
const PATH_PLUGIN: &str = "custom/my-plugin.wasm";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tocsin-config-prop");
        let plugins = root.join("plugins");
        let pipelines = root.join("pipelines");
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::create_dir_all(pipelines.join("custom")).unwrap();
        let mut names: BTreeSet<String> = GEN_PLUGINS
            .iter()
            .map(|(_, f)| f.trim_end_matches(".wasm").to_string())
            .collect();
        // Every plugin crate of the repository, so the example files resolve.
        for entry in std::fs::read_dir(repo_root().join("plugins")).unwrap() {
            let path = entry.unwrap().path();
            if path.join("Cargo.toml").is_file() {
                names.insert(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
        for name in names {
            std::fs::write(plugins.join(format!("{name}.wasm")), plugin_bytes(&name)).unwrap();
        }
        std::fs::write(pipelines.join(PATH_PLUGIN), plugin_bytes(PATH_PLUGIN)).unwrap();
        World {
            pipelines,
            resolver: PluginResolver::new(vec![plugins]),
        }
    })
}

/// Distinct contents per plugin file, so a pin names one file.
fn plugin_bytes(name: &str) -> Vec<u8> {
    format!("\0asm fake plugin {name}").into_bytes()
}

// ---------------------------------------------------------------------------------------------
// The shape of diagnostics.

/// Problems of the whole file, which have no place in it: an invalid file name, no `[[sink]]`
/// at all, an ingest source without any `auth` (tests/fixtures/invalid/no-sink.toml pins the
/// rendering `no-sink.toml: sink: …` without a position).
fn whole_file_problem(d: &Diagnostic) -> bool {
    (d.field.is_empty() && d.message.starts_with("the file name"))
        || (d.field == "sink" && d.message.contains("at least one [[sink]]"))
        || (d.field == "source.auth" && d.message.starts_with("an ingest source needs `auth`"))
}

/// Every diagnostic names `path`, and a line:col inside `text` unless the problem is the whole
/// file's; rendered as `<path>[:<line>:<col>]: [<field>: ]<message>`.
fn check_diagnostics(path: &Path, text: &str, diags: &[Diagnostic]) -> Result<(), TestCaseError> {
    prop_assert!(!diags.is_empty(), "an error without a diagnostic");
    let shown = path.display().to_string();
    let lines: Vec<&str> = text.split('\n').collect();
    for d in diags {
        let rendered = d.to_string();
        prop_assert_eq!(&d.file, path, "{}", rendered);
        prop_assert!(!d.message.trim().is_empty(), "empty message: {}", rendered);
        let tail = match (d.line, d.column) {
            (Some(line), Some(col)) => {
                let prefix = format!("{shown}:{line}:{col}: ");
                prop_assert!(rendered.starts_with(&prefix), "{}", rendered);
                prop_assert!(
                    (1..=lines.len()).contains(&line),
                    "line {} outside 1..={}: {}",
                    line,
                    lines.len(),
                    rendered
                );
                let len = lines[line - 1].len();
                prop_assert!(
                    (1..=len + 1).contains(&col),
                    "column {} outside 1..={}: {}",
                    col,
                    len + 1,
                    rendered
                );
                rendered[prefix.len()..].to_string()
            }
            (None, None) => {
                prop_assert!(
                    whole_file_problem(d),
                    "no line:col for a problem with a place in the file: {}",
                    rendered
                );
                let prefix = format!("{shown}: ");
                prop_assert!(rendered.starts_with(&prefix), "{}", rendered);
                rendered[prefix.len()..].to_string()
            }
            _ => {
                return Err(TestCaseError::fail(format!(
                    "line without column: {rendered}"
                )))
            }
        };
        if d.field.is_empty() {
            prop_assert_eq!(tail, d.message.clone());
        } else {
            prop_assert_eq!(tail, format!("{}: {}", d.field, d.message));
        }
    }
    Ok(())
}

/// Parses `text` as the file `path` in both machine-check modes; never panics (the harness
/// catches a panic and reports it with the input); every error is well-formed.
fn parse_both_ways(path: &Path, text: &str) -> Result<(), TestCaseError> {
    for machine in [MachineCheck::Skip, MachineCheck::Check] {
        if let Err(diags) = parse_pipeline(path, text, &world().resolver, machine) {
            check_diagnostics(path, text, &diags)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Inputs: the real files, token soup, mutations.

/// Every example and fixture pipeline file: (path, text).
fn example_files() -> &'static [(PathBuf, String)] {
    static FILES: OnceLock<Vec<(PathBuf, String)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let root = repo_root();
        let mut files = Vec::new();
        for dir in [
            "pipelines",
            "pipelines/with-servers",
            "tests/fixtures/invalid",
        ] {
            for path in pipeline_files(&root.join(dir)).unwrap() {
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((path, text));
            }
        }
        assert!(files.len() >= 15, "only {} example files", files.len());
        files
    })
}

/// Fragments a pipeline file is made of, and some that break it.
const TOKENS: &[&str] = &[
    "[source]\n",
    "[[filter]]\n",
    "[[sink]]\n",
    "[sink]\n",
    "[source.grants]\n",
    "plugin = \"stdout\"\n",
    "plugin = \"backup-check\"\n",
    "plugin = \"json\"\n",
    "plugin = \"custom/my-plugin.wasm\"\n",
    "plugin = \"../x.wasm\"\n",
    "name = \"out\"\n",
    "name = \"Out Put\"\n",
    "schedule = \"*/10 * * * * *\"\n",
    "schedule = \"0 61 * * * *\"\n",
    "schedule = \"* * * * * * 99999999999\"\n",
    "schedule = \"1-4294967295 * * * *\"\n",
    "timezone = \"Europe/Berlin\"\n",
    "timezone = \"Mars/Olympus\"\n",
    "run_on_start = true\n",
    "auth = { none = true }\n",
    "auth = { bearer = \"env:TOKEN\" }\n",
    "auth = { github_secret = \"file:\" }\n",
    "auth = { oidc = { jwks = \"file:/no/jwks.json\", audience = \"\" } }\n",
    "auth = { none = true, bearer = \"env:X\" }\n",
    "body_limit = \"1GiB\"\n",
    "body_limit = \"0B\"\n",
    "sha256 = \"00\"\n",
    "version = 2\n",
    "version = 1\n",
    "disabled = true\n",
    "queue_budget = \"1KiB\"\n",
    "queue_budget = \"64MiB\"\n",
    "filter_retry = { max_attempts = 0 }\n",
    "retry = { initial = \"2m\", max = \"1s\" }\n",
    "retry = { initial = \"20m\" }\n",
    "retry = { multiplier = 1e400 }\n",
    "retry = { multiplier = nan }\n",
    "retry = { max = \"600000000000y\" }\n",
    "limits = { memory = \"lots\", fuel = 0, timeout = \"0s\" }\n",
    "limits = { memory = \"18446744073709551615GiB\" }\n",
    "limits = { fuel = -1 }\n",
    "match = { severity = \">= warning\", labels = { team = \"ops\" } }\n",
    "match = { severity = \"<=> fatal\" }\n",
    "grants = { read_dirs = [\"demo/backups\", \"../etc\", \"\", \"/\"] }\n",
    "grants = { hosts = [\"a:99999\", \"http://x/\", \"Matrix.Example.org:443\"] }\n",
    "grants = { secrets = { token = \"env:\", other = \"plain\" } }\n",
    "grants = { stdout = \"yes\" }\n",
    "config = { a = 1, b = [1, \"x\", { c = 1979-05-27T07:32:00Z }] }\n",
    "config = { nested = { deeper = { deepest = [[[[[]]]]] } } }\n",
    "typo = 1\n",
    "= \"\"\n",
    "\"\"\" unterminated\n",
    "'literal'\n",
    "# comment é\n",
    "\r\n",
    "\n",
    " ",
    "\t",
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    ",",
    "=",
    ".",
    "\\u",
    "\\",
    "é",
    "\u{feff}",
    "\u{0}",
    "\u{7f}",
    "𝄞",
    "1979-05-27",
    "0x7fffffffffffffff",
    "-9223372036854775809",
    "inf",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..40).prop_map(|t| t.concat())
}

/// One edit of a file's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    InsertByte(Index, u8),
    Delete(Index, usize),
    Duplicate(Index, usize, Index),
    InsertToken(Index, &'static str),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::InsertByte(i, b)),
        (any::<Index>(), 1..16usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), 1..64usize, any::<Index>())
            .prop_map(|(i, n, j)| Mutation::Duplicate(i, n, j)),
        (any::<Index>(), prop::sample::select(TOKENS))
            .prop_map(|(i, t)| Mutation::InsertToken(i, t)),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    let at = |i: &Index| if len == 0 { 0 } else { i.index(len) };
    let insert_at = |i: &Index| i.index(len + 1);
    match m {
        Mutation::FlipBit(i, bit) if len > 0 => bytes[at(i)] ^= 1 << bit,
        Mutation::SetByte(i, b) if len > 0 => bytes[at(i)] = *b,
        Mutation::InsertByte(i, b) => bytes.insert(insert_at(i), *b),
        Mutation::Delete(i, n) if len > 0 => {
            let start = at(i);
            bytes.drain(start..(start + n).min(len));
        }
        Mutation::Duplicate(i, n, j) if len > 0 => {
            let start = at(i);
            let piece = bytes[start..(start + n).min(len)].to_vec();
            let to = insert_at(j);
            bytes.splice(to..to, piece);
        }
        Mutation::InsertToken(i, t) => {
            let to = insert_at(i);
            bytes.splice(to..to, t.bytes());
        }
        Mutation::Truncate(i) => bytes.truncate(insert_at(i)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Any text at all, as a pipeline file.
    #[test]
    fn prop_arbitrary_text_never_panics_and_errors_name_file_and_place(text in any::<String>()) {
        let path = world().pipelines.join("fuzzed.toml");
        parse_both_ways(&path, &text)?;
    }

    /// Token soup: text made of pipeline-file fragments, so the checks past TOML syntax run.
    #[test]
    fn prop_token_soup_never_panics_and_errors_name_file_and_place(text in token_soup()) {
        let path = world().pipelines.join("soup.toml");
        parse_both_ways(&path, &text)?;
    }

    /// Byte mutations of the real example and fixture files, in their own directory (so
    /// relative grants and secret files resolve as they would).
    #[test]
    fn prop_mutated_example_files_never_panic_and_errors_name_file_and_place(
        file in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let files = example_files();
        let (path, text) = &files[file.index(files.len())];
        let mut bytes = text.clone().into_bytes();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let text = String::from_utf8_lossy(&bytes);
        parse_both_ways(path, &text)?;
    }

    /// Any name for the file: invalid ones are one whole-file diagnostic, never a panic.
    #[test]
    fn prop_any_file_name_is_checked(stem in any::<String>()) {
        let text = "[source]\nplugin = \"stdout\"\nschedule = \"* * * * *\"\n\n\
                    [[sink]]\nname = \"out\"\nplugin = \"stdout\"\n";
        let path = world().pipelines.join(format!("{}.toml", stem.replace(['/', '\0'], "_")));
        match parse_pipeline(&path, text, &world().resolver, MachineCheck::Skip) {
            Ok(spec) => prop_assert_eq!(spec.name, path.file_stem().unwrap().to_str().unwrap()),
            Err(diags) => check_diagnostics(&path, text, &diags)?,
        }
    }
}

#[test]
fn prop_the_example_files_themselves_are_checked_cleanly() {
    for (path, text) in example_files() {
        let result = parse_both_ways(path, text);
        assert!(result.is_ok(), "{}: {result:?}", path.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Generated valid pipeline files.

/// A TOML basic string holding exactly `s`.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Short arbitrary text (any Unicode, control characters included).
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect())
}

fn nonempty_text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 1..12).prop_map(|c| c.into_iter().collect())
}

/// A value in a plugin's `config` table.
#[derive(Debug, Clone)]
enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Value>),
    Table(BTreeMap<String, Value>),
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        text().prop_map(Value::Str),
        any::<i64>().prop_map(Value::Int),
        any::<f64>()
            .prop_filter("TOML floats here are finite", |f| f.is_finite())
            .prop_map(Value::Float),
        any::<bool>().prop_map(Value::Bool),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4).prop_map(Value::Table),
        ]
    })
}

impl Value {
    fn toml(&self) -> String {
        match self {
            Value::Str(s) => toml_str(s),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => {
                let s = format!("{f:?}");
                // `{:?}` writes `1e300`, which TOML reads; make sure there is a `.` or `e`.
                if s.contains(['.', 'e', 'E']) {
                    s
                } else {
                    format!("{s}.0")
                }
            }
            Value::Bool(b) => b.to_string(),
            Value::Array(items) => format!(
                "[{}]",
                items.iter().map(Value::toml).collect::<Vec<_>>().join(", ")
            ),
            Value::Table(t) => inline_table(t.iter().map(|(k, v)| (toml_str(k), v.toml()))),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Value::Str(s) => s.clone().into(),
            Value::Int(i) => (*i).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f).unwrap().into(),
            Value::Bool(b) => (*b).into(),
            Value::Array(items) => items.iter().map(Value::json).collect(),
            Value::Table(t) => t.iter().map(|(k, v)| (k.clone(), v.json())).collect(),
        }
    }
}

fn inline_table(entries: impl Iterator<Item = (String, String)>) -> String {
    let parts: Vec<String> = entries.map(|(k, v)| format!("{k} = {v}")).collect();
    if parts.is_empty() {
        "{}".into()
    } else {
        format!("{{ {} }}", parts.join(", "))
    }
}

/// A duration as written (`"90s"`, `"1h 5m"`) and its value.
fn duration() -> impl Strategy<Value = (String, Duration)> {
    let unit = prop::sample::select(vec![
        ("ms", Duration::from_millis(1)),
        ("s", Duration::from_secs(1)),
        ("sec", Duration::from_secs(1)),
        ("m", Duration::from_secs(60)),
        ("min", Duration::from_secs(60)),
        ("h", Duration::from_secs(3600)),
        ("d", Duration::from_secs(86400)),
    ]);
    prop::collection::vec((1..5000u32, unit), 1..3).prop_map(|parts| {
        let written: Vec<String> = parts.iter().map(|(n, (u, _))| format!("{n}{u}")).collect();
        let total = parts.iter().map(|(n, (_, d))| *d * *n).sum();
        (written.join(" "), total)
    })
}

/// A size as written (`"64MiB"`, `"512 KiB"`) and its bytes, within `range`.
fn size(range: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = (String, u64)> {
    let unit = prop::sample::select(
        &[
            ("B", 1u64),
            ("KiB", 1 << 10),
            ("KB", 1000),
            ("kB", 1000),
            ("MiB", 1 << 20),
            ("MB", 1_000_000),
            ("GiB", 1 << 30),
            ("GB", 1_000_000_000),
        ][..],
    );
    (unit, any::<bool>(), any::<prop::sample::Index>()).prop_filter_map(
        "a size in range",
        move |((u, factor), space, pick)| {
            let lo = range.start().div_ceil(factor).max(1);
            let hi = range.end() / factor;
            if lo > hi {
                return None;
            }
            let n = lo + pick.index((hi - lo + 1) as usize) as u64;
            let sep = if space { " " } else { "" };
            Some((format!("{n}{sep}{u}"), n * factor))
        },
    )
}

/// One cron field within `lo..=hi`.
fn cron_field(lo: u32, hi: u32) -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        (lo..=hi).prop_map(|n| n.to_string()),
        (lo..=hi, lo..=hi).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
        (1..=hi.max(1)).prop_map(|k| format!("*/{k}")),
        (lo..=hi, 1..=hi.max(1)).prop_map(|(a, k)| format!("{a}/{k}")),
        prop::collection::btree_set(lo..=hi, 1..4).prop_map(|s| s
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")),
    ]
}

/// A cron expression: 5 fields (crontab), 6 (with seconds) or 7 (with year).
fn cron_expr() -> impl Strategy<Value = String> {
    let dow = prop_oneof![
        cron_field(1, 7),
        prop::sample::select(&["MON-FRI", "SAT,SUN", "Tue", "mon"][..]).prop_map(String::from),
    ];
    let month = prop_oneof![
        cron_field(1, 12),
        prop::sample::select(&["JAN-JUN", "Dec", "feb,mar"][..]).prop_map(String::from),
    ];
    (
        0..3usize,
        cron_field(0, 59),
        cron_field(0, 59),
        cron_field(0, 23),
        cron_field(1, 28),
        month,
        dow,
        cron_field(2026, 2100),
    )
        .prop_map(|(kind, sec, min, hour, dom, mon, dow, year)| match kind {
            0 => format!("{min} {hour} {dom} {mon} {dow}"),
            1 => format!("{sec} {min} {hour} {dom} {mon} {dow}"),
            _ => format!("{sec} {min} {hour} {dom} {mon} {dow} {year}"),
        })
}

const TIMEZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
];

/// A name valid for pipelines and sinks.
fn name() -> impl Strategy<Value = String> {
    "[a-z0-9_-]{1,64}"
}

/// `env:NAME` or `file:path`, as written, and what it means.
fn secret(base: PathBuf) -> impl Strategy<Value = (String, SecretRef)> {
    prop_oneof![
        nonempty_text().prop_map(|v| (format!("env:{v}"), SecretRef::Env(v))),
        "[a-zA-Z0-9_./-]{1,20}"
            .prop_map(move |p| (format!("file:{p}"), SecretRef::File(base.join(&p)))),
    ]
}

#[derive(Debug, Clone)]
struct GenStage {
    plugin: String,
    /// The plugin written in upper or lower case, with blanks around it, when pinned.
    pin: Option<String>,
    config: Option<BTreeMap<String, Value>>,
    read_dirs: Vec<String>,
    write_dirs: Vec<String>,
    hosts: Vec<String>,
    secrets: BTreeMap<String, (String, SecretRef)>,
    stdout: bool,
    memory: Option<(String, u64)>,
    fuel: Option<u64>,
    timeout: Option<(String, Duration)>,
}

fn dir() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&["/", "", "./"][..]),
        prop::collection::vec("[a-z0-9_]{1,8}", 1..4),
        any::<bool>(),
    )
        // `/proc/…` is refused (per-process files expose the host's secrets).
        .prop_filter("not inside /proc", |(lead, segs, _)| {
            !(*lead == "/" && segs[0] == "proc" && segs.len() > 1)
        })
        .prop_map(|(lead, segs, trailing)| {
            format!(
                "{lead}{}{}",
                segs.join("/"),
                if trailing { "/" } else { "" }
            )
        })
}

/// A valid `grants.hosts` entry: a DNS name (any case), maybe a `*.` wildcard over a domain of
/// two labels or more, maybe a port, maybe padded.
fn host() -> impl Strategy<Value = String> {
    (
        prop::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9_-]{0,6}[a-zA-Z0-9])?", 1..4),
        any::<bool>(),
        prop::option::of(1..=u16::MAX),
        any::<bool>(),
    )
        .prop_map(|(labels, wildcard, port, pad)| {
            let name = labels.join(".");
            let name = if wildcard && labels.len() >= 2 {
                format!("*.{name}")
            } else {
                name
            };
            (name, port, pad)
        })
        .prop_map(|(h, port, pad)| {
            let h = match port {
                Some(p) => format!("{h}:{p}"),
                None => h,
            };
            if pad {
                format!(" {h} ")
            } else {
                h
            }
        })
}

fn stage() -> impl Strategy<Value = GenStage> {
    let base = world().pipelines.clone();
    let plugin = prop_oneof![
        prop::sample::select(GEN_PLUGINS).prop_map(|(n, _)| n.to_string()),
        Just(PATH_PLUGIN.to_string()),
        Just(format!("./{PATH_PLUGIN}")),
    ];
    (
        (plugin, prop::option::of((any::<bool>(), any::<bool>()))),
        prop::option::of(prop::collection::btree_map(text(), value(), 0..4)),
        (
            prop::collection::vec(dir(), 0..3),
            prop::collection::vec(dir(), 0..3),
            prop::collection::vec(host(), 0..3),
            prop::collection::btree_map(text(), secret(base), 0..3),
            any::<bool>(),
        ),
        (
            prop::option::of(size(1 << 20..=4 << 30)),
            prop::option::of(1..=i64::MAX as u64),
            prop::option::of(duration()),
        ),
    )
        .prop_map(
            |(
                (plugin, pin),
                config,
                (read_dirs, write_dirs, hosts, secrets, stdout),
                (memory, fuel, timeout),
            )| {
                let pin = pin.map(|(upper, pad)| {
                    let digest = hex::encode(Sha256::digest(plugin_bytes(plugin_file(&plugin))));
                    let digest = if upper {
                        digest.to_ascii_uppercase()
                    } else {
                        digest
                    };
                    if pad {
                        format!(" {digest}\t")
                    } else {
                        digest
                    }
                });
                GenStage {
                    plugin,
                    pin,
                    config,
                    read_dirs,
                    write_dirs,
                    hosts,
                    secrets,
                    stdout,
                    memory,
                    fuel,
                    timeout,
                }
            },
        )
}

/// The name of the file a plugin reference resolves to (for its contents).
fn plugin_file(plugin: &str) -> &str {
    GEN_PLUGINS
        .iter()
        .find(|(n, _)| *n == plugin)
        .map_or(PATH_PLUGIN, |(_, f)| f.trim_end_matches(".wasm"))
}

impl GenStage {
    /// The stage's keys, one per line.
    fn toml(&self) -> String {
        let mut out = format!("plugin = {}\n", toml_str(&self.plugin));
        if let Some(pin) = &self.pin {
            out += &format!("sha256 = {}\n", toml_str(pin));
        }
        if let Some(config) = &self.config {
            out += &format!("config = {}\n", Value::Table(config.clone()).toml());
        }
        let list = |items: &[String]| {
            format!(
                "[{}]",
                items
                    .iter()
                    .map(|s| toml_str(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut grants = Vec::new();
        if !self.read_dirs.is_empty() {
            grants.push(("read_dirs".to_string(), list(&self.read_dirs)));
        }
        if !self.write_dirs.is_empty() {
            grants.push(("write_dirs".to_string(), list(&self.write_dirs)));
        }
        if !self.hosts.is_empty() {
            grants.push(("hosts".to_string(), list(&self.hosts)));
        }
        if !self.secrets.is_empty() {
            let secrets = self
                .secrets
                .iter()
                .map(|(k, (written, _))| (toml_str(k), toml_str(written)));
            grants.push(("secrets".to_string(), inline_table(secrets)));
        }
        if self.stdout {
            grants.push(("stdout".to_string(), "true".to_string()));
        }
        if !grants.is_empty() {
            out += &format!("grants = {}\n", inline_table(grants.into_iter()));
        }
        let mut limits = Vec::new();
        if let Some((m, _)) = &self.memory {
            limits.push(("memory".to_string(), toml_str(m)));
        }
        if let Some(f) = self.fuel {
            limits.push(("fuel".to_string(), f.to_string()));
        }
        if let Some((t, _)) = &self.timeout {
            limits.push(("timeout".to_string(), toml_str(t)));
        }
        if !limits.is_empty() {
            out += &format!("limits = {}\n", inline_table(limits.into_iter()));
        }
        out
    }

    fn spec(&self, default_fuel: u64, default_timeout: Duration) -> StageSpec {
        let base = &world().pipelines;
        let path = if self.plugin.contains('/') {
            base.join(&self.plugin)
        } else {
            world().resolver.dirs[0].join(format!("{}.wasm", plugin_file(&self.plugin)))
        };
        let dirs = |list: &[String]| {
            list.iter()
                .map(|written| {
                    let written = written.trim_end_matches('/');
                    if written.starts_with('/') {
                        DirGrant {
                            host: PathBuf::from(written),
                            guest: written.to_string(),
                        }
                    } else {
                        let guest = written.trim_start_matches("./").to_string();
                        DirGrant {
                            host: base.join(&guest),
                            guest,
                        }
                    }
                })
                .collect()
        };
        StageSpec {
            plugin: PluginRef {
                name: self.plugin.clone(),
                origin: tocsin_config::plugin_origin::PluginOrigin::File(path),
                sha256: self.pin.as_ref().map(|p| p.trim().to_ascii_lowercase()),
            },
            config_json: match &self.config {
                None => "{}".to_string(),
                Some(c) => Value::Table(c.clone()).json().to_string(),
            },
            grants: Grants {
                read_dirs: dirs(&self.read_dirs),
                write_dirs: dirs(&self.write_dirs),
                hosts: self
                    .hosts
                    .iter()
                    .map(|h| h.trim().to_ascii_lowercase())
                    .collect(),
                secrets: self
                    .secrets
                    .iter()
                    .map(|(k, (_, r))| (k.clone(), r.clone()))
                    .collect(),
                stdout: self.stdout,
                control: Default::default(),
            },
            limits: Limits {
                memory: self.memory.as_ref().map_or(DEFAULT_MEMORY, |(_, b)| *b),
                fuel: self.fuel.unwrap_or(default_fuel),
                timeout: self.timeout.as_ref().map_or(default_timeout, |(_, d)| *d),
            },
            // The generated plugins are stand-in files, not components: no schema.
            settings_declared: false,
        }
    }
}

#[derive(Debug, Clone)]
struct GenRetry {
    max_attempts: Option<u32>,
    initial: Option<(String, Duration)>,
    max: Option<(String, Duration)>,
    /// Eighths: 8..=80 is 1.0..=10.0, exact in binary.
    multiplier: Option<u32>,
}

fn retry(default: RetryPolicy) -> impl Strategy<Value = GenRetry> {
    (
        prop::option::of(1..=u32::MAX),
        prop::option::of(duration()),
        prop::option::of(duration()),
        prop::option::of(8..=80u32),
    )
        .prop_map(move |(max_attempts, mut initial, mut max, multiplier)| {
            let eff_initial = initial.as_ref().map_or(default.initial, |(_, d)| *d);
            let eff_max = max.as_ref().map_or(default.max, |(_, d)| *d);
            if eff_max < eff_initial {
                // Write both, in the right order.
                let written = |d: Duration| (format!("{}ms", d.as_millis()), d);
                let (a, b) = (
                    initial.take().unwrap_or_else(|| written(default.initial)),
                    max.take().unwrap_or_else(|| written(default.max)),
                );
                let (lo, hi) = if a.1 <= b.1 { (a, b) } else { (b, a) };
                initial = Some(lo);
                max = Some(hi);
            }
            GenRetry {
                max_attempts,
                initial,
                max,
                multiplier,
            }
        })
}

impl GenRetry {
    fn toml(&self) -> String {
        let mut e = Vec::new();
        if let Some(n) = self.max_attempts {
            e.push(("max_attempts".to_string(), n.to_string()));
        }
        if let Some((t, _)) = &self.initial {
            e.push(("initial".to_string(), toml_str(t)));
        }
        if let Some((t, _)) = &self.max {
            e.push(("max".to_string(), toml_str(t)));
        }
        if let Some(m) = self.multiplier {
            e.push((
                "multiplier".to_string(),
                format!("{:?}", f64::from(m) / 8.0),
            ));
        }
        inline_table(e.into_iter())
    }

    fn spec(&self, default: RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(default.max_attempts),
            initial: self.initial.as_ref().map_or(default.initial, |(_, d)| *d),
            max: self.max.as_ref().map_or(default.max, |(_, d)| *d),
            multiplier: self
                .multiplier
                .map_or(default.multiplier, |m| f64::from(m) / 8.0),
        }
    }
}

#[derive(Debug, Clone)]
struct GenSink {
    name: String,
    stage: GenStage,
    retry: Option<GenRetry>,
    /// (written, meaning) of `match.severity`.
    severity: Option<(String, (Comparison, Severity))>,
    labels: Option<BTreeMap<String, String>>,
}

fn severity_match() -> impl Strategy<Value = (String, (Comparison, Severity))> {
    let op = prop::sample::select(
        &[
            (">=", Comparison::Ge),
            ("<=", Comparison::Le),
            ("==", Comparison::Eq),
            (">", Comparison::Gt),
            ("<", Comparison::Lt),
            ("=", Comparison::Eq),
            ("", Comparison::Eq),
        ][..],
    );
    (
        op,
        prop::sample::select(&Severity::ALL[..]),
        prop::sample::select(&["", " ", "  "][..]),
        prop::sample::select(&["", " "][..]),
    )
        .prop_map(|((written, cmp), level, gap, pad)| {
            (format!("{pad}{written}{gap}{level}{pad}"), (cmp, level))
        })
}

fn sinks() -> impl Strategy<Value = Vec<GenSink>> {
    prop::collection::btree_set(name(), 1..4).prop_flat_map(|names| {
        let n = names.len();
        (
            Just(names.into_iter().collect::<Vec<_>>()),
            prop::collection::vec(
                (
                    stage(),
                    prop::option::of(retry(RetryPolicy::default())),
                    prop::option::of(severity_match()),
                    prop::option::of(prop::collection::btree_map(text(), text(), 0..3)),
                ),
                n,
            ),
        )
            .prop_map(|(names, parts)| {
                names
                    .into_iter()
                    .zip(parts)
                    .map(|(name, (stage, retry, severity, labels))| GenSink {
                        name,
                        stage,
                        retry,
                        severity,
                        labels,
                    })
                    .collect()
            })
    })
}

#[derive(Debug, Clone)]
enum GenAuth {
    None,
    Bearer(String, SecretRef),
    Github(String, SecretRef),
    Oidc {
        jwks: (String, JwksSource),
        audience: String,
        issuers: Vec<String>,
        email: Option<String>,
    },
}

fn auth() -> impl Strategy<Value = GenAuth> {
    let base = world().pipelines.clone();
    let jwks = prop_oneof![
        "[a-z0-9_./-]{1,20}"
            .prop_map(move |p| (format!("file:{p}"), JwksSource::File(base.join(&p)))),
        // Plain HTTP only to this machine (keys in the clear could be swapped on the way).
        ("https://[a-z0-9.]{1,20}(/[a-z0-9]{0,8})?|http://(127\\.0\\.0\\.1|localhost)(:[1-9][0-9]{0,3})?(/[a-z0-9]{0,8})?")
            .prop_map(|u| (u.clone(), JwksSource::Url(u))),
    ];
    prop_oneof![
        Just(GenAuth::None),
        secret(world().pipelines.clone()).prop_map(|(w, r)| GenAuth::Bearer(w, r)),
        secret(world().pipelines.clone()).prop_map(|(w, r)| GenAuth::Github(w, r)),
        (
            jwks,
            nonempty_text(),
            prop::collection::vec(text(), 0..3),
            prop::option::of(text())
        )
            .prop_map(|(jwks, audience, issuers, email)| GenAuth::Oidc {
                jwks,
                audience,
                issuers,
                email
            }),
    ]
}

#[derive(Debug, Clone)]
enum GenTrigger {
    Schedule {
        expr: String,
        timezone: Option<&'static str>,
        run_on_start: bool,
    },
    Ingest {
        auth: GenAuth,
        body_limit: Option<(String, u64)>,
    },
}

fn trigger() -> impl Strategy<Value = GenTrigger> {
    prop_oneof![
        (
            cron_expr(),
            prop::option::of(prop::sample::select(TIMEZONES)),
            any::<bool>()
        )
            .prop_map(|(expr, timezone, run_on_start)| GenTrigger::Schedule {
                expr,
                timezone,
                run_on_start
            }),
        (auth(), prop::option::of(size(1..=64 << 20)))
            .prop_map(|(auth, body_limit)| GenTrigger::Ingest { auth, body_limit }),
    ]
}

#[derive(Debug, Clone)]
struct GenPipeline {
    name: String,
    version: bool,
    disabled: Option<bool>,
    filter_retry: Option<GenRetry>,
    queue_budget: Option<(String, u64)>,
    source: GenStage,
    trigger: GenTrigger,
    filters: Vec<GenStage>,
    sinks: Vec<GenSink>,
}

fn pipeline() -> impl Strategy<Value = GenPipeline> {
    (
        name(),
        any::<bool>(),
        prop::option::of(any::<bool>()),
        prop::option::of(retry(RetryPolicy::FILTER_DEFAULT)),
        prop::option::of(size(64 << 10..=1 << 40)),
        stage(),
        trigger(),
        prop::collection::vec(stage(), 0..3),
        sinks(),
    )
        .prop_map(
            |(
                name,
                version,
                disabled,
                filter_retry,
                queue_budget,
                source,
                trigger,
                filters,
                sinks,
            )| {
                let mut source = source;
                // An ingest source's memory must hold its body while decoding (a file that
                // sets less is refused; broken_files_… covers that).
                if let GenTrigger::Ingest { body_limit, .. } = &trigger {
                    let limit = body_limit.as_ref().map_or(DEFAULT_BODY_LIMIT, |(_, b)| *b);
                    if source
                        .memory
                        .as_ref()
                        .is_some_and(|(_, m)| *m < decoder_memory(limit))
                    {
                        source.memory = None;
                    }
                }
                GenPipeline {
                    name,
                    version,
                    disabled,
                    filter_retry,
                    queue_budget,
                    source,
                    trigger,
                    filters,
                    sinks,
                }
            },
        )
}

impl GenPipeline {
    fn path(&self) -> PathBuf {
        world().pipelines.join(format!("{}.toml", self.name))
    }

    fn toml(&self) -> String {
        let mut out = String::from("# generated\n");
        if self.version {
            out += "version = 1\n";
        }
        if let Some(d) = self.disabled {
            out += &format!("disabled = {d}\n");
        }
        if let Some(r) = &self.filter_retry {
            out += &format!("filter_retry = {}\n", r.toml());
        }
        if let Some((b, _)) = &self.queue_budget {
            out += &format!("queue_budget = {}\n", toml_str(b));
        }
        out += "\n[source]\n";
        out += &self.source.toml();
        match &self.trigger {
            GenTrigger::Schedule {
                expr,
                timezone,
                run_on_start,
            } => {
                out += &format!("schedule = {}\n", toml_str(expr));
                if let Some(tz) = timezone {
                    out += &format!("timezone = {}\n", toml_str(tz));
                }
                if *run_on_start {
                    out += "run_on_start = true\n";
                }
            }
            GenTrigger::Ingest { auth, body_limit } => {
                let auth = match auth {
                    GenAuth::None => "{ none = true }".to_string(),
                    GenAuth::Bearer(w, _) => format!("{{ bearer = {} }}", toml_str(w)),
                    GenAuth::Github(w, _) => format!("{{ github_secret = {} }}", toml_str(w)),
                    GenAuth::Oidc {
                        jwks,
                        audience,
                        issuers,
                        email,
                    } => {
                        let mut e = vec![
                            ("jwks".to_string(), toml_str(&jwks.0)),
                            ("audience".to_string(), toml_str(audience)),
                        ];
                        if !issuers.is_empty() {
                            let list: Vec<String> = issuers.iter().map(|i| toml_str(i)).collect();
                            e.push(("issuers".to_string(), format!("[{}]", list.join(", "))));
                        }
                        if let Some(email) = email {
                            e.push(("email".to_string(), toml_str(email)));
                        }
                        format!("{{ oidc = {} }}", inline_table(e.into_iter()))
                    }
                };
                out += &format!("auth = {auth}\n");
                if let Some((b, _)) = body_limit {
                    out += &format!("body_limit = {}\n", toml_str(b));
                }
            }
        }
        for f in &self.filters {
            out += "\n[[filter]]\n";
            out += &f.toml();
        }
        for s in &self.sinks {
            out += "\n[[sink]]\n";
            out += &format!("name = {}\n", toml_str(&s.name));
            out += &s.stage.toml();
            if let Some(r) = &s.retry {
                out += &format!("retry = {}\n", r.toml());
            }
            if s.severity.is_some() || s.labels.is_some() {
                let mut e = Vec::new();
                if let Some((w, _)) = &s.severity {
                    e.push(("severity".to_string(), toml_str(w)));
                }
                if let Some(labels) = &s.labels {
                    let l = labels.iter().map(|(k, v)| (toml_str(k), toml_str(v)));
                    e.push(("labels".to_string(), inline_table(l)));
                }
                out += &format!("match = {}\n", inline_table(e.into_iter()));
            }
        }
        out
    }

    fn spec(&self) -> PipelineSpec {
        let trigger = match &self.trigger {
            GenTrigger::Schedule {
                expr,
                timezone,
                run_on_start,
            } => Trigger::Schedule(Box::new(ScheduleSpec {
                expression: expr.clone(),
                cron: parse_cron(expr).unwrap(),
                timezone: timezone.unwrap_or("UTC").parse().unwrap(),
                run_on_start: *run_on_start,
            })),
            GenTrigger::Ingest { auth, body_limit } => Trigger::Ingest(IngestSpec {
                auth: match auth {
                    GenAuth::None => IngestAuth::None,
                    GenAuth::Bearer(_, r) => IngestAuth::Bearer(r.clone()),
                    GenAuth::Github(_, r) => IngestAuth::GithubHmac(r.clone()),
                    GenAuth::Oidc {
                        jwks,
                        audience,
                        issuers,
                        email,
                    } => IngestAuth::Oidc(OidcSpec {
                        jwks: jwks.1.clone(),
                        audience: audience.clone(),
                        issuers: if issuers.is_empty() {
                            GOOGLE_ISSUERS.iter().map(|s| s.to_string()).collect()
                        } else {
                            issuers.clone()
                        },
                        email: email.clone(),
                    }),
                },
                body_limit: body_limit.as_ref().map_or(DEFAULT_BODY_LIMIT, |(_, b)| *b),
            }),
        };
        PipelineSpec {
            name: self.name.clone(),
            file: self.path(),
            // The model writes no `[[maintenance]]` tables nor `expect` (their own tests are
            // in `src/maintenance.rs` and `src/validate.rs`).
            maintenance: Vec::new(),
            expect: None,
            inhibit: Vec::new(),
            disabled: self.disabled.unwrap_or(false),
            queue_budget: self.queue_budget.as_ref().map(|(_, b)| *b),
            source: SourceSpec {
                stage: {
                    let mut stage = self.source.spec(DEFAULT_FUEL, DEFAULT_SOURCE_TIMEOUT);
                    // An ingest source's memory follows its body limit unless the file sets it.
                    if let Trigger::Ingest(ingest) = &trigger {
                        if self.source.memory.is_none() {
                            stage.limits.memory =
                                stage.limits.memory.max(decoder_memory(ingest.body_limit));
                        }
                        if self.source.fuel.is_none() {
                            stage.limits.fuel =
                                stage.limits.fuel.max(decoder_fuel(ingest.body_limit));
                        }
                    }
                    Some(stage)
                },
                trigger,
            },
            filters: self
                .filters
                .iter()
                .map(|f| f.spec(DEFAULT_FUEL, DEFAULT_FILTER_TIMEOUT))
                .collect(),
            filter_retry: self
                .filter_retry
                .as_ref()
                .map_or(RetryPolicy::FILTER_DEFAULT, |r| {
                    r.spec(RetryPolicy::FILTER_DEFAULT)
                }),
            sinks: self
                .sinks
                .iter()
                .map(|s| SinkSpec {
                    name: s.name.clone(),
                    stage: s.stage.spec(DEFAULT_SINK_FUEL, DEFAULT_SINK_TIMEOUT),
                    retry: s
                        .retry
                        .as_ref()
                        .map_or(RetryPolicy::default(), |r| r.spec(RetryPolicy::default())),
                    concurrency: DEFAULT_SINK_CONCURRENCY,
                    route: Route {
                        severity: s.severity.as_ref().map(|(_, m)| *m),
                        labels: s
                            .labels
                            .as_ref()
                            .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                            .unwrap_or_default(),
                    },
                    group: None,
                })
                .collect(),
        }
    }
}

/// The spec with `config_json` parsed, so JSON is compared by value, not by spelling.
fn config_values(spec: &PipelineSpec) -> Vec<serde_json::Value> {
    spec.source
        .stage
        .iter()
        .chain(&spec.filters)
        .chain(spec.sinks.iter().map(|s| &s.stage))
        .map(|s| serde_json::from_str(&s.config_json).expect("config_json is JSON"))
        .collect()
}

fn without_config(mut spec: PipelineSpec) -> PipelineSpec {
    if let Some(stage) = spec.source.stage.as_mut() {
        stage.config_json.clear();
    }
    for f in &mut spec.filters {
        f.config_json.clear();
    }
    for s in &mut spec.sinks {
        s.stage.config_json.clear();
    }
    spec
}

proptest! {
    #![proptest_config(config(128))]

    /// A generated valid file validates, into exactly the spec it was generated from.
    #[test]
    fn prop_generated_valid_pipelines_parse_into_the_same_spec(p in pipeline()) {
        let text = p.toml();
        let parsed = parse_pipeline(&p.path(), &text, &world().resolver, MachineCheck::Skip);
        let spec = match parsed {
            Ok(spec) => spec,
            Err(diags) => {
                let shown: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
                return Err(TestCaseError::fail(format!("{shown:#?}\n{text}")));
            }
        };
        let expected = p.spec();
        prop_assert_eq!(config_values(&spec), config_values(&expected), "{}", text);
        prop_assert_eq!(without_config(spec.clone()), without_config(expected), "{}", text);
        // Backoff of every validated policy is computable for any attempt count.
        for policy in std::iter::once(spec.filter_retry).chain(spec.sinks.iter().map(|s| s.retry)) {
            for attempts in [0, 1, 2, 7, 64, u32::MAX] {
                let d = policy.jittered_delay(attempts, 0.999);
                prop_assert!(d <= policy.max, "{:?} > {:?}", d, policy.max);
            }
        }
    }

    /// Each change that breaks a generated valid file is reported, at a place in the file.
    #[test]
    fn prop_broken_generated_pipelines_report_file_and_place(
        p in pipeline(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = p.toml().into_bytes();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let text = String::from_utf8_lossy(&bytes);
        parse_both_ways(&p.path(), &text)?;
    }

    /// A validated schedule yields its next ticks in its time zone without panicking, from any
    /// instant between 1970 and 2100.
    #[test]
    fn prop_validated_schedules_compute_next_ticks(
        expr in cron_expr(),
        tz in prop::sample::select(TIMEZONES),
        at in 0..4_102_444_800i64,
    ) {
        let cron = parse_cron(&expr).unwrap();
        let tz: chrono_tz::Tz = tz.parse().unwrap();
        let now = tz.timestamp_opt(at, 0).unwrap();
        for next in cron.after(&now).take(3) {
            prop_assert!(next > now);
        }
    }

    /// Retry backoff never panics, whatever durations a pipeline file may hold: huge ones
    /// (up to the largest `Duration`) and tiny ones included.
    #[test]
    fn prop_backoff_is_defined_for_any_durations_a_file_may_hold(
        initial in huge_duration(),
        max in huge_duration(),
        multiplier in 8..=80u32,
        attempts in any::<u32>(),
        unit in 0.0..1.0f64,
    ) {
        let text = format!(
            "[source]\nplugin = \"gensink\"\nschedule = \"* * * * *\"\n\n[[sink]]\n\
             name = \"out\"\nplugin = \"gensink\"\nretry = {{ initial = {}, max = {}, \
             multiplier = {:?} }}\n",
            toml_str(&initial),
            toml_str(&max),
            f64::from(multiplier) / 8.0
        );
        let path = world().pipelines.join("backoff.toml");
        match parse_pipeline(&path, &text, &world().resolver, MachineCheck::Skip) {
            Ok(spec) => {
                let policy = spec.sinks[0].retry;
                for attempts in [0, 1, 2, attempts] {
                    let d = policy.jittered_delay(attempts, unit);
                    prop_assert!(d <= policy.max, "{:?} > {:?}", d, policy.max);
                }
            }
            Err(diags) => check_diagnostics(&path, &text, &diags)?,
        }
    }
}

/// A duration as a file may write it, biased to the edges of what `Duration` holds.
fn huge_duration() -> impl Strategy<Value = String> {
    let n = prop_oneof![
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1u64 << 63),
        (u64::MAX - (1 << 12))..=u64::MAX,
        any::<u64>(),
        1..1000u64,
    ];
    let unit = prop::sample::select(&["s", "ns", "ms", "y", "d", "s 999999999ns"][..]);
    (n, unit).prop_map(|(n, u)| format!("{n}{u}"))
}
