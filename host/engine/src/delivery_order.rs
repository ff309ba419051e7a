//! Which queued messages a sink may deliver next: order per alert, not per sink.
//!
//! Every message has an *ordering key*. Messages of one key are delivered strictly in queue
//! order — one at a time, and a message waiting for its retry holds back the later messages of
//! its key — while messages of different keys are delivered side by side, up to the sink's
//! `concurrency`. So a storm of different alerts goes out at once, and an alert's "resolved"
//! never overtakes its "firing".
//!
//! The key ([`OrderKeys::key`]): with `concurrency = 1`, one key for the whole sink (strict
//! queue order, as before); otherwise the message's `key` (contract 0.2.0: the alert's
//! identity a plugin gives), else its `fingerprint` label — the alert identity Alertmanager
//! gives, which any decoder may set — and else its id.

use std::collections::{BTreeMap, HashMap, HashSet};

use tocsin_queue::{Envelope, Seq};

/// The label holding an alert's identity across its notifications (firing, resolved,
/// repeats), when a decoder knows one.
pub const IDENTITY_LABEL: &str = "fingerprint";

/// The identity of the alert `message` is about, when its source declares one: its `key`
/// (`k:…`), else its `fingerprint` label (`f:…`). Shared by the ordering key and grouping's
/// count of firing alerts, which differ only in what they fall back to.
pub fn declared_identity(message: &tocsin_message::Message) -> Option<String> {
    match (&message.key, message.label(IDENTITY_LABEL)) {
        (Some(key), _) => Some(format!("k:{key}")),
        (None, Some(fingerprint)) => Some(format!("f:{fingerprint}")),
        (None, None) => None,
    }
}

/// How a sink's messages are keyed for ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderKeys {
    /// One key for the whole sink (`concurrency = 1`).
    whole_sink: bool,
}

impl OrderKeys {
    /// The keys of a sink delivering up to `concurrency` messages at once.
    pub fn for_concurrency(concurrency: usize) -> Self {
        OrderKeys {
            whole_sink: concurrency <= 1,
        }
    }

    /// The ordering key of `envelope`'s message.
    pub fn key(&self, envelope: &Envelope) -> String {
        if self.whole_sink {
            return String::new();
        }
        declared_identity(&envelope.message).unwrap_or_else(|| format!("i:{}", envelope.message.id))
    }

    /// Whether the whole sink is one key (nothing can pass a held head).
    pub fn whole_sink(&self) -> bool {
        self.whole_sink
    }

    /// How many queue entries from the head to read for `concurrency` deliveries: several
    /// per slot, so a read serves many deliveries ([`HeadCache`]) and keys held back by a
    /// retry do not starve the others; one for the whole sink.
    pub fn window(&self, concurrency: usize) -> usize {
        if self.whole_sink {
            1
        } else {
            concurrency.saturating_mul(8).max(1)
        }
    }
}

/// What [`pick`] chose.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Picked {
    /// The entries to deliver now, in queue order, with their keys.
    pub now: Vec<(Seq, String)>,
    /// The earliest time (ms since the epoch) an entry of the window that waits for its retry
    /// becomes due.
    pub next_due_ms: Option<u64>,
}

/// The most queue entries a sink's worker reads past its head to find an alert it may deliver.
pub const MAX_LOOK_AHEAD: usize = 1024;

/// The queue's head as a sink's worker last read it — the entries not in flight, in queue
/// order — kept up to date by the worker's own settling, so that choosing the next delivery
/// seldom reads the store: a read decodes every entry of the window, and reading one per
/// delivery cost a third of the throughput at `concurrency = 8` (measured).
#[derive(Debug, Default)]
pub struct HeadCache {
    entries: BTreeMap<Seq, Envelope>,
    /// The last read reached the end of the queue.
    complete: bool,
    /// The store may hold more or other entries than the cache (something was appended, or
    /// it is time to look again).
    stale: bool,
}

