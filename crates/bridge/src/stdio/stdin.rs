//! A stdio server's stdin, written by the process task itself: lines are
//! queued in one buffer (at most `limit` lines) and written as the pipe takes
//! them, from the task's own `select!` ([`Stdin::write_some`] is cancel
//! safe). No writer task: a request reaches the server without a hop to
//! another task, and a server that stops reading stdin only fills the
//! queue, after which new lines are refused at once (the caller answers
//! their requests with an error).

use bytes::{Buf, BytesMut};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::process::Input;

/// The queue in front of one attached process's stdin.
pub struct Stdin {
    input: Input,
    pending: BytesMut,
    /// Lines in `pending` not yet written whole.
    queued: usize,
    /// Most lines queued.
    limit: usize,
    /// Written since the last flush.
    unflushed: bool,
}

impl std::fmt::Debug for Stdin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stdin")
            .field("queued", &self.queued)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Stdin {
    /// A queue of at most `limit` lines (at least one) in front of `input`.
    pub fn new(input: Input, limit: usize) -> Self {
        Stdin {
            input,
            pending: BytesMut::new(),
            queued: 0,
            limit: limit.max(1),
            unflushed: false,
        }
    }

    /// Queues `msg` as one line; false when the queue is full.
    pub fn push(&mut self, msg: &Value) -> bool {
        if self.queued >= self.limit {
            return false;
        }
        // Compact JSON holds no raw newline: one message, one line.
        let start = self.pending.len();
        if serde_json::to_writer(bytes::BufMut::writer(&mut self.pending), msg).is_err() {
            self.pending.truncate(start);
            return false;
        }
        self.pending.extend_from_slice(b"\n");
        self.queued += 1;
        true
    }

    /// Whether there is anything to write or flush.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty() || self.unflushed
    }

    /// Lines queued and not yet written whole.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// One write of what is queued (or the flush after it). Cancel safe:
    /// when dropped before it completes, nothing was written. An error (or
    /// a write of nothing) means stdin is gone.
    pub async fn write_some(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            self.input.flush().await?;
            self.unflushed = false;
            return Ok(());
        }
        let n = self.input.write(&self.pending).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let lines = self.pending[..n].iter().filter(|b| **b == b'\n').count();
        self.queued -= lines;
        self.pending.advance(n);
        self.unflushed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn lines_are_written_whole_in_order_and_the_queue_is_bounded() {
        let (ours, mut theirs) = tokio::io::duplex(16);
        let mut stdin = Stdin::new(Box::pin(ours), 3);
        for i in 0..3 {
            assert!(stdin.push(&serde_json::json!({"id": i, "text": "a\nb"})));
        }
        assert!(
            !stdin.push(&serde_json::json!({"id": 3})),
            "full at 3 lines"
        );
        assert_eq!(stdin.queued(), 3);
        // The pipe takes 16 bytes at a time: read while writing.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while got.iter().filter(|b| **b == b'\n').count() < 3 {
                let n = theirs.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            String::from_utf8(got).unwrap()
        });
        while stdin.busy() {
            stdin.write_some().await.unwrap();
        }
        assert_eq!(stdin.queued(), 0);
        let text = reader.await.unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l["id"], i);
            assert_eq!(l["text"], "a\nb", "a newline in a string stays escaped");
        }
        assert!(stdin.push(&serde_json::json!({"id": 4})), "room again");
    }

    #[tokio::test]
    async fn a_closed_stdin_is_an_error() {
        let (ours, theirs) = tokio::io::duplex(16);
        drop(theirs);
        let mut stdin = Stdin::new(Box::pin(ours), 3);
        assert!(stdin.push(&serde_json::json!({"id": 1})));
        assert!(stdin.write_some().await.is_err());
    }
}
