//! `hostile`: a test-only filter that misbehaves on purpose, to prove the sandbox holds.
//! Its `mode` config picks the misbehaviour, done on every `process` call:
//!
//! | mode | what it does | what the host must do |
//! | --- | --- | --- |
//! | `loop` | spins forever | stop it by its fuel (CPU) bound |
//! | `alloc` | allocates 1 MiB blocks forever | stop it at its memory cap |
//! | `read` | reads `path` (outside its grants) and passes its content on | the read fails; no content leaks |
//! | `panic` | panics | a trap: discard the instance, count a failed attempt |
//! | `sleep` | sleeps `ms` milliseconds (blocked in a host call) | stop it by its wall-clock bound |
//! | `big` | returns `count` copies of the message | refuse outputs past the host's cap |
//! | `huge` | returns one message with a body of `count` MiB | refuse outputs past the byte cap |
//! | `recurse` | recurses without end | stop it at the stack limit |
//! | `env` | passes it on with the environment it sees as the body | nothing: it must see none |
//! | `flood` | writes `count` distinct state keys in one call | stop it at the state quota |
//! | `pass` | passes the message on | nothing |
//! | `init-panic` | panics in `init` | count the trap; the pipeline fails with the reason |
//! | `plant` | creates the symlink `path/planted-rel → ../../../../../../../../etc` in its writable grant | remove it after the call |
//! | `shout` | prints `count` MiB to its granted stdout | pass at most the stdout bounds |
//! | `dated` | passes it on dated `ms` milliseconds ahead of now | refuse it past the host's window |
//! | `far-future` | passes it on dated `u64::MAX` ms | refuse the output (it would mute time windows) |
//! | `crlf-id` | passes it on with an id holding CR LF and a NUL | refuse the output |
//! | `tag-tick` | passes it on with `tick=<seconds> ` before the body | nothing (lets crash tests name each message) |
//! | `control` | asks the server's `control` for status and a silence, and passes on what it was told | deny both without a grant |
//! | `control-flood` | asks `control` for the open alerts `count` times in one call | stop it at the control-call quota |

use serde::Deserialize;
use tocsin_sdk::{export_filter, Filter, Message, MessageExt};

#[derive(Deserialize)]
struct Config {
    mode: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    count: usize,
}

struct Hostile(Config);

impl Filter for Hostile {
    type Config = Config;
    fn new(c: Config) -> Result<Self, String> {
        if c.mode == "init-panic" {
            panic!("hostile plugin panics in init on purpose");
        }
        Ok(Hostile(c))
    }
    fn process(&mut self, mut msg: Message) -> Result<Vec<Message>, String> {
        match self.0.mode.as_str() {
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            "read" => match std::fs::read_to_string(&self.0.path) {
                Ok(content) => {
                    msg.body = content;
                    msg.set_label("leaked", "yes");
                    Ok(vec![msg])
                }
                Err(e) => Err(format!("read {} failed: {e}", self.0.path)),
            },
            "panic" => panic!("hostile plugin panics on purpose"),
            "plant" => {
                // `soft_link` is the stable spelling of WASI's `symlink-at`.
                #[allow(deprecated)]
                let planted = std::fs::soft_link(
                    "../../../../../../../../etc",
                    format!("{}/planted-rel", self.0.path),
                );
                match planted {
                    Ok(()) => Ok(vec![msg]),
                    Err(e) => Err(format!("cannot plant a link: {e}")),
                }
            }
            "shout" => {
                use std::io::Write;
                let chunk = vec![b'x'; 1 << 20];
                let mut out = std::io::stdout().lock();
                for _ in 0..self.0.count {
                    let _ = out.write_all(&chunk);
                }
                let _ = out.flush();
                Ok(vec![msg])
            }
            "dated" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                msg.timestamp_ms = now + self.0.ms;
                Ok(vec![msg])
            }
            "far-future" => {
                msg.timestamp_ms = u64::MAX;
                Ok(vec![msg])
            }
            "crlf-id" => {
                msg.id = "a\r\nX-Injected: 1\0".into();
                Ok(vec![msg])
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(self.0.ms));
                Ok(vec![msg])
            }
            "big" => Ok(vec![msg; self.0.count]),
            "huge" => {
                msg.body = "x".repeat(self.0.count << 20);
                Ok(vec![msg])
            }
            "recurse" => {
                msg.body = depth(std::hint::black_box(1)).to_string();
                Ok(vec![msg])
            }
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                let args: Vec<String> = std::env::args().collect();
                msg.body = format!("vars={vars:?} args={args:?}");
                Ok(vec![msg])
            }
            "flood" => {
                for i in 0..self.0.count {
                    tocsin_sdk::host::state_set(&format!("key-{i}"), b"x");
                }
                Ok(vec![msg])
            }
            "control" => {
                let outcome = |denied: bool| if denied { "denied" } else { "ALLOWED" };
                let status = tocsin_sdk::control::status("@mallory:example.org", None);
                let silence = tocsin_sdk::control::silence(
                    "@mallory:example.org",
                    &msg.id,
                    &["host=db1".to_string()],
                    3_600_000,
                    "hostile",
                );
                let denied = |e: &Option<tocsin_sdk::control::ControlError>| {
                    matches!(e, Some(tocsin_sdk::control::ControlError::Denied(_)))
                };
                msg.body = format!(
                    "status={} silence={}",
                    outcome(denied(&status.err())),
                    outcome(denied(&silence.err()))
                );
                Ok(vec![msg])
            }
            "control-flood" => {
                for _ in 0..self.0.count {
                    let _ = tocsin_sdk::control::alerts("@mallory:example.org");
                }
                Ok(vec![msg])
            }
            "pass" => Ok(vec![msg]),
            "tag-tick" => {
                msg.body = format!("tick={} {}", msg.timestamp_ms / 1000, msg.body);
                Ok(vec![msg])
            }
            other => Err(format!("unknown mode {other}")),
        }
    }
}

/// Recursion the optimiser cannot turn into a loop: each frame keeps an array alive across
/// the call. Endless on purpose.
#[allow(unconditional_recursion)]
fn depth(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 16]);
    depth(frame[n as usize % 16] + 1) + frame[0]
}

export_filter!(Hostile);
