//! `docs/pipeline-reference.md` is held to the code, so it cannot drift.
//!
//! - Each struct of `src/file.rs` (the raw serde shape of a pipeline file) has one section in
//!   the doc, with one table whose first column lists, in backticks, exactly the fields serde
//!   accepts for it. Those are taken from serde itself with `serde_aux`'s `serde_introspect`,
//!   which reads the field list `#[derive(Deserialize)]` generates (renames included), not a
//!   list kept by hand.
//! - The defaults the doc states for `retry`, `filter_retry`, `limits`, `body_limit`,
//!   `version` and `auth.oidc.issuers` equal the constants of `src/spec.rs`, and those are the
//!   defaults validation really applies to each kind of stage.
//!
//! A failure lists every disagreement at once, each with the doc's line.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::PathBuf;
use std::time::Duration;

use serde_aux::serde_introspection::serde_introspect;
use tocsin_config::file::{
    AuthTable, ExpectTable, GrantsTable, GroupTable, InhibitTable, LimitsTable, MaintenanceTable,
    MatchTable, OidcTable, PipelineFile, RetryTable, SelfEventsTable, SinkTable, SourceTable,
    StageTable,
};
use tocsin_config::self_events::*;
use tocsin_config::units::{parse_duration, parse_size};
use tocsin_config::*;

const DOC: &str = "docs/pipeline-reference.md";

/// One struct of `src/file.rs`: its name, the heading of its section in the doc (after `## `),
/// and the field names serde accepts for it.
struct Documented {
    name: &'static str,
    heading: &'static str,
    fields: &'static [&'static str],
}

/// Every struct of `src/file.rs`; `every_struct_of_file_rs_is_checked` keeps this complete.
fn documented() -> Vec<Documented> {
    fn entry<T: serde::de::DeserializeOwned>(
        name: &'static str,
        heading: &'static str,
    ) -> Documented {
        Documented {
            name,
            heading,
            fields: serde_introspect::<T>(),
        }
    }
    vec![
        entry::<PipelineFile>("PipelineFile", "Top level"),
        entry::<SourceTable>("SourceTable", "`[source]`"),
        entry::<StageTable>("StageTable", "`[[filter]]`"),
        entry::<SinkTable>("SinkTable", "`[[sink]]`"),
        entry::<GrantsTable>("GrantsTable", "`grants`"),
        entry::<LimitsTable>("LimitsTable", "`limits`"),
        entry::<RetryTable>("RetryTable", "`retry` and `filter_retry`"),
        entry::<MatchTable>("MatchTable", "`match`"),
        entry::<GroupTable>("GroupTable", "`group`"),
        entry::<MaintenanceTable>("MaintenanceTable", "`[[maintenance]]`"),
        entry::<ExpectTable>("ExpectTable", "`expect`"),
        entry::<InhibitTable>("InhibitTable", "`[[inhibit]]`"),
        entry::<SelfEventsTable>("SelfEventsTable", "`@tocsin` source `config`"),
        entry::<AuthTable>("AuthTable", "`auth`"),
        entry::<OidcTable>("OidcTable", "`auth.oidc`"),
    ]
}

// ---------------------------------------------------------------------------------------------
// Reading the doc: level-2 sections and the Markdown tables in them.

struct Row {
    /// 1-based line in the doc.
    line: usize,
    cells: Vec<String>,
}

struct Table {
    header: Vec<String>,
    rows: Vec<Row>,
}

struct Section {
    heading: String,
    line: usize,
    tables: Vec<Table>,
}

fn read_doc() -> Vec<Section> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(DOC);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_sections(&text)
}

/// Splits Markdown into `## ` sections (deeper headings stay inside) and reads their tables.
/// Fenced code blocks are skipped.
fn parse_sections(text: &str) -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    let mut in_fence = false;
    // Table lines of the table being read, with their line numbers.
    let mut pending: Vec<(usize, &str)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            flush(&mut pending, &mut sections);
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if trimmed.starts_with('|') {
            pending.push((number, trimmed));
            continue;
        }
        flush(&mut pending, &mut sections);
        if let Some(heading) = line.strip_prefix("## ") {
            sections.push(Section {
                heading: heading.trim().to_string(),
                line: number,
                tables: Vec::new(),
            });
        }
    }
    flush(&mut pending, &mut sections);
    sections
}

