//! Socket readers: they receive, frame, and hand batches of frames to per-core parser workers.
//!
//! Contract between readers and workers: a reader fills a [`FrameBatch`] (message bytes laid
//! end to end plus one [`FrameRef`] per message) and pushes it on its core's bounded queue.
//! Workers return drained batches through a recycle queue so steady state allocates nothing.

pub mod drops;
pub mod uring;

use std::net::SocketAddr;

use crate::event::Timestamp;

/// One message inside a [`FrameBatch`].
#[derive(Debug, Clone, Copy)]
pub struct FrameRef {
    pub offset: u32,
    pub len: u32,
    pub peer: Option<SocketAddr>,
    /// The frame was cut to the size limit.
    pub truncated: bool,
}

/// A batch of framed messages from one source.
#[derive(Debug, Default)]
pub struct FrameBatch {
    /// Index of the source in the effective config (`sources` in order).
    pub source: u16,
    pub received_at: Option<Timestamp>,
    pub data: Vec<u8>,
    pub frames: Vec<FrameRef>,
}

impl FrameBatch {
    pub fn clear(&mut self) {
        self.received_at = None;
        self.data.clear();
        self.frames.clear();
    }

    pub fn push(&mut self, bytes: &[u8], peer: Option<SocketAddr>, truncated: bool) {
        let offset = self.data.len() as u32;
        self.data.extend_from_slice(bytes);
        self.frames.push(FrameRef { offset, len: bytes.len() as u32, peer, truncated });
    }

    pub fn frame(&self, f: &FrameRef) -> &[u8] {
        &self.data[f.offset as usize..(f.offset + f.len) as usize]
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// Everything one reader thread needs; one per (source, core).
///
/// Backpressure: a TCP reader blocks on `to_worker` (stops reading: no loss); a UDP reader
/// uses `try_send` and counts a full queue as `sluice_dropped_messages_total{reason="queue_full"}`.
pub struct ReaderContext {
    pub source_index: u16,
    pub source_name: std::sync::Arc<str>,
    pub core: usize,
    pub limits: crate::frame::FrameLimits,
    /// TCP only.
    pub framing: crate::frame::Framing,
    /// Hand a batch to the worker once it holds this many frames (or when the socket is idle).
    pub batch_max_frames: usize,
    pub to_worker: crossbeam::channel::Sender<FrameBatch>,
    /// Drained batches come back here for reuse.
    pub recycled: crossbeam::channel::Receiver<FrameBatch>,
    pub shutdown: std::sync::Arc<std::sync::atomic::AtomicBool>,
}
