//! The running daemon: wires store, pool, registry, watcher, forwarder and API together.
