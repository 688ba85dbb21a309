//! Durable state in SQLite: reservations, quarantine, last-port history, schema version.
