//! The TCP ports a process listens on, read from `/proc`: the socket inodes
//! among its open descriptors (`/proc/PID/fd`), matched against the
//! listening sockets of its network namespace (`/proc/PID/net/tcp` and
//! `tcp6`). The harness samples the bridge with it during every scenario,
//! for I10 (no port outside the ranges is ever bound).

use std::collections::BTreeSet;
use std::fs;
use std::io;

use serde::{Deserialize, Serialize};

/// `st` of a listening socket in `/proc/net/tcp`.
const LISTEN: &str = "0A";

/// One look at the bridge's listening ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindSample {
    /// When (ms since the run's start).
    pub t_ms: u64,
    /// The ports it listened on, ascending.
    pub ports: Vec<u16>,
    /// Why it could not be read (the bridge restarting, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The socket inodes among `pid`'s descriptors.
fn socket_inodes(pid: u32) -> io::Result<BTreeSet<u64>> {
    let mut out = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = fs::read_link(entry?.path()) else {
            continue; // closed meanwhile
        };
        let target = target.to_string_lossy();
        if let Some(n) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
        {
            out.insert(n);
        }
    }
    Ok(out)
}

/// `(local port, inode)` of every listening socket in one `/proc/net/tcp*`
/// table; malformed lines are skipped.
fn listening(table: &str) -> Vec<(u16, u64)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (cols.get(1)?, cols.get(3)?, cols.get(9)?);
            if *state != LISTEN {
                return None;
            }
            let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            Some((port, inode.parse().ok()?))
        })
        .collect()
}

/// The TCP ports `pid` listens on (IPv4 and IPv6), ascending.
pub fn listening_ports(pid: u32) -> io::Result<Vec<u16>> {
    let mine = socket_inodes(pid)?;
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let text = match fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // no IPv6
            Err(e) => return Err(e),
        };
        ports.extend(
            listening(&text)
                .into_iter()
                .filter(|(_, inode)| mine.contains(inode))
                .map(|(port, _)| port),
        );
    }
    Ok(ports.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_of_this_process_is_found_and_a_connection_is_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let ports = listening_ports(std::process::id()).expect("readable");
        assert!(ports.contains(&port), "{port} in {ports:?}");
        drop(l);
        let after = listening_ports(std::process::id()).expect("readable");
        assert!(!after.contains(&port), "{port} closed, still in {after:?}");
    }

    #[test]
    fn only_listening_rows_count() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:2B5C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1\n   1: 0100007F:2B5D 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4243 1\n garbage\n";
        assert_eq!(listening(table), vec![(0x2B5C, 4242)]);
    }

    #[test]
    fn a_missing_process_is_an_error() {
        assert!(listening_ports(u32::MAX).is_err());
    }
}
