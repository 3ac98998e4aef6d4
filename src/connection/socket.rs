//! A plain TCP connection's socket, shared by the reader, the writer task
//! and the outbox's direct writes (`OutState::write_direct`, from the
//! reader's thread and the persister's) through one `Arc`: one descriptor
//! per connection, closed when the last holder lets go. tokio's own
//! `into_split` halves cannot be cloned, so a third writer needed a
//! duplicate descriptor, and 10,000 connections needed 20,000 of them.

use socket2::SockRef;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Splits `sock` into the reader's half, the writer task's half and the
/// handle for direct writes.
pub fn split(sock: TcpStream) -> (SharedRead, SharedWrite, Arc<TcpStream>) {
    let sock = Arc::new(sock);
    (SharedRead(sock.clone()), SharedWrite(sock.clone()), sock)
}

pub struct SharedRead(Arc<TcpStream>);

impl AsyncRead for SharedRead {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // `try_read_buf` fills the unfilled part without zeroing it
            // first, and clears the readiness on WouldBlock, so the next
            // `poll_read_ready` registers for the wake-up.
            match self.0.try_read_buf(buf) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// The writer task's half. Like tokio's `OwnedWriteHalf`, dropping it shuts
/// the write side down (the peer reads end-of-stream) even while the reader
/// still holds the socket.
pub struct SharedWrite(Arc<TcpStream>);

impl AsyncWrite for SharedWrite {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// TCP holds nothing back in user space.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shutdown_write(&self.0))
    }
}

impl Drop for SharedWrite {
    fn drop(&mut self) {
        let _ = shutdown_write(&self.0);
    }
}

fn shutdown_write(sock: &TcpStream) -> io::Result<()> {
    match SockRef::from(sock).shutdown(Shutdown::Write) {
        // Already shut down, or the peer is gone: nothing left to do.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn halves_share_one_descriptor_and_the_write_half_shuts_down_on_drop() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut rd, mut wr, direct) = split(server);
        wr.write_all(b"from the writer").await.unwrap();
        direct.writable().await.unwrap();
        assert_eq!(direct.try_write(b"+direct").unwrap(), 7);
        let mut got = vec![0u8; 22];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"from the writer+direct");
        client.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        rd.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"ping");
        // Dropping the write half sends FIN while the reader still reads.
        drop(wr);
        assert_eq!(client.read(&mut four).await.unwrap(), 0);
        client.write_all(b"late").await.unwrap();
        rd.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"late");
    }
}
