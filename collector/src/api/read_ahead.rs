//! One `recv` per arriving batch under TLS.
//!
//! rustls reads the socket 4 KiB at a time, and a batch of a hundred samples is about
//! 8 KiB: three `recv`s per batch (two with data, one more until the socket is drained).
//! [`ReadAhead`] takes what the socket holds in one read of up to a whole TLS record and
//! hands it on from memory; a read shorter than asked also tells tokio the socket is
//! drained, so the next poll waits for readiness without a system call. The buffer lives
//! only from the read until it is handed on: an idle connection holds none (a thousand
//! agents connected would otherwise hold 16 MiB for nothing).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The most one read takes: a whole TLS record (16 KiB of data and its header and tag).
const READ_AHEAD: usize = 16 * 1024 + 512;

/// A TCP connection read ahead: see the module doc.
pub struct ReadAhead {
    tcp: TcpStream,
    /// Read from the socket, not yet handed on.
    ahead: BytesMut,
}

impl ReadAhead {
    pub fn new(tcp: TcpStream) -> ReadAhead {
        ReadAhead { tcp, ahead: BytesMut::new() }
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.ahead.is_empty() {
            if out.remaining() >= READ_AHEAD {
                return Pin::new(&mut this.tcp).poll_read(cx, out);
            }
            // Allocated once the socket has something (as far as tokio knows), not for
            // every poll that finds it empty.
            ready!(this.tcp.poll_read_ready(cx))?;
            let mut buf = BytesMut::with_capacity(READ_AHEAD);
            if ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.tcp), cx, &mut buf))? == 0 {
                return Poll::Ready(Ok(()));
            }
            this.ahead = buf;
        }
        let n = out.remaining().min(this.ahead.len());
        out.put_slice(&this.ahead[..n]);
        this.ahead.advance(n);
        if this.ahead.is_empty() {
            this.ahead = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl Connected for ReadAhead {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whatever sizes the reader asks for, it gets the bytes as sent, in order, and the end
    /// of the stream; and nothing stays buffered once handed on.
    #[tokio::test]
    async fn reads_hand_on_every_byte_in_order_in_any_read_size() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let to_send = sent.clone();
        let writer = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for chunk in to_send.chunks(9_999) {
                c.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut r = ReadAhead::new(tcp);
        let mut got = Vec::new();
        // Read sizes below, at and above the read-ahead size.
        let sizes = [1, 4096, 100, READ_AHEAD, 3 * READ_AHEAD, 17];
        for i in 0.. {
            let mut buf = vec![0; sizes[i % sizes.len()]];
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if r.ahead.is_empty() {
                assert_eq!(r.ahead.capacity(), 0, "a drained read-ahead buffer was kept");
            }
        }
        writer.await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes came out changed or out of order");
    }
}
