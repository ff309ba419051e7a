//! Property tests ("fuzzing") of the queue's record format and of the sled store around it.
//!
//! - Any [`Envelope`] round-trips through the versioned record encoding the store writes.
//! - Arbitrary bytes, truncations and bit flips of valid envelope records decode to a clean
//!   error or a value, never a panic; so do edited ingress records (the messages of one
//!   append), whose header must agree with their entries.
//! - Messages go through the real [`SledStore`] (ingress, hand-over, sink queue, dead letters,
//!   replay) unchanged and in order.
//! - A record corrupted on disk is reported by the store as [`QueueError::Corrupt`], naming the
//!   pipeline and queue, never a panic.
//!
//! Every test is named `prop_*`, so `cargo test prop_` runs exactly these. The number of
//! cases is small by default and `PROPTEST_CASES` raises it (`make fuzz-long`).

use proptest::prelude::*;
use proptest::sample::Index;
use tocsin_message::{decode_record, encode_record, DecodeError, Message, Severity};
use tocsin_queue::{
    ingress_batch, Envelope, HandOver, QueueError, QueueStore, SledStore, FILTERS_QUEUE,
};

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

/// Runs `test` on cases of `strategy` as `proptest!` does, but on `PROPTEST_CASES / 10` cases
/// (at least `default_cases`): each case through the store opens sled or syncs, so a long run
/// (`make fuzz-long`) takes a tenth. (`proptest!` would apply `PROPTEST_CASES` itself.)
#[track_caller]
fn run_store_cases<S: Strategy>(
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default_cases, |n| (n / 10).max(default_cases));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}\n{runner}");
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        1 => (any::<char>(), 0..2048usize).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
}

prop_compose! {
    fn message()(
        id in text(),
        timestamp_ms in any::<u64>(),
        severity in prop::sample::select(&Severity::ALL[..]),
        summary in prop::option::of(text()),
        body in text(),
        labels in prop::collection::vec((text(), text()), 0..4),
        metrics in prop::collection::vec((text(), any::<f64>()), 0..4),
        payload in prop::option::of(text()),
        link in prop::option::of(text()),
        key in prop::option::of(text()),
    ) -> Message {
        Message { id, timestamp_ms, severity, summary, body, labels, metrics, payload, link, key }
    }
}

prop_compose! {
    fn envelope()(
        message in message(),
        attempts in any::<u32>(),
        last_error in prop::option::of(text()),
        not_before_ms in any::<u64>(),
        enqueued_ms in any::<u64>(),
    ) -> Envelope {
        Envelope { message, attempts, last_error, not_before_ms, enqueued_ms }
    }
}

/// Equal as stored: the encoding is a function of the value, and compares NaN metrics by bits.
fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
    encode_record(a) == encode_record(b)
}

/// Decodes an envelope record: a value (which round-trips again) or a clean error.
fn decode_checked(bytes: &[u8]) -> Result<Result<Envelope, DecodeError>, TestCaseError> {
    let result = decode_record::<Envelope>(bytes);
    match &result {
        Ok(env) => {
            let back = decode_record::<Envelope>(&encode_record(env));
            prop_assert!(
                back.is_ok(),
                "a decoded value does not round-trip: {:?}",
                back
            );
            prop_assert!(same(env, &back.unwrap()));
        }
        Err(e) => clean_error(e)?,
    }
    Ok(result)
}

/// A decode error is one of the kinds the store reports, in words.
fn clean_error(e: &DecodeError) -> Result<(), TestCaseError> {
    let rendered = e.to_string();
    let known = ["empty record", "record format version", "malformed record"];
    prop_assert!(
        known.iter().any(|k| rendered.starts_with(k)),
        "{}",
        rendered
    );
    Ok(())
}

