//! The writer task: owns the socket's write half, swaps the outbox buffer out
//! and writes it in one call (everything produced since the last write goes
//! out together), sends heartbeats when the connection has been quiet, and
//! re-dispatches queues that skipped this connection while its buffer was full.

use crate::protocol::frame;
use crate::queue::sink::Outbox;
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Returns the write half when the connection ends with the socket to be
/// kept open (`keep_open`: the client closes it first); otherwise the write
/// side has been shut down (or failed) and `None` comes back.
pub async fn run<W: AsyncWrite + Unpin>(outbox: Arc<Outbox>, mut wr: W, heartbeat: u16) -> Option<W> {
    // Empty until the first swap with the outbox's buffer: both grow only as
    // far as the traffic needs (an idle connection keeps them small).
    let mut spare = BytesMut::new();
    let half = Duration::from_millis(heartbeat as u64 * 500);
    let mut last_write = Instant::now();
    loop {
        if heartbeat == 0 {
            outbox.wait().await;
        } else {
            tokio::select! {
                _ = outbox.wait() => {}
                _ = tokio::time::sleep_until(last_write + half) => {
                    outbox.send(frame::encode_heartbeat);
                }
            }
        }
        let (starved, shutdown) = outbox.take(&mut spare);
        if !spare.is_empty() {
            // flush: a TLS stream may hold records back; a TCP one never does.
            if wr.write_all(&spare).await.is_err() || wr.flush().await.is_err() {
                outbox.with(|st| {
                    st.closed = true;
                    st.shutdown = true;
                    st.direct = None;
                });
                outbox.signal_drained();
                return None;
            }
            last_write = Instant::now();
            outbox.written(spare.len());
            spare.clear();
            outbox.signal_drained();
            // Keep a big buffer from pinning memory after a burst.
            if spare.capacity() > 4 * 1024 * 1024 {
                spare = BytesMut::new();
            }
        }
        if starved {
            for q in outbox.consumer_queues() {
                q.dispatch();
            }
        }
        if shutdown {
            let _ = wr.flush().await;
            if outbox.with(|st| st.keep_open) {
                return Some(wr);
            }
            let _ = wr.shutdown().await;
            return None;
        }
    }
}
