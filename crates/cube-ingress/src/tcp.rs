//! Layer 4: each connection goes to one instance and bytes are copied both ways.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::{ATTEMPTS, CONNECT_TIMEOUT, Inner, Open};

/// Forwards one client connection: to a chosen instance, trying another when a connect
/// fails, then bytes both ways until either side closes.
pub(crate) async fn forward(inner: Arc<Inner>, mut client: TcpStream, peer: SocketAddr, port: u16) {
    let mut tried = Vec::new();
    for _ in 0..ATTEMPTS {
        let Some(backend) = inner.choose(port, &tried) else {
            tracing::debug!(port, %peer, "no instance to forward to");
            return;
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&backend.addr)).await {
            Ok(Ok(mut upstream)) => {
                inner.connected(backend.task, true);
                let _open = Open::new(&inner, backend.task);
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                tokio::select! {
                    () = inner.shutdown.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                }
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(port, task = %backend.task, addr = %backend.addr, error = %e, "connect refused; trying another instance");
            }
            Err(_) => {
                tracing::debug!(port, task = %backend.task, addr = %backend.addr, "connect timed out; trying another instance");
            }
        }
        inner.connected(backend.task, false);
        tried.push(backend.task);
    }
}
