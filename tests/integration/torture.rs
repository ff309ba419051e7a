//! Crash torture: ingest load at the real binary, SIGKILL at random moments, restart — and at
//! the end every acknowledged message was delivered, each under one idempotency key, so none
//! is visible twice.
//!
//! `TOCSIN_TORTURE_CYCLES` (default 50) sets the number of kills. The long mode:
//! `TOCSIN_TORTURE_CYCLES=2000 cargo test -p tocsin-tests --test integration torture -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::Rng;
use tocsin_tests::load::Load;
use tocsin_tests::process::{Port, Tocsin};
use tocsin_tests::receiver::Receiver;
use tocsin_tests::{plugins_dir, tocsin_bin, wait_until, Env, OPEN_JSON_SOURCE};

/// Concurrent clients posting to the ingest endpoint.
const PRODUCERS: usize = 4;
/// Each client's pause between requests: the load stays within what one webhook sink
/// delivers (about 700/s in a debug build), so the final drain is short.
const PACE: Duration = Duration::from_millis(5);

fn cycles() -> usize {
    std::env::var("TOCSIN_TORTURE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_message_survives_random_sigkills() {
    let cycles = cycles();
    let receiver = Receiver::start().await;
    let env = Env::new();
    let retry = r#"{ max_attempts = 1000000, initial = "20ms", max = "200ms" }"#;
    env.write_pipeline(
        "torture",
        &format!("{OPEN_JSON_SOURCE}{}", receiver.sink_toml("hook", retry)),
    );
    let port = Port::free();
    // Build first, so the first restart is timed like the others.
    let _ = (tocsin_bin(), plugins_dir());
    let url = format!("http://127.0.0.1:{}/ingest/torture", port.0);
    let load = Load::start(&url, "", PRODUCERS, PACE);

    // Kill at a random moment of each run: right after it serves, or up to 400 ms into the
    // load (mid request, mid group commit, mid delivery).
    let delays: Vec<u64> = {
        let mut rng = rand::rng();
        (0..cycles).map(|_| rng.random_range(0..400)).collect()
    };
    let started = Instant::now();
    let mut start_ups = Vec::new();
    for delay in delays {
        let spawned = Instant::now();
        let mut tocsin = Tocsin::spawn(&env, &port, &[]);
        tocsin.wait_serving(&env, Duration::from_secs(60)).await;
        start_ups.push(spawned.elapsed());
        tokio::time::sleep(Duration::from_millis(delay)).await;
        tocsin.kill();
    }
    let outcome = load.stop().await;
    let acked = outcome.acked.clone();
    assert!(
        acked.len() >= cycles,
        "the load barely ran: {} acknowledged",
        acked.len()
    );

    // A last, peaceful run drains everything.
    let mut tocsin = Tocsin::spawn(&env, &port, &[]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    wait_until(
        Duration::from_secs(180),
        "every acknowledged message delivered",
        || acked.is_subset(&receiver.visible_ids()),
    )
    .await;
    let (status, _) = tocsin.terminate(Duration::from_secs(30));
    assert!(status.success(), "tocsin exited with {status}");

    let requests = receiver.requests();
    let mut keys_per_id = BTreeMap::<&str, BTreeSet<&str>>::new();
    for r in &requests {
        keys_per_id.entry(&r.id).or_default().insert(&r.key);
    }
    let split: Vec<_> = keys_per_id.iter().filter(|(_, k)| k.len() > 1).collect();
    assert!(
        split.is_empty(),
        "messages delivered under more than one idempotency key: {split:?}"
    );
    let visible = receiver.visible();
    let duplicates = receiver.visible_duplicates();
    assert!(duplicates.is_empty(), "visible twice: {duplicates:?}");
    let delivered = receiver.visible_ids();
    let lost: Vec<_> = acked.difference(&delivered).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    start_ups.sort();
    eprintln!(
        "torture: {cycles} SIGKILL cycles in {:.0?} (restart to serving: min {:.0?}, median \
         {:.0?}, max {:.0?}); {} requests, {} messages acknowledged, {} delivered ({} \
         unacknowledged but stored), 0 lost, {} redeliveries caught by the idempotency key, \
         0 visible twice",
        started.elapsed(),
        start_ups[0],
        start_ups[start_ups.len() / 2],
        start_ups[start_ups.len() - 1],
        outcome.requests(),
        acked.len(),
        visible.len(),
        visible.len() - acked.len(),
        requests
            .iter()
            .filter(|r| (200..300).contains(&r.answered))
            .count()
            - visible.len(),
    );
}
