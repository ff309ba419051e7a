//! Property tests ("fuzzing") of the versioned record encoding of messages.
//!
//! - Any [`Message`] round-trips through [`encode_record`] / [`decode_record`], bit for bit
//!   (NaN metrics included).
//! - Arbitrary bytes, truncations, bit flips and appended bytes of valid records decode to a
//!   clean [`DecodeError`] or to a value, never a panic, and never allocate what a huge
//!   declared length asks for (a counting allocator watches every decode).
//!
//! Every test is named `prop_*`, so `cargo test prop_` runs exactly these. The number of
//! cases is small by default and `PROPTEST_CASES` raises it (`make fuzz-long`).

// The counting allocator below is the one `unsafe` here: `GlobalAlloc` is an unsafe trait.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use proptest::sample::Index;
use tocsin_message::{
    decode_record, encode_record, DecodeError, Message, Severity, RECORD_FORMAT_1,
    RECORD_FORMAT_VERSION,
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

// ---------------------------------------------------------------------------------------------
// Watching allocations: the largest single request made by this thread while `watched` runs.

struct Counting;

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: a thread being torn down has no thread-locals left; nothing to watch then.
    let _ = WATCHING.try_with(|w| {
        if w.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: every call is passed on unchanged to the system allocator; `note` only touches
// const-initialised thread-locals without destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning its result and the largest single allocation it asked for.
fn watched<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    WATCHING.with(|w| w.set(true));
    let r = f();
    WATCHING.with(|w| w.set(false));
    (r, LARGEST.with(Cell::get))
}

/// The most a decode of `input_len` bytes may allocate at once: what the input could hold
/// (a string is at most its bytes, a list element at least one byte but up to 48 bytes in
/// memory), never what a length prefix merely claims.
fn allocation_bound(input_len: usize) -> usize {
    4096 + 64 * input_len
}

/// Decodes `bytes` as a message, checking the allocation bound; the result must be a value or
/// a clean error, and a value must survive another round trip.
fn decode_checked(bytes: &[u8]) -> Result<Result<Message, DecodeError>, TestCaseError> {
    let (result, largest) = watched(|| decode_record::<Message>(bytes));
    prop_assert!(
        largest <= allocation_bound(bytes.len()),
        "decoding {} bytes allocated {} bytes at once",
        bytes.len(),
        largest
    );
    match &result {
        Ok(m) => {
            let again = encode_record(m);
            let back = decode_record::<Message>(&again);
            prop_assert!(
                back.is_ok(),
                "a decoded value does not round-trip: {:?}",
                back
            );
            prop_assert!(same(m, &back.unwrap()));
        }
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            if bytes.is_empty() {
                prop_assert!(matches!(e, DecodeError::Empty));
            } else if bytes[0] != RECORD_FORMAT_VERSION && bytes[0] != RECORD_FORMAT_1 {
                let is_unknown_version =
                    matches!(e, DecodeError::UnknownVersion { found, .. } if *found == bytes[0]);
                prop_assert!(is_unknown_version, "{}", e);
            }
        }
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// Messages.

/// Equal field by field, metrics compared by bits (so NaN equals itself).
fn same(a: &Message, b: &Message) -> bool {
    a.id == b.id
        && a.timestamp_ms == b.timestamp_ms
        && a.severity == b.severity
        && a.summary == b.summary
        && a.body == b.body
        && a.labels == b.labels
        && a.payload == b.payload
        && a.link == b.link
        && a.key == b.key
        && a.metrics.len() == b.metrics.len()
        && a.metrics
            .iter()
            .zip(&b.metrics)
            .all(|((ka, va), (kb, vb))| ka == kb && va.to_bits() == vb.to_bits())
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        1 => (any::<char>(), 0..4096usize).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
}

prop_compose! {
    /// Any message: any Unicode, any f64 (NaN and infinities too), any timestamp.
    fn message()(
        id in text(),
        timestamp_ms in any::<u64>(),
        severity in prop::sample::select(&Severity::ALL[..]),
        summary in prop::option::of(text()),
        body in text(),
        labels in prop::collection::vec((text(), text()), 0..6),
        metrics in prop::collection::vec((text(), any::<f64>()), 0..6),
        payload in prop::option::of(text()),
        link in prop::option::of(text()),
        key in prop::option::of(text()),
    ) -> Message {
        Message { id, timestamp_ms, severity, summary, body, labels, metrics, payload, link, key }
    }
}

/// One edit of a record's bytes.
#[derive(Debug, Clone)]
enum Edit {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, b)| Edit::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::SetByte(i, b)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), 1..8usize).prop_map(|(i, n)| Edit::Delete(i, n)),
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
        _ => {}
    }
}