/// Entries taken to deliver now, and when the first entry held for its retry comes due.
pub type Taken = (Vec<(Seq, String, Envelope)>, Option<u64>);

impl HeadCache {
    /// An empty cache that reads the store first.
    pub fn new() -> Self {
        HeadCache {
            stale: true,
            ..HeadCache::default()
        }
    }

    /// The store may have changed behind the cache (a `ready` wake-up, an idle recheck).
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// An entry delivered without success stays queued (with its new attempt count and
    /// retry time).
    pub fn put_back(&mut self, seq: Seq, envelope: Envelope) {
        self.entries.insert(seq, envelope);
    }

    /// Takes what may go to `free` instances now: from the cache, or — when that cannot fill
    /// them and the store may hold more — from a fresh read of the head with `read(limit)`:
    /// a window of `window_len` entries past those `in_flight` (seq → key), widened (up to
    /// [`MAX_LOOK_AHEAD`]) while it is all held back by a few alerts' earlier messages and more
    /// is queued, so one alert's backlog waiting for a retry does not hold back the others.
    #[allow(clippy::too_many_arguments)]
    pub fn take<E>(
        &mut self,
        mut read: impl FnMut(usize) -> Result<Vec<(Seq, Envelope)>, E>,
        order: &OrderKeys,
        window_len: usize,
        in_flight: &HashMap<Seq, String>,
        free: usize,
        per_key: usize,
        now_ms: u64,
    ) -> Result<Taken, E> {
        let busy: HashSet<String> = in_flight.values().cloned().collect();
        let mut picked = pick(&self.entries, order, &busy, free, per_key, now_ms);
        let mut len = window_len;
        while picked.now.len() < free && (self.stale || !self.complete) {
            let limit = len + in_flight.len();
            let heads = read(limit)?;
            self.complete = heads.len() < limit;
            self.stale = false;
            self.entries = heads
                .into_iter()
                .filter(|(seq, _)| !in_flight.contains_key(seq))
                .collect();
            picked = pick(&self.entries, order, &busy, free, per_key, now_ms);
            if order.whole_sink() || len >= MAX_LOOK_AHEAD {
                break;
            }
            len = (len * 4).min(MAX_LOOK_AHEAD);
        }
        let taken = picked
            .now
            .into_iter()
            .filter_map(|(seq, key)| self.entries.remove(&seq).map(|e| (seq, key, e)))
            .collect();
        Ok((taken, picked.next_due_ms))
    }
}

/// Chooses up to `free` entries of `window` (the queue's head, in order) to deliver now.
///
/// An entry goes when it is due and no earlier entry of its key is in flight (`in_flight`:
/// the keys being delivered) or still queued before it — whatever that entry waits for. Up to
/// `per_key` consecutive entries of one key may go together (a sink that takes several
/// messages per call, `batch-limit`): [`batches`] keeps them in one call, in queue order, so a
/// sink of `concurrency = 1` still batches and still keeps queue order.
pub fn pick<'a>(
    window: impl IntoIterator<Item = (&'a Seq, &'a Envelope)>,
    keys: &OrderKeys,
    in_flight: &HashSet<String>,
    free: usize,
    per_key: usize,
    now_ms: u64,
) -> Picked {
    let mut held: HashSet<String> = in_flight.clone();
    let mut taken_of: HashMap<String, usize> = HashMap::new();
    let mut picked = Picked::default();
    for (seq, envelope) in window {
        if picked.now.len() >= free {
            break;
        }
        let key = keys.key(envelope);
        if held.contains(&key) {
            continue;
        }
        let taken = taken_of.entry(key.clone()).or_default();
        if *taken >= per_key.max(1) {
            held.insert(key);
            continue;
        }
        if envelope.not_before_ms > now_ms {
            let due = picked
                .next_due_ms
                .map_or(envelope.not_before_ms, |t| t.min(envelope.not_before_ms));
            picked.next_due_ms = Some(due);
            held.insert(key);
            continue;
        }
        *taken += 1;
        picked.now.push((*seq, key));
    }
    picked
}

