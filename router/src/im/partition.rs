//! One partition of the reference IM logic (stub).

use super::{ImConfig, Input, Output, PartitionId};

/// One partition's state.
#[derive(Debug)]
pub struct Partition {
    id: PartitionId,
    config: ImConfig,
}

impl Partition {
    pub fn new(id: PartitionId, config: ImConfig) -> Self {
        Self { id, config }
    }

    pub fn id(&self) -> PartitionId {
        self.id
    }

    pub fn config(&self) -> &ImConfig {
        &self.config
    }

    /// Handles one input at `now_ms` (unix milliseconds), appending what the host must do.
    pub fn handle(&mut self, input: Input, now_ms: u64, out: &mut Vec<Output>) {
        let _ = (input, now_ms, out);
    }
}
