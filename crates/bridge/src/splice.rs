//! Copies bytes both ways between two TCP streams with splice(2), without
//! bringing them into user space.
//!
//! [`copy_bidirectional`] is the forwarder's replacement for
//! [`tokio::io::copy_bidirectional_with_sizes`], with the same contract: both
//! directions run concurrently in the caller's task; when one side ends its
//! stream (EOF), the other side's write half is shut down (half-close) and the
//! other direction keeps running until it ends too; the first error (reset,
//! broken pipe...) ends both and is returned. On success it returns the bytes
//! moved `(a to b, b to a)`.
//!
//! On Linux each direction owns a pipe (`O_NONBLOCK | O_CLOEXEC`). A splice
//! round is: splice up to [`SPLICE_CHUNK`] bytes from the source socket into
//! the empty pipe, then splice all of them out of the pipe into the destination
//! socket, as many calls as the destination needs. The pages move by reference,
//! never through a user-space buffer. Every splice runs inside tokio's
//! [`TcpStream::try_io`], so an `EAGAIN` clears tokio's readiness and the
//! next `readable()`/`writable()` really waits.
//! Because the pipe is always empty when the source is spliced from, an
//! `EAGAIN` there always means "the socket has nothing", and while draining it
//! always means "the destination is full".
//!
//! Splicing a few bytes costs more than copying them (the kernel builds page
//! references for them on both sides), and small request/response traffic is
//! latency-bound, not copy-bound. So a direction starts copying through a
//! [`SPLICE_THRESHOLD`]-byte buffer and switches to splice rounds once a read
//! fills that buffer; only a splice round that moves less than [`SPLICE_STAY`]
//! switches it back (a bulk stream from a sender slower than the forwarder can
//! have less than the threshold waiting at times, and should stay spliced).
//! Each round is written out completely before the next read, so switching
//! never reorders bytes.
//!
//! A pipe costs two descriptors: a connection holds six instead of two. When
//! the pipes cannot be made (EMFILE, ENFILE, the per-user pipe quota...), or on
//! other systems, the copy falls back to tokio's with [`FALLBACK_BUFFER`]-byte
//! buffers. Dropping the future (the forwarder's abort at shutdown) closes the
//! pipes; bytes in flight in them are lost, as in any aborted copy.

use std::io;

use tokio::net::TcpStream;

/// Buffer per direction of the fallback copy (tokio's, used when pipes cannot
/// be made or off Linux). tokio's default (8 KiB) costs one syscall pair per
/// 8 KiB; 64 KiB measured ~2.5x the bulk throughput (`cargo xtask bench
/// --only p4`) at 128 KiB per open connection.
pub const FALLBACK_BUFFER: usize = 64 * 1024;

/// Most bytes one splice moves from a socket into a pipe. The pipe's default
/// capacity (16 pages, 64 KiB with 4 KiB pages) is the real bound; asking for
/// more only lets a pipe with bigger slots take what it can.
pub const SPLICE_CHUNK: usize = 1 << 20;

/// A copied round that filled its buffer (this many bytes) makes the next
/// round of its direction a splice. Copied rounds use a buffer of this size:
/// 16 KiB per direction, so a connection's buffers take 32 KiB instead of the
/// fallback's 128 KiB.
pub const SPLICE_THRESHOLD: usize = 16 * 1024;

/// A spliced round that moved fewer bytes than this makes the next round of
/// its direction a copy through the buffer (small messages: one cheap read and
/// write).
pub const SPLICE_STAY: usize = 4 * 1024;

