//! stdio MCP servers: many client sessions share one server process that
//! speaks newline-delimited JSON-RPC on its stdin and stdout.
//!
//! [`mux`] holds the rules that make the sharing safe (one `initialize` per
//! process, JSON-RPC ids and progress tokens rewritten so two clients never
//! meet, responses and notifications routed back to the session they belong
//! to); [`framing`] turns the server's stdout into bounded lines. Both are
//! pure. [`process`] is the task that drives them for one server: it owns
//! the multiplexer and the attach's streams ([`stdin`] queues what it
//! writes to the server), and hands each session its
//! own messages without ever waiting on a client.

pub mod attach;
pub mod framing;
pub mod hub;
pub mod kept;
pub mod mux;
pub mod process;
pub mod stdin;
