//! Record encoding and the recovery scanner, on byte slices (sans-IO).
//!
//! Owns nothing but the format: [`encode_into`] writes one record into a caller-owned slice,
//! [`decode_at`] checks one, and [`scan`] walks a segment body, handing every good record to a
//! callback and saying where the good data ends, which byte ranges were corrupt and how much
//! torn data follows. Never touches a file, a mapping or the clock; the format itself is
//! documented in the parent module.

use std::ops::Range;

/// Bytes of a segment header: magic, base sequence number.
pub const SEGMENT_HEADER: usize = 16;
/// The segment magic, version 1.
pub const MAGIC: [u8; 8] = *b"IMGLOG\x00\x01";
/// Bytes of a record header.
pub const RECORD_HEADER: usize = 32;
/// Records start at multiples of this (within a segment), so a resynchronising scan steps by it.
pub const ALIGN: usize = 8;

/// One record as read back: borrowed from the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Sequence number: strictly increasing over the whole log.
    pub seq: u64,
    /// The caller's timestamp at append (unix milliseconds by convention; used for retention).
    pub ts_ms: u64,
    /// Record kind (never 0); see [`super::kind`].
    pub kind: u8,
    pub payload: &'a [u8],
}

/// Bytes a record with a `payload_len`-byte payload takes in a segment, padding included.
pub const fn record_len(payload_len: usize) -> usize {
    (RECORD_HEADER + payload_len).div_ceil(ALIGN) * ALIGN
}

/// Writes the segment header for `base_seq` into `out[..SEGMENT_HEADER]`.
pub fn encode_segment_header(base_seq: u64, out: &mut [u8]) {
    out[..8].copy_from_slice(&MAGIC);
    out[8..16].copy_from_slice(&base_seq.to_le_bytes());
}

/// The base sequence number a segment header names, `None` if the magic is wrong.
pub fn decode_segment_header(buf: &[u8]) -> Option<u64> {
    let head = buf.get(..SEGMENT_HEADER)?;
    if head[..8] != MAGIC {
        return None;
    }
    Some(u64::from_le_bytes(head[8..16].try_into().ok()?))
}

fn header_crc(head: &[u8]) -> u32 {
    crc32fast::hash(&head[..28])
}

/// Encodes `rec` at the start of `out`, zeroing the padding; returns the bytes used
/// ([`record_len`]). `out` must hold at least that many bytes (the caller checks the room:
/// this is an invariant, not input).
pub fn encode_into(rec: &Record<'_>, out: &mut [u8]) -> usize {
    let len = record_len(rec.payload.len());
    let out = &mut out[..len];
    let plen = u32::try_from(rec.payload.len()).expect("payload length checked by the caller");
    out[0..8].copy_from_slice(&rec.seq.to_le_bytes());
    out[8..16].copy_from_slice(&rec.ts_ms.to_le_bytes());
    out[16..20].copy_from_slice(&plen.to_le_bytes());
    out[20] = rec.kind;
    out[21..24].fill(0);
    out[24..28].copy_from_slice(&crc32fast::hash(rec.payload).to_le_bytes());
    let hcrc = header_crc(out);
    out[28..32].copy_from_slice(&hcrc.to_le_bytes());
    out[RECORD_HEADER..RECORD_HEADER + rec.payload.len()].copy_from_slice(rec.payload);
    out[RECORD_HEADER + rec.payload.len()..].fill(0);
    len
}

/// Why the bytes at an offset are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Fewer than a header's bytes left.
    Short,
    /// The header's own checksum fails (or the header is all zeros): its length is not trusted.
    Header,
    /// The header holds, but the record runs past the end of the buffer.
    Truncated { seq: u64 },
    /// The header holds, the payload's checksum does not.
    Payload { seq: u64 },
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Decodes the record at `buf[at..]`, checking both checksums. On success, also returns the
/// bytes it takes.
pub fn decode_at(buf: &[u8], at: usize) -> Result<(Record<'_>, usize), Bad> {
    let rest = buf.get(at..).unwrap_or(&[]);
    let Some(head) = rest.get(..RECORD_HEADER) else {
        return Err(Bad::Short);
    };
    if read_u32(head, 28) != header_crc(head) || head[20] == 0 {
        return Err(Bad::Header);
    }
    let seq = read_u64(head, 0);
    let plen = read_u32(head, 16) as usize;
    let len = record_len(plen);
    let Some(payload) = rest
        .get(RECORD_HEADER..RECORD_HEADER + plen)
        .filter(|_| len <= rest.len())
    else {
        return Err(Bad::Truncated { seq });
    };
    if crc32fast::hash(payload) != read_u32(head, 24) {
        return Err(Bad::Payload { seq });
    }
    let rec = Record {
        seq,
        ts_ms: read_u64(head, 8),
        kind: head[20],
        payload,
    };
    Ok((rec, len))
}

