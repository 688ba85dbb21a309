//! The bridge's Prometheus metrics: one registry owned by the app and passed down.
