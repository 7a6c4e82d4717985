//! The connections a server holds: at most a fixed number at once, each closed once it waits
//! too long for a request (silent since it was accepted, or idle between requests), and the one
//! idle the longest closed to make room for a new one when all are taken. Many idle or slow clients therefore cannot starve the others of the API: they
//! hold no slot a working client needs.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// What a server lets its clients hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; past it, the one idle the longest is closed for the new one.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, and stay idle between
    /// requests (hyper's header read timeout).
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    /// 4,096 connections (a manager's workers, clients and streams; well under the file
    /// descriptors a process may open here) and 30 s for a request's headers.
    fn default() -> Self {
        Self { max_connections: 4096, header_read_timeout: Duration::from_secs(30) }
    }
}

/// The open connections of one server.
#[derive(Debug)]
pub(crate) struct Connections {
    limit: usize,
    epoch: Instant,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
}

#[derive(Debug)]
struct Entry {
    /// Milliseconds since `epoch` at its last byte read or written.
    active: Arc<AtomicU64>,
    close: CancellationToken,
}

/// One connection's place: it is given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    id: u64,
    connections: Arc<Connections>,
    /// Cancelled when the connection is evicted to make room.
    pub(crate) evicted: CancellationToken,
    heard: Arc<AtomicBool>,
}

impl Slot {
    /// Resolves if the connection has sent nothing `timeout` after it was accepted (hyper's
    /// header read timeout starts only with the first byte); never otherwise.
    pub(crate) async fn silent_for(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
        // A flag, not a comparison of timestamps: a request may arrive within the millisecond
        // its connection was accepted.
        if !self.heard.load(Ordering::Relaxed) {
            return;
        }
        std::future::pending::<()>().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

impl Connections {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            epoch: Instant::now(),
            next: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // The map stays consistent entry by entry even if a holder panicked.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes a slot for a new connection, closing the one idle the longest if every slot is
    /// taken; the connection's I/O is wrapped to keep its activity.
    pub(crate) fn admit<I>(self: &Arc<Self>, io: I) -> (Tracked<I>, Slot) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let active = Arc::new(AtomicU64::new(self.now_ms()));
        let heard = Arc::new(AtomicBool::new(false));
        let close = CancellationToken::new();
        let mut open = self.lock();
        while open.len() >= self.limit {
            let Some((&idlest, _)) =
                open.iter().min_by_key(|(_, e)| e.active.load(Ordering::Relaxed))
            else {
                break;
            };
            if let Some(e) = open.remove(&idlest) {
                e.close.cancel();
                tracing::debug!(
                    connections = self.limit,
                    "every connection slot taken: closed the one idle the longest"
                );
            }
        }
        open.insert(id, Entry { active: Arc::clone(&active), close: close.clone() });
        drop(open);
        let slot =
            Slot { id, connections: Arc::clone(self), evicted: close, heard: Arc::clone(&heard) };
        (Tracked { io, active, heard, connections: Arc::clone(self) }, slot)
    }

    /// Connections open now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A connection's I/O, noting when bytes last moved.
#[derive(Debug)]
pub(crate) struct Tracked<I> {
    io: I,
    active: Arc<AtomicU64>,
    /// Set at the first byte read.
    heard: Arc<AtomicBool>,
    connections: Arc<Connections>,
}

impl<I> Tracked<I> {
    fn touch(&self) {
        self.active.store(self.connections.now_ms(), Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.heard.store(true, Ordering::Relaxed);
            this.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_server_closes_the_connection_idle_the_longest() {
        let c = Connections::new(2);
        let (a, slot_a) = c.admit(());
        let (b, slot_b) = c.admit(());
        // b moved bytes after a did.
        a.active.store(1, Ordering::Relaxed);
        b.active.store(50, Ordering::Relaxed);
        let (_c, slot_c) = c.admit(());
        assert!(slot_a.evicted.is_cancelled(), "the oldest idle one made room");
        assert!(!slot_b.evicted.is_cancelled() && !slot_c.evicted.is_cancelled());
        assert_eq!(c.len(), 2);
        drop(slot_b);
        assert_eq!(c.len(), 1);
        drop((slot_a, slot_c));
        assert_eq!(c.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_speaks_is_closed_after_the_header_timeout_only() {
        let c = Connections::new(4);
        let timeout = Duration::from_secs(30);
        let (_quiet, quiet) = c.admit(());
        let began = tokio::time::Instant::now();
        quiet.silent_for(timeout).await;
        assert_eq!(began.elapsed(), timeout);
        let (spoke, talking) = c.admit(());
        // Within the millisecond it was accepted, as under a paused clock.
        spoke.heard.store(true, Ordering::Relaxed);
        let waited = tokio::time::timeout(2 * timeout, talking.silent_for(timeout)).await;
        assert!(waited.is_err(), "a connection that sent something is hyper's to time out");
    }
}
