//! What every [`QueueStore`] backend must do, as checks any backend's tests run: the sled
//! store's unit tests, and the JetStream store's in `tests/` (which start a nats-server).
//! Each check takes a fresh, empty store; [`everything_survives_reopen`] also a way to open
//! the same store again. (Compiled always, not behind a feature: a feature on this crate
//! turned on by the tests would build the engine twice, with and without it.)

use crate::{Envelope, HandOver, QueueError, QueueStore, Seq, StateWrite, FILTERS_QUEUE};
use std::sync::Arc;

use tocsin_message::{Message, Severity};

/// A message with id `id`.
pub fn msg(id: &str) -> Message {
    Message {
        id: id.into(),
        timestamp_ms: 1,
        severity: Severity::Error,
        summary: None,
        body: format!("body of {id}"),
        labels: vec![],
        metrics: vec![],
        payload: None,
        link: None,
        key: None,
    }
}

/// A state write of `v`.
pub fn state(stage: &str, key: &str, v: &[u8]) -> StateWrite {
    StateWrite {
        stage: stage.into(),
        key: key.into(),
        value: Some(v.to_vec()),
    }
}

fn ids(heads: &[(Seq, Envelope)]) -> Vec<String> {
    heads.iter().map(|(_, e)| e.message.id.clone()).collect()
}

/// Appends `id` to ingress and hands it over to sink `s` of pipeline `p`.
async fn queue_for_sink(q: &dyn QueueStore, id: &str) {
    q.append_ingress("p", &[msg(id)], &[]).await.unwrap();
    let (seq, env) = q.ingress_head("p").unwrap().unwrap();
    q.hand_over(
        "p",
        HandOver {
            ingress: seq,
            outputs: vec![("s".into(), vec![env])],
            state: vec![],
        },
    )
    .await
    .unwrap();
}

/// Ingress is first in, first out; a hand-over moves a message to sink queues with state.
pub async fn ingress_is_fifo_and_hand_over_moves_atomically(q: &dyn QueueStore) {
    q.append_ingress("p", &[msg("a"), msg("b")], &[])
        .await
        .unwrap();
    let (seq, env) = q.ingress_head("p").unwrap().unwrap();
    assert_eq!(env.message.id, "a");
    q.hand_over(
        "p",
        HandOver {
            ingress: seq,
            outputs: vec![
                ("s1".into(), vec![Envelope::new(msg("a"), 0)]),
                ("s2".into(), vec![Envelope::new(msg("a"), 0)]),
            ],
            state: vec![state("filter.0", "k", b"v")],
        },
    )
    .await
    .unwrap();
    assert_eq!(q.ingress_head("p").unwrap().unwrap().1.message.id, "b");
    assert_eq!(q.sink_head("p", "s1").unwrap().unwrap().1.message.id, "a");
    assert_eq!(q.sink_head("p", "s2").unwrap().unwrap().1.message.id, "a");
    assert_eq!(q.state_get("p", "filter.0", "k").unwrap().unwrap(), b"v");
    let d = q.depths("p").unwrap();
    assert_eq!(d.ingress, 1);
    assert_eq!(d.sinks, vec![("s1".into(), 1), ("s2".into(), 1)]);
}

/// Several hand-overs at once keep their order, and the last write of a key wins.
pub async fn a_run_of_hand_overs_is_one_ordered_batch(q: &dyn QueueStore) {
    q.append_ingress("p", &[msg("a"), msg("b")], &[])
        .await
        .unwrap();
    q.append_ingress("p", &[msg("c")], &[]).await.unwrap();
    assert_eq!(ids(&q.ingress_heads("p", 3).unwrap()), ["a", "b", "c"]);
    let heads = q.ingress_heads("p", 2).unwrap();
    let hand_overs = heads[..2]
        .iter()
        .enumerate()
        .map(|(i, (seq, env))| HandOver {
            ingress: *seq,
            outputs: vec![("s".into(), vec![Envelope::new(env.message.clone(), 0)])],
            // The second write of the same key wins, as with one commit each.
            state: vec![state("filter.0", "k", if i == 0 { b"1" } else { b"2" })],
        })
        .collect();
    q.hand_over_all("p", hand_overs).await.unwrap();
    assert_eq!(q.ingress_head("p").unwrap().unwrap().1.message.id, "c");
    assert_eq!(ids(&q.sink_heads("p", "s", 5).unwrap()), ["a", "b"]);
    let (first, env) = q.sink_head("p", "s").unwrap().unwrap();
    assert_eq!(env.message.id, "a");
    q.ack("p", "s", first, &[]).unwrap();
    assert_eq!(q.sink_head("p", "s").unwrap().unwrap().1.message.id, "b");
    assert_eq!(q.state_get("p", "filter.0", "k").unwrap().unwrap(), b"2");
}

