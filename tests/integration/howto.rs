//! The operator how-tos in `docs/howto/` are run as written.
//!
//! Every ```` ```sh ```` block of a how-to runs, in order, in one `bash -eo pipefail` process
//! (so the working directory and exported variables carry over, as in a terminal), in a fresh
//! empty directory that is also `HOME`, with this build's `tocsin` first on `PATH` and the
//! shipped plugins in `TOCSIN_PLUGIN_DIRS`. A ```` ```text ```` block right after an `sh` block
//! whose first line is `# expected output (excerpt)` lists lines that must appear in that
//! block's output (stdout and stderr), in order: each is a substring of one output line, `…`
//! standing for any text. Other blocks (```` ```text ````, ```` ```yaml ````, ```` ```toml ````:
//! configuration of other systems) are not run.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tocsin_tests::{free_port, plugins_dir, repo_root, tocsin_bin};

/// The how-tos, each run by the test of the same name below.
const HOWTOS: &[&str] = &[
    "alertmanager.md",
    "github-webhooks.md",
    "many-machines-central.md",
    "matrix-commands.md",
    "nightly-backup-matrix.md",
    "pubsub-storage.md",
    "server-metrics-mastodon.md",
    "two-nodes-jetstream.md",
];

/// The first line of a ```` ```text ```` block that lists the expected output of the `sh`
/// block before it.
const EXPECTED_HEADER: &str = "# expected output (excerpt)";

/// How long one how-to's commands may take in all (the JetStream one waits out a lost
/// node's lease, 12–24 s, and a NATS leader election).
const TIME_BOUND: Duration = Duration::from_secs(180);

/// Printed between blocks so that the output can be split per block.
const MARKER: &str = "@@@howto-block@@@";

#[test]
fn alertmanager() {
    run_howto("alertmanager.md");
}

#[test]
fn github_webhooks() {
    run_howto("github-webhooks.md");
}

#[test]
fn many_machines_central() {
    run_howto("many-machines-central.md");
}

/// Against a real Synapse: the page's variables name it, its bot, its room and a member who
/// sends the commands, as a reader sets them to their own homeserver's.
#[test]
fn matrix_commands() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let synapse = runtime.block_on(tocsin_tests::synapse::Synapse::start());
    let alice = runtime.block_on(synapse.add_member("alice"));
    run_howto_with(
        "matrix-commands.md",
        &[
            ("HOMESERVER", synapse.base.as_str()),
            ("MATRIX_TOKEN", synapse.token.as_str()),
            ("ROOM", synapse.room.as_str()),
            ("ONCALL", "@alice:localhost"),
            ("ONCALL_TOKEN", alice.as_str()),
        ],
    );
}

#[test]
fn nightly_backup_matrix() {
    run_howto("nightly-backup-matrix.md");
}

#[test]
fn pubsub_storage() {
    run_howto("pubsub-storage.md");
}

#[test]
fn server_metrics_mastodon() {
    run_howto("server-metrics-mastodon.md");
}

#[test]
fn two_nodes_jetstream() {
    run_howto("two-nodes-jetstream.md");
}

/// The index links every how-to, and every how-to has a test above.
#[test]
fn the_index_links_every_howto_and_each_has_a_test() {
    let dir = howto_dir();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md") && name != "README.md")
        .collect();
    files.sort();
    assert_eq!(
        files, HOWTOS,
        "docs/howto/ and the list HOWTOS in this test differ: add a test for a new how-to"
    );
    let index = std::fs::read_to_string(dir.join("README.md")).unwrap();
    for file in HOWTOS {
        assert!(
            index.contains(&format!("]({file})")),
            "docs/howto/README.md does not link {file}"
        );
    }
}

fn howto_dir() -> PathBuf {
    repo_root().join("docs/howto")
}

/// A fenced block of a markdown file.
#[derive(Debug)]
struct Block {
    /// The info string: `sh`, `text`, `yaml`…
    info: String,
    /// The lines between the fences.
    text: String,
    /// The line of the opening fence, from 1.
    line: usize,
}

