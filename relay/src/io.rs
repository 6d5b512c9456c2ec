//! The byte stream under a connection's HTTP and WebSocket layers: plain
//! TCP or TLS, with reads that keep no buffer while the connection is idle.
//!
//! The WebSocket layer (tungstenite) keeps its read buffer for the
//! connection's life and caps each read at that buffer's size, so a large
//! buffer costs every idle connection its size and a small one costs a
//! system call per few hundred bytes. Here the reads from the socket go
//! into a per-thread scratch buffer ([`SCRATCH`] bytes) instead; what the
//! caller has no room for is kept in an allocation of its exact size until
//! the caller took it, and then freed. So the WebSocket's own buffer can be
//! small ([`crate::server::WS_READ_BUFFER`]), a burst still costs one
//! system call per [`SCRATCH`] bytes, and an idle connection holds no read
//! buffer here at all (docs/BENCHMARKS.md, "Memory per idle connection").

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

/// The most bytes one read from the socket takes.
pub(crate) const SCRATCH: usize = 16 * 1024;

thread_local! {
    /// Where reads land before they are copied to the caller.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// A plain or TLS connection. The TLS stream is boxed: it is over a
/// kilobyte (rustls's connection state), and hyper keeps the `Io` of an
/// upgraded connection for the connection's life, so a plain connection
/// would otherwise carry that size too.
pub(crate) struct Io {
    inner: Either<TcpStream, Box<TlsStream<TcpStream>>>,
    /// Bytes read from the socket that the caller had no room for.
    rest: Option<Rest>,
}

/// Read-ahead bytes: `bytes[at..]` are not handed over yet.
struct Rest {
    bytes: Box<[u8]>,
    at: usize,
}

impl Io {
    /// A plain TCP connection.
    pub(crate) fn plain(tcp: TcpStream) -> Self {
        Self { inner: Either::Left(tcp), rest: None }
    }

    /// A TLS connection.
    pub(crate) fn tls(tls: Box<TlsStream<TcpStream>>) -> Self {
        Self { inner: Either::Right(tls), rest: None }
    }
}

/// Copy as much of `rest` as fits into `buf`; whether all of it went.
fn drain(rest: &mut Rest, buf: &mut ReadBuf<'_>) -> bool {
    let left = rest.bytes.get(rest.at..).unwrap_or_default();
    let n = left.len().min(buf.remaining());
    buf.put_slice(left.get(..n).unwrap_or_default());
    rest.at += n;
    rest.at >= rest.bytes.len()
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(rest) = &mut this.rest {
            if drain(rest, buf) {
                this.rest = None;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SCRATCH {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH_BUF.with(|scratch| {
            // Never borrowed already (nothing below calls back in here);
            // if it were, a read of the caller's size is still right.
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            };
            let mut into = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut into))?;
            let got = into.filled();
            let n = got.len().min(buf.remaining());
            let (now, later) = got.split_at(n);
            buf.put_slice(now);
            if !later.is_empty() {
                this.rest = Some(Rest { bytes: later.into(), at: 0 });
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Small reads get every byte in order, what was read ahead is handed
    /// over before the socket is read again, and nothing is kept once the
    /// caller took it all.
    #[tokio::test]
    async fn small_reads_see_every_byte_and_keep_nothing_after() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&sent).await.unwrap();
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut io = Io::plain(tcp);
        let mut got = Vec::new();
        let mut chunk = [0u8; 300];
        loop {
            let n = io.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            if got.len() == data.len() {
                assert!(io.rest.is_none(), "everything was handed over");
            }
        }
        writer.await.unwrap();
        assert_eq!(got, data);
        assert!(io.rest.is_none());
    }
}