/// A byte range of a segment skipped as corrupt: bad bytes followed by a good record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt {
    /// Offsets within the scanned buffer.
    pub range: Range<usize>,
    /// The sequence number of the first bad record, when its header checksum held.
    pub seq: Option<u64>,
}

/// What [`scan`] found in one buffer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanReport {
    /// End of the last good record (or the start offset): where the next append goes.
    pub valid_end: usize,
    /// Good records handed to the callback.
    pub records: u64,
    /// The sequence number expected next: one past the last good record, or the `next_seq`
    /// passed in.
    pub next_seq: u64,
    /// Corrupt ranges, in order; each is followed by a good record.
    pub corrupt: Vec<Corrupt>,
    /// Bytes from `valid_end` to the last non-zero byte: 0 for a clean end (zero-filled
    /// preallocation), more for a torn tail.
    pub torn: usize,
}

/// Scans `buf[start..]` (a segment body; `start` aligned to [`ALIGN`]) for records from sequence
/// number `next_seq` on (the larger of one past the previous segment's last good record and
/// this segment's base), calling `f(offset, record)` for each good one, in order.
///
/// Resynchronisation after a bad record (see the parent module's "Recovery"): when the header
/// checksum holds, its length is trusted and the scan jumps over the record; otherwise it tries
/// every following [`ALIGN`]ed offset (skipping zero runs at once) for a record whose header
/// and payload checksums both hold and whose sequence number is plausible: at least the one
/// expected, and ahead of it by no more than the records the skipped bytes could have held.
pub fn scan(
    buf: &[u8],
    start: usize,
    next_seq: u64,
    mut f: impl FnMut(usize, Record<'_>),
) -> ScanReport {
    debug_assert_eq!(start % ALIGN, 0);
    let mut report = ScanReport {
        valid_end: start,
        next_seq,
        ..Default::default()
    };
    // The first bad offset since the last good record, and the seq its header named.
    let mut bad: Option<(usize, Option<u64>)> = None;
    let mut at = start;
    while at + RECORD_HEADER <= buf.len() {
        match decode_at(buf, at) {
            Ok((rec, len)) if plausible(&report, bad.map(|b| b.0), at, rec.seq) => {
                if let Some((from, seq)) = bad.take() {
                    report.corrupt.push(Corrupt {
                        range: from..at,
                        seq,
                    });
                }
                f(at, rec);
                report.records += 1;
                report.next_seq = rec.seq + 1;
                at += len;
                report.valid_end = at;
            }
            Ok((rec, len)) => {
                // Good checksums but a sequence number out of place: stale, or forged inside a
                // payload. Its length is trusted only outside a bad stretch.
                if bad.is_none() {
                    bad = Some((at, Some(rec.seq)));
                    at += len;
                } else {
                    at = next_candidate(buf, at);
                }
            }
            Err(Bad::Payload { seq }) if bad.is_none() => {
                let plen = read_u32(buf, at + 16) as usize;
                bad = Some((at, Some(seq)));
                at += record_len(plen);
            }
            Err(e) => {
                let seq = match e {
                    Bad::Truncated { seq } | Bad::Payload { seq } => Some(seq),
                    Bad::Short | Bad::Header => None,
                };
                bad.get_or_insert((at, seq));
                at = next_candidate(buf, at);
            }
        }
    }
    let tail = buf.get(report.valid_end..).unwrap_or(&[]);
    report.torn = tail.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    report
}

/// Whether a checksummed record at `at` may follow the last good one: its seq is the one
/// expected or, after a bad stretch starting at `bad_from`, no further ahead than the records
/// the skipped bytes could have held.
fn plausible(report: &ScanReport, bad_from: Option<usize>, at: usize, seq: u64) -> bool {
    let skipped = bad_from.map_or(0, |from| at - from);
    seq >= report.next_seq && seq - report.next_seq <= (skipped / RECORD_HEADER) as u64
}

/// The next aligned offset after `at` worth decoding: skips runs of zero bytes at once (a valid
/// header is never all zeros).
fn next_candidate(buf: &[u8], at: usize) -> usize {
    let from = at + ALIGN;
    match buf
        .get(from..)
        .and_then(|rest| rest.iter().position(|&b| b != 0))
    {
        Some(p) => (from + p) / ALIGN * ALIGN,
        None => buf.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, payload: &[u8]) -> Record<'_> {
        Record {
            seq,
            ts_ms: 1_000 + seq,
            kind: 1,
            payload,
        }
    }

    /// A buffer of `cap` bytes holding records `seqs` with payloads of `len(seq)` bytes.
    fn build(seqs: impl IntoIterator<Item = u64>, cap: usize) -> (Vec<u8>, Vec<(usize, Vec<u8>)>) {
        let mut buf = vec![0u8; cap];
        let mut at = 0;
        let mut placed = Vec::new();
        for seq in seqs {
            let payload: Vec<u8> = (0..(seq * 7 % 50) as u8).map(|b| b ^ seq as u8).collect();
            placed.push((at, payload.clone()));
            at += encode_into(&rec(seq, &payload), &mut buf[at..]);
        }
        (buf, placed)
    }

    fn seqs_of(buf: &[u8], next: u64) -> (Vec<u64>, ScanReport) {
        let mut seen = Vec::new();
        let report = scan(buf, 0, next, |_, r| seen.push(r.seq));
        (seen, report)
    }

    #[test]
    fn record_round_trips_and_pads_to_alignment() {
        for n in [0usize, 1, 7, 8, 9, 100, 1024] {
            let payload = vec![0xAB; n];
            let mut buf = vec![0xFF; record_len(n) + 8];
            let used = encode_into(&rec(42, &payload), &mut buf);
            assert_eq!(used, record_len(n));
            assert_eq!(used % ALIGN, 0);
            assert!(
                buf[RECORD_HEADER + n..used].iter().all(|&b| b == 0),
                "padding zeroed"
            );
            let (back, len) = decode_at(&buf, 0).expect("decodes");
            assert_eq!(len, used);
            assert_eq!(back, rec(42, &payload));
        }
    }

    #[test]
    fn segment_header_round_trips_and_rejects_bad_magic() {
        let mut buf = [0u8; SEGMENT_HEADER];
        encode_segment_header(77, &mut buf);
        assert_eq!(decode_segment_header(&buf), Some(77));
        buf[0] ^= 1;
        assert_eq!(decode_segment_header(&buf), None);
        assert_eq!(decode_segment_header(&buf[..4]), None);
    }

    #[test]
    fn every_flipped_bit_of_a_record_is_detected() {
        let payload = b"hello, durable world";
        let mut buf = vec![0u8; record_len(payload.len())];
        encode_into(&rec(9, payload), &mut buf);
        let used = RECORD_HEADER + payload.len();
        for byte in 0..used {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                assert!(
                    decode_at(&b, 0).is_err(),
                    "flip at byte {byte} bit {bit} accepted"
                );
            }
        }
    }

    #[test]
    fn zeros_are_never_a_record() {
        assert_eq!(decode_at(&[0u8; 64], 0), Err(Bad::Header));
        assert_eq!(decode_at(&[0u8; 16], 0), Err(Bad::Short));
    }

    #[test]
    fn scan_reads_all_records_and_stops_at_zero_fill() {
        let (buf, placed) = build(1..=20, 4096);
        let (seen, report) = seqs_of(&buf, 1);
        assert_eq!(seen, (1..=20).collect::<Vec<_>>());
        assert_eq!(report.records, 20);
        assert_eq!(report.next_seq, 21);
        let (last_at, last_payload) = placed.last().expect("records");
        assert_eq!(report.valid_end, last_at + record_len(last_payload.len()));
        assert_eq!(report.torn, 0);
        assert!(report.corrupt.is_empty());
    }

    #[test]
    fn torn_last_record_at_every_byte_is_cut_off_cleanly() {
        let (full, placed) = build(1..=5, 1024);
        let (last_at, last_payload) = placed.last().cloned().expect("records");
        let last_end = last_at + record_len(last_payload.len());
        let data_end = last_at + RECORD_HEADER + last_payload.len();
        for keep in last_at..last_end {
            // The rest zero-filled (preallocated space): only the padding may be lost.
            let mut buf = full.clone();
            buf[keep..].fill(0);
            let (seen, report) = seqs_of(&buf, 1);
            let whole = keep >= data_end;
            assert_eq!(seen.len(), if whole { 5 } else { 4 }, "keep {keep}");
            assert_eq!(
                report.valid_end,
                if whole { last_end } else { last_at },
                "keep {keep}"
            );
            assert!(
                report.corrupt.is_empty(),
                "a torn tail is not corruption (keep {keep})"
            );
            assert!(report.torn <= keep - last_at);
            // And the same bytes simply cut short (a file shorter than the record).
            let (seen, report) = seqs_of(&full[..keep], 1);
            assert_eq!((seen.len(), report.valid_end), (4, last_at), "cut {keep}");
        }
    }

    #[test]
    fn garbage_tail_is_torn_not_corrupt() {
        let (mut buf, placed) = build(1..=3, 512);
        let end = placed[2].0 + record_len(placed[2].1.len());
        buf[end + 40] = 0x5A;
        let (seen, report) = seqs_of(&buf, 1);
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(report.valid_end, end);
        assert_eq!(report.torn, 41);
        assert!(report.corrupt.is_empty());
    }

    #[test]
    fn flipped_payload_byte_mid_buffer_is_skipped_by_its_trusted_length() {
        let (mut buf, placed) = build(1..=10, 2048);
        let (at, payload) = &placed[4];
        assert!(!payload.is_empty());
        buf[at + RECORD_HEADER] ^= 0x10;
        let (seen, report) = seqs_of(&buf, 1);
        assert_eq!(seen, vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
        assert_eq!(
            report.corrupt,
            vec![Corrupt {
                range: *at..placed[5].0,
                seq: Some(5)
            }],
        );
        assert_eq!(report.next_seq, 11);
    }

    #[test]
    fn flipped_header_byte_mid_buffer_resynchronises_on_the_next_record() {
        let (full, placed) = build(1..=10, 2048);
        let (at, _) = placed[4];
        for off in 0..RECORD_HEADER {
            let mut buf = full.clone();
            buf[at + off] ^= 0x01;
            let (seen, report) = seqs_of(&buf, 1);
            assert_eq!(
                seen,
                vec![1, 2, 3, 4, 6, 7, 8, 9, 10],
                "flip at header byte {off}"
            );
            assert_eq!(report.corrupt.len(), 1);
            assert_eq!(report.corrupt[0].range, at..placed[5].0);
        }
    }

    #[test]
    fn a_zeroed_page_mid_buffer_is_corruption_when_good_records_follow() {
        let (mut buf, placed) = build(1..=30, 4096);
        let from = placed[3].0;
        let to = placed[8].0 - 4;
        buf[from..to].fill(0);
        let (seen, report) = seqs_of(&buf, 1);
        let mut want: Vec<u64> = vec![1, 2, 3];
        want.extend(9..=30);
        assert_eq!(seen, want);
        assert_eq!(report.corrupt.len(), 1);
        assert_eq!(report.corrupt[0].range, from..placed[8].0);
    }

    #[test]
    fn records_below_next_seq_are_not_replayed() {
        let (buf, _) = build(5..=8, 1024);
        let (seen, report) = seqs_of(&buf, 7);
        assert_eq!(seen, vec![7, 8]);
        assert_eq!(report.corrupt.len(), 1, "stale records are reported");
    }

    #[test]
    fn a_forged_record_far_ahead_is_not_accepted_as_a_resync_point() {
        // A record with a huge seq embedded after a corrupt header: implausible, skipped.
        let (mut buf, placed) = build(1..=4, 1024);
        let at = placed[3].0;
        let end = at + record_len(placed[3].1.len());
        buf[at + 1] ^= 0xFF; // header of 4 broken
        encode_into(&rec(1_000_000, b"forged"), &mut buf[end..]);
        let (seen, report) = seqs_of(&buf, 1);
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(report.next_seq, 4);
        assert!(
            report.corrupt.is_empty(),
            "no good record follows: a torn tail"
        );
        assert!(report.torn > 0);
    }
}