/// Entries of one append are handed over, retried and dead-lettered one by one.
pub async fn part_of_an_append_can_be_handed_over_retried_and_dead_lettered(q: &dyn QueueStore) {
    q.append_ingress("p", &[msg("a"), msg("b"), msg("c"), msg("d")], &[])
        .await
        .unwrap();
    let heads = q.ingress_heads("p", 10).unwrap();
    let seqs: Vec<Seq> = heads.iter().map(|(s, _)| *s).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // The filters took a; b failed and waits for a retry.
    q.hand_over(
        "p",
        HandOver {
            ingress: seqs[0],
            outputs: vec![("s".into(), vec![heads[0].1.clone()])],
            state: vec![],
        },
    )
    .await
    .unwrap();
    let mut retried = heads[1].1.clone();
    retried.attempts = 1;
    q.update_ingress("p", seqs[1], &retried).unwrap();
    let (seq, head) = q.ingress_head("p").unwrap().unwrap();
    assert_eq!(
        (seq, head.message.id.as_str(), head.attempts),
        (seqs[1], "b", 1)
    );
    assert_eq!(q.depths("p").unwrap().ingress, 3);
    // b goes to dead letters; c and d stay, in order, under their seqs.
    q.dead_letter("p", FILTERS_QUEUE, seq, &head).await.unwrap();
    let rest = q.ingress_heads("p", 10).unwrap();
    assert_eq!(
        rest.iter()
            .map(|(s, e)| (*s, e.message.id.as_str()))
            .collect::<Vec<_>>(),
        [(seqs[2], "c"), (seqs[3], "d")]
    );
    assert_eq!(q.dead_letters("p", FILTERS_QUEUE).unwrap()[0].0, seqs[1]);
    // A replayed letter comes back behind them, with no attempts.
    assert_eq!(q.replay("p", FILTERS_QUEUE, None).unwrap(), 1);
    let back = q.ingress_heads("p", 10).unwrap();
    assert_eq!(ids(&back), ["c", "d", "b"]);
    assert_eq!(back[2].1.attempts, 0);
    assert_eq!(q.depths("p").unwrap().ingress, 3);
}

/// Queues, state and the list of pipelines are there again after a reopen.
pub async fn everything_survives_reopen(
    q: Arc<dyn QueueStore>,
    reopen: impl FnOnce() -> Arc<dyn QueueStore>,
) {
    q.put_state("p", &[state("source", "n", b"1")])
        .await
        .unwrap();
    queue_for_sink(q.as_ref(), "a").await;
    let (seq, mut failed) = q.sink_head("p", "s").unwrap().unwrap();
    failed.attempts = 2;
    failed.last_error = Some("HTTP 503".into());
    q.record_failure("p", "s", seq, &failed).unwrap();
    q.append_ingress("p", &[msg("b")], &[]).await.unwrap();
    q.flush().await.unwrap();
    drop(q);
    let q = reopen();
    assert_eq!(q.ingress_head("p").unwrap().unwrap().1.message.id, "b");
    let (_, again) = q.sink_head("p", "s").unwrap().unwrap();
    assert_eq!(
        (again.message.id.as_str(), again.attempts, again.last_error),
        ("a", 2, Some("HTTP 503".to_string()))
    );
    assert_eq!(q.state_get("p", "source", "n").unwrap().unwrap(), b"1");
    assert_eq!(q.pipelines().unwrap(), vec!["p".to_string()]);
}