/// Copies `a` to `b` and `b` to `a` until both directions have ended; see the
/// module docs. Returns the bytes moved `(a to b, b to a)`.
///
/// # Errors
/// The first I/O error of either direction (the other is abandoned).
pub async fn copy_bidirectional(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<(u64, u64)> {
    #[cfg(target_os = "linux")]
    {
        match (linux::Pipe::new(), linux::Pipe::new()) {
            (Ok(up), Ok(down)) => return linux::copy_bidirectional(a, b, &up, &down).await,
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "splice: cannot make pipes, copying through buffers");
            }
        }
    }
    tokio::io::copy_bidirectional_with_sizes(a, b, FALLBACK_BUFFER, FALLBACK_BUFFER).await
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;

    use rustix::fd::OwnedFd;
    use rustix::net::Shutdown;
    use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
    use tokio::net::TcpStream;
    use tokio::net::tcp::{ReadHalf, WriteHalf};

    use super::{SPLICE_CHUNK, SPLICE_STAY, SPLICE_THRESHOLD};

    /// `SPLICE_F_NONBLOCK` keeps the pipe side from blocking (the sockets are
    /// non-blocking already); `SPLICE_F_MOVE` is a hint to move pages, not copy.
    const FLAGS: SpliceFlags = SpliceFlags::NONBLOCK.union(SpliceFlags::MOVE);

    /// One direction's pipe: both ends, closed on drop.
    #[derive(Debug)]
    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
    }

    impl Pipe {
        pub(super) fn new() -> io::Result<Self> {
            let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
            Ok(Self { read, write })
        }
    }

    pub(super) async fn copy_bidirectional(
        a: &mut TcpStream,
        b: &mut TcpStream,
        up: &Pipe,
        down: &Pipe,
    ) -> io::Result<(u64, u64)> {
        let (a_read, a_write) = a.split();
        let (b_read, b_write) = b.split();
        tokio::try_join!(one_way(a_read, b_write, up), one_way(b_read, a_write, down))
    }

    /// Moves `from`'s stream into `to` until `from` ends, then shuts down
    /// `to`'s write half. Small rounds go through `buf`, big ones through
    /// `pipe` (see the module docs). Returns the bytes moved.
    ///
    /// The copied rounds use tokio's `AsyncRead`/`AsyncWrite` on the halves
    /// rather than `try_read`: a short read there clears the readiness, which
    /// saves the `EAGAIN` read per small message that `try_read` would cost.
    async fn one_way(
        mut from: ReadHalf<'_>,
        mut to: WriteHalf<'_>,
        pipe: &Pipe,
    ) -> io::Result<u64> {
        let mut buf = vec![0u8; SPLICE_THRESHOLD];
        let mut bulk = false;
        let mut moved = 0u64;
        loop {
            let n = if bulk {
                let n = fill(from.as_ref(), pipe).await?;
                drain(pipe, to.as_ref(), n).await?;
                n
            } else {
                let n = from.read(&mut buf).await?;
                to.write_all(&buf[..n]).await?;
                n
            };
            if n == 0 {
                break;
            }
            moved += n as u64;
            bulk = n >= if bulk { SPLICE_STAY } else { SPLICE_THRESHOLD };
        }
        rustix::net::shutdown(to.as_ref(), Shutdown::Write)?;
        Ok(moved)
    }

    /// Splices what `from` has (at least one byte, or 0 at EOF) into the empty pipe.
    async fn fill(from: &TcpStream, pipe: &Pipe) -> io::Result<usize> {
        loop {
            from.readable().await?;
            let r = from.try_io(Interest::READABLE, || {
                Ok(splice(from, None, &pipe.write, None, SPLICE_CHUNK, FLAGS)?)
            });
            match r {
                Ok(n) => return Ok(n),
                Err(e) if retry(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Splices exactly `len` bytes (all the pipe holds) from the pipe into `to`.
    async fn drain(pipe: &Pipe, to: &TcpStream, mut len: usize) -> io::Result<()> {
        while len > 0 {
            to.writable().await?;
            let r = to.try_io(Interest::WRITABLE, || {
                Ok(splice(&pipe.read, None, to, None, len, FLAGS)?)
            });
            match r {
                // The pipe holds `len` bytes, so 0 cannot happen; should it, do not spin.
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => len -= n,
                Err(e) if retry(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// `EAGAIN` (readiness already cleared by `try_io`) and `EINTR` are retried.
    fn retry(e: &io::Error) -> bool {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        )
    }
}
