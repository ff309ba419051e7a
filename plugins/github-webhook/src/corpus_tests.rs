//! The real corpus: GitHub's own payload examples (octokit/webhooks, MIT), vendored in
//! `tests/fixtures/github-webhooks/` — one folder per event, one file per delivery.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::tests::{plugin, request};
use super::*;

/// Every example: (event, file name, JSON text).
fn corpus() -> Vec<(String, String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/github-webhooks");
    let mut examples = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let event = dir.file_name().unwrap().to_str().unwrap().to_string();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let name = file.file_name().unwrap().to_str().unwrap().to_string();
            examples.push((event.clone(), name, std::fs::read_to_string(&file).unwrap()));
        }
    }
    assert!(
        examples.len() > 200,
        "the corpus is missing: {}",
        examples.len()
    );
    examples
}

#[test]
fn every_example_of_the_corpus_decodes_as_json_and_as_a_form() {
    let mut failures = Vec::new();
    for (event, name, json) in corpus() {
        for form in [false, true] {
            match plugin().decode(request(&event, &json, form)) {
                Ok(messages) if messages.len() == 1 => {
                    let m = &messages[0];
                    if m.body.trim().is_empty() || m.body.starts_with(' ') {
                        failures.push(format!("{event}/{name}: empty sentence `{}`", m.body));
                    }
                    if m.label("github-event") != Some(event.as_str()) {
                        failures.push(format!("{event}/{name}: event label"));
                    }
                }
                Ok(messages) => failures.push(format!(
                    "{event}/{name} (form {form}): {} messages",
                    messages.len()
                )),
                Err(rejection) => failures.push(format!(
                    "{event}/{name} (form {form}): refused: {rejection:?}"
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_event_of_the_corpus_is_a_known_event() {
    let mut unknown: Vec<String> = corpus()
        .into_iter()
        .map(|(event, _, _)| event)
        .filter(|event| !KNOWN_EVENTS.contains(&event.as_str()))
        .collect();
    unknown.dedup();
    assert!(unknown.is_empty(), "not in KNOWN_EVENTS: {unknown:?}");
}

/// How many messages of the corpus say no more than "<event> <action>", per event: printed
/// (`--nocapture`), and none since every family has its sentence.
#[test]
fn the_share_of_generic_sentences_over_the_corpus() {
    let mut generic: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    for (event, _, json) in corpus() {
        let m = plugin()
            .decode(request(&event, &json, false))
            .unwrap()
            .remove(0);
        let payload: Value = serde_json::from_str(&json).unwrap();
        let action = s(&payload, &["action"]).unwrap_or("");
        total += 1;
        if m.body == format!("{event} {action}") || m.body == format!("{event} event") {
            *generic.entry(event).or_default() += 1;
        }
    }
    let count: usize = generic.values().sum();
    println!(
        "generic \"<event> <action>\" messages: {count} of {total} ({} of the corpus's event types): {generic:?}",
        generic.len()
    );
    assert_eq!(count, 0, "generic messages: {generic:?}");
}

/// The message of the first example of each event, one block per event: the snapshot a
/// person reviews when a sentence changes (`cargo insta review`).
#[test]
fn one_message_per_event_family() {
    let mut seen = std::collections::BTreeSet::new();
    let mut snapshot = String::new();
    for (event, name, json) in corpus() {
        if !seen.insert(event.clone()) {
            continue;
        }
        let m = plugin()
            .decode(request(&event, &json, false))
            .unwrap()
            .remove(0);
        snapshot += &format!(
            "{event}/{name}\n  severity: {:?}\n  summary:  {}\n  body:     {}\n  link:     {}\n",
            m.severity,
            m.summary.as_deref().unwrap_or(""),
            m.body,
            m.link.as_deref().unwrap_or("-"),
        );
        if let Some(key) = &m.key {
            snapshot += &format!("  key:      {key} ({})\n", m.label("status").unwrap_or("-"));
        }
    }
    insta::assert_snapshot!(snapshot);
}