/// Splits entries taken to deliver now into at most about `free` calls of at most `limit`
/// messages, spread evenly (20 entries on 8 free instances: calls of 3, not one of 20). The
/// entries of one key stay together in one call, in queue order — never two calls of one key
/// at once. There can be more calls than `free` when keys' runs do not pack; the caller puts
/// back what it has no instance for.
pub fn batches(
    taken: Vec<(Seq, String, Envelope)>,
    free: usize,
    limit: usize,
) -> Vec<Vec<(Seq, String, Envelope)>> {
    let total = taken.len();
    let mut groups: Vec<Vec<(Seq, String, Envelope)>> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for entry in taken {
        match group_of.get(&entry.1) {
            Some(&i) => groups[i].push(entry),
            None => {
                group_of.insert(entry.1.clone(), groups.len());
                groups.push(vec![entry]);
            }
        }
    }
    let per_call = total.div_ceil(free.max(1)).clamp(1, limit.max(1));
    let mut out: Vec<Vec<_>> = Vec::new();
    for group in groups {
        match out.last_mut() {
            Some(last) if last.len() + group.len() <= per_call => last.extend(group),
            _ => out.push(group),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;
    use tocsin_message::Message;

    use super::*;

    fn envelope(id: &str, fingerprint: Option<&str>) -> Envelope {
        let message = Message {
            id: id.to_string(),
            timestamp_ms: 1,
            severity: tocsin_message::Severity::Error,
            summary: None,
            body: "body".to_string(),
            labels: fingerprint
                .map(|fp| vec![(IDENTITY_LABEL.to_string(), fp.to_string())])
                .unwrap_or_default(),
            metrics: vec![],
            payload: None,
            link: None,
            key: None,
        };
        Envelope::new(message, 1)
    }

    #[test]
    fn one_key_per_alert_and_one_for_a_sink_of_concurrency_one() {
        let firing = envelope("fp1-firing", Some("fp1"));
        let resolved = envelope("fp1-resolved", Some("fp1"));
        let other = envelope("x", None);
        let keys = OrderKeys::for_concurrency(8);
        assert_eq!(keys.key(&firing), keys.key(&resolved));
        assert_ne!(keys.key(&firing), keys.key(&other));
        let strict = OrderKeys::for_concurrency(1);
        assert_eq!(strict.key(&firing), strict.key(&other));
        assert_eq!(strict.window(1), 1);
    }

    #[test]
    fn a_retrying_message_holds_back_its_key_only() {
        let mut waiting = envelope("a1", Some("a"));
        waiting.not_before_ms = 500;
        let window = [
            (1, waiting),
            (2, envelope("a2", Some("a"))),
            (3, envelope("b1", Some("b"))),
            (4, envelope("c1", Some("c"))),
            (5, envelope("c2", Some("c"))),
        ];
        let keys = OrderKeys::for_concurrency(8);
        let entries = || window.iter().map(|(s, e)| (s, e));
        let picked = pick(entries(), &keys, &HashSet::new(), 8, 1, 100);
        let seqs: Vec<Seq> = picked.now.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [3, 4], "a2 waits behind a1, c2 behind c1");
        assert_eq!(picked.next_due_ms, Some(500));
        // With `b` in flight and one slot free, only c1 goes.
        let busy = HashSet::from([keys.key(&window[2].1)]);
        let picked = pick(entries(), &keys, &busy, 1, 1, 100);
        assert_eq!(picked.now.len(), 1);
        assert_eq!(picked.now[0].0, 4);
    }

    #[test]
    fn consecutive_messages_of_one_key_go_together_in_one_call() {
        let mut later = envelope("b2", Some("b"));
        later.not_before_ms = 500;
        let window = [
            (1, envelope("a1", Some("a"))),
            (2, envelope("b1", Some("b"))),
            (3, envelope("a2", Some("a"))),
            (4, envelope("a3", Some("a"))),
            (5, later),
            (6, envelope("b3", Some("b"))),
        ];
        let keys = OrderKeys::for_concurrency(8);
        let entries = || window.iter().map(|(s, e)| (s, e));
        // One per key without batches, as before.
        let seqs = |p: &Picked| p.now.iter().map(|(s, _)| *s).collect::<Vec<_>>();
        assert_eq!(
            seqs(&pick(entries(), &keys, &HashSet::new(), 8, 1, 100)),
            [1, 2]
        );
        // Up to two per key: a1 a2 (a3 waits for the next call of `a`), b1 (b2 is not due,
        // so b3 waits behind it).
        let picked = pick(entries(), &keys, &HashSet::new(), 8, 2, 100);
        assert_eq!(seqs(&picked), [1, 2, 3]);
        let taken: Vec<(Seq, String, Envelope)> = picked
            .now
            .into_iter()
            .map(|(seq, key)| (seq, key, window[seq as usize - 1].1.clone()))
            .collect();
        let calls: Vec<Vec<Seq>> = batches(taken, 8, 2)
            .into_iter()
            .map(|call| call.into_iter().map(|(seq, _, _)| seq).collect())
            .collect();
        assert_eq!(
            calls,
            [vec![1, 3], vec![2]],
            "a's two in one call, in order"
        );
        // Concurrency 1: the whole sink is one key, taken in queue order up to the limit.
        let strict = OrderKeys::for_concurrency(1);
        assert_eq!(
            seqs(&pick(entries(), &strict, &HashSet::new(), 100, 100, 100)),
            [1, 2, 3, 4]
        );
    }

    /// What happens to one delivery attempt in the model.
    #[derive(Debug, Clone, Copy)]
    enum Outcome {
        Delivered,
        Retry,
        Refused,
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            6 => Just(Outcome::Delivered),
            3 => Just(Outcome::Retry),
            1 => Just(Outcome::Refused),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// A model of the worker: a queue of messages of a few keys, calls of one or more
        /// messages (a sink's batch limit, 1–3) that finish in random order with random
        /// outcomes, retries that come due later. Whatever happens, each key's messages are
        /// delivered (or dead-lettered) in queue order, never in two calls at once, and every
        /// message ends delivered or dead-lettered exactly once.
        #[test]
        fn prop_per_key_order_holds_and_nothing_is_lost(
            keys_of in prop::collection::vec(prop_oneof![8 => Just(0u8), 1 => 1..4u8], 1..60),
            concurrency in 1..6usize,
            batch_limit in 1..4usize,
            outcomes in prop::collection::vec(outcome(), 200),
            finish_order in prop::collection::vec(any::<prop::sample::Index>(), 200),
        ) {
            let order = OrderKeys::for_concurrency(concurrency);
            let mut queue: BTreeMap<Seq, Envelope> = keys_of
                .iter()
                .enumerate()
                .map(|(i, k)| (i as Seq, envelope(&format!("m{i}"), Some(&format!("k{k}")))))
                .collect();
            let key_of: HashMap<Seq, u8> =
                keys_of.iter().enumerate().map(|(i, k)| (i as Seq, *k)).collect();
            let mut in_flight: HashMap<Seq, String> = HashMap::new();
            let mut calls: Vec<Vec<Seq>> = Vec::new();
            let mut settled: Vec<Seq> = Vec::new();
            let (mut outcomes, mut finishes) = (outcomes.into_iter().cycle(), finish_order.into_iter().cycle());
            let mut now = 0u64;
            let mut cache = HeadCache::new();
            for _ in 0..10_000 {
                if queue.is_empty() {
                    break;
                }
                let read = |limit: usize| -> Result<Vec<(Seq, Envelope)>, ()> {
                    Ok(queue.iter().take(limit).map(|(s, e)| (*s, e.clone())).collect())
                };
                let busy: HashSet<String> = in_flight.values().cloned().collect();
                let free = concurrency - calls.len();
                let window_len = order.window(concurrency).max(concurrency * batch_limit);
                let (taken, next_due_ms) = cache
                    .take(read, &order, window_len, &in_flight, free * batch_limit, batch_limit, now)
                    .unwrap();
                if taken.is_empty() && free > 0 {
                    // Nothing went: then nothing queued may go — every due entry has an
                    // earlier entry of its alert queued, or its alert in flight.
                    let mut held = busy.clone();
                    for (seq, entry) in &queue {
                        let key = order.key(entry);
                        let free_to_go = !held.contains(&key)
                            && !in_flight.contains_key(seq)
                            && entry.not_before_ms <= now;
                        prop_assert!(!free_to_go, "{} could go but was not picked", seq);
                        held.insert(key);
                    }
                }
                let mut keys_called: HashSet<String> = HashSet::new();
                for (i, call) in batches(taken, free, batch_limit).into_iter().enumerate() {
                    if i >= free {
                        // No instance for it: back to the cache, as the worker does.
                        for (seq, _, envelope) in call {
                            cache.put_back(seq, envelope);
                        }
                        continue;
                    }
                    prop_assert!(call.len() <= batch_limit, "a call over the batch limit");
                    let mut keys_here: HashSet<String> = HashSet::new();
                    for (pos, (seq, key, _)) in call.iter().enumerate() {
                        prop_assert!(!busy.contains(key), "two calls of one key in flight");
                        prop_assert!(!keys_called.contains(key), "one key in two calls at once");
                        keys_here.insert(key.clone());
                        // Every earlier queued message of its key is before it in this call.
                        for earlier in queue.keys().take_while(|s| *s < seq) {
                            if order.key(&queue[earlier]) == *key {
                                let before = call[..pos].iter().any(|(s, _, _)| s == earlier);
                                prop_assert!(before, "{} overtook {} of its key", seq, earlier);
                            }
                        }
                    }
                    keys_called.extend(keys_here);
                    in_flight.extend(call.iter().map(|(seq, key, _)| (*seq, key.clone())));
                    calls.push(call.into_iter().map(|(seq, _, _)| seq).collect());
                }
                if calls.is_empty() {
                    // Everything waits for a retry: the clock moves on to the first due.
                    now = next_due_ms.expect("something is due later");
                    continue;
                }
                // One call finishes, not necessarily the oldest; one outcome for all of it.
                let call = calls.remove(finishes.next().unwrap().index(calls.len()));
                let outcome = outcomes.next().unwrap();
                for seq in call {
                    in_flight.remove(&seq);
                    match outcome {
                        Outcome::Delivered | Outcome::Refused => {
                            queue.remove(&seq);
                            settled.push(seq);
                        }
                        Outcome::Retry => {
                            let entry = queue.get_mut(&seq).unwrap();
                            entry.attempts += 1;
                            if entry.attempts >= 5 {
                                queue.remove(&seq);
                                settled.push(seq);
                            } else {
                                entry.not_before_ms = now + 10;
                                cache.put_back(seq, entry.clone());
                            }
                        }
                    }
                }
                now += 1;
            }
            prop_assert!(queue.is_empty(), "left queued: {:?}", queue.keys().collect::<Vec<_>>());
            prop_assert_eq!(settled.len(), keys_of.len(), "each settled once");
            for k in 0..4u8 {
                let of_key: Vec<Seq> = settled.iter().copied().filter(|s| key_of[s] == k).collect();
                let mut sorted = of_key.clone();
                sorted.sort_unstable();
                prop_assert_eq!(of_key, sorted, "key k{} out of order", k);
            }
            if concurrency == 1 {
                let mut sorted = settled.clone();
                sorted.sort_unstable();
                prop_assert_eq!(settled, sorted, "concurrency 1 keeps the whole sink in order");
            }
        }
    }
}