/// One edit of a record's bytes.
#[derive(Debug, Clone)]
enum Edit {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, b)| Edit::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::SetByte(i, b)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), 1..8usize).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, e: &Edit) {
    let len = bytes.len();
    match e {
        Edit::FlipBit(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
        Edit::SetByte(i, b) if len > 0 => bytes[i.index(len)] = *b,
        Edit::Insert(i, b) => {
            let at = i.index(len + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Edit::Delete(i, n) if len > 0 => {
            let at = i.index(len);
            bytes.drain(at..(at + n).min(len));
        }
        Edit::Truncate(i) => bytes.truncate(i.index(len + 1)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Every envelope comes back from its record exactly as it went in.
    #[test]
    fn prop_envelope_records_round_trip(env in envelope()) {
        let back = decode_checked(&encode_record(&env))?;
        prop_assert!(back.is_ok(), "{:?}", back);
        prop_assert!(same(&back.unwrap(), &env));
    }

    /// Arbitrary bytes as an envelope record.
    #[test]
    fn prop_arbitrary_bytes_decode_to_an_envelope_or_an_error(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        versioned in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if versioned {
            bytes.insert(0, tocsin_message::RECORD_FORMAT_VERSION);
        }
        let _ = decode_checked(&bytes)?;
    }

    /// Edited envelope records (bit flips, truncations, insertions, deletions).
    #[test]
    fn prop_mutated_envelope_records_decode_to_an_envelope_or_an_error(
        env in envelope(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let mut bytes = encode_record(&env);
        for e in &edits {
            apply(&mut bytes, e);
        }
        let _ = decode_checked(&bytes)?;
    }

    /// A strict prefix of an envelope record never decodes.
    #[test]
    fn prop_truncated_envelope_records_are_errors(env in envelope(), cut in any::<Index>()) {
        let bytes = encode_record(&env);
        let cut = cut.index(bytes.len());
        prop_assert!(decode_checked(&bytes[..cut])?.is_err());
    }
}

/// Entries with increasing offsets, as the store writes them into one ingress record.
fn ingress_entries() -> impl Strategy<Value = Vec<(u32, Envelope)>> {
    prop::collection::vec((1..1000u32, envelope()), 1..6).prop_map(|steps| {
        let mut offset = 0;
        steps
            .into_iter()
            .map(|(step, env)| {
                offset += step;
                (offset, env)
            })
            .collect()
    })
}

/// Decodes an ingress record: entries whose header agrees (and which round-trip), or a clean
/// error.
fn decode_ingress_checked(bytes: &[u8]) -> Result<bool, TestCaseError> {
    match ingress_batch::decode(bytes) {
        Ok(entries) => {
            let again = ingress_batch::encode(&entries);
            let back = ingress_batch::decode(&again);
            prop_assert!(
                back.is_ok(),
                "a decoded record does not round-trip: {:?}",
                back
            );
            let header = ingress_batch::header(&again).expect("a header");
            prop_assert_eq!(header.count as usize, entries.len());
            Ok(true)
        }
        Err(e) => {
            clean_error(&e)?;
            Ok(false)
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// The entries of an ingress record come back as they went in, and its header tells
    /// whether a set of offsets is all of them.
    #[test]
    fn prop_ingress_records_round_trip(entries in ingress_entries()) {
        let bytes = ingress_batch::encode(&entries);
        let back = ingress_batch::decode(&bytes).expect("a fresh record decodes");
        prop_assert_eq!(back.len(), entries.len());
        for ((o1, e1), (o2, e2)) in back.iter().zip(&entries) {
            prop_assert_eq!(o1, o2);
            prop_assert!(same(e1, e2));
        }
        let header = ingress_batch::header(&bytes).expect("a header");
        let offsets: Vec<u32> = entries.iter().map(|e| e.0).collect();
        let contiguous = offsets.windows(2).all(|w| w[1] == w[0] + 1);
        prop_assert_eq!(header.is_exactly(&offsets), contiguous);
        prop_assert!(!header.is_exactly(&offsets[1..]));
    }

    /// Edited ingress records (bit flips, truncations, insertions, deletions).
    #[test]
    fn prop_mutated_ingress_records_decode_or_are_errors(
        entries in ingress_entries(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let mut bytes = ingress_batch::encode(&entries);
        for e in &edits {
            apply(&mut bytes, e);
        }
        let _ = decode_ingress_checked(&bytes)?;
    }

    /// A strict prefix of an ingress record never decodes.
    #[test]
    fn prop_truncated_ingress_records_are_errors(entries in ingress_entries(), cut in any::<Index>()) {
        let bytes = ingress_batch::encode(&entries);
        let cut = cut.index(bytes.len());
        prop_assert!(!decode_ingress_checked(&bytes[..cut])?);
    }
}

// ---------------------------------------------------------------------------------------------
// Through the real store.

/// A fresh directory under Cargo's temporary directory for integration tests, removed when
/// dropped.
fn fresh_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tocsin-queue-prop-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// Messages come out of ingress, the sink queue and the dead letters as they went in, in
/// order; replay puts them back with a fresh attempt count. (One store for every case.)
#[test]
fn prop_messages_round_trip_through_the_sled_store() {
    let dir = fresh_dir();
    let q = SledStore::open(dir.path()).unwrap();
    let n = std::cell::Cell::new(0u64);
    let strategy = (
        prop::collection::vec(message(), 1..5),
        prop::option::of(text()),
        any::<u32>(),
    );
    run_store_cases(32, strategy, |(messages, last_error, attempts)| {
        n.set(n.get() + 1);
        let p = format!("p{}", n.get());
        q.append_ingress(&p, &messages, &[])
            .wait_blocking()
            .unwrap();
        prop_assert_eq!(q.depths(&p).unwrap().ingress, messages.len());
        for m in &messages {
            let (seq, env) = q.ingress_head(&p).unwrap().expect("an ingress entry");
            prop_assert!(same(&env.message, m));
            prop_assert_eq!(env.attempts, 0);
            let out = Envelope {
                attempts,
                last_error: last_error.clone(),
                ..env
            };
            let hand_over = HandOver {
                ingress: seq,
                outputs: vec![("out".into(), vec![out])],
                state: vec![],
            };
            q.hand_over(&p, hand_over).wait_blocking().unwrap();
        }
        prop_assert!(q.ingress_head(&p).unwrap().is_none());
        for m in &messages {
            let (seq, env) = q.sink_head(&p, "out").unwrap().expect("a sink entry");
            prop_assert!(same(&env.message, m));
            prop_assert_eq!((env.attempts, &env.last_error), (attempts, &last_error));
            q.dead_letter(&p, "out", seq, &env).wait_blocking().unwrap();
        }
        let dead = q.dead_letters(&p, "out").unwrap();
        prop_assert_eq!(dead.len(), messages.len());
        for ((_, env), m) in dead.iter().zip(&messages) {
            prop_assert!(same(&env.message, m));
        }
        prop_assert_eq!(q.replay(&p, "out", None).unwrap(), messages.len());
        for m in &messages {
            let (seq, env) = q.sink_head(&p, "out").unwrap().expect("a replayed entry");
            prop_assert!(same(&env.message, m));
            prop_assert_eq!(env.attempts, 0);
            q.ack(&p, "out", seq, &[]).unwrap();
        }
        q.purge_pipeline(&p).unwrap();
        Ok(())
    });
}

/// Calls `open` until the database's lock is free: sled's own threads may hold it for a
/// moment after the last handle to a database is dropped.
fn reopen<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> T {
    for _ in 0..500 {
        match open() {
            Ok(v) => return v,
            // tocsin's store says so in its words, a bare sled open in its own.
            Err(e)
                if e.to_string().contains("in use by another tocsin process")
                    || e.to_string().contains("could not acquire lock") =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the database's lock was not released within 5 s")
}

/// The queue an error of the store names, if it is a corrupt-record error.
fn corrupt_queue(e: &QueueError) -> Option<&str> {
    match e {
        QueueError::Corrupt { queue, .. } => Some(queue),
        _ => None,
    }
}

/// A store result: a value, or a corrupt-record error naming `expected` (and nothing
/// unprintable).
fn ok_or_corrupt<T>(result: Result<T, QueueError>, expected: &str) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        let rendered = e.to_string();
        prop_assert_eq!(corrupt_queue(&e), Some(expected), "{}", rendered);
        prop_assert!(!rendered.contains(char::is_control), "{:?}", rendered);
    }
    Ok(())
}

/// Records corrupted on disk (behind the store's back) are errors that name the pipeline and
/// queue, for every way the store reads them.
#[test]
fn prop_corrupt_stored_records_are_reported_not_panicked() {
    let strategy = (message(), 0..3usize, prop::collection::vec(edit(), 1..4));
    run_store_cases(16, strategy, |(m, which, edits)| {
        let dir = fresh_dir();
        {
            let q = SledStore::open(dir.path()).unwrap();
            q.append_ingress("p", &[m.clone(), m.clone(), m.clone()], &[])
                .wait_blocking()
                .unwrap();
            // One entry stays in ingress, one goes to the sink queue, one to its dead letters.
            for to_dead in [false, true] {
                let (seq, env) = q.ingress_head("p").unwrap().unwrap();
                let hand_over = HandOver {
                    ingress: seq,
                    outputs: vec![("out".into(), vec![env])],
                    state: vec![],
                };
                q.hand_over("p", hand_over).wait_blocking().unwrap();
                if to_dead {
                    let (seq, env) = q.sink_head("p", "out").unwrap().unwrap();
                    q.dead_letter("p", "out", seq, &env)
                        .wait_blocking()
                        .unwrap();
                }
            }
        }
        {
            let db = reopen(|| {
                sled::Config::new()
                    .path(dir.path())
                    .flush_every_ms(None)
                    .open()
            });
            let tree = db.open_tree("p/p").unwrap();
            let kind = [b'i', b'q', b'd'][which];
            let (key, value) = tree.scan_prefix([kind]).next().unwrap().unwrap();
            let mut bytes = value.to_vec();
            for e in &edits {
                apply(&mut bytes, e);
            }
            tree.insert(key, bytes).unwrap();
            db.flush().unwrap();
        }
        let q = reopen(|| SledStore::open(dir.path()));
        ok_or_corrupt(q.ingress_head("p"), "ingress of p")?;
        ok_or_corrupt(q.sink_head("p", "out"), "p/out")?;
        ok_or_corrupt(q.dead_letters("p", "out"), "dead letters of p/out")?;
        ok_or_corrupt(q.replay("p", "out", None), "dead letters of p/out")?;
        ok_or_corrupt(
            q.replay("p", FILTERS_QUEUE, None),
            "dead letters of p/@filters",
        )?;
        let _ = q.depths("p").unwrap();
        Ok(())
    });
}
