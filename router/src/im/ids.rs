//! Message ids (stub; see the module doc once written).

/// Mints message ids.
#[derive(Debug, Clone)]
pub struct MsgIdGen {
    node: u32,
}

impl MsgIdGen {
    pub fn new(node: u32) -> Self {
        Self { node }
    }

    pub fn next(&mut self, now_ms: u64) -> u64 {
        now_ms ^ u64::from(self.node)
    }
}
