//! Checking pipeline files: raw TOML → [`PipelineSpec`], or every problem with file, line and
//! field.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::file::{
    ExpectTable, GrantsTable, GroupTable, InhibitTable, LimitsTable, MaintenanceTable, MatchTable,
    PipelineFile, RetryTable, SelfEventsTable, SinkTable, SourceTable,
};
use crate::maintenance::MaintenanceWindow;
use crate::plugin_origin::{EmbeddedPlugin, PluginOrigin};
use crate::schedule::parse_cron;
use crate::self_events::{SelfEvent, SelfEventsSpec, TOCSIN_SOURCE};
use crate::spec::*;
use crate::units::{format_size, parse_duration, parse_size};
use tocsin_message::Severity;

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// The dotted field path, such as `sink[0].retry.initial`; empty for syntax errors.
    pub field: String,
    /// What is wrong, as a sentence.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(line), Some(col)) = (self.line, self.column) {
            write!(f, ":{line}:{col}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// Whether to check what depends on this machine: granted directories exist, secrets resolve.
/// `tocsin run` checks; `tocsin validate` checks only with `--env`, so example pipelines written
/// for other machines still validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineCheck {
    /// Check directories and secrets.
    Check,
    /// Only check what the file itself says.
    Skip,
}

/// Finds the component of a plugin by name.
///
/// A name with a `/` or ending in `.wasm` is a path, relative to the pipeline file's directory.
/// Any other name is looked up as `<name>.wasm` in each plugin directory in turn, then as
/// `<name_with_underscores>.wasm` (Cargo writes hyphens in crate names as underscores), and
/// last among the plugins built into the binary ([`PluginResolver::with_embedded`]) — so a
/// file in a plugin directory overrides a shipped plugin of the same name.
#[derive(Debug, Clone, Default)]
pub struct PluginResolver {
    /// Directories searched in order.
    pub dirs: Vec<PathBuf>,
    /// Plugins built into the binary, searched after the directories.
    pub embedded: &'static [EmbeddedPlugin],
}

impl PluginResolver {
    /// A resolver over these directories (and no built-in plugins).
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        PluginResolver {
            dirs,
            embedded: &[],
        }
    }

    /// The same, also finding these built-in plugins when no directory has the name.
    pub fn with_embedded(mut self, embedded: &'static [EmbeddedPlugin]) -> Self {
        self.embedded = embedded;
        self
    }

    /// The built-in plugin called `name` (`rate-limit` or `rate_limit`).
    pub fn embedded(&self, name: &str) -> Option<EmbeddedPlugin> {
        self.embedded
            .iter()
            .find(|p| p.name == name || p.name.replace('-', "_") == name)
            .copied()
    }

    /// Resolves `name` as written in a pipeline file in `pipeline_dir`.
    pub fn resolve(&self, name: &str, pipeline_dir: &Path) -> Result<PluginOrigin, String> {
        if name.contains('/') || name.ends_with(".wasm") {
            let path = pipeline_dir.join(name);
            return if path.is_file() {
                Ok(PluginOrigin::File(path))
            } else {
                Err(format!("plugin file {} does not exist", path.display()))
            };
        }
        if !is_valid_name(name) {
            return Err(format!(
                "`{name}` is not a plugin name (letters, digits, `-`, `_`) nor a path to a .wasm"
            ));
        }
        let candidates = [
            format!("{name}.wasm"),
            format!("{}.wasm", name.replace('-', "_")),
        ];
        for dir in &self.dirs {
            for file in &candidates {
                let path = dir.join(file);
                if path.is_file() {
                    return Ok(PluginOrigin::File(path));
                }
            }
        }
        if let Some(plugin) = self.embedded(name) {
            return Ok(PluginOrigin::Embedded(plugin));
        }
        let searched: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        let dirs = if searched.is_empty() {
            "any plugin directory (none configured)".to_string()
        } else {
            searched.join(", ")
        };
        let built_in = if self.embedded.is_empty() {
            "no plugin is built into this tocsin".to_string()
        } else {
            let names: Vec<&str> = self.embedded.iter().map(|p| p.name).collect();
            format!("none built in by that name ({})", names.join(", "))
        };
        Err(format!(
            "unknown plugin `{name}`: no {name}.wasm in {dirs}, and {built_in}"
        ))
    }
}

/// Pipeline and sink names: used in URLs, queue keys and idempotency keys.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The result of loading a pipelines directory: what loaded, and what did not.
#[derive(Debug, Default)]
pub struct DirReport {
    /// Valid pipelines, by file name order.
    pub pipelines: Vec<PipelineSpec>,
    /// Invalid files and all their problems.
    pub failures: Vec<(PathBuf, Vec<Diagnostic>)>,
}

/// Loads every `*.toml` file of `dir`. One bad file never stops the others.
pub fn load_dir(
    dir: &Path,
    resolver: &PluginResolver,
    machine: MachineCheck,
) -> std::io::Result<DirReport> {
    let mut report = DirReport::default();
    for path in pipeline_files(dir)? {
        match load_file(&path, resolver, machine) {
            Ok(spec) => report.pipelines.push(spec),
            Err(diags) => report.failures.push((path, diags)),
        }
    }
    Ok(report)
}

/// The pipeline files of `dir`, sorted by name.
pub fn pipeline_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_pipeline_file(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Every readable pipeline file of `dir` as (pipeline name, path, text), sorted by name.
pub fn load_dir_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf, String)>> {
    Ok(pipeline_files(dir)?
        .into_iter()
        .filter_map(|path| {
            let name = path.file_stem()?.to_str()?.to_string();
            let text = std::fs::read_to_string(&path).ok()?;
            Some((name, path, text))
        })
        .collect())
}

/// The suffix of a pipeline's behaviour tests, kept next to it: `backup.toml` is tested by
/// `backup.test.toml` (run by `tocsin test`). Such files are never pipelines.
pub const BEHAVIOUR_TEST_SUFFIX: &str = ".test.toml";

/// Whether a path looks like a pipeline file (`*.toml`, not hidden, not an editor backup, not
/// a behaviour-test file).
pub fn is_pipeline_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    path.extension().is_some_and(|e| e == "toml")
        && !name.starts_with('.')
        && !name.ends_with(BEHAVIOUR_TEST_SUFFIX)
        && path.is_file()
}

/// Reads and checks one pipeline file.
pub fn load_file(
    path: &Path,
    resolver: &PluginResolver,
    machine: MachineCheck,
) -> Result<PipelineSpec, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            file: path.to_path_buf(),
            line: None,
            column: None,
            field: String::new(),
            message: format!("cannot read the file: {e}"),
        }]
    })?;
    parse_pipeline(path, &text, resolver, machine)
}

