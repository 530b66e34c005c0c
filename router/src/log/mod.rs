//! A segmented append-only log on memmap2: the durable foundation of the reference backend
//! (issue 7). This first step is the record format and the recovery scanner (`record`),
//! sans-IO, on byte slices; the files come next.

#[allow(dead_code)]
mod record;

pub use record::{ALIGN, RECORD_HEADER, Record, SEGMENT_HEADER, record_len};
