//! `tocsin init [DIR]`: a starter pipelines directory. One commented pipeline per scenario
//! tocsin was built for (the examples of `pipelines/with-servers/`, compiled into the binary),
//! each disabled until its blanks are filled, with the behaviour tests that go with it.

use std::path::Path;

use anyhow::{bail, Context};
use include_dir::{include_dir, Dir};

/// The example pipelines for real servers and their behaviour tests.
static EXAMPLES: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../../pipelines/with-servers");

/// What goes at the top of each pipeline: it does not start until the last line is deleted.
const DISABLED: &str = "\
# Written by `tocsin init`. Fill in the blanks below (servers, rooms, tokens, directories),
# check with `tocsin validate --env`, then delete the next line to start this pipeline.
disabled = true

";

/// Writes the starter pipelines into `dir` (created if needed); refuses to overwrite a file.
pub fn init(dir: &Path) -> anyhow::Result<()> {
    let mut files: Vec<_> = EXAMPLES
        .files()
        .filter(|f| f.path().extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort_by_key(|f| f.path());
    for file in &files {
        let to = dir.join(file.path());
        if to.exists() {
            bail!(
                "{} exists: `tocsin init` writes into a new or empty directory and overwrites \
                 nothing",
                to.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for file in &files {
        let to = dir.join(file.path());
        let text = file
            .contents_utf8()
            .context("an example pipeline is not UTF-8")?;
        let is_test = file
            .path()
            .to_str()
            .is_some_and(|name| name.ends_with(tocsin_config::BEHAVIOUR_TEST_SUFFIX));
        let text = if !is_test {
            written.push((to.clone(), first_sentence(text)));
            format!("{DISABLED}{text}")
        } else {
            text.to_string()
        };
        std::fs::write(&to, text).with_context(|| format!("cannot write {}", to.display()))?;
    }
    println!(
        "wrote {} pipelines and their behaviour tests to {}, each disabled until its blanks are \
         filled in:",
        written.len(),
        dir.display()
    );
    for (path, what) in &written {
        println!("  {:<40} {what}", path.display().to_string());
    }
    let d = dir.display();
    println!("\nnext:");
    println!("  tocsin test {d}                  # the behaviour tests: dry runs, nothing sent");
    println!(
        "  tocsin validate --env {d}        # after filling in the blanks: files, secrets, grants"
    );
    println!("  tocsin run --pipelines {d}       # the pipelines you enabled");
    Ok(())
}

/// What an example says it does: the first sentence of its leading comment.
fn first_sentence(text: &str) -> String {
    let paragraph: Vec<&str> = text
        .lines()
        .map_while(|line| line.strip_prefix("# "))
        .collect();
    let joined = paragraph.join(" ");
    match joined.find(". ").or(joined.strip_suffix('.').map(str::len)) {
        Some(end) => joined[..end].to_string(),
        None => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_example_is_described_by_the_first_sentence_of_its_comment() {
        assert_eq!(
            first_sentence("# Janitor clients → Mastodon,\n# as before. More.\n\n[source]"),
            "Janitor clients → Mastodon, as before"
        );
        assert_eq!(first_sentence("# One line.\n#\n# Two."), "One line");
        assert_eq!(first_sentence("[source]"), "");
    }
}