/// Ends the table being read, if any, and adds it to the last section.
fn flush(pending: &mut Vec<(usize, &str)>, sections: &mut [Section]) {
    if pending.is_empty() {
        return;
    }
    let lines = std::mem::take(pending);
    let (header_line, header) = lines[0];
    let separator = lines.get(1).map(|(_, l)| split_row(l));
    let is_separator = separator.as_ref().is_some_and(|cells| {
        cells
            .iter()
            .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
    });
    assert!(
        is_separator,
        "{DOC}:{header_line}: a table's header must be followed by a `| --- |` line"
    );
    let table = Table {
        header: split_row(header),
        rows: lines[2..]
            .iter()
            .map(|(line, l)| Row {
                line: *line,
                cells: split_row(l),
            })
            .collect(),
    };
    match sections.last_mut() {
        Some(section) => section.tables.push(table),
        None => panic!("{DOC}:{header_line}: a table before the first `## ` section"),
    }
}

/// The cells of `| a | b \| c |`: split at unescaped `|`, trimmed, `\|` unescaped.
fn split_row(line: &str) -> Vec<String> {
    let inner = line.trim();
    let inner = inner.strip_prefix('|').unwrap_or(inner);
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('|');
                chars.next();
            }
            '|' => cells.push(std::mem::take(&mut cell).trim().to_string()),
            c => cell.push(c),
        }
    }
    cells.push(cell.trim().to_string());
    cells
}

/// The text of a cell that is one code span and nothing else: `` `x` `` → `x`.
fn code_span(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.is_empty() && !inner.contains('`')).then_some(inner)
}

/// The one table of the section headed `## {heading}`.
fn table_of<'a>(sections: &'a [Section], heading: &str) -> Result<&'a Table, String> {
    let found: Vec<&Section> = sections.iter().filter(|s| s.heading == heading).collect();
    match found[..] {
        [] => Err(format!("{DOC} has no section '## {heading}'")),
        [section] => match &section.tables[..] {
            [table] => Ok(table),
            tables => Err(format!(
                "{DOC}:{}: section '## {heading}' must have exactly one table, not {}",
                section.line,
                tables.len()
            )),
        },
        _ => Err(format!("{DOC} has more than one section '## {heading}'")),
    }
}

/// The cell of row `field` in the column headed `column`.
fn cell<'a>(
    table: &'a Table,
    heading: &str,
    field: &str,
    column: &str,
) -> Result<(usize, &'a str), String> {
    let index = table
        .header
        .iter()
        .position(|h| h == column)
        .ok_or_else(|| {
            format!(
                "{DOC}: the table of '## {heading}' has no column `{column}` (columns: {:?})",
                table.header
            )
        })?;
    let row = table
        .rows
        .iter()
        .find(|r| r.cells.first().and_then(|c| code_span(c)) == Some(field))
        .ok_or_else(|| format!("{DOC}: the table of '## {heading}' has no row `{field}`"))?;
    let text = row
        .cells
        .get(index)
        .ok_or_else(|| format!("{DOC}:{}: row `{field}` has no `{column}` cell", row.line))?;
    Ok((row.line, text))
}

// ---------------------------------------------------------------------------------------------
// The fields.

