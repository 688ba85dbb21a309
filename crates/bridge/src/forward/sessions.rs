//! MCP sessions of one service: which replica created each, encoded in the
//! session id the client sees, and a bounded table of the live ones.
//!
//! Affinity needs no durable state. When a replica answers `initialize` with
//! `Mcp-Session-Id: S`, the client is given `K.S`, where `K` is the first
//! [`KEY_LEN`] hex digits of the replica's container id; every later request
//! names `K.S`, so the bridge finds the replica from the id alone and hands
//! it back `S`. A container id outlives a bridge restart and never names
//! another container, so affinity survives a kill -9 of the bridge with no
//! help from the client, and a request never reaches a replica that did not
//! create its session. (A durable table would have to be written on every
//! `initialize`, on the hot path, and could still disagree with Docker.)
//!
//! The table ([`Sessions`]) only feeds the session gauge, the per-replica
//! counts of the API and the balancing of new sessions; routing never needs
//! it. It forgets a session when the client deletes it, when its replica
//! answers 404 or leaves, and after [`IDLE`] without a request; it holds at
//! most [`MAX_TRACKED`] sessions (past that, new ones are routed but not
//! counted). After a restart it fills again as sessions are used.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Hex digits of the container id that name a replica in a session id.
pub const KEY_LEN: usize = 12;
/// Between the replica's key and the replica's own session id.
pub const SEPARATOR: char = '.';
/// A session without a request for this long is no longer counted.
pub const IDLE: Duration = Duration::from_secs(3600);
/// Most sessions one service's table counts.
pub const MAX_TRACKED: usize = 65_536;

/// The key naming a replica: the start of its container id, lower-cased;
/// anything but hex digits is dropped (container ids are hex).
pub fn key_of(container_id: &str) -> Arc<str> {
    let key: String = container_id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .take(KEY_LEN)
        .collect();
    Arc::from(key)
}

/// The session id the client sees for the replica `key`'s session `id`.
pub fn encode(key: &str, id: &str) -> String {
    // Not `format!`: this is on every answer that carries a session.
    let mut s = String::with_capacity(key.len() + SEPARATOR.len_utf8() + id.len());
    s.push_str(key);
    s.push(SEPARATOR);
    s.push_str(id);
    s
}

/// Splits a client's session id into the replica key and the replica's own
/// id; `None` when it was not made by [`encode`].
pub fn decode(client_id: &str) -> Option<(&str, &str)> {
    let key = client_id.get(..KEY_LEN)?;
    let rest = client_id.get(KEY_LEN..)?.strip_prefix(SEPARATOR)?;
    let ok = key
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (ok && !rest.is_empty()).then_some((key, rest))
}

#[derive(Debug, Clone)]
struct Entry {
    key: Arc<str>,
    last: Instant,
}

/// The live sessions of one service, by the id the client sees.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: HashMap<Box<str>, Entry>,
    /// Requests without a session sent to each replica and not answered
    /// yet (each may create a session): counted in the balance, so a burst
    /// of `initialize`s spreads instead of all joining the least loaded.
    pending: HashMap<Arc<str>, usize>,
    /// When idle entries were last dropped.
    swept: Option<Instant>,
}

impl Sessions {
    /// A session was used (or created) at `now` on replica `key`.
    pub fn touch(&mut self, client_id: &str, key: &Arc<str>, now: Instant) {
        if let Some(e) = self.by_id.get_mut(client_id) {
            e.last = now;
            return;
        }
        self.sweep(now);
        if self.by_id.len() < MAX_TRACKED {
            let entry = Entry {
                key: Arc::clone(key),
                last: now,
            };
            self.by_id.insert(client_id.into(), entry);
        }
    }

    /// The session ended (deleted, or unknown to its replica).
    pub fn end(&mut self, client_id: &str) {
        self.by_id.remove(client_id);
    }

    /// Forgets the sessions of replicas not in `keys` (they left).
    pub fn keep_replicas(&mut self, keys: &[&str]) {
        self.by_id.retain(|_, e| keys.contains(&&*e.key));
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when none is live.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Live sessions of the replica `key`.
    pub fn count(&self, key: &str) -> usize {
        self.by_id.values().filter(|e| &*e.key == key).count()
    }

    /// Live sessions per replica key.
    pub fn per_replica(&self) -> HashMap<Arc<str>, usize> {
        let mut out: HashMap<Arc<str>, usize> = HashMap::new();
        for e in self.by_id.values() {
            *out.entry(Arc::clone(&e.key)).or_default() += 1;
        }
        out
    }

    /// Live sessions plus unanswered session-less requests, per replica:
    /// what new sessions are balanced on.
    pub fn load(&self) -> HashMap<Arc<str>, usize> {
        let mut out = self.per_replica();
        for (k, n) in &self.pending {
            *out.entry(Arc::clone(k)).or_default() += n;
        }
        out
    }

    /// A session-less request went to replica `key`.
    pub fn begin(&mut self, key: &Arc<str>) {
        *self.pending.entry(Arc::clone(key)).or_default() += 1;
    }

    /// It was answered (or failed).
    pub fn finish(&mut self, key: &str) {
        if let Some(n) = self.pending.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(key);
            }
        }
    }

    /// Drops sessions idle for [`IDLE`] (at most once a minute).
    pub fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(60))
        {
            return;
        }
        self.swept = Some(now);
        self.by_id
            .retain(|_, e| now.saturating_duration_since(e.last) < IDLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_foreign_ids_are_refused() {
        let key = key_of("0123456789ABCDEFdeadbeef");
        assert_eq!(&*key, "0123456789ab");
        let id = encode(&key, "a1b2-c3");
        assert_eq!(decode(&id), Some(("0123456789ab", "a1b2-c3")));
        // The replica's own id may contain the separator.
        assert_eq!(decode(&encode(&key, "x.y")), Some(("0123456789ab", "x.y")));
        for foreign in [
            "",
            "a1b2c3",
            "0123456789ab",
            "0123456789ab.",
            "0123456789abXrest",
            "0123456789zz.rest",
            "é123456789ab.rest",
        ] {
            assert_eq!(decode(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn the_table_counts_per_replica_and_forgets_ended_idle_and_departed_sessions() {
        let t0 = Instant::now();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("aaaaaaaaaaaa"), Arc::from("bbbbbbbbbbbb"));
        let mut s = Sessions::default();
        s.touch("a.1", &a, t0);
        s.touch("a.2", &a, t0);
        s.touch("b.1", &b, t0);
        s.touch("a.1", &a, t0);
        assert_eq!((s.len(), s.count(&a), s.count(&b)), (3, 2, 1));
        assert_eq!(s.per_replica()[&a], 2);
        s.end("a.2");
        assert_eq!(s.count(&a), 1);
        s.begin(&b);
        s.begin(&b);
        assert_eq!(s.load()[&b], 3, "pending requests weigh in the balance");
        s.finish(&b);
        s.finish(&b);
        s.finish(&b);
        assert_eq!(s.load()[&b], 1);
        s.keep_replicas(&["bbbbbbbbbbbb"]);
        assert_eq!((s.count(&a), s.count(&b)), (0, 1));
        s.touch("b.2", &b, t0 + IDLE - Duration::from_secs(1));
        s.sweep(t0 + IDLE + Duration::from_secs(61));
        assert_eq!(s.len(), 1, "only the session used within IDLE stays");
    }
}