/// Checks the text of a pipeline file named `path`.
pub fn parse_pipeline(
    path: &Path,
    text: &str,
    resolver: &PluginResolver,
    machine: MachineCheck,
) -> Result<PipelineSpec, Vec<Diagnostic>> {
    let mut cx = Checker {
        file: path.to_path_buf(),
        text,
        diags: Vec::new(),
        resolver,
        machine,
        base_dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
    };
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    if !is_valid_name(&name) {
        cx.error(
            None,
            "",
            format!(
                "the file name `{name}` is the pipeline's name and must be lower-case letters, \
                 digits, `-` or `_` (at most 64)"
            ),
        );
    }
    let raw: PipelineFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            cx.error(e.span(), "", e.message().trim().to_string());
            return Err(cx.diags);
        }
    };
    if let Some(v) = &raw.version {
        if *v.get_ref() != PIPELINE_FORMAT_VERSION {
            cx.error(
                Some(v.span()),
                "version",
                format!(
                    "pipeline format version {} is not supported; this build reads version {}",
                    v.get_ref(),
                    PIPELINE_FORMAT_VERSION
                ),
            );
        }
    }

    let src = &raw.source;
    let builtin = src.plugin.get_ref() == TOCSIN_SOURCE;
    // `Some(None)`: the built-in source, which runs no plugin; `None`: an error was reported.
    let source_stage = if builtin {
        Some(None)
    } else {
        cx.stage(
            "source",
            &src.plugin,
            src.sha256.as_ref(),
            src.config.as_ref(),
            &src.grants,
            &src.limits,
            default_limits(StageRole::Source),
        )
        .map(Some)
    };
    let trigger = match &src.schedule {
        _ if builtin => cx.self_events(text, src).map(Trigger::Tocsin),
        None => {
            if let Some(tz) = &src.timezone {
                cx.error(
                    Some(tz.span()),
                    "source.timezone",
                    "a time zone needs a `schedule`".into(),
                );
            }
            if src.run_on_start {
                cx.error(
                    None,
                    "source.run_on_start",
                    "`run_on_start` needs a `schedule`".into(),
                );
            }
            cx.ingest(src.auth.as_ref(), src.body_limit.as_ref())
                .map(Trigger::Ingest)
        }
        Some(expr) => {
            for (present, field) in [
                (src.auth.is_some(), "source.auth"),
                (src.body_limit.is_some(), "source.body_limit"),
            ] {
                if present {
                    cx.error(
                        Some(expr.span()),
                        field,
                        "only an ingest source (one without `schedule`) takes requests".into(),
                    );
                }
            }
            let cron = parse_cron(expr.get_ref())
                .map_err(|m| cx.error(Some(expr.span()), "source.schedule", m))
                .ok();
            let timezone = cx.timezone(src.timezone.as_ref(), "source.timezone");
            match (cron, timezone) {
                (Some(cron), Some(timezone)) => Some(Trigger::Schedule(Box::new(ScheduleSpec {
                    expression: expr.get_ref().clone(),
                    cron,
                    timezone,
                    run_on_start: src.run_on_start,
                }))),
                _ => None,
            }
        }
    };

    // The decoder holds the request body in its memory while it parses it: its memory and
    // fuel follow `body_limit` unless the file sets them, and a memory cap set too low for
    // the body is refused.
    let mut source_stage = source_stage;
    if let (Some(Some(stage)), Some(Trigger::Ingest(ingest))) = (source_stage.as_mut(), &trigger) {
        let needed = decoder_memory(ingest.body_limit);
        if src.limits.fuel.is_none() {
            stage.limits.fuel = stage.limits.fuel.max(decoder_fuel(ingest.body_limit));
        }
        match &src.limits.memory {
            None => stage.limits.memory = stage.limits.memory.max(needed),
            Some(set) if stage.limits.memory < needed => cx.error(
                Some(set.span()),
                "source.limits.memory",
                format!(
                    "{} cannot hold a request body of `body_limit` {} while decoding it: the \
                     decoder needs at least {} (4 × body_limit + 32MiB); raise \
                     `limits.memory` or lower `body_limit`",
                    crate::units::format_size(stage.limits.memory),
                    crate::units::format_size(ingest.body_limit),
                    crate::units::format_size(needed),
                ),
            ),
            Some(_) => {}
        }
    }

    let filters: Vec<Option<StageSpec>> = raw
        .filters
        .iter()
        .enumerate()
        .map(|(i, f)| {
            cx.stage(
                &format!("filter[{i}]"),
                &f.plugin,
                f.sha256.as_ref(),
                f.config.as_ref(),
                &f.grants,
                &f.limits,
                default_limits(StageRole::Filter),
            )
        })
        .collect();

    if raw.sinks.is_empty() {
        cx.error(
            None,
            "sink",
            "a pipeline needs at least one [[sink]]".into(),
        );
    }
    let mut seen = BTreeSet::new();
    let sinks: Vec<Option<SinkSpec>> = raw
        .sinks
        .iter()
        .enumerate()
        .map(|(i, s)| cx.sink(i, s, &mut seen))
        .collect();

    let filter_retry = cx.retry(
        "filter_retry",
        &raw.filter_retry,
        RetryPolicy::FILTER_DEFAULT,
    );

    let queue_budget = raw
        .queue_budget
        .as_ref()
        .map(|text| cx.size_within(text, "queue_budget", 64 << 10, u64::MAX));

    let sink_names: Vec<&str> = raw
        .sinks
        .iter()
        .map(|s| s.name.get_ref().as_str())
        .collect();
    let maintenance: Vec<Option<MaintenanceWindow>> = raw
        .maintenance
        .iter()
        .enumerate()
        .map(|(i, m)| cx.maintenance(i, m, &sink_names))
        .collect();
    let expect = raw.expect.as_ref().map(|e| cx.expect(e));
    let inhibit: Vec<Option<InhibitRule>> = raw
        .inhibit
        .iter()
        .enumerate()
        .map(|(i, rule)| cx.inhibit(i, rule))
        .collect();

    if !cx.diags.is_empty() {
        return Err(cx.diags);
    }
    // No diagnostics means every Option above is Some.
    Ok(PipelineSpec {
        name,
        file: path.to_path_buf(),
        disabled: raw.disabled,
        source: SourceSpec {
            stage: source_stage.expect("checked"),
            trigger: trigger.expect("checked"),
        },
        filters: filters.into_iter().map(|f| f.expect("checked")).collect(),
        filter_retry: filter_retry.expect("checked"),
        queue_budget: queue_budget.map(|b| b.expect("checked")),
        sinks: sinks.into_iter().map(|s| s.expect("checked")).collect(),
        maintenance: maintenance
            .into_iter()
            .map(|m| m.expect("checked"))
            .collect(),
        expect: expect.map(|e| e.expect("checked")),
        inhibit: inhibit.into_iter().map(|r| r.expect("checked")).collect(),
    })
}

/// Where the key at `path` (keys from the top of a `config` table) is written inside `table`
/// (the table's span in `text`): each key is looked for, bare or quoted and followed by `=`,
/// after the previous one. The table's own place when a key is not written there (a missing
/// required key, or a shape this search does not follow).
fn key_span(text: &str, table: Range<usize>, path: &[String]) -> Range<usize> {
    let mut at = table.start;
    for key in path {
        let inside = &text[at..table.end.min(text.len())];
        let found = [key.clone(), format!("\"{key}\""), format!("'{key}'")]
            .iter()
            .filter_map(|spelled| {
                inside.match_indices(spelled.as_str()).find(|(i, _)| {
                    let before = inside[..*i].chars().next_back();
                    let after = inside[i + spelled.len()..].trim_start();
                    !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-')
                        && (after.starts_with('=') || after.starts_with('.'))
                })
            })
            .map(|(i, _)| i)
            .min();
        match found {
            Some(i) => at += i,
            None => return table,
        }
    }
    at..at + 1
}

/// Accumulates diagnostics while converting one file.
struct Checker<'a> {
    file: PathBuf,
    text: &'a str,
    diags: Vec<Diagnostic>,
    resolver: &'a PluginResolver,
    machine: MachineCheck,
    base_dir: PathBuf,
}