/// The fenced (```` ``` ````) blocks of a markdown file, in order. An indented fence (inside a
/// list item) is read with its indentation removed.
fn fenced_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, usize, String, Block)> = None; // indent, fence length, info
    for (n, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let ticks = trimmed.chars().take_while(|c| *c == '`').count();
        match &mut open {
            None if ticks >= 3 && indent <= 3 => {
                let info = trimmed[ticks..].trim().to_string();
                open = Some((
                    indent,
                    ticks,
                    info.clone(),
                    Block {
                        info,
                        text: String::new(),
                        line: n + 1,
                    },
                ));
            }
            None => {}
            Some((_, fence, _, _)) if ticks >= *fence && trimmed[ticks..].trim().is_empty() => {
                let (_, _, _, block) = open.take().unwrap();
                blocks.push(block);
            }
            Some((indent, _, _, block)) => {
                let cut = line.len() - line.trim_start().len();
                block.text.push_str(&line[cut.min(*indent)..]);
                block.text.push('\n');
            }
        }
    }
    if let Some((_, _, info, block)) = open {
        panic!(
            "the ```{info} block opened on line {} is never closed",
            block.line
        );
    }
    blocks
}

/// An `sh` block and what its output must show.
struct Step {
    code: String,
    line: usize,
    expected: Vec<String>,
}

/// The `sh` blocks of a how-to, each with the expected lines of the block after it.
fn steps(markdown: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut previous_was_sh = false;
    for block in fenced_blocks(markdown) {
        if block.info == "sh" {
            steps.push(Step {
                code: block.text,
                line: block.line,
                expected: Vec::new(),
            });
            previous_was_sh = true;
            continue;
        }
        let mut lines = block.text.lines();
        if block.info == "text" && lines.next() == Some(EXPECTED_HEADER) {
            assert!(
                previous_was_sh,
                "the expected output on line {} does not follow a ```sh block",
                block.line
            );
            let step = steps.last_mut().unwrap();
            step.expected = lines
                .map(|l| l.trim_end().to_string())
                .filter(|l| !l.trim().is_empty())
                .collect();
        }
        previous_was_sh = false;
    }
    steps
}

/// Whether `line` holds `pattern`, where `…` in `pattern` stands for any text.
fn line_matches(line: &str, pattern: &str) -> bool {
    let mut rest = line;
    for part in pattern.split('…') {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The first expected line that `output` lacks, looking for each one after the output line
/// that matched the one before it.
fn missing<'a>(output: &str, expected: &'a [String]) -> Option<&'a str> {
    let mut lines = output.lines();
    expected
        .iter()
        .find(|pattern| !lines.any(|line| line_matches(line, pattern)))
        .map(String::as_str)
}

/// Removes terminal colour codes (`ESC [ … letter`), which a terminal does not show either.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Kills a process group when dropped: SIGTERM, then SIGKILL for what is still there after a
/// few seconds. So a background `tocsin run` never outlives the test, even when it fails.
struct KillGroup(u32);

