//! The ingress record: every message of one append under one key.
//!
//! sled's cost is per key, not per byte: a batched ingest that wrote one key per message and
//! removed it again at the hand-over spent most of its time in sled's insert and batch code,
//! and topped out below sled's own per-key rate (65–84 k keys/s on 2 cores). So an append of
//! N messages writes one record, and the hand-over that takes all of them removes one key.
//!
//! Each message keeps its own [`Seq`]: `batch << OFFSET_BITS | offset`, where `batch` is the
//! record's key (from `Db::generate_id`) and `offset` its place in the append. Seqs stay
//! increasing in arrival order, and a message is found from its seq with one `get`.
//!
//! A record is a version byte ([`VERSION`]), a fixed header — how many entries, the first and
//! the last offset — and the entries `(offset, Envelope)` in postcard. The header lets the
//! hand-over see that it takes a whole record without decoding it. Older records still read:
//! version 1 holds one [`Envelope`] (as written before batching) and reads as an entry at
//! offset 0; version 2 is this layout with envelopes of record format 1 (messages without
//! link and key).

use serde::Serialize;
use tocsin_message::{decode_exactly, decode_record, DecodeError, RECORD_FORMAT_1};

use crate::{Envelope, EnvelopeFormat1, Seq};

/// Low bits of an ingress seq that are the message's offset in its record.
pub const OFFSET_BITS: u32 = 16;

/// The most entries one record holds; a larger append is split into several records.
pub const MAX_ENTRIES: usize = 1 << OFFSET_BITS;

/// The version byte of a batch record (4: envelopes of the current record format).
pub const VERSION: u8 = 4;

/// The version byte of batch records whose envelopes are of record format 1.
const VERSION_OF_FORMAT_1: u8 = 2;

/// Bytes before the entries: version, count, first offset, last offset.
const HEADER_LEN: usize = 1 + 3 * 4;

/// The seq of the entry at `offset` of record `batch`.
pub fn seq(batch: u64, offset: u32) -> Seq {
    (batch << OFFSET_BITS) | Seq::from(offset)
}

/// The record and offset of an ingress seq.
pub fn split(seq: Seq) -> (u64, u32) {
    (seq >> OFFSET_BITS, (seq & (MAX_ENTRIES as u64 - 1)) as u32)
}

/// What a record's header says, read without decoding its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Entries in the record.
    pub count: u32,
    /// The smallest offset.
    pub first: u32,
    /// The largest offset.
    pub last: u32,
}

impl Header {
    /// Whether `offsets` (sorted, without repeats) are exactly this record's entries.
    ///
    /// Offsets are distinct within a record, so a record whose `count` fills `first..=last` holds
    /// every offset of that range; `count` distinct offsets from that range are then all of
    /// them.
    pub fn is_exactly(&self, offsets: &[u32]) -> bool {
        let contiguous = u64::from(self.last) + 1 == u64::from(self.first) + u64::from(self.count);
        contiguous
            && offsets.len() == self.count as usize
            && offsets.first() == Some(&self.first)
            && offsets.last() == Some(&self.last)
    }
}

/// The header of a stored record; `None` when it is too short or of an unknown version (the
/// decoder then reports what is wrong).
pub fn header(bytes: &[u8]) -> Option<Header> {
    match bytes.first() {
        Some(&(VERSION | VERSION_OF_FORMAT_1)) if bytes.len() >= HEADER_LEN => {
            let word = |i: usize| {
                let at = 1 + 4 * i;
                u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
            };
            Some(Header {
                count: word(0),
                first: word(1),
                last: word(2),
            })
        }
        Some(&RECORD_FORMAT_1) => Some(Header {
            count: 1,
            first: 0,
            last: 0,
        }),
        _ => None,
    }
}

/// At most how many bytes [`encode`] makes of `messages` as fresh envelopes in one record (a
/// bound, not an estimate: a budget checked against it is never passed by surprise).
pub fn encoded_size_bound(messages: &[tocsin_message::Message]) -> usize {
    // A fresh envelope adds to its message: no attempts, no error, not-before 0 (one byte
    // each) and the enqueue time (a varint of at most 10); the entry adds its offset (a varint
    // of at most 3 under MAX_ENTRIES); the entry list its length (at most 3).
    const PER_ENTRY: usize = 3 + 10 + 3;
    HEADER_LEN
        + 3
        + messages
            .iter()
            .map(|m| {
                postcard::experimental::serialized_size(m).unwrap_or(usize::MAX / 2) + PER_ENTRY
            })
            .sum::<usize>()
}

/// Encodes entries (offsets increasing, at most [`MAX_ENTRIES`]) as a record.
pub fn encode<E: std::borrow::Borrow<Envelope>>(entries: &[(u32, E)]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Entry<'a>(u32, &'a Envelope);
    let body: Vec<Entry<'_>> = entries.iter().map(|(o, e)| Entry(*o, e.borrow())).collect();
    let (first, last) = match (entries.first(), entries.last()) {
        (Some(f), Some(l)) => (f.0, l.0),
        _ => (0, 0),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + 256 * entries.len());
    out.push(VERSION);
    for word in [entries.len() as u32, first, last] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    // postcard cannot fail to serialise plain data into a growable Vec.
    out.extend(postcard::to_stdvec(&body).expect("postcard serialises plain records"));
    out
}

