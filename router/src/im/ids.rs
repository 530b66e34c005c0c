//! Message ids: snowflake-style `u64`s minted by one [`MsgIdGen`] per partition.
//!
//! Layout, most significant bit first:
//!
//! | bits  | width | field |
//! |-------|------:|-------|
//! | 63    | 1     | always `0` (ids stay positive as `i64`) |
//! | 22-62 | 41    | milliseconds since [`EPOCH_MS`] (2025-01-01T00:00:00Z): about 69 years |
//! | 12-21 | 10    | node: the partition id (`< 1024`) |
//! | 0-11  | 12    | sequence within the millisecond |
//!
//! Owns one generator's logical clock: the last millisecond used and the sequence within it.
//! Invariants: ids from one generator strictly increase, whatever `now_ms` does — the logical
//! clock is `max(last, now)`, so a clock stepping back keeps using the last millisecond, and a
//! 4,097th id within one millisecond borrows the next one. Two generators with different nodes
//! never mint the same id (the node bits differ). No id is 0 (the wire's "none"). The caller passes the time; this module never
//! reads the clock and never touches IO.

/// The ids' epoch, unix milliseconds: 2025-01-01T00:00:00Z.
pub const EPOCH_MS: u64 = 1_735_689_600_000;
/// Bits of the sequence field.
pub const SEQ_BITS: u32 = 12;
/// Bits of the node field.
pub const NODE_BITS: u32 = 10;
/// Bits of the time field.
pub const TIME_BITS: u32 = 41;
/// Largest node id.
pub const MAX_NODE: u32 = (1 << NODE_BITS) - 1;
const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;
const MAX_MS: u64 = (1 << TIME_BITS) - 1;
const TIME_SHIFT: u32 = SEQ_BITS + NODE_BITS;

/// Mints strictly increasing message ids for one node (see the module doc for the layout).
#[derive(Debug, Clone)]
pub struct MsgIdGen {
    node: u32,
    /// The last id minted, 0 before the first: its time and sequence fields are the logical
    /// clock.
    last: u64,
}

/// The fields of a message id (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgIdParts {
    /// Unix milliseconds of the logical clock when the id was minted.
    pub unix_ms: u64,
    pub node: u32,
    pub seq: u32,
}

impl MsgIdGen {
    /// A generator for `node`; only the low [`NODE_BITS`] bits are used (partitions are
    /// `< 1024`, checked by the configuration).
    pub fn new(node: u32) -> Self {
        debug_assert!(
            node <= MAX_NODE,
            "node {node} does not fit {NODE_BITS} bits"
        );
        Self {
            node: node & MAX_NODE,
            last: 0,
        }
    }

    /// A generator that continues after `last_id` (rebuilding a partition from its log).
    pub fn resume(node: u32, last_id: u64) -> Self {
        Self {
            last: last_id,
            ..Self::new(node)
        }
    }

    /// The node this generator mints for.
    pub fn node(&self) -> u32 {
        self.node
    }

    /// The next id at `now_ms` (unix milliseconds): strictly above every id minted before.
    pub fn next(&mut self, now_ms: u64) -> u64 {
        // A clock past the time field's range (year 2094) saturates; ids keep increasing.
        let now = now_ms.saturating_sub(EPOCH_MS).min(MAX_MS);
        let last_ms = self.last >> TIME_SHIFT;
        let last_seq = self.last & MAX_SEQ;
        let (ms, seq) = if self.last == 0 || now > last_ms {
            (now, 0)
        } else if last_seq < MAX_SEQ {
            (last_ms, last_seq + 1)
        } else {
            // 4,096 ids in this millisecond: borrow the next one.
            (last_ms + 1, 0)
        };
        let mut id = (ms << TIME_SHIFT) | (u64::from(self.node) << SEQ_BITS) | seq;
        if id == 0 {
            // Node 0 at (or before) the epoch: 0 means "no message" on the wire; skip it.
            id = 1;
        }
        // Borrowing past MAX_MS (2^41 * 4096 ids at a saturated clock) would reach bit 63: ids
        // still increase, only the layout's top bit stops being 0.
        debug_assert!(id > self.last || self.last == 0);
        self.last = id;
        id
    }
}

