//! The write side of a relayed WebSocket connection: one ordered byte queue in front of the
//! socket, shared by tungstenite (control frames: pings, pongs, closes) and the relay's own
//! batched data frames.
//!
//! Why: tungstenite writes every data frame with its own system call. A connection that fell
//! behind holds many queued messages; encoding them into one buffer and writing it at once
//! costs one `send` per batch instead of one per message, and batches grow exactly when the
//! server is busy. For that to be safe, the bytes tungstenite writes and the relay's bytes must
//! never interleave inside a frame: the outlet accepts each of tungstenite's writes whole, so
//! tungstenite never holds half a frame, and everything passes through this one queue in order.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Above this many queued bytes, tungstenite's writes wait (a client flooding pings while not
/// reading would otherwise grow the queue without bound). The relay's own batches are bounded
/// by the connection's mailbox and are always accepted.
const TUNGSTENITE_QUEUE_LIMIT: usize = 256 * 1024;
/// A queue that drained keeps its allocation only up to this size: most connections idle
/// between ticks, and their memory is the product's.
const KEEP_CAPACITY: usize = 512;

pub struct Outlet<S> {
    inner: S,
    /// Bytes accepted but not yet taken by the socket, oldest first.
    queued: Vec<u8>,
    /// How much of `queued` the socket has taken.
    sent: usize,
}

impl<S: AsyncWrite + Unpin> Outlet<S> {
    pub fn new(inner: S) -> Self {
        Outlet {
            inner,
            queued: Vec::new(),
            sent: 0,
        }
    }

    fn backlog(&self) -> usize {
        self.queued.len() - self.sent
    }

    /// Writes as much of `data` as the socket takes now and queues the rest; queued bytes from
    /// earlier go first. Ready once everything is written, pending while bytes stay queued
    /// (then `poll_drain` finishes the job).
    pub fn poll_send(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<()>> {
        if self.backlog() > 0 {
            self.queued.extend_from_slice(data);
            return self.poll_drain(cx);
        }
        let mut at = 0;
        while at < data.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &data[at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.queued.extend_from_slice(&data[at..]);
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes out everything queued.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.backlog() > 0 {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.queued[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.sent = 0;
        if self.queued.capacity() > KEEP_CAPACITY {
            self.queued = Vec::new();
        } else {
            self.queued.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Outlet<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Outlet<S> {
    /// All or nothing: either the whole of `buf` is accepted (written or queued), or none of it.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.backlog() >= TUNGSTENITE_QUEUE_LIMIT {
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            if this.backlog() >= TUNGSTENITE_QUEUE_LIMIT {
                return Poll::Pending;
            }
        }
        match this.poll_send(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Queued counts as written: it is on its way, in order.
            _ => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Appends one unmasked server data frame (RFC 6455 §5.2): FIN set, `opcode` 1 (text) or 2
/// (binary), the shortest length form.
pub fn encode_data_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn frame_headers_use_the_shortest_length_form() {
        let mut out = Vec::new();
        encode_data_frame(&mut out, 1, b"hi");
        assert_eq!(out, [0x81, 2, b'h', b'i']);

        for (len, header) in [
            (125usize, vec![0x82, 125]),
            (126, vec![0x82, 126, 0, 126]),
            (65535, vec![0x82, 126, 0xff, 0xff]),
            (65536, vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut out = Vec::new();
            encode_data_frame(&mut out, 2, &vec![7u8; len]);
            assert_eq!(&out[..header.len()], &header[..], "length {len}");
            assert_eq!(out.len(), header.len() + len);
        }
    }

    #[test]
    fn encoded_frames_parse_back_with_tungstenite() {
        use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
        use tokio_tungstenite::tungstenite::Message;
        let mut bytes = Vec::new();
        encode_data_frame(&mut bytes, 1, b"first");
        encode_data_frame(&mut bytes, 2, &vec![1u8; 70_000]);
        encode_data_frame(&mut bytes, 1, &[b'x'; 300]);
        let mut client = WebSocket::from_raw_socket(
            io::Cursor::new(bytes),
            Role::Client,
            Some(
                tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .max_message_size(None)
                    .max_frame_size(None),
            ),
        );
        assert_eq!(client.read().unwrap(), Message::text("first"));
        assert_eq!(client.read().unwrap(), Message::binary(vec![1u8; 70_000]));
        assert_eq!(client.read().unwrap(), Message::text("x".repeat(300)));
    }

    /// A socket that takes a few bytes per write: bytes tungstenite writes while the relay's
    /// are still queued are accepted whole and go after them.
    #[tokio::test]
    async fn writes_behind_a_backlog_are_accepted_whole_and_kept_in_order() {
        let (near, mut far) = tokio::io::duplex(8);
        let mut outlet = Outlet::new(near);
        let first: Vec<u8> = (0..100u8).collect();
        let second: Vec<u8> = (100..200u8).collect();
        let accepted = poll_fn(|cx| {
            assert!(
                outlet.poll_send(cx, &first).is_pending(),
                "the socket takes 8 bytes"
            );
            assert!(outlet.backlog() > 0);
            Pin::new(&mut outlet).poll_write(cx, &second)
        })
        .await
        .unwrap();
        assert_eq!(accepted, second.len());
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            got
        });
        outlet.shutdown().await.unwrap();
        drop(outlet);
        assert_eq!(reader.await.unwrap(), [first, second].concat());
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_memory_back() {
        let (near, mut far) = tokio::io::duplex(16);
        let mut outlet = Outlet::new(near);
        let big = vec![9u8; 4096];
        let mut staged = false;
        let drain = poll_fn(|cx| {
            if !staged {
                staged = true;
                if outlet.poll_send(cx, &big).is_ready() {
                    return Poll::Ready(Ok(()));
                }
            }
            outlet.poll_drain(cx)
        });
        let mut sink = Vec::new();
        let (written, ()) = tokio::join!(drain, async {
            let mut buf = [0u8; 4096];
            while sink.len() < 4096 {
                let n = far.read(&mut buf).await.unwrap();
                sink.extend_from_slice(&buf[..n]);
            }
        });
        written.unwrap();
        assert_eq!(sink, big);
        assert_eq!(outlet.queued.capacity(), 0);
    }
}
