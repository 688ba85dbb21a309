//! The server's stdout as JSON-RPC messages: newline-delimited, each line at
//! most a configured size, anything that is not a JSON object or array
//! skipped and reported, never mixed into the protocol.
//!
//! Line splitting with the size bound is `tokio_util`'s `LinesCodec`; this
//! module adds what a line means: a message, an oversized line (skipped up
//! to its newline, so the next message is still read) or a line that is
//! not JSON (a server that logs to stdout).

use bytes::BytesMut;
use serde_json::Value;
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};

/// Default longest line read from a server (`--stdio-max-message`).
pub const DEFAULT_MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Longest excerpt of a skipped line kept for the log.
const EXCERPT: usize = 120;

/// One line of the server's stdout.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// A JSON-RPC message (an object) or batch (an array).
    Message(Value),
    /// Not JSON, or JSON that is not an object or array; `excerpt` is its
    /// start, for the log.
    NotJson { excerpt: String },
    /// Longer than the limit; the rest of it up to its newline is dropped.
    TooLong { limit: usize },
}

/// Splits stdout into [`Line`]s.
#[derive(Debug)]
pub struct Framer {
    codec: LinesCodec,
    limit: usize,
}

impl Framer {
    /// A framer that refuses lines longer than `limit` bytes.
    pub fn new(limit: usize) -> Framer {
        Framer {
            codec: LinesCodec::new_with_max_length(limit),
            limit,
        }
    }

    /// The next complete line in `buf` (consumed from it), or None until
    /// more bytes arrive. Blank lines are skipped.
    pub fn next(&mut self, buf: &mut BytesMut) -> Option<Line> {
        loop {
            match self.codec.decode(buf) {
                Ok(Some(line)) => {
                    if let Some(l) = classify(&line) {
                        return Some(l);
                    }
                }
                Ok(None) => return None,
                Err(LinesCodecError::MaxLineLengthExceeded) => {
                    return Some(Line::TooLong { limit: self.limit });
                }
                // LinesCodec reads from a buffer, not from I/O, and
                // replaces invalid UTF-8 rather than failing.
                Err(LinesCodecError::Io(_)) => return None,
            }
        }
    }

    /// What is left when the stream ends: a last line without its newline.
    pub fn finish(&mut self, buf: &mut BytesMut) -> Option<Line> {
        loop {
            match self.codec.decode_eof(buf) {
                Ok(Some(line)) => {
                    if let Some(l) = classify(&line) {
                        return Some(l);
                    }
                }
                Ok(None) | Err(LinesCodecError::Io(_)) => return None,
                Err(LinesCodecError::MaxLineLengthExceeded) => {
                    return Some(Line::TooLong { limit: self.limit });
                }
            }
        }
    }
}

fn classify(line: &str) -> Option<Line> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return None;
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(v @ (Value::Object(_) | Value::Array(_))) => Some(Line::Message(v)),
        _ => Some(Line::NotJson {
            excerpt: excerpt(trimmed),
        }),
    }
}

/// The start of `s`, at most [`EXCERPT`] bytes, cut at a char boundary.
fn excerpt(s: &str) -> String {
    let mut end = s.len().min(EXCERPT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(limit: usize, input: &[&[u8]]) -> Vec<Line> {
        let mut f = Framer::new(limit);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in input {
            buf.extend_from_slice(chunk);
            while let Some(l) = f.next(&mut buf) {
                out.push(l);
            }
        }
        while let Some(l) = f.finish(&mut buf) {
            out.push(l);
        }
        out
    }

    #[test]
    fn messages_split_across_reads_are_joined() {
        let got = lines(
            1024,
            &[
                b"{\"jsonrpc\":\"2.0\",",
                b"\"id\":1,\"result\":{}}\n\n{\"a\"",
                b":[1]}",
            ],
        );
        assert_eq!(
            got,
            [
                Line::Message(json!({"jsonrpc": "2.0", "id": 1, "result": {}})),
                Line::Message(json!({"a": [1]})),
            ]
        );
    }

    #[test]
    fn a_log_line_is_skipped_and_the_next_message_read() {
        let got = lines(
            1024,
            &[b"Starting server on stdio...\n42\n[{\"id\":2}]\r\n"],
        );
        assert_eq!(
            got,
            [
                Line::NotJson {
                    excerpt: "Starting server on stdio...".into()
                },
                Line::NotJson {
                    excerpt: "42".into()
                },
                Line::Message(json!([{"id": 2}])),
            ]
        );
    }

    #[test]
    fn an_oversized_line_is_dropped_up_to_its_newline() {
        let big = [b'x'; 100];
        let got = lines(64, &[&big[..50], &big[50..], b"\n{\"id\":3}\n"]);
        assert_eq!(
            got,
            [Line::TooLong { limit: 64 }, Line::Message(json!({"id": 3}))]
        );
    }

    #[test]
    fn excerpts_are_bounded_and_cut_on_char_boundaries() {
        let long = "é".repeat(100);
        let Some(Line::NotJson { excerpt }) = classify(&long) else {
            panic!("not json");
        };
        assert!(excerpt.len() <= EXCERPT && excerpt.len() >= EXCERPT - 1);
        assert!(long.starts_with(&excerpt));
    }
}
