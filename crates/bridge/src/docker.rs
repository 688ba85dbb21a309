//! The Docker watcher: events first, then a list, then periodic resyncs; reconnects with backoff.