impl Checker<'_> {
    fn error(&mut self, span: Option<Range<usize>>, field: &str, message: String) {
        let (line, column) = match span {
            Some(span) => {
                let (l, c) = line_col(self.text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            line,
            column,
            field: field.to_string(),
            message,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn stage(
        &mut self,
        field: &str,
        plugin: &Spanned<String>,
        sha256: Option<&Spanned<String>>,
        config: Option<&Spanned<toml::Table>>,
        grants: &GrantsTable,
        limits: &LimitsTable,
        defaults: Limits,
    ) -> Option<StageSpec> {
        let (default_fuel, default_timeout) = (defaults.fuel, defaults.timeout);
        let errors_before = self.diags.len();
        let origin = self
            .resolver
            .resolve(plugin.get_ref(), &self.base_dir)
            .map_err(|m| self.error(Some(plugin.span()), &format!("{field}.plugin"), m))
            .ok();
        // The component's bytes, for its pin and its settings schema.
        let bytes = origin.as_ref().and_then(|origin| match origin.read() {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.error(
                    Some(plugin.span()),
                    &format!("{field}.plugin"),
                    format!("cannot read {origin}: {e}"),
                );
                None
            }
        });
        let pin = sha256.and_then(|pin| {
            let hex_pin = pin.get_ref().trim().to_ascii_lowercase();
            if hex_pin.len() != 64 || !hex_pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                self.error(
                    Some(pin.span()),
                    &format!("{field}.sha256"),
                    "expected 64 hex digits".into(),
                );
                return None;
            }
            if let (Some(origin), Some(bytes)) = (&origin, &bytes) {
                let actual = hex::encode(Sha256::digest(bytes));
                if actual != hex_pin {
                    self.error(
                        Some(pin.span()),
                        &format!("{field}.sha256"),
                        format!(
                            "{origin} has sha256 {actual}, not the pinned {hex_pin}; refusing to run other code than the pipeline names",
                        ),
                    );
                }
            }
            Some(hex_pin)
        });
        let config_value = match config {
            None => Some(serde_json::Value::Object(Default::default())),
            Some(table) => serde_json::to_value(table.get_ref())
                .map_err(|e| {
                    self.error(
                        Some(table.span()),
                        &format!("{field}.config"),
                        format!("cannot be expressed as JSON: {e}"),
                    )
                })
                .ok(),
        };
        let settings_declared = match (&bytes, &config_value) {
            (Some(bytes), Some(value)) => self.settings(field, plugin, bytes, config, value),
            _ => false,
        };
        let config_json = config_value
            .as_ref()
            .map_or_else(String::new, serde_json::Value::to_string);
        let grants = self.grants(field, grants);
        let limits = self.limits(field, limits, default_fuel, default_timeout);
        if self.diags.len() > errors_before {
            return None;
        }
        Some(StageSpec {
            plugin: PluginRef {
                name: plugin.get_ref().clone(),
                origin: origin?,
                sha256: pin,
            },
            config_json,
            grants,
            limits: limits?,
            settings_declared,
        })
    }

    /// Checks a stage's `config` against the settings schema its component declares (none:
    /// nothing to check); each error names the key's own line when it can be found. Returns
    /// whether the component declares a schema.
    fn settings(
        &mut self,
        field: &str,
        plugin: &Spanned<String>,
        component: &[u8],
        config: Option<&Spanned<toml::Table>>,
        value: &serde_json::Value,
    ) -> bool {
        let schema = match crate::settings::schema_in(component) {
            Ok(Some(schema)) => schema,
            Ok(None) => return false,
            Err(why) => {
                self.error(Some(plugin.span()), &format!("{field}.plugin"), why);
                return true;
            }
        };
        for error in crate::settings::check(&schema, value) {
            let span = config.map(|c| key_span(self.text, c.span(), &error.path));
            let mut name = format!("{field}.config");
            for key in &error.path {
                name.push('.');
                name.push_str(key);
            }
            self.error(span, &name, error.message);
        }
        true
    }

    fn grants(&mut self, field: &str, g: &GrantsTable) -> Grants {
        let mut out = Grants {
            stdout: g.stdout,
            ..Grants::default()
        };
        for (kind, list, target) in [
            ("read_dirs", &g.read_dirs, &mut out.read_dirs),
            ("write_dirs", &g.write_dirs, &mut out.write_dirs),
        ] {
            for dir in list {
                let name = format!("{field}.grants.{kind}");
                // `/.`, `//` and `/srv/./x/` are spelled differently, not different: the
                // components are what is granted.
                let path: PathBuf = Path::new(dir.get_ref()).components().collect();
                if path == Path::new("/") {
                    self.error(
                        Some(dir.span()),
                        &name,
                        format!(
                            "`{}` grants the whole filesystem; grant only the directories the \
                             plugin needs",
                            dir.get_ref()
                        ),
                    );
                    continue;
                }
                if path.starts_with("/proc") && path != Path::new("/proc") {
                    self.error(
                        Some(dir.span()),
                        &name,
                        format!(
                            "`{}` is inside /proc, whose per-process files expose tocsin's \
                             environment (its secrets): grant `/proc`, which shows only the \
                             system-wide files",
                            dir.get_ref()
                        ),
                    );
                    continue;
                }
                let written = path.to_string_lossy().into_owned();
                let written = written.as_str();
                let escapes = path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir));
                if written.is_empty() || escapes {
                    self.error(
                        Some(dir.span()),
                        &name,
                        format!(
                            "`{}` must be an absolute path, or a relative one without `..`",
                            dir.get_ref()
                        ),
                    );
                    continue;
                }
                let grant = if path.is_absolute() {
                    DirGrant {
                        host: path,
                        guest: written.to_string(),
                    }
                } else {
                    let guest = written.trim_start_matches("./").to_string();
                    DirGrant {
                        host: self.base_dir.join(&guest),
                        guest,
                    }
                };
                if self.machine == MachineCheck::Check && !grant.host.is_dir() {
                    self.error(
                        Some(dir.span()),
                        &name,
                        format!("directory {} does not exist", grant.host.display()),
                    );
                }
                target.push(grant);
            }
        }
        for host in &g.hosts {
            match crate::host_grant::HostGrant::parse(host.get_ref()) {
                Ok(_) => out.hosts.push(host.get_ref().trim().to_ascii_lowercase()),
                Err(why) => self.error(
                    Some(host.span()),
                    &format!("{field}.grants.hosts"),
                    format!("`{}`: {why}", host.get_ref()),
                ),
            }
        }
        for (name, source) in &g.secrets {
            let field_name = format!("{field}.grants.secrets.{name}");
            if let Some(reference) = self.secret_ref(source, &field_name) {
                out.secrets.push((name.clone(), reference));
            }
        }
        if let Some(control) = &g.control {
            out.control = self.control_grant(&format!("{field}.grants.control"), control);
        }
        out
    }

    /// `grants.control`: known groups, actors written as ids (or `*`).
    fn control_grant(
        &mut self,
        name: &str,
        table: &toml::Spanned<crate::file::ControlTable>,
    ) -> crate::spec::ControlGrant {
        use crate::file::ControlTable;
        use crate::spec::{ControlGrant, ControlGroup};
        let span = Some(table.span());
        let asked: Vec<(String, Vec<String>)> = match table.get_ref() {
            ControlTable::Groups(groups) => groups
                .iter()
                .map(|g| (g.clone(), vec![ControlGrant::ANYONE.to_string()]))
                .collect(),
            ControlTable::Actors(by_group) => by_group
                .iter()
                .map(|(g, actors)| (g.clone(), actors.clone()))
                .collect(),
        };
        let mut grant = ControlGrant::default();
        for (group_name, actors) in asked {
            let Some(group) = ControlGroup::parse(&group_name) else {
                let known: Vec<&str> = ControlGroup::ALL.iter().map(|g| g.as_str()).collect();
                let nearest = known
                    .iter()
                    .map(|k| (strsim::damerau_levenshtein(&group_name, k), *k))
                    .min()
                    .filter(|(distance, _)| *distance <= 2);
                let hint = match nearest {
                    Some((_, k)) => format!("; did you mean `{k}`?"),
                    None => format!(" (the groups are {})", known.join(", ")),
                };
                self.error(
                    span.clone(),
                    name,
                    format!("unknown group `{group_name}`{hint}"),
                );
                continue;
            };
            if actors.is_empty() {
                self.error(
                    span.clone(),
                    &format!("{name}.{group}"),
                    "lists nobody: name who may use it (Matrix user ids such as \
                     `@alice:example.org`), or `*` for anyone the plugin lets through, or leave \
                     the group out"
                        .into(),
                );
                continue;
            }
            for actor in &actors {
                let bad = actor.is_empty()
                    || actor.len() > 255
                    || actor.chars().any(|c| c.is_whitespace() || c.is_control());
                if bad {
                    self.error(
                        span.clone(),
                        &format!("{name}.{group}"),
                        format!(
                            "{actor:?} is not an actor: write a user id such as \
                             `@alice:example.org` (no spaces), or `*`"
                        ),
                    );
                }
            }
            grant.groups.entry(group).or_default().extend(actors);
        }
        grant
    }

    fn ingest(
        &mut self,
        auth: Option<&Spanned<crate::file::AuthTable>>,
        body_limit: Option<&Spanned<String>>,
    ) -> Option<IngestSpec> {
        let Some(auth) = auth else {
            self.error(
                None,
                "source.auth",
                "an ingest source needs `auth`: `{ bearer = \"env:NAME\" }`, \
                 `{ github_secret = \"env:NAME\" }`, `{ oidc = { jwks = …, audience = … } }` \
                 or `{ none = true }` to accept anyone"
                    .into(),
            );
            return None;
        };
        let table = auth.get_ref();
        let chosen = [
            table.none,
            table.bearer.is_some(),
            table.github_secret.is_some(),
            table.oidc.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if chosen != 1 {
            self.error(
                Some(auth.span()),
                "source.auth",
                "set exactly one of `none = true`, `bearer`, `github_secret`, `oidc`".into(),
            );
            return None;
        }
        let auth = if table.none {
            IngestAuth::None
        } else if let Some(oidc) = &table.oidc {
            IngestAuth::Oidc(self.oidc(oidc)?)
        } else if let Some(token) = &table.bearer {
            IngestAuth::Bearer(self.secret_ref(token, "source.auth.bearer")?)
        } else {
            let secret = table.github_secret.as_ref()?;
            IngestAuth::GithubHmac(self.secret_ref(secret, "source.auth.github_secret")?)
        };
        let body_limit = match body_limit {
            None => DEFAULT_BODY_LIMIT,
            Some(text) => self.size_within(text, "source.body_limit", 1, 64 << 20)?,
        };
        Some(IngestSpec { auth, body_limit })
    }

    fn oidc(&mut self, oidc: &crate::file::OidcTable) -> Option<OidcSpec> {
        let text = oidc.jwks.get_ref();
        let jwks = if let Some(path) = text.strip_prefix("file:") {
            let path = self.base_dir.join(path);
            if self.machine == MachineCheck::Check && !path.is_file() {
                self.error(
                    Some(oidc.jwks.span()),
                    "source.auth.oidc.jwks",
                    format!("{} does not exist", path.display()),
                );
            }
            JwksSource::File(path)
        } else if text.starts_with("https://") {
            JwksSource::Url(text.clone())
        } else if let Some(rest) = text.strip_prefix("http://") {
            // Keys fetched in the clear can be swapped by anyone on the path, and with them
            // who may post: plain HTTP only to this machine (a local key server, a test).
            let host = rest.split(['/', '?']).next().unwrap_or("");
            let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
            let loopback = host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                self.error(
                    Some(oidc.jwks.span()),
                    "source.auth.oidc.jwks",
                    format!(
                        "`{text}` is plain HTTP: the signing keys must come over https:// (or \
                         from a file), or anyone on the way could sign tokens"
                    ),
                );
                return None;
            }
            JwksSource::Url(text.clone())
        } else {
            self.error(
                Some(oidc.jwks.span()),
                "source.auth.oidc.jwks",
                format!("`{text}` must be `file:/path` or an https:// URL"),
            );
            return None;
        };
        if oidc.audience.is_empty() {
            self.error(
                Some(oidc.jwks.span()),
                "source.auth.oidc.audience",
                "must not be empty".into(),
            );
            return None;
        }
        let issuers = if oidc.issuers.is_empty() {
            GOOGLE_ISSUERS.iter().map(|s| s.to_string()).collect()
        } else {
            oidc.issuers.clone()
        };
        Some(OidcSpec {
            jwks,
            audience: oidc.audience.clone(),
            issuers,
            email: oidc.email.clone(),
        })
    }

    /// Parses `env:NAME` / `file:/path`, checking it resolves when machine checks are on.
    /// The value is never echoed in an error: it may be the secret itself, pasted by mistake.
    fn secret_ref(&mut self, source: &Spanned<String>, field: &str) -> Option<SecretRef> {
        let reference = match SecretRef::parse(source.get_ref(), &self.base_dir) {
            Ok(reference) => reference,
            Err(message) => {
                self.error(Some(source.span()), field, message);
                return None;
            }
        };
        if self.machine == MachineCheck::Check {
            if let Err(m) = reference.resolve() {
                self.error(Some(source.span()), field, m);
            }
        }
        Some(reference)
    }

    /// A size such as `"64KiB"` within `min..=max` bytes; else an error on `field`.
    fn size_within(
        &mut self,
        text: &Spanned<String>,
        field: &str,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        match parse_size(text.get_ref()) {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            Ok(_) => {
                let range = if max == u64::MAX {
                    format!("under the least of {}", format_size(min))
                } else {
                    format!("outside {}..{}", format_size(min), format_size(max))
                };
                self.error(
                    Some(text.span()),
                    field,
                    format!("`{}` is {range}", text.get_ref()),
                );
                None
            }
            Err(e) => {
                self.error(Some(text.span()), field, e);
                None
            }
        }
    }

    fn limits(
        &mut self,
        field: &str,
        l: &LimitsTable,
        default_fuel: u64,
        default_timeout: std::time::Duration,
    ) -> Option<Limits> {
        let memory = match &l.memory {
            None => Some(DEFAULT_MEMORY),
            Some(m) => self.size_within(m, &format!("{field}.limits.memory"), 1 << 20, 4 << 30),
        };
        let fuel = match &l.fuel {
            Some(f) if *f.get_ref() == 0 => {
                self.error(
                    Some(f.span()),
                    &format!("{field}.limits.fuel"),
                    "must be more than 0".into(),
                );
                None
            }
            Some(f) => Some(*f.get_ref()),
            None => Some(default_fuel),
        };
        let timeout = self.duration(l.timeout.as_ref(), &format!("{field}.limits.timeout"));
        Some(Limits {
            memory: memory?,
            fuel: fuel?,
            timeout: timeout?.unwrap_or(default_timeout),
        })
    }

    /// A positive duration; `Some(None)` when absent, `None` when invalid.
    fn duration(
        &mut self,
        value: Option<&Spanned<String>>,
        field: &str,
    ) -> Option<Option<std::time::Duration>> {
        match value {
            None => Some(None),
            Some(v) => match parse_duration(v.get_ref()) {
                Ok(d) if !d.is_zero() => Some(Some(d)),
                Ok(_) => {
                    self.error(Some(v.span()), field, "must be longer than 0".into());
                    None
                }
                Err(e) => {
                    self.error(Some(v.span()), field, e);
                    None
                }
            },
        }
    }

    fn sink(&mut self, i: usize, s: &SinkTable, seen: &mut BTreeSet<String>) -> Option<SinkSpec> {
        let field = format!("sink[{i}]");
        let errors_before = self.diags.len();
        let name = s.name.get_ref().clone();
        if !is_valid_name(&name) {
            self.error(
                Some(s.name.span()),
                &format!("{field}.name"),
                format!("`{name}` must be lower-case letters, digits, `-` or `_` (at most 64)"),
            );
        } else if !seen.insert(name.clone()) {
            self.error(
                Some(s.name.span()),
                &format!("{field}.name"),
                format!("another sink is already called `{name}`"),
            );
        }
        let stage = self.stage(
            &field,
            &s.plugin,
            s.sha256.as_ref(),
            s.config.as_ref(),
            &s.grants,
            &s.limits,
            default_limits(StageRole::Sink),
        );
        let retry = self.retry(&format!("{field}.retry"), &s.retry, RetryPolicy::default());
        let concurrency = match &s.concurrency {
            Some(n) if !(1..=MAX_SINK_CONCURRENCY).contains(n.get_ref()) => {
                self.error(
                    Some(n.span()),
                    &format!("{field}.concurrency"),
                    format!("{} is outside 1..{MAX_SINK_CONCURRENCY}", n.get_ref()),
                );
                None
            }
            Some(n) => Some(*n.get_ref()),
            None => Some(DEFAULT_SINK_CONCURRENCY),
        };
        let route = self.route(&field, s.route.as_ref());
        let group = match &s.group {
            None => Some(None),
            Some(g) => self.group(&format!("{field}.group"), g).map(Some),
        };
        if self.diags.len() > errors_before {
            return None;
        }
        Some(SinkSpec {
            name,
            stage: stage?,
            retry: retry?,
            concurrency: concurrency?,
            route: route?,
            group: group?,
        })
    }

    /// `maintenance[i]`: every range, the zone, the matchers and the sinks checked.
    fn maintenance(
        &mut self,
        i: usize,
        m: &MaintenanceTable,
        sinks: &[&str],
    ) -> Option<MaintenanceWindow> {
        let field = format!("maintenance[{i}]");
        let mut ok = true;
        let weekdays = self.each(
            &mut ok,
            &field,
            "weekdays",
            m.weekdays.as_ref(),
            crate::maintenance::parse_weekdays,
        );
        let times = self.each(
            &mut ok,
            &field,
            "times",
            m.times.as_ref(),
            crate::maintenance::parse_times,
        );
        let days_of_month = self.each(
            &mut ok,
            &field,
            "days_of_month",
            m.days_of_month.as_ref(),
            crate::maintenance::parse_days_of_month,
        );
        let months = self.each(
            &mut ok,
            &field,
            "months",
            m.months.as_ref(),
            crate::maintenance::parse_months,
        );
        let matchers = self.each(&mut ok, &field, "match", m.matchers.as_ref(), |t| {
            crate::matchers::Matcher::parse(t).map_err(|e| e.to_string())
        });
        let sink_list = self.each(&mut ok, &field, "sinks", m.sinks.as_ref(), |sink| {
            if sinks.contains(&sink) {
                Ok(sink.to_string())
            } else {
                Err(format!(
                    "`{sink}` is not a sink of this pipeline (its sinks: {})",
                    sinks.join(", ")
                ))
            }
        });
        if weekdays.is_empty() && times.is_empty() && days_of_month.is_empty() && months.is_empty()
        {
            self.error(
                m.name.as_ref().map(Spanned::span),
                &field,
                "a window needs weekdays, times, days_of_month or months: without any it \
                 would mute for ever (a silence ends; use `tocsin silence add`)"
                    .into(),
            );
            ok = false;
        }
        let timezone = self.timezone(m.timezone.as_ref(), &format!("{field}.timezone"))?;
        ok.then(|| MaintenanceWindow {
            name: m
                .name
                .as_ref()
                .map_or_else(|| field.clone(), |n| n.get_ref().clone()),
            timezone,
            weekdays,
            times,
            days_of_month,
            months,
            matchers,
            sinks: sink_list,
        })
    }

    /// Each item of the list field `{parent}.{name}` read by `parse`; every refused item is
    /// reported (with the list's line) and clears `ok`.
    fn each<T>(
        &mut self,
        ok: &mut bool,
        parent: &str,
        name: &str,
        value: Option<&Spanned<Vec<String>>>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let Some(value) = value else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in value.get_ref() {
            match parse(item) {
                Ok(v) => out.push(v),
                Err(why) => {
                    self.error(Some(value.span()), &format!("{parent}.{name}"), why);
                    *ok = false;
                }
            }
        }
        out
    }

    /// An IANA time zone (UTC when not given), or `None` with the error reported at `field`.
    fn timezone(&mut self, tz: Option<&Spanned<String>>, field: &str) -> Option<chrono_tz::Tz> {
        let Some(tz) = tz else {
            return Some(chrono_tz::UTC);
        };
        let parsed = tz.get_ref().parse::<chrono_tz::Tz>().ok();
        if parsed.is_none() {
            self.error(
                Some(tz.span()),
                field,
                format!(
                    "`{}` is not an IANA time zone such as \"Europe/Berlin\"",
                    tz.get_ref()
                ),
            );
        }
        parsed
    }

    fn group(&mut self, field: &str, g: &Spanned<GroupTable>) -> Option<GroupPolicy> {
        let table = g.get_ref();
        let by = self.label_names(&format!("{field}.by"), &table.by);
        let wait = self.duration(table.wait.as_ref(), &format!("{field}.wait"));
        let interval = self.duration(table.interval.as_ref(), &format!("{field}.interval"));
        let max_messages = match &table.max_messages {
            None => Some(MAX_GROUP_MESSAGES),
            Some(n) if (1..=MAX_GROUP_MESSAGES).contains(&(*n.get_ref() as usize)) => {
                Some(*n.get_ref() as usize)
            }
            Some(n) => {
                self.error(
                    Some(n.span()),
                    &format!("{field}.max_messages"),
                    format!(
                        "{} is outside 1..{MAX_GROUP_MESSAGES}: a notification carries at least \
                         one message and at most {MAX_GROUP_MESSAGES}",
                        n.get_ref()
                    ),
                );
                None
            }
        };
        Some(GroupPolicy {
            by: by?,
            wait: wait?.unwrap_or(DEFAULT_GROUP_WAIT),
            interval: interval?.unwrap_or(DEFAULT_GROUP_INTERVAL),
            max_messages: max_messages?,
        })
    }

    /// A list of label names: none empty, none twice.
    fn label_names(&mut self, field: &str, names: &Spanned<Vec<String>>) -> Option<Vec<String>> {
        let mut checked: Vec<String> = Vec::new();
        for label in names.get_ref() {
            let problem = if label.is_empty() {
                "a label name cannot be empty".to_string()
            } else if checked.contains(label) {
                format!("`{label}` is named twice")
            } else {
                checked.push(label.clone());
                continue;
            };
            self.error(Some(names.span()), field, problem);
            return None;
        }
        Some(checked)
    }

    /// `inhibit[i]`: matchers on both sides (at least one each), the equal labels.
    fn inhibit(&mut self, i: usize, rule: &InhibitTable) -> Option<InhibitRule> {
        let field = format!("inhibit[{i}]");
        let mut ok = true;
        let parse = |t: &str| crate::matchers::Matcher::parse(t).map_err(|e| e.to_string());
        let source = self.each(&mut ok, &field, "source", Some(&rule.source), parse);
        let target = self.each(&mut ok, &field, "target", Some(&rule.target), parse);
        for (name, side, list) in [
            ("source", &rule.source, &source),
            ("target", &rule.target, &target),
        ] {
            if ok && list.is_empty() {
                self.error(
                    Some(side.span()),
                    &format!("{field}.{name}"),
                    "needs at least one matcher".into(),
                );
                ok = false;
            }
        }
        let equal = match &rule.equal {
            None => Some(Vec::new()),
            Some(names) => self.label_names(&format!("{field}.equal"), names),
        };
        let equal = equal?;
        ok.then_some(InhibitRule {
            source,
            target,
            equal,
        })
    }

    /// `expect`: `every` at least a second, `grace` (0 allowed), the key labels, the severity.
    /// The settings of the built-in `@tocsin` source. `config` is read again from the file's
    /// text with spans, so each mistake names its own line; the fields a plugin source takes
    /// and this one does not are refused.
    fn self_events(&mut self, text: &str, src: &SourceTable) -> Option<SelfEventsSpec> {
        let errors_before = self.diags.len();
        let refuse = |cx: &mut Self, present: bool, field: &str, why: &str| {
            if present {
                cx.error(
                    Some(src.plugin.span()),
                    &format!("source.{field}"),
                    format!("the built-in `{TOCSIN_SOURCE}` source takes no `{field}`: {why}"),
                );
            }
        };
        let events_happen = "it reports tocsin's own events as it sees them";
        refuse(self, src.schedule.is_some(), "schedule", events_happen);
        refuse(self, src.timezone.is_some(), "timezone", events_happen);
        refuse(self, src.run_on_start, "run_on_start", events_happen);
        refuse(self, src.auth.is_some(), "auth", "it takes no requests");
        refuse(
            self,
            src.body_limit.is_some(),
            "body_limit",
            "it takes no requests",
        );
        refuse(
            self,
            src.sha256.is_some(),
            "sha256",
            "it is part of tocsin, not a plugin file",
        );
        let g = &src.grants;
        let granted = !g.read_dirs.is_empty()
            || !g.write_dirs.is_empty()
            || !g.hosts.is_empty()
            || !g.secrets.is_empty()
            || g.stdout
            || g.control.is_some();
        refuse(self, granted, "grants", "it runs no plugin");
        let l = &src.limits;
        let limited = l.memory.is_some() || l.fuel.is_some() || l.timeout.is_some();
        refuse(self, limited, "limits", "it runs no plugin");

        #[derive(serde::Deserialize)]
        struct File {
            source: Source,
        }
        #[derive(serde::Deserialize)]
        struct Source {
            config: Option<Spanned<SelfEventsTable>>,
        }
        let table = match toml::from_str::<File>(text) {
            Ok(file) => file.source.config.map(Spanned::into_inner),
            Err(e) => {
                self.error(e.span(), "source.config", e.message().trim().to_string());
                return None;
            }
        };
        let table = table.unwrap_or_default();
        let mut spec = SelfEventsSpec::default();
        if let Some(names) = &table.events {
            let mut events = BTreeSet::new();
            for name in names.get_ref() {
                match SelfEvent::parse(name) {
                    Ok(e) => {
                        events.insert(e);
                    }
                    Err(why) => self.error(Some(names.span()), "source.config.events", why),
                }
            }
            if names.get_ref().is_empty() {
                self.error(
                    Some(names.span()),
                    "source.config.events",
                    "name at least one event, or leave `events` out for all of them".into(),
                );
            }
            spec.events = events;
        }
        let duration = |cx: &mut Self,
                        value: &Option<Spanned<String>>,
                        field: &str,
                        into: &mut std::time::Duration| {
            if let Some(text) = value {
                match parse_duration(text.get_ref()) {
                    Ok(d) if d >= std::time::Duration::from_secs(1) => *into = d,
                    Ok(_) => cx.error(
                        Some(text.span()),
                        &format!("source.config.{field}"),
                        "must be at least 1s".into(),
                    ),
                    Err(why) => cx.error(Some(text.span()), &format!("source.config.{field}"), why),
                }
            }
        };
        duration(self, &table.every, "every", &mut spec.every);
        duration(
            self,
            &table.retrying_for,
            "retrying_for",
            &mut spec.retrying_for,
        );
        duration(
            self,
            &table.stops_within,
            "stops_within",
            &mut spec.stops_within,
        );
        if let Some(n) = &table.plugin_stops {
            match *n.get_ref() {
                0 => self.error(
                    Some(n.span()),
                    "source.config.plugin_stops",
                    "must be at least 1".into(),
                ),
                n => spec.plugin_stops = n,
            }
        }
        if let Some(p) = &table.budget_percent {
            match *p.get_ref() {
                1..=100 => spec.budget_percent = *p.get_ref(),
                _ => self.error(
                    Some(p.span()),
                    "source.config.budget_percent",
                    "must be a percentage from 1 to 100".into(),
                ),
            }
        }
        (self.diags.len() == errors_before).then_some(spec)
    }

    fn expect(&mut self, e: &Spanned<ExpectTable>) -> Option<ExpectPolicy> {
        let table = e.get_ref();
        let every = match parse_duration(table.every.get_ref()) {
            Ok(d) if d >= std::time::Duration::from_secs(1) => Some(d),
            Ok(_) => {
                self.error(
                    Some(table.every.span()),
                    "expect.every",
                    "must be at least 1s".into(),
                );
                None
            }
            Err(why) => {
                self.error(Some(table.every.span()), "expect.every", why);
                None
            }
        };
        let grace = match &table.grace {
            None => Some(None),
            Some(text) => match parse_duration(text.get_ref()) {
                Ok(d) => Some(Some(d)),
                Err(why) => {
                    self.error(Some(text.span()), "expect.grace", why);
                    None
                }
            },
        };
        let key_labels = match &table.key_labels {
            None => Some(Vec::new()),
            Some(names) => self.label_names("expect.key_labels", names),
        };
        let severity = match &table.severity {
            None => Some(DEFAULT_EXPECT_SEVERITY),
            Some(text) => match Severity::parse(text.get_ref()) {
                Some(s) => Some(s),
                None => {
                    self.error(
                        Some(text.span()),
                        "expect.severity",
                        format!(
                            "`{}` is not a severity (levels: none, info, warning, error, alert)",
                            text.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        let every = every?;
        Some(ExpectPolicy {
            every,
            grace: grace?.unwrap_or_else(|| default_grace(every)),
            key_labels: key_labels?,
            severity: severity?,
        })
    }

    fn retry(&mut self, field: &str, r: &RetryTable, default: RetryPolicy) -> Option<RetryPolicy> {
        let max_attempts = match &r.max_attempts {
            Some(n) if *n.get_ref() == 0 => {
                self.error(
                    Some(n.span()),
                    &format!("{field}.max_attempts"),
                    "must be at least 1".into(),
                );
                None
            }
            Some(n) => Some(*n.get_ref()),
            None => Some(default.max_attempts),
        };
        let initial = self.duration(r.initial.as_ref(), &format!("{field}.initial"));
        let max = self.duration(r.max.as_ref(), &format!("{field}.max"));
        let multiplier = match &r.multiplier {
            Some(m) if !(1.0..=10.0).contains(m.get_ref()) => {
                self.error(
                    Some(m.span()),
                    &format!("{field}.multiplier"),
                    format!("{} is outside 1.0..10.0", m.get_ref()),
                );
                None
            }
            Some(m) => Some(*m.get_ref()),
            None => Some(default.multiplier),
        };
        let policy = RetryPolicy {
            max_attempts: max_attempts?,
            initial: initial?.unwrap_or(default.initial),
            max: max?.unwrap_or(default.max),
            multiplier: multiplier?,
        };
        if policy.max < policy.initial {
            match (&r.max, &r.initial) {
                (None, Some(initial)) => self.error(
                    Some(initial.span()),
                    &format!("{field}.initial"),
                    format!(
                        "is longer than the default `max` of {}; set `max` too",
                        humantime::format_duration(default.max)
                    ),
                ),
                (max, _) => self.error(
                    max.as_ref().map(|m| m.span()),
                    &format!("{field}.max"),
                    "must not be shorter than `initial`".into(),
                ),
            }
            return None;
        }
        Some(policy)
    }

    fn route(&mut self, field: &str, m: Option<&MatchTable>) -> Option<Route> {
        let Some(m) = m else {
            return Some(Route::default());
        };
        let severity = match &m.severity {
            None => Some(None),
            Some(expr) => match parse_severity_match(expr.get_ref()) {
                Ok(cmp) => Some(Some(cmp)),
                Err(e) => {
                    self.error(Some(expr.span()), &format!("{field}.match.severity"), e);
                    None
                }
            },
        };
        Some(Route {
            severity: severity?,
            labels: m
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

/// Parses `">= warning"`, `"<info"`, `"error"` (equal).
fn parse_severity_match(text: &str) -> Result<(Comparison, Severity), String> {
    let t = text.trim();
    let (op, rest) = [
        (">=", Comparison::Ge),
        ("<=", Comparison::Le),
        ("==", Comparison::Eq),
        (">", Comparison::Gt),
        ("<", Comparison::Lt),
        ("=", Comparison::Eq),
    ]
    .into_iter()
    .find_map(|(p, op)| t.strip_prefix(p).map(|rest| (op, rest)))
    .unwrap_or((Comparison::Eq, t));
    Severity::parse(rest.trim()).map(|s| (op, s)).ok_or_else(|| {
        format!("`{text}` is not a severity comparison such as \">= warning\" (levels: none, info, warning, error, alert)")
    })
}

/// Where the `config` of stage `field` (`source`, `filter[0]`, `sink[1]`) is written in the
/// pipeline file `text` — its plugin's name when it has no `config` — as 1-based (line,
/// column): the place of a problem found once the file was checked (a plugin's `init`
/// refusing its settings). `None` when the text or the field does not name one.
pub fn stage_config_place(text: &str, field: &str) -> Option<(usize, usize)> {
    let raw: PipelineFile = toml::from_str(text).ok()?;
    let index = |prefix: &str| -> Option<usize> {
        field.strip_prefix(prefix)?.strip_suffix(']')?.parse().ok()
    };
    let (config, plugin) = if field == "source" {
        (raw.source.config.as_ref(), &raw.source.plugin)
    } else if let Some(i) = index("filter[") {
        let f = raw.filters.get(i)?;
        (f.config.as_ref(), &f.plugin)
    } else if let Some(i) = index("sink[") {
        let s = raw.sinks.get(i)?;
        (s.config.as_ref(), &s.plugin)
    } else {
        return None;
    };
    let at = config.map_or(plugin.span().start, |c| c.span().start);
    Some(line_col(text, at))
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        resolver: PluginResolver,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        for p in ["backup_check", "threshold", "stdout", "matrix"] {
            std::fs::write(plugins.join(format!("{p}.wasm")), b"\0asm").unwrap();
        }
        Fixture {
            resolver: PluginResolver::new(vec![plugins]),
            dir,
        }
    }

    fn check(fx: &Fixture, text: &str) -> Result<PipelineSpec, Vec<Diagnostic>> {
        parse_pipeline(
            &fx.dir.path().join("nightly.toml"),
            text,
            &fx.resolver,
            MachineCheck::Check,
        )
    }

    const GOOD: &str = r#"
[source]
plugin = "backup-check"
schedule = "0 */15 * * * *"
config = { dir = "/tmp", pattern = "*.tar" }
grants = { read_dirs = ["/tmp"] }

[[filter]]
plugin = "threshold"
config = { metric = "backup-age-seconds", above = { warn = 10, error = 20 } }

[[sink]]
name = "out"
plugin = "stdout"
grants = { stdout = true }
retry = { max_attempts = 3, initial = "2s", max = "1m" }
match = { severity = ">= info" }
"#;

    #[test]
    fn control_is_granted_as_groups_or_per_actor_and_a_misspelt_group_is_named() {
        use crate::spec::ControlGroup;
        let fx = fixture();
        let with = |control: &str| {
            GOOD.replace(
                "config = { metric = \"backup-age-seconds\", above = { warn = 10, error = 20 } }",
                &format!(
                    "config = {{ metric = \"backup-age-seconds\", above = {{ warn = 10, error = 20 }} }}\n\
                     grants = {{ control = {control} }}"
                ),
            )
        };
        let spec = check(&fx, &with(r#"["status", "ack"]"#)).unwrap();
        let grant = &spec.filters[0].grants.control;
        assert!(grant.allows(ControlGroup::Status, "@anyone:x").is_ok());
        assert!(grant.allows(ControlGroup::Ack, "@anyone:x").is_ok());
        assert!(grant.allows(ControlGroup::Silence, "@anyone:x").is_err());

        let spec = check(
            &fx,
            &with(r#"{ status = ["*"], silence = ["@alice:example.org"] }"#),
        )
        .unwrap();
        let grant = &spec.filters[0].grants.control;
        assert!(grant
            .allows(ControlGroup::Status, "@bob:example.org")
            .is_ok());
        assert!(grant
            .allows(ControlGroup::Silence, "@alice:example.org")
            .is_ok());
        let refused = grant
            .allows(ControlGroup::Silence, "@bob:example.org")
            .unwrap_err();
        assert!(
            refused.contains("`@bob:example.org` may not use `silence`"),
            "{refused}"
        );
        assert!(grant
            .allows(ControlGroup::Ack, "@alice:example.org")
            .is_err());
        assert!(spec.sinks[0].stage.grants.control.is_empty());

        for (control, says) in [
            (
                r#"["stats"]"#,
                "unknown group `stats`; did you mean `status`?",
            ),
            (
                r#"{ reboot = ["*"] }"#,
                "unknown group `reboot` (the groups are status, ack, silence)",
            ),
            (r#"{ ack = [] }"#, "lists nobody"),
            (r#"{ ack = ["@alice smith"] }"#, "is not an actor"),
            ("true", "a list of groups"),
        ] {
            let errors = check(&fx, &with(control)).expect_err(control);
            let found = errors.iter().find(|d| d.message.contains(says));
            let found = found.unwrap_or_else(|| panic!("{control}: {errors:?}"));
            // A value of the wrong type is named by its line and column (serde gives no path).
            assert!(
                found.field.starts_with("filter[0].grants") || control == "true",
                "{found:?}"
            );
            assert_eq!(found.line, Some(11), "{control}: {found:?}");
        }
    }

    #[test]
    fn the_root_however_spelled_and_paths_inside_proc_cannot_be_granted() {
        let fx = fixture();
        for (dir, says) in [
            ("/", "grants the whole filesystem"),
            ("/.", "grants the whole filesystem"),
            ("//", "grants the whole filesystem"),
            ("/./", "grants the whole filesystem"),
            ("/proc/self", "is inside /proc"),
            ("/proc/./1/root", "is inside /proc"),
        ] {
            let text = GOOD.replace(
                r#"read_dirs = ["/tmp"]"#,
                &format!(r#"read_dirs = ["{dir}"]"#),
            );
            let errors = check(&fx, &text).expect_err(dir);
            assert!(
                errors.iter().any(|d| d.message.contains(says)),
                "{dir}: {errors:?}"
            );
        }
        let text = GOOD.replace(r#"read_dirs = ["/tmp"]"#, r#"read_dirs = ["/proc/"]"#);
        let spec = check(&fx, &text).unwrap();
        assert_eq!(
            spec.source.stage.as_ref().unwrap().grants.read_dirs[0].host,
            Path::new("/proc")
        );
    }

    #[test]
    fn maintenance_windows_are_read_and_each_bad_field_is_named_with_its_line() {
        let fx = fixture();
        let with = |table: &str| format!("{GOOD}\n[[maintenance]]\n{table}\n");
        let spec = check(
            &fx,
            &with(
                "name = \"backups\"\ntimezone = \"Europe/Berlin\"\nweekdays = [\"mon:fri\"]\n\
                 times = [\"02:00-04:30\"]\nmatch = [\"job=backup\"]\nsinks = [\"out\"]",
            ),
        )
        .unwrap();
        let w = &spec.maintenance[0];
        assert_eq!(
            (w.name.as_str(), w.weekdays.clone(), w.times.clone()),
            ("backups", vec![(0, 4)], vec![(120, 270)])
        );
        assert_eq!(w.matchers[0].to_string(), "job=backup");
        assert_eq!(w.timezone, chrono_tz::Europe::Berlin);
        assert!(check(&fx, GOOD).unwrap().maintenance.is_empty());
        for (bad, field, says) in [
            (
                "weekdays = [\"fri:mon\"]",
                "maintenance[0].weekdays",
                "ends before",
            ),
            ("times = [\"25:00-26:00\"]", "maintenance[0].times", "HH:MM"),
            (
                "days_of_month = [\"32\"]",
                "maintenance[0].days_of_month",
                "not a day",
            ),
            (
                "months = [\"smarch\"]",
                "maintenance[0].months",
                "not a month",
            ),
            (
                "months = [\"jan\"]\nmatch = [\"host\"]",
                "maintenance[0].match",
                "no operator",
            ),
            (
                "months = [\"jan\"]\nsinks = [\"nope\"]",
                "maintenance[0].sinks",
                "not a sink",
            ),
            (
                "months = [\"jan\"]\ntimezone = \"Mars/Base\"",
                "maintenance[0].timezone",
                "IANA",
            ),
            (
                "name = \"forever\"",
                "maintenance[0]",
                "would mute for ever",
            ),
        ] {
            let d = check(&fx, &with(bad)).unwrap_err();
            assert_eq!(d[0].field, field, "{bad}: {:?}", d[0]);
            assert!(d[0].message.contains(says), "{bad}: {:?}", d[0]);
            assert!(d[0].line.is_some(), "{bad}: a line is named");
        }
    }

    #[test]
    fn a_sink_group_takes_its_labels_and_durations_with_alertmanagers_defaults() {
        let fx = fixture();
        let with = |group: &str| {
            GOOD.replace(
                "name = \"out\"\n",
                &format!("name = \"out\"\ngroup = {group}\n"),
            )
        };
        let spec = check(&fx, &with(r#"{ by = ["alertname", "host"] }"#)).unwrap();
        assert_eq!(
            spec.sinks[0].group,
            Some(GroupPolicy {
                by: vec!["alertname".into(), "host".into()],
                wait: DEFAULT_GROUP_WAIT,
                interval: DEFAULT_GROUP_INTERVAL,
                max_messages: MAX_GROUP_MESSAGES,
            })
        );
        let spec = check(
            &fx,
            &with(r#"{ by = [], wait = "2s", interval = "1m", max_messages = 20 }"#),
        )
        .unwrap();
        let group = spec.sinks[0].group.clone().unwrap();
        assert_eq!((group.wait.as_secs(), group.interval.as_secs()), (2, 60));
        assert_eq!(group.max_messages, 20);
        assert!(check(&fx, GOOD).unwrap().sinks[0].group.is_none());
        for (bad, field, says) in [
            (r#"{ by = ["a", "a"] }"#, "sink[0].group.by", "named twice"),
            (r#"{ by = [""] }"#, "sink[0].group.by", "cannot be empty"),
            (r#"{ by = ["a"], wait = "soon" }"#, "sink[0].group.wait", ""),
            (
                r#"{ by = ["a"], max_messages = 0 }"#,
                "sink[0].group.max_messages",
                "outside 1..1000",
            ),
            (
                r#"{ by = ["a"], max_messages = 1001 }"#,
                "sink[0].group.max_messages",
                "outside 1..1000",
            ),
            (
                r#"{ by = ["a"], interval = "0s" }"#,
                "sink[0].group.interval",
                "longer than 0",
            ),
            // Shape errors come from the parser: no field path, the line and serde's words.
            (r#"{ wait = "1s" }"#, "", "missing field `by`"),
            (
                r#"{ by = ["a"], every = "1s" }"#,
                "",
                "unknown field `every`",
            ),
        ] {
            let d = check(&fx, &with(bad)).unwrap_err();
            assert!(d[0].field.starts_with(field), "{bad}: {:?}", d[0]);
            assert!(d[0].message.contains(says), "{bad}: {:?}", d[0]);
            assert!(d[0].line.is_some(), "{bad}: a line is named");
        }
    }

    #[test]
    fn inhibit_rules_take_matchers_on_both_sides_and_equal_labels() {
        let fx = fixture();
        let with = |rule: &str| format!("{GOOD}\n[[inhibit]]\n{rule}\n");
        let spec = check(
            &fx,
            &with("source = [\"severity=alert\"]\ntarget = [\"severity=warning\"]\nequal = [\"host\"]"),
        )
        .unwrap();
        let rule = &spec.inhibit[0];
        assert_eq!(rule.source[0].to_string(), "severity=alert");
        assert_eq!(rule.target[0].to_string(), "severity=warning");
        assert_eq!(rule.equal, ["host"]);
        assert!(check(&fx, GOOD).unwrap().inhibit.is_empty());
        for (bad, field, says) in [
            (
                "source = []\ntarget = [\"a=b\"]",
                "inhibit[0].source",
                "at least one",
            ),
            (
                "source = [\"a=b\"]\ntarget = [\"nope\"]",
                "inhibit[0].target",
                "no operator",
            ),
            (
                "source = [\"a=b\"]\ntarget = [\"c=d\"]\nequal = [\"h\", \"h\"]",
                "inhibit[0].equal",
                "named twice",
            ),
        ] {
            let d = check(&fx, &with(bad)).unwrap_err();
            assert_eq!(d[0].field, field, "{bad}: {:?}", d[0]);
            assert!(d[0].message.contains(says), "{bad}: {:?}", d[0]);
            assert!(d[0].line.is_some(), "{bad}: a line is named");
        }
    }

    #[test]
    fn a_stages_config_is_placed_at_its_table_or_else_at_its_plugin() {
        let text = "[source]\nplugin = \"json\"\nauth = { none = true }\n\n[[filter]]\n\
                    plugin = \"dedup\"\nconfig = { window = \"1h\" }\n\n[[sink]]\nname = \"out\"\n\
                    plugin = \"stdout\"\n";
        assert_eq!(stage_config_place(text, "filter[0]"), Some((7, 10)));
        assert_eq!(stage_config_place(text, "sink[0]"), Some((11, 10)));
        assert_eq!(stage_config_place(text, "source"), Some((2, 10)));
        assert_eq!(stage_config_place(text, "filter[1]"), None);
        assert_eq!(stage_config_place(text, "nonsense"), None);
        assert_eq!(stage_config_place("not toml [", "source"), None);
    }

    #[test]
    fn expect_takes_its_period_grace_keys_and_severity_with_defaults() {
        let fx = fixture();
        let with = |expect: &str| format!("expect = {expect}\n{GOOD}");
        let spec = check(
            &fx,
            &with(r#"{ every = "15m", grace = "5m", key_labels = ["host"], severity = "alert" }"#),
        )
        .unwrap();
        assert_eq!(
            spec.expect,
            Some(ExpectPolicy {
                every: std::time::Duration::from_secs(900),
                grace: std::time::Duration::from_secs(300),
                key_labels: vec!["host".into()],
                severity: Severity::Alert,
            })
        );
        let spec = check(&fx, &with(r#"{ every = "1h" }"#)).unwrap();
        let policy = spec.expect.unwrap();
        assert_eq!(policy.grace, std::time::Duration::from_secs(900));
        assert!(policy.key_labels.is_empty());
        assert_eq!(policy.severity, DEFAULT_EXPECT_SEVERITY);
        assert_eq!(policy.allowed_silence().as_secs(), 4500);
        let no_grace = check(&fx, &with(r#"{ every = "1m", grace = "0s" }"#)).unwrap();
        assert!(no_grace.expect.unwrap().grace.is_zero());
        assert!(check(&fx, GOOD).unwrap().expect.is_none());
        for (bad, field, says) in [
            (r#"{ every = "500ms" }"#, "expect.every", "at least 1s"),
            (r#"{ every = "often" }"#, "expect.every", "not a duration"),
            (
                r#"{ every = "1m", grace = "a bit" }"#,
                "expect.grace",
                "not a duration",
            ),
            (
                r#"{ every = "1m", key_labels = ["host", "host"] }"#,
                "expect.key_labels",
                "named twice",
            ),
            (
                r#"{ every = "1m", severity = "dire" }"#,
                "expect.severity",
                "not a severity",
            ),
            (r#"{ grace = "1m" }"#, "", "missing field `every`"),
        ] {
            let d = check(&fx, &with(bad)).unwrap_err();
            assert_eq!(d[0].field, field, "{bad}: {:?}", d[0]);
            assert!(d[0].message.contains(says), "{bad}: {:?}", d[0]);
            assert_eq!(d[0].line, Some(1), "{bad}: the line is named");
        }
    }

    #[test]
    fn the_tocsin_source_takes_its_events_and_thresholds_and_refuses_what_plugins_take() {
        let fx = fixture();
        let sink = "\n[[sink]]\nname = \"out\"\nplugin = \"stdout\"\ngrants = { stdout = true }\n";
        let with = |source: &str| format!("[source]\nplugin = \"@tocsin\"\n{source}{sink}");
        let spec = check(&fx, &with("")).unwrap();
        assert!(spec.source.stage.is_none());
        assert_eq!(
            spec.source.trigger,
            Trigger::Tocsin(SelfEventsSpec::default())
        );
        let spec = check(
            &fx,
            &with(
                "config = { events = [\"dead_letter\", \"sink_retrying\"], every = \"5s\", \
                 retrying_for = \"2m\", plugin_stops = 5, stops_within = \"1h\", budget_percent = 90 }\n",
            ),
        )
        .unwrap();
        let Trigger::Tocsin(events) = spec.source.trigger else {
            panic!("not the built-in source");
        };
        assert_eq!(
            events,
            SelfEventsSpec {
                events: [SelfEvent::DeadLetter, SelfEvent::SinkRetrying].into(),
                every: std::time::Duration::from_secs(5),
                retrying_for: std::time::Duration::from_secs(120),
                plugin_stops: 5,
                stops_within: std::time::Duration::from_secs(3600),
                budget_percent: 90,
            }
        );
        // `[source.config]` as a table of its own: the mistake's own line is named.
        let table = with("\n[source.config]\nevery = \"1m\"\nretrying_for = \"soon\"\n");
        let d = check(&fx, &table).unwrap_err();
        assert_eq!(
            (d[0].field.as_str(), d[0].line),
            ("source.config.retrying_for", Some(6)),
            "{d:?}"
        );
        for (bad, field, says) in [
            (
                "schedule = \"0 * * * * *\"\n",
                "source.schedule",
                "takes no `schedule`",
            ),
            (
                "auth = { none = true }\n",
                "source.auth",
                "takes no requests",
            ),
            (
                "grants = { hosts = [\"x.org\"] }\n",
                "source.grants",
                "runs no plugin",
            ),
            ("limits = { fuel = 5 }\n", "source.limits", "runs no plugin"),
            (
                "config = { events = [\"dead_letters\"] }\n",
                "source.config.events",
                "events: dead_letter, pipeline_failed",
            ),
            (
                "config = { events = [] }\n",
                "source.config.events",
                "at least one",
            ),
            (
                "config = { every = \"100ms\" }\n",
                "source.config.every",
                "at least 1s",
            ),
            (
                "config = { plugin_stops = 0 }\n",
                "source.config.plugin_stops",
                "at least 1",
            ),
            (
                "config = { budget_percent = 120 }\n",
                "source.config.budget_percent",
                "from 1 to 100",
            ),
            (
                "config = { evry = \"1m\" }\n",
                "source.config",
                "unknown field `evry`",
            ),
        ] {
            let d = check(&fx, &with(bad)).unwrap_err();
            assert_eq!(d[0].field, field, "{bad}: {d:?}");
            assert!(d[0].message.contains(says), "{bad}: {d:?}");
            assert!(d[0].line.is_some(), "{bad}: the line is named");
        }
    }

    #[test]
    fn sink_concurrency_defaults_to_eight_and_is_bounded() {
        let fx = fixture();
        assert_eq!(check(&fx, GOOD).unwrap().sinks[0].concurrency, 8);
        let one = GOOD.replace("name = \"out\"\n", "name = \"out\"\nconcurrency = 1\n");
        assert_eq!(check(&fx, &one).unwrap().sinks[0].concurrency, 1);
        for bad in ["0", "65"] {
            let text = GOOD.replace(
                "name = \"out\"\n",
                &format!("name = \"out\"\nconcurrency = {bad}\n"),
            );
            let d = check(&fx, &text).unwrap_err();
            assert_eq!(d[0].field, "sink[0].concurrency");
            assert_eq!(d[0].line, Some(14), "{d:?}");
            assert!(d[0].message.contains("outside 1..64"), "{d:?}");
        }
    }

    #[test]
    fn a_good_file_becomes_a_spec() {
        let fx = fixture();
        let spec = check(&fx, GOOD).unwrap();
        assert_eq!(spec.name, "nightly");
        assert!(spec
            .source
            .stage
            .as_ref()
            .unwrap()
            .plugin
            .origin
            .to_string()
            .ends_with("backup_check.wasm"));
        assert!(matches!(spec.source.trigger, Trigger::Schedule(_)));
        assert_eq!(spec.filters.len(), 1);
        assert!(spec.filters[0].config_json.contains("backup-age-seconds"));
        assert_eq!(spec.sinks[0].retry.max_attempts, 3);
        assert_eq!(
            spec.sinks[0].retry.initial,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(
            spec.source.stage.as_ref().unwrap().limits.memory,
            DEFAULT_MEMORY
        );
        assert_eq!(spec.filters[0].limits.timeout, DEFAULT_FILTER_TIMEOUT);
    }

    static BUILT_IN: [EmbeddedPlugin; 2] = [
        EmbeddedPlugin {
            name: "rate-limit",
            bytes: b"built-in rate-limit",
        },
        EmbeddedPlugin {
            name: "threshold",
            bytes: b"built-in threshold",
        },
    ];

    #[test]
    fn a_plugin_directory_comes_before_the_plugins_built_in() {
        let fx = fixture();
        let resolver = fx.resolver.clone().with_embedded(&BUILT_IN);
        let here = fx.dir.path();
        // The fixture's directory has a threshold.wasm: it wins over the built-in one.
        assert!(matches!(
            resolver.resolve("threshold", here).unwrap(),
            PluginOrigin::File(path) if path.ends_with("threshold.wasm")
        ));
        // Either spelling finds the built-in rate-limit.
        for name in ["rate-limit", "rate_limit"] {
            let origin = resolver.resolve(name, here).unwrap();
            assert_eq!(&*origin.read().unwrap(), b"built-in rate-limit");
            assert_eq!(origin.to_string(), "rate-limit (built into tocsin)");
        }
        let err = resolver.resolve("thresold", here).unwrap_err();
        assert!(
            err.contains("none built in by that name (rate-limit, threshold)"),
            "{err}"
        );
        let err = fx.resolver.resolve("rate-limit", here).unwrap_err();
        assert!(err.contains("no plugin is built into this tocsin"), "{err}");
    }

    #[test]
    fn unknown_field_names_the_line_and_field() {
        let fx = fixture();
        let text = GOOD.replace("schedule =", "shedule =");
        let d = check(&fx, &text).unwrap_err();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].line, Some(4), "{}", d[0]);
        assert!(d[0].message.contains("unknown field `shedule`"), "{}", d[0]);
    }

    #[test]
    fn every_semantic_error_is_reported_at_once_with_line_and_field() {
        let fx = fixture();
        let text = GOOD
            .replace("0 */15 * * * *", "0 61 * * * *")
            .replace("\"threshold\"", "\"thresold\"")
            .replace("read_dirs = [\"/tmp\"]", "read_dirs = [\"/no/such/dir\"]");
        let d = check(&fx, &text).unwrap_err();
        let rendered: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        let find = |field: &str| {
            d.iter()
                .find(|d| d.field == field)
                .unwrap_or_else(|| panic!("no {field} in {rendered:?}"))
        };
        assert_eq!(find("source.schedule").line, Some(4));
        assert!(find("source.schedule")
            .message
            .contains("not a cron expression"));
        assert_eq!(find("filter[0].plugin").line, Some(9));
        assert!(find("filter[0].plugin")
            .message
            .contains("unknown plugin `thresold`"));
        assert_eq!(find("source.grants.read_dirs").line, Some(6));
        assert!(find("source.grants.read_dirs")
            .message
            .contains("/no/such/dir"));
        assert!(rendered[0].starts_with(&fx.dir.path().join("nightly.toml").display().to_string()));
    }

    #[test]
    fn machine_checks_are_skipped_when_asked() {
        let fx = fixture();
        let text = GOOD.replace("[\"/tmp\"]", "[\"/no/such/dir\"]");
        assert!(parse_pipeline(
            &fx.dir.path().join("nightly.toml"),
            &text,
            &fx.resolver,
            MachineCheck::Skip
        )
        .is_ok());
    }

    #[test]
    fn relative_grants_follow_the_pipeline_file_and_may_not_climb_out() {
        let fx = fixture();
        std::fs::create_dir_all(fx.dir.path().join("demo/backups")).unwrap();
        let text = GOOD.replace("[\"/tmp\"]", "[\"./demo/backups\"]");
        let spec = check(&fx, &text).unwrap();
        let grant = &spec.source.stage.as_ref().unwrap().grants.read_dirs[0];
        assert_eq!(grant.guest, "demo/backups");
        assert_eq!(grant.host, fx.dir.path().join("demo/backups"));
        let text = GOOD.replace("[\"/tmp\"]", "[\"../etc\"]");
        let d = check(&fx, &text).unwrap_err();
        assert!(d[0].message.contains("without `..`"), "{}", d[0]);
    }

    #[test]
    fn invalid_toml_is_one_clear_error() {
        let fx = fixture();
        let d = check(&fx, "[source\nplugin = 1").unwrap_err();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].line, Some(1));
    }

    #[test]
    fn secrets_are_references_and_never_echoed() {
        let fx = fixture();
        let text = GOOD.replace(
            "grants = { stdout = true }",
            "grants = { stdout = true, secrets = { token = \"syt_supersecret\" } }",
        );
        let d = check(&fx, &text).unwrap_err();
        assert_eq!(d.len(), 1);
        assert!(!d[0].to_string().contains("supersecret"), "{}", d[0]);
        let text = GOOD.replace(
            "grants = { stdout = true }",
            "grants = { secrets = { token = \"env:TOCSIN_TEST_UNSET_VARIABLE\" } }",
        );
        let d = check(&fx, &text).unwrap_err();
        assert!(d[0]
            .message
            .contains("TOCSIN_TEST_UNSET_VARIABLE is not set"));
    }

    #[test]
    fn duplicate_sinks_missing_sinks_and_bad_retry_are_errors() {
        let fx = fixture();
        let two = format!("{GOOD}\n[[sink]]\nname = \"out\"\nplugin = \"stdout\"\n");
        let d = check(&fx, &two).unwrap_err();
        assert!(d[0].message.contains("already called `out`"), "{:?}", d);
        let none = GOOD.split("[[sink]]").next().unwrap();
        let d = check(&fx, none).unwrap_err();
        assert!(d[0].message.contains("at least one [[sink]]"));
        let bad = GOOD.replace(
            "initial = \"2s\", max = \"1m\"",
            "initial = \"2m\", max = \"1s\"",
        );
        let d = check(&fx, &bad).unwrap_err();
        assert_eq!(d[0].field, "sink[0].retry.max");
    }

    #[test]
    fn ingest_sources_have_no_schedule() {
        let fx = fixture();
        let text = GOOD.replace("schedule = \"0 */15 * * * *\"\n", "");
        let d = check(&fx, &text).unwrap_err();
        assert!(
            d[0].message.contains("an ingest source needs `auth`"),
            "{}",
            d[0]
        );
        let text = GOOD.replace(
            "schedule = \"0 */15 * * * *\"\n",
            "auth = { bearer = \"env:PATH\" }\nbody_limit = \"64KiB\"\n",
        );
        let spec = check(&fx, &text).unwrap();
        assert_eq!(
            spec.source.trigger,
            Trigger::Ingest(IngestSpec {
                auth: IngestAuth::Bearer(SecretRef::Env("PATH".into())),
                body_limit: 64 << 10,
            })
        );
        let text = GOOD.replace(
            "schedule = \"0 */15 * * * *\"\n",
            "auth = { none = true, bearer = \"env:PATH\" }\n",
        );
        let d = check(&fx, &text).unwrap_err();
        assert!(d[0].message.contains("exactly one"), "{}", d[0]);
        let text = GOOD.replace(
            "schedule = \"0 */15 * * * *\"",
            "schedule = \"* * * * * *\"\nauth = { none = true }",
        );
        let d = check(&fx, &text).unwrap_err();
        assert_eq!(d[0].field, "source.auth");
    }

    #[test]
    fn a_pinned_digest_must_match() {
        let fx = fixture();
        let wrong = "0".repeat(64);
        let text = GOOD.replace(
            "plugin = \"threshold\"",
            &format!("plugin = \"threshold\"\nsha256 = \"{wrong}\""),
        );
        let d = check(&fx, &text).unwrap_err();
        assert!(d[0].message.contains("not the pinned"), "{}", d[0]);
        let right = hex::encode(Sha256::digest(b"\0asm"));
        let text = GOOD.replace(
            "plugin = \"threshold\"",
            &format!("plugin = \"threshold\"\nsha256 = \"{right}\""),
        );
        assert!(check(&fx, &text).is_ok());
    }

    #[test]
    fn routes_match_severity_and_labels() {
        let (op, s) = parse_severity_match(">= warning").unwrap();
        let route = Route {
            severity: Some((op, s)),
            labels: vec![("team".into(), "ops".into())],
        };
        let mut m = tocsin_message::Message {
            id: "1".into(),
            timestamp_ms: 0,
            severity: Severity::Error,
            summary: None,
            body: String::new(),
            labels: vec![("team".into(), "ops".into())],
            metrics: vec![],
            payload: None,
            link: None,
            key: None,
        };
        assert!(route.matches(&m));
        m.severity = Severity::Info;
        assert!(!route.matches(&m));
        assert!(parse_severity_match("bad").is_err());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial: std::time::Duration::from_secs(1),
            max: std::time::Duration::from_secs(10),
            multiplier: 2.0,
        };
        assert_eq!(p.base_delay(1).as_secs(), 1);
        assert_eq!(p.base_delay(3).as_secs(), 4);
        assert_eq!(p.base_delay(9).as_secs(), 10);
        let j = p.jittered_delay(3, 0.0);
        assert_eq!(j.as_secs(), 2);
    }

    /// Regression (found by `prop_backoff_is_defined_for_any_durations_a_file_may_hold`): a
    /// `max` near `Duration::MAX` rounds up as f64 past what a Duration holds, and
    /// `Duration::from_secs_f64` panicked in the delivery worker's backoff.
    #[test]
    fn backoff_with_a_max_near_the_largest_duration_does_not_panic() {
        let fx = fixture();
        let text = GOOD.replace(
            "initial = \"2s\", max = \"1m\"",
            "initial = \"18446744073709551614s\", max = \"18446744073709551615s\"",
        );
        let p = check(&fx, &text).unwrap().sinks[0].retry;
        assert_eq!(p.max, std::time::Duration::from_secs(u64::MAX));
        for attempts in [0, 1, 2, u32::MAX] {
            assert_eq!(p.base_delay(attempts), p.max);
            assert!(p.jittered_delay(attempts, 0.999_999_999_999_999_9) <= p.max);
            assert!(p.jittered_delay(attempts, 1.0) <= p.max);
        }
    }

    /// Regression (found by `prop_broken_generated_pipelines_report_file_and_place`): an
    /// `initial` longer than the default `max` was reported without a line.
    #[test]
    fn an_initial_delay_past_the_default_max_is_reported_at_initial() {
        let fx = fixture();
        let text = GOOD.replace("initial = \"2s\", max = \"1m\"", "initial = \"20m\"");
        let d = check(&fx, &text).unwrap_err();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].field, "sink[0].retry.initial");
        assert_eq!((d[0].line, d[0].column), (Some(16), Some(39)), "{}", d[0]);
        assert!(d[0].message.contains("default `max` of 10m"), "{}", d[0]);
    }
}