/// Decodes a record: its entries, offsets increasing. Never panics; a header that disagrees
/// with the entries is an error.
pub fn decode(bytes: &[u8]) -> Result<Vec<(u32, Envelope)>, DecodeError> {
    match bytes.first() {
        Some(&RECORD_FORMAT_1) => Ok(vec![(0, decode_record::<Envelope>(bytes)?)]),
        Some(&VERSION) => entries::<Envelope>(bytes),
        Some(&VERSION_OF_FORMAT_1) => Ok(entries::<EnvelopeFormat1>(bytes)?
            .into_iter()
            .map(|(offset, e)| (offset, e.into()))
            .collect()),
        Some(&found) => Err(DecodeError::UnknownVersion {
            found,
            supported: VERSION,
        }),
        None => Err(DecodeError::Empty),
    }
}

/// The entries of a batch record whose envelopes are laid out as `E`, checked against its
/// header.
fn entries<E: for<'de> serde::Deserialize<'de>>(
    bytes: &[u8],
) -> Result<Vec<(u32, E)>, DecodeError> {
    let header = header(bytes).ok_or(DecodeError::Inconsistent("a cut header"))?;
    let entries: Vec<(u32, E)> = decode_exactly(&bytes[HEADER_LEN..])?;
    let increasing = entries.windows(2).all(|w| w[0].0 < w[1].0);
    let agrees = entries.len() == header.count as usize
        && entries.first().map(|e| e.0) == Some(header.first)
        && entries.last().map(|e| e.0) == Some(header.last);
    if !increasing || !agrees {
        return Err(DecodeError::Inconsistent(
            "the header does not match the entries",
        ));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_message::{encode_record, Message, Severity};

    fn envelope(id: &str) -> Envelope {
        Envelope::new(
            Message {
                id: id.into(),
                timestamp_ms: 7,
                severity: Severity::Warning,
                summary: Some("s".into()),
                body: "b".into(),
                labels: vec![("k".into(), "v".into())],
                metrics: vec![("m".into(), 1.5)],
                payload: None,
                link: Some("https://x.example/a".into()),
                key: None,
            },
            42,
        )
    }

    #[test]
    fn seqs_increase_with_batch_then_offset_and_split_back() {
        assert!(seq(1, MAX_ENTRIES as u32 - 1) < seq(2, 0));
        assert_eq!(split(seq(12345, 678)), (12345, 678));
    }

    #[test]
    fn records_round_trip_and_headers_read_without_decoding() {
        let entries = vec![(3, envelope("a")), (4, envelope("b")), (5, envelope("c"))];
        let bytes = encode(&entries);
        assert_eq!(decode(&bytes).unwrap(), entries);
        let h = header(&bytes).unwrap();
        assert_eq!(
            h,
            Header {
                count: 3,
                first: 3,
                last: 5
            }
        );
        assert!(h.is_exactly(&[3, 4, 5]));
        assert!(!h.is_exactly(&[3, 4]));
        assert!(!h.is_exactly(&[4, 5]));
    }

    #[test]
    fn a_record_with_a_hole_is_never_taken_whole_by_its_header() {
        let bytes = encode(&[(0, envelope("a")), (2, envelope("c"))]);
        let h = header(&bytes).unwrap();
        // Two entries in 0..=2: the header cannot tell which, so it answers no.
        assert!(!h.is_exactly(&[0, 2]));
        assert!(!h.is_exactly(&[0, 1]));
    }

    /// `envelope(id)` as record format 1 held it, and as it reads now (no link, no key).
    fn format_1(id: &str) -> (EnvelopeFormat1, Envelope) {
        let mut e = envelope(id);
        e.message.link = None;
        ((&e).into(), e)
    }

    #[test]
    fn version_1_records_read_as_one_entry() {
        let (_, now) = format_1("old");
        let bytes = crate::format_1_record(&now);
        assert_eq!(decode(&bytes).unwrap(), vec![(0, now)]);
        assert_eq!(header(&bytes).unwrap().count, 1);
    }

    #[test]
    fn version_2_records_read_with_messages_without_link_and_key() {
        let (a, a_now) = format_1("a");
        let (b, b_now) = format_1("b");
        #[derive(Serialize)]
        struct Entry<'a>(u32, &'a EnvelopeFormat1);
        let mut bytes = vec![VERSION_OF_FORMAT_1];
        for word in [2u32, 0, 1] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes.extend(postcard::to_stdvec(&vec![Entry(0, &a), Entry(1, &b)]).unwrap());
        assert!(header(&bytes).unwrap().is_exactly(&[0, 1]));
        assert_eq!(decode(&bytes).unwrap(), vec![(0, a_now), (1, b_now)]);
        let current = encode(&[(0, envelope("a"))]);
        assert_eq!(current[0], VERSION);
        assert_eq!(decode(&current).unwrap(), vec![(0, envelope("a"))]);
        assert!(encode_record(&envelope("x"))[0] != VERSION);
    }

    #[test]
    fn damaged_records_are_errors() {
        let mut bytes = encode(&[(0, envelope("a")), (1, envelope("b"))]);
        bytes[1] = 3; // count
        assert!(matches!(decode(&bytes), Err(DecodeError::Inconsistent(_))));
        assert!(matches!(
            decode(&bytes[..5]),
            Err(DecodeError::Inconsistent(_))
        ));
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(matches!(decode(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(&[9, 0]),
            Err(DecodeError::UnknownVersion { found: 9, .. })
        ));
    }
}