/// Splits an id into its fields.
pub fn parts(id: u64) -> MsgIdParts {
    MsgIdParts {
        unix_ms: (id >> TIME_SHIFT).saturating_add(EPOCH_MS),
        node: ((id >> SEQ_BITS) & u64::from(MAX_NODE)) as u32,
        seq: (id & MAX_SEQ) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = EPOCH_MS + 1_000_000;

    #[test]
    fn ids_decode_to_time_node_and_sequence() {
        let mut ids = MsgIdGen::new(37);
        let a = ids.next(T0);
        let b = ids.next(T0);
        let c = ids.next(T0 + 5);
        assert_eq!(
            parts(a),
            MsgIdParts {
                unix_ms: T0,
                node: 37,
                seq: 0
            }
        );
        assert_eq!(
            parts(b),
            MsgIdParts {
                unix_ms: T0,
                node: 37,
                seq: 1
            }
        );
        assert_eq!(
            parts(c),
            MsgIdParts {
                unix_ms: T0 + 5,
                node: 37,
                seq: 0
            }
        );
        assert_eq!(a >> 63, 0, "bit 63 is 0");
        assert_eq!(a, ((T0 - EPOCH_MS) << 22) | (37 << 12));
        let mut max_node = MsgIdGen::new(MAX_NODE);
        assert_eq!(parts(max_node.next(T0)).node, MAX_NODE);
    }

    #[test]
    fn ids_increase_when_the_clock_steps_back() {
        let mut ids = MsgIdGen::new(3);
        let mut last = ids.next(T0 + 10_000);
        for now in [T0 + 10_000, T0, T0 - 1, 0, T0 + 9_999, T0 + 10_001, T0 + 5] {
            let id = ids.next(now);
            assert!(id > last, "{id} after {last} at {now}");
            last = id;
        }
        // The logical clock kept the latest millisecond seen.
        assert_eq!(parts(last).unix_ms, T0 + 10_001);
        assert_eq!(parts(last).node, 3);
    }

    #[test]
    fn sequence_overflow_borrows_the_next_millisecond() {
        let mut ids = MsgIdGen::new(1);
        let mut last = 0;
        for i in 0..4096 + 10 {
            let id = ids.next(T0);
            assert!(id > last);
            last = id;
            if i == 4095 {
                assert_eq!(parts(id).seq, 4095);
                assert_eq!(parts(id).unix_ms, T0);
            }
        }
        assert_eq!(parts(last).unix_ms, T0 + 1);
        assert_eq!(parts(last).seq, 9);
        // The real clock catching up with the borrowed millisecond continues after it.
        let id = ids.next(T0 + 1);
        assert!(id > last);
        assert_eq!(parts(id).seq, 10);
        let id = ids.next(T0 + 2);
        assert_eq!(parts(id).seq, 0);
    }

    #[test]
    fn ids_are_unique_across_nodes() {
        let mut seen = std::collections::HashSet::new();
        let mut gens: Vec<MsgIdGen> = (0..16).map(MsgIdGen::new).collect();
        for step in 0..5_000u64 {
            // Same clock for all, with a step back now and then and bursts within one ms.
            let now = T0 + step / 7 - if step % 500 == 0 { 3 } else { 0 };
            for g in &mut gens {
                assert!(seen.insert(g.next(now)), "duplicate id");
            }
        }
    }

    #[test]
    fn absurd_clock_values_keep_ids_increasing() {
        let mut ids = MsgIdGen::new(5);
        let mut last = ids.next(T0);
        for now in [u64::MAX, u64::MAX, T0, u64::MAX - 1, 0] {
            let id = ids.next(now);
            assert!(id > last, "{id} after {last} at {now}");
            assert_eq!(id >> 63, 0);
            last = id;
        }
    }

    #[test]
    fn resumed_generator_continues_after_the_last_id() {
        let mut ids = MsgIdGen::new(9);
        let last = ids.next(T0 + 50);
        let mut resumed = MsgIdGen::resume(9, last);
        assert!(resumed.next(T0) > last);
    }

    #[test]
    fn times_before_the_epoch_still_mint_non_zero_increasing_ids() {
        for node in [0, 2] {
            let mut ids = MsgIdGen::new(node);
            let a = ids.next(0);
            let b = ids.next(EPOCH_MS);
            let c = ids.next(1);
            assert!(a != 0 && b > a && c > b, "node {node}: {a} {b} {c}");
        }
    }
}