/// The doc's sections list exactly the fields serde accepts, struct by struct.
#[test]
fn reference_documents_exactly_the_fields_serde_accepts() {
    let sections = read_doc();
    let mut problems = Vec::new();
    for d in documented() {
        let table = match table_of(&sections, d.heading) {
            Ok(table) => table,
            Err(e) => {
                problems.push(format!("{e} (for `{}`)", d.name));
                continue;
            }
        };
        if table.header.first().map(String::as_str) != Some("field") {
            problems.push(format!(
                "{DOC}: the table of '## {}' must have `field` as its first column",
                d.heading
            ));
        }
        let accepted: BTreeSet<&str> = d.fields.iter().copied().collect();
        let mut documented = BTreeSet::new();
        for row in &table.rows {
            let first = row.cells.first().map(String::as_str).unwrap_or_default();
            let Some(field) = code_span(first) else {
                problems.push(format!(
                    "{DOC}:{}: the first cell of a row under '## {}' must be one field name in \
                     backticks, not `{first}`",
                    row.line, d.heading
                ));
                continue;
            };
            if !documented.insert(field) {
                problems.push(format!(
                    "{DOC}:{}: `{field}` is documented twice under '## {}'",
                    row.line, d.heading
                ));
            }
            if !accepted.contains(field) {
                problems.push(format!(
                    "{DOC}:{}: `{field}` is documented under '## {}', but `{}` \
                     (host/config/src/file.rs) has no such field; it accepts {accepted:?}",
                    row.line, d.heading, d.name
                ));
            }
        }
        for field in accepted.difference(&documented) {
            problems.push(format!(
                "`{}` (host/config/src/file.rs) accepts `{field}`, but {DOC} does not document \
                 it: add a row `{field}` to the table under '## {}'",
                d.name, d.heading
            ));
        }
    }
    // A section with a table that no struct claims documents fields of nothing.
    let headings: BTreeSet<&str> = documented().iter().map(|d| d.heading).collect();
    for section in &sections {
        if !section.tables.is_empty() && !headings.contains(section.heading.as_str()) {
            problems.push(format!(
                "{DOC}:{}: section '## {}' has a table, but no struct of host/config/src/file.rs \
                 is documented there (see `documented()` in host/config/tests/reference.rs)",
                section.line, section.heading
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{DOC} disagrees with the pipeline-file structs:\n  - {}",
        problems.join("\n  - ")
    );
}

/// `documented()` names every struct of `src/file.rs`, so a new one needs a section too.
#[test]
fn every_struct_of_file_rs_is_checked() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/file.rs");
    let source = std::fs::read_to_string(&path).unwrap();
    let in_file: BTreeSet<&str> = source
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("pub struct "))
        .map(|rest| {
            rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap_or_default()
        })
        .collect();
    let checked: BTreeSet<&str> = documented().iter().map(|d| d.name).collect();
    assert_eq!(
        in_file, checked,
        "the structs of src/file.rs and those `documented()` in tests/reference.rs differ: give \
         each struct a section in {DOC} and an entry in `documented()`"
    );
}

// ---------------------------------------------------------------------------------------------
// The defaults.

/// Compares one default the doc states with the code's; records a problem when they differ.
fn check_default<T: PartialEq + Debug>(
    problems: &mut Vec<String>,
    sections: &[Section],
    (heading, field, column): (&str, &str, &str),
    parse: impl Fn(&str) -> Result<T, String>,
    (constant, want): (&str, T),
) {
    let (line, text) =
        match table_of(sections, heading).and_then(|t| cell(t, heading, field, column)) {
            Ok(found) => found,
            Err(e) => {
                problems.push(e);
                return;
            }
        };
    let Some(value) = code_span(text) else {
        problems.push(format!(
            "{DOC}:{line}: the `{column}` of `{field}` under '## {heading}' must be one value in \
             backticks, not `{text}`"
        ));
        return;
    };
    match parse(value) {
        Ok(got) if got == want => {}
        Ok(got) => problems.push(format!(
            "{DOC}:{line}: `{field}` under '## {heading}' ({column}) is documented as `{value}` \
             = {got:?}, but the code's default ({constant}) is {want:?}"
        )),
        Err(e) => problems.push(format!(
            "{DOC}:{line}: the `{column}` of `{field}` under '## {heading}': {e}"
        )),
    }
}

fn integer<T: std::str::FromStr>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    // TOML's digit separators, as in `2_000_000_000`.
    text.replace('_', "")
        .parse()
        .map_err(|e| format!("`{text}` is not an integer ({e})"))
}

fn float(text: &str) -> Result<f64, String> {
    text.parse()
        .map_err(|e| format!("`{text}` is not a number ({e})"))
}

fn string_array(text: &str) -> Result<Vec<String>, String> {
    let table: toml::Table =
        toml::from_str(&format!("v = {text}")).map_err(|e| format!("`{text}`: {e}"))?;
    table["v"]
        .as_array()
        .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect())
        .ok_or_else(|| format!("`{text}` is not an array of strings"))
}