/// A sink queue is delivered in the order it was filled.
pub async fn sink_queues_keep_order_across_sinks_and_acks(q: &dyn QueueStore) {
    for id in ["a", "b", "c"] {
        queue_for_sink(q, id).await;
    }
    let mut seen = vec![];
    while let Some((seq, env)) = q.sink_head("p", "s").unwrap() {
        seen.push(env.message.id.clone());
        q.ack("p", "s", seq, &[]).unwrap();
    }
    assert_eq!(seen, ["a", "b", "c"]);
}

/// Dead letters are listed, replayed with fresh attempts, purged; a purged one is gone.
pub async fn dead_letters_can_be_listed_replayed_and_purged(q: &dyn QueueStore) {
    queue_for_sink(q, "a").await;
    let (seq, mut env) = q.sink_head("p", "s").unwrap().unwrap();
    env.attempts = 3;
    env.last_error = Some("HTTP 500".into());
    q.dead_letter("p", "s", seq, &env).await.unwrap();
    assert!(q.sink_head("p", "s").unwrap().is_none());
    let dead = q.dead_letters("p", "s").unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1.last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(q.replay("p", "s", None).unwrap(), 1);
    let (_, back) = q.sink_head("p", "s").unwrap().unwrap();
    assert_eq!(back.attempts, 0);
    assert!(q.dead_letters("p", "s").unwrap().is_empty());
    let (seq, env) = q.sink_head("p", "s").unwrap().unwrap();
    q.dead_letter("p", "s", seq, &env).await.unwrap();
    assert_eq!(q.purge_dead("p", "s", Some(seq)).unwrap(), 1);
    assert_eq!(q.purge_dead("p", "s", Some(seq)).unwrap(), 0);
    assert!(matches!(
        q.replay("p", "s", Some(seq)),
        Err(QueueError::NotFound { .. })
    ));
}

/// What the filters failed on is dead-lettered from ingress, and replayed back to it.
pub async fn filter_failures_dead_letter_from_ingress(q: &dyn QueueStore) {
    q.append_ingress("p", &[msg("a")], &[]).await.unwrap();
    let (seq, env) = q.ingress_head("p").unwrap().unwrap();
    q.dead_letter("p", FILTERS_QUEUE, seq, &env).await.unwrap();
    assert!(q.ingress_head("p").unwrap().is_none());
    assert_eq!(q.replay("p", FILTERS_QUEUE, None).unwrap(), 1);
    assert_eq!(q.ingress_head("p").unwrap().unwrap().1.message.id, "a");
}

/// Purging a pipeline removes everything it stored.
pub async fn purging_a_pipeline_removes_its_queues(q: &dyn QueueStore) {
    q.append_ingress("gone", &[msg("a")], &[state("source", "n", b"1")])
        .await
        .unwrap();
    q.purge_pipeline("gone").unwrap();
    assert!(q.pipelines().unwrap().is_empty());
    assert!(q.ingress_head("gone").unwrap().is_none());
    assert_eq!(q.state_get("gone", "source", "n").unwrap(), None);
    assert_eq!(q.stored_bytes("gone").unwrap(), 0);
}

/// State is scanned per stage in key order; a deleted key is gone; the server's own state
/// is scanned by prefix.
pub async fn state_is_scanned_by_stage_and_server_state_by_prefix(q: &dyn QueueStore) {
    q.put_state(
        "p",
        &[
            state("host", "b", b"2"),
            state("host", "a", b"1"),
            state("host.x", "z", b"other stage"),
            state("host", "c", b"3"),
        ],
    )
    .await
    .unwrap();
    q.put_state(
        "p",
        &[StateWrite {
            stage: "host".into(),
            key: "c".into(),
            value: None,
        }],
    )
    .await
    .unwrap();
    let scanned = q.state_scan("p", "host").unwrap();
    assert_eq!(
        scanned,
        [
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec())
        ]
    );
    q.server_state_put("silence/1", Some(b"one")).await.unwrap();
    q.server_state_put("silence/2", Some(b"two")).await.unwrap();
    q.server_state_put("other", Some(b"x")).await.unwrap();
    q.server_state_put("silence/1", None).await.unwrap();
    assert_eq!(
        q.server_state_scan("silence/").unwrap(),
        [("silence/2".to_string(), b"two".to_vec())]
    );
}