/// A postcard varint.
fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A record of a message whose `field`-th length prefix claims `claimed` bytes or elements
/// and which then ends (or goes on with `tail`).
fn record_claiming(field: usize, claimed: u64, tail: &[u8]) -> Vec<u8> {
    let mut r = vec![RECORD_FORMAT_VERSION];
    // id, timestamp_ms, severity, summary, body, labels, metrics, payload (link and key
    // follow; every claim below is in a field before them)
    let fields: [&[u8]; 8] = [&[0], &[0], &[1], &[1], &[0], &[0], &[0], &[1]];
    for (i, f) in fields.iter().enumerate() {
        if i == field {
            if matches!(i, 3 | 7) {
                r.push(1); // Some(…)
            }
            r.extend(varint(claimed));
            r.extend_from_slice(tail);
            return r;
        }
        r.extend_from_slice(if matches!(i, 3 | 7) { &[0] } else { f });
    }
    r
}

proptest! {
    #![proptest_config(config(256))]

    /// Every message comes back from its record exactly as it went in.
    #[test]
    fn prop_message_records_round_trip(m in message()) {
        let bytes = encode_record(&m);
        prop_assert_eq!(bytes[0], RECORD_FORMAT_VERSION);
        let back = decode_checked(&bytes)?;
        prop_assert!(back.is_ok(), "{:?}", back);
        prop_assert!(same(&back.unwrap(), &m));
    }

    /// A record of format 1 (before links and keys) reads as the same message without them.
    #[test]
    fn prop_format_1_records_read_without_link_and_key(m in message()) {
        let mut bytes = vec![RECORD_FORMAT_1];
        bytes.extend(postcard::to_stdvec(&tocsin_message::MessageFormat1::from(&m)).unwrap());
        let back = decode_checked(&bytes)?;
        prop_assert!(back.is_ok(), "{:?}", back);
        let expected = Message { link: None, key: None, ..m };
        prop_assert!(same(&back.unwrap(), &expected));
    }

    /// Arbitrary bytes, mostly behind the right version byte: a value or a clean error.
    #[test]
    fn prop_arbitrary_bytes_decode_to_a_message_or_an_error(
        versioned in any::<bool>(),
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = bytes;
        if versioned {
            bytes.insert(0, RECORD_FORMAT_VERSION);
        }
        let _ = decode_checked(&bytes)?;
    }

    /// Every strict prefix of a record is an error (each field is needed), never a panic.
    #[test]
    fn prop_truncated_records_are_errors(m in message(), cut in any::<Index>()) {
        let bytes = encode_record(&m);
        let cut = cut.index(bytes.len());
        let result = decode_checked(&bytes[..cut])?;
        prop_assert!(result.is_err(), "a {}-byte prefix of {} decoded", cut, bytes.len());
    }

    /// Bit flips, overwritten, inserted and deleted bytes of a valid record.
    #[test]
    fn prop_mutated_records_decode_to_a_message_or_an_error(
        m in message(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let mut bytes = encode_record(&m);
        for e in &edits {
            apply(&mut bytes, e);
        }
        let _ = decode_checked(&bytes)?;
    }

    /// Anything after a complete record is refused: a record is exactly one value, so a
    /// corrupted length that ends a string early cannot pass as a shorter message.
    #[test]
    fn prop_records_with_trailing_bytes_are_refused(
        m in message(),
        extra in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        let mut bytes = encode_record(&m);
        bytes.extend_from_slice(&extra);
        let result = decode_checked(&bytes)?;
        prop_assert!(result.is_err(), "{} trailing bytes were ignored", extra.len());
    }

    /// A length prefix claiming up to 2^64 bytes or elements allocates nothing like it.
    #[test]
    fn prop_huge_declared_lengths_do_not_allocate_them(
        field in prop::sample::select(&[0usize, 3, 4, 5, 6, 7][..]),
        claimed in prop_oneof![
            Just(u64::MAX),
            Just(u64::from(u32::MAX)),
            Just(1 << 40),
            any::<u64>(),
        ],
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let bytes = record_claiming(field, claimed, &tail);
        let result = decode_checked(&bytes)?;
        if claimed > bytes.len() as u64 {
            prop_assert!(
                result.is_err(),
                "a claim of {} was satisfied by {} bytes",
                claimed,
                bytes.len()
            );
        }
    }
}

#[test]
fn prop_the_allocation_watch_sees_allocations() {
    let (v, largest) = watched(|| vec![0u8; 1 << 20]);
    assert_eq!(v.len(), 1 << 20);
    assert!(largest >= 1 << 20, "{largest}");
}