impl KillGroup {
    fn signal(&self, signal: &str) -> bool {
        Command::new("kill")
            .args([signal, "--", &format!("-{}", self.0)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for KillGroup {
    fn drop(&mut self) {
        if !self.signal("-TERM") {
            return; // nothing left in the group
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.signal("-0") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal("-KILL");
    }
}

/// Two different free loopback ports.
fn two_free_ports() -> (u16, u16) {
    let first = free_port();
    loop {
        let second = free_port();
        if second != first {
            return (first, second);
        }
    }
}

/// Runs every `sh` block of `docs/howto/<file>` and checks its expected output.
fn run_howto(file: &str) {
    run_howto_with(file, &[]);
}

/// Like [`run_howto`], with `env` set in the shell: the values a reader would put in the
/// page's variables (a homeserver started by the test, say).
fn run_howto_with(file: &str, env: &[(&str, &str)]) {
    let path = howto_dir().join(file);
    let markdown = std::fs::read_to_string(&path).unwrap();
    // The how-tos run tocsin on 127.0.0.1:8470 (and a second instance on :8471); the test
    // puts free ports in their place, in the commands and the expected output alike, so that
    // tests running at the same time (and anything else on this machine) do not collide.
    let (port_a, port_b) = two_free_ports();
    let ports = |text: &str| {
        text.replace("127.0.0.1:8470", &format!("127.0.0.1:{port_a}"))
            .replace("127.0.0.1:8471", &format!("127.0.0.1:{port_b}"))
    };
    let mut steps = steps(&markdown);
    assert!(!steps.is_empty(), "{file} has no ```sh block");
    for step in &mut steps {
        step.code = ports(&step.code);
        step.expected = step.expected.iter().map(|l| ports(l)).collect();
    }
    let mut script = String::new();
    for (n, step) in steps.iter().enumerate() {
        script.push_str(&format!("printf '\\n%s\\n' '{MARKER} {n}'\n"));
        script.push_str(&step.code);
        script.push('\n');
    }
    script.push_str(&format!("printf '\\n%s\\n' '{MARKER} end'\n"));

    let dir = tempfile::tempdir().unwrap();
    let output_file = dir.path().join(".howto-output");
    let script_file = dir.path().join(".howto-script.sh");
    std::fs::write(&script_file, &script).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = std::fs::File::create(&output_file).unwrap();
    let bin_dir = tocsin_bin().parent().unwrap();
    let mut command = Command::new("bash");
    command
        .args(["-eo", "pipefail"])
        .arg(&script_file)
        .current_dir(&work)
        .env("HOME", &work)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // Settings of the shell that runs the tests must not leak into the how-to.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TOCSIN_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.env("TOCSIN_PLUGIN_DIRS", plugins_dir()).env(
        "TOCSIN_CACHE_DIR",
        repo_root().join("target/tocsin-test-cache"),
    );
    // Its own process group, so the background `tocsin run`s it starts go with it.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let started = Instant::now();
    let mut child = command.spawn().expect("bash runs");
    let group = KillGroup(child.id());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > TIME_BOUND {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if status.is_none() {
        // bash first (and reaped, so that the group does not look alive for a zombie), then
        // what it started.
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(group);
    let output = strip_ansi(&String::from_utf8_lossy(
        &std::fs::read(&output_file).unwrap(),
    ));
    check(file, &steps, &output, status, started.elapsed());
}

/// Asserts the script ran to its end and each block's output shows what is expected.
fn check(
    file: &str,
    steps: &[Step],
    output: &str,
    status: Option<std::process::ExitStatus>,
    took: Duration,
) {
    // Output per block: the text after each marker line.
    let mut outputs: Vec<String> = Vec::new();
    let mut finished = false;
    for line in output.lines() {
        if let Some(which) = line.strip_prefix(MARKER) {
            if which.trim() == "end" {
                finished = true;
            } else {
                outputs.push(String::new());
            }
        } else if let Some(current) = outputs.last_mut() {
            current.push_str(line);
            current.push('\n');
        }
    }
    let show = |n: usize| {
        format!(
            "block {} of {file} (line {}):\n{}\n--- its output ---\n{}",
            n + 1,
            steps[n].line,
            steps[n].code.trim_end(),
            outputs.get(n).map(String::as_str).unwrap_or("").trim_end()
        )
    };
    let last = outputs.len().saturating_sub(1);
    match status {
        None => panic!(
            "{file}: not done after {TIME_BOUND:?}; still running {}",
            show(last)
        ),
        Some(status) if !status.success() || !finished => {
            panic!("{file}: a command failed ({status}) in {}", show(last))
        }
        Some(_) => {}
    }
    assert_eq!(outputs.len(), steps.len(), "one output per block");
    for (n, step) in steps.iter().enumerate() {
        if let Some(line) = missing(&outputs[n], &step.expected) {
            panic!(
                "{file}: expected output line not found (in order):\n    {line}\nin {}",
                show(n)
            );
        }
    }
    println!("{file}: {} blocks ran in {took:.1?}", steps.len());
}

#[test]
fn the_block_scanner_and_the_matcher_work() {
    let md = "text\n```sh\necho hi\n```\n\n```text\n# expected output (excerpt)\nh…i\n```\n\n  ```yaml\n  a: 1\n  ```\n```sh\ntrue\n```\n";
    let blocks = fenced_blocks(md);
    assert_eq!(blocks.len(), 4);
    assert_eq!(blocks[2].info, "yaml");
    assert_eq!(blocks[2].text, "a: 1\n");
    let steps = steps(md);
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].code, "echo hi\n");
    assert_eq!(steps[0].expected, vec!["h…i".to_string()]);
    assert!(steps[1].expected.is_empty());
    let expected = ["a…c".to_string(), "2".to_string()];
    assert_eq!(missing("xabc\n1\n2\n", &expected), None);
    assert_eq!(missing("2\nabc\n", &expected), Some("2"), "in order");
    assert!(!line_matches("cba", "a…c"));
    assert_eq!(strip_ansi("\u{1b}[32m INFO\u{1b}[0m x"), " INFO x");
}