/// The defaults of each kind of stage, as `src/spec.rs` names them.
struct StageDefaults {
    column: &'static str,
    fuel: (&'static str, u64),
    timeout: (&'static str, Duration),
}

fn stage_defaults() -> [StageDefaults; 3] {
    [
        StageDefaults {
            column: "default: source",
            fuel: ("DEFAULT_FUEL", DEFAULT_FUEL),
            timeout: ("DEFAULT_SOURCE_TIMEOUT", DEFAULT_SOURCE_TIMEOUT),
        },
        StageDefaults {
            column: "default: filter",
            fuel: ("DEFAULT_FUEL", DEFAULT_FUEL),
            timeout: ("DEFAULT_FILTER_TIMEOUT", DEFAULT_FILTER_TIMEOUT),
        },
        StageDefaults {
            column: "default: sink",
            fuel: ("DEFAULT_SINK_FUEL", DEFAULT_SINK_FUEL),
            timeout: ("DEFAULT_SINK_TIMEOUT", DEFAULT_SINK_TIMEOUT),
        },
    ]
}

/// The defaults the doc states are the constants of `src/spec.rs`.
#[test]
fn reference_states_the_defaults_of_spec_rs() {
    let sections = read_doc();
    let mut problems = Vec::new();
    let p = &mut problems;
    let s = &sections[..];

    let retry = "`retry` and `filter_retry`";
    for (column, name, policy) in [
        (
            "default: sink `retry`",
            "RetryPolicy::default()",
            RetryPolicy::default(),
        ),
        (
            "default: `filter_retry`",
            "RetryPolicy::FILTER_DEFAULT",
            RetryPolicy::FILTER_DEFAULT,
        ),
    ] {
        let field = |f: &str| format!("{name}.{f}");
        check_default(
            p,
            s,
            (retry, "max_attempts", column),
            integer::<u32>,
            (&field("max_attempts"), policy.max_attempts),
        );
        check_default(
            p,
            s,
            (retry, "initial", column),
            parse_duration,
            (&field("initial"), policy.initial),
        );
        check_default(
            p,
            s,
            (retry, "max", column),
            parse_duration,
            (&field("max"), policy.max),
        );
        check_default(
            p,
            s,
            (retry, "multiplier", column),
            float,
            (&field("multiplier"), policy.multiplier),
        );
    }

    for kind in stage_defaults() {
        let limits = "`limits`";
        check_default(
            p,
            s,
            (limits, "memory", kind.column),
            parse_size,
            ("DEFAULT_MEMORY", DEFAULT_MEMORY),
        );
        check_default(
            p,
            s,
            (limits, "fuel", kind.column),
            integer::<u64>,
            kind.fuel,
        );
        check_default(
            p,
            s,
            (limits, "timeout", kind.column),
            parse_duration,
            kind.timeout,
        );
    }

    check_default(
        p,
        s,
        ("`[source]`", "body_limit", "default"),
        parse_size,
        ("DEFAULT_BODY_LIMIT", DEFAULT_BODY_LIMIT),
    );
    check_default(
        p,
        s,
        ("`group`", "max_messages", "default"),
        integer::<usize>,
        ("MAX_GROUP_MESSAGES", MAX_GROUP_MESSAGES),
    );
    let tocsin = "`@tocsin` source `config`";
    for (field, constant, want) in [
        ("every", "DEFAULT_SELF_EVERY", DEFAULT_SELF_EVERY),
        ("retrying_for", "DEFAULT_RETRYING_FOR", DEFAULT_RETRYING_FOR),
        ("stops_within", "DEFAULT_STOPS_WITHIN", DEFAULT_STOPS_WITHIN),
    ] {
        check_default(
            p,
            s,
            (tocsin, field, "default"),
            parse_duration,
            (constant, want),
        );
    }
    for (field, constant, want) in [
        ("plugin_stops", "DEFAULT_PLUGIN_STOPS", DEFAULT_PLUGIN_STOPS),
        (
            "budget_percent",
            "DEFAULT_BUDGET_PERCENT",
            DEFAULT_BUDGET_PERCENT,
        ),
    ] {
        check_default(
            p,
            s,
            (tocsin, field, "default"),
            integer::<u32>,
            (constant, want),
        );
    }
    check_default(
        p,
        s,
        ("Top level", "version", "default"),
        integer::<u32>,
        ("PIPELINE_FORMAT_VERSION", PIPELINE_FORMAT_VERSION),
    );
    check_default(
        p,
        s,
        ("`auth.oidc`", "issuers", "default"),
        string_array,
        (
            "GOOGLE_ISSUERS",
            GOOGLE_ISSUERS.iter().map(|s| s.to_string()).collect(),
        ),
    );

    assert!(
        problems.is_empty(),
        "{DOC} states other defaults than host/config/src/spec.rs:\n  - {}",
        problems.join("\n  - ")
    );
}

/// The constants compared above are the defaults validation applies to each kind of stage: a
/// file that sets nothing gets exactly them.
#[test]
fn validation_applies_the_defaults_of_spec_rs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.wasm"), b"\0asm").unwrap();
    let text = r#"
[source]
plugin = "p.wasm"
auth = { none = true }

[[filter]]
plugin = "p.wasm"

[[sink]]
name = "out"
plugin = "p.wasm"
"#;
    let spec = parse_pipeline(
        &dir.path().join("defaults.toml"),
        text,
        &PluginResolver::default(),
        MachineCheck::Skip,
    )
    .unwrap_or_else(|d| panic!("{d:?}"));

    let [source, filter, sink] = stage_defaults();
    for (kind, limits) in [
        (source, spec.source.stage.as_ref().unwrap().limits),
        (filter, spec.filters[0].limits),
        (sink, spec.sinks[0].stage.limits),
    ] {
        let want = Limits {
            memory: DEFAULT_MEMORY,
            fuel: kind.fuel.1,
            timeout: kind.timeout.1,
        };
        assert_eq!(
            limits, want,
            "the limits validation gives a stage by `{}`",
            kind.column
        );
    }
    assert_eq!(spec.sinks[0].retry, RetryPolicy::default());
    assert_eq!(spec.filter_retry, RetryPolicy::FILTER_DEFAULT);
    let Trigger::Ingest(ingest) = &spec.source.trigger else {
        panic!("a source without `schedule` is an ingest source");
    };
    assert_eq!(ingest.body_limit, DEFAULT_BODY_LIMIT);

    let text = "[source]\nplugin = \"p.wasm\"\nauth = { oidc = { jwks = \"file:k.json\", audience = \"a\" } }\n[[sink]]\nname = \"out\"\nplugin = \"p.wasm\"\n";
    let spec = parse_pipeline(
        &dir.path().join("oidc.toml"),
        text,
        &PluginResolver::default(),
        MachineCheck::Skip,
    )
    .unwrap_or_else(|d| panic!("{d:?}"));
    let Trigger::Ingest(IngestSpec {
        auth: IngestAuth::Oidc(oidc),
        ..
    }) = &spec.source.trigger
    else {
        panic!("an OIDC ingest source");
    };
    assert_eq!(oidc.issuers, GOOGLE_ISSUERS);
}

/// The table reader itself: escaped pipes, fences and sections.
#[test]
fn the_doc_reader_splits_sections_tables_and_cells() {
    let md = "# T\n\n## `a`\n\ntext\n\n| field | x |\n| --- | :-: |\n| `f` | `1` \\| 2 |\n\n```\n## not a section\n| not | a table |\n```\n\n## b\n";
    let sections = parse_sections(md);
    assert_eq!(sections.len(), 2);
    assert_eq!(sections[0].heading, "`a`");
    assert_eq!(sections[1].tables.len(), 0);
    let t = table_of(&sections, "`a`").unwrap();
    assert_eq!(t.header, ["field", "x"]);
    assert_eq!(t.rows[0].cells, ["`f`", "`1` | 2"]);
    assert_eq!(t.rows[0].line, 9);
    assert_eq!(cell(t, "`a`", "f", "x").unwrap().1, "`1` | 2");
    assert_eq!(code_span("`1` | 2"), None);
    assert_eq!(code_span("`64MiB`"), Some("64MiB"));
}
