//! The container labels mesh-bridge reads, and their validation.
//!
//! `mesh-bridge.service=NAME` (required, `[a-z0-9][a-z0-9._-]{0,62}`),
//! `mesh-bridge.port=N` (the container's port, default 8080) and
//! `mesh-bridge.network=NAME` (which network's address to dial) and
//! `mesh-bridge.transport=streamable-http|sse|stdio|tcp` (what it speaks;
//! default `streamable-http`; a `stdio` container must also have been
//! started with stdin open and no TTY, which the registry checks).

use std::collections::HashMap;

pub use crate::contract::labels::{
    DEFAULT_CONTAINER_PORT, NETWORK, PORT, SERVICE, TRANSPORT, Transport,
};

/// Why a label (or a service name from elsewhere) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// The service name does not match the pattern.
    #[error(
        "service name `{0}` is invalid: use 1-63 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
    )]
    ServiceName(String),
    /// The required service label is missing.
    #[error("label `mesh-bridge.service` is missing")]
    MissingService,
    /// The port label is not a port.
    #[error("label `mesh-bridge.port={0}` is not a port; use a number from 1 to 65535")]
    Port(String),
    /// The network label is empty.
    #[error(
        "label `mesh-bridge.network` is empty; name a network the container is attached to, or drop the label"
    )]
    Network,
    /// The transport label names no transport.
    #[error(
        "label `mesh-bridge.transport={0}` is not a transport; use streamable-http (the default), sse, stdio or tcp"
    )]
    Transport(String),
    /// Replicas of one service that disagree on the transport.
    #[error(
        "service `{service}` is served as `{theirs}` (container {by}); this container says `{ours}`: \
         give every replica of a service the same mesh-bridge.transport"
    )]
    TransportMismatch {
        /// The service.
        service: String,
        /// What the replicas already registered speak.
        theirs: Transport,
        /// One of them.
        by: String,
        /// What this container says.
        ours: Transport,
    },
    /// A stdio server started so that the bridge cannot attach to it.
    #[error("label `mesh-bridge.transport=stdio`: {0}")]
    StdioUnservable(String),
}

/// Checks a service name against `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn validate_service_name(name: &str) -> Result<(), LabelError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(LabelError::ServiceName(truncate(name)))
    }
}

/// Keeps hostile input out of logs at a bounded length.
fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(80).flat_map(char::escape_default).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// What the labels of one container say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLabels {
    /// The service name.
    pub service: String,
    /// The container port to dial.
    pub port: u16,
    /// The network whose address to dial (None: the first).
    pub network: Option<String>,
    /// What the container speaks on `port`.
    pub transport: Transport,
}

/// Reads and validates the mesh-bridge labels of a container.
pub fn parse(labels: &HashMap<String, String>) -> Result<ServiceLabels, LabelError> {
    let service = labels.get(SERVICE).ok_or(LabelError::MissingService)?;
    validate_service_name(service)?;
    let port = match labels.get(PORT) {
        None => DEFAULT_CONTAINER_PORT,
        Some(p) => match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(LabelError::Port(truncate(p))),
        },
    };
    let network = match labels.get(NETWORK) {
        None => None,
        Some(n) if n.trim().is_empty() => return Err(LabelError::Network),
        Some(n) => Some(n.clone()),
    };
    let transport = match labels.get(TRANSPORT) {
        None => Transport::default(),
        Some(t) => match Transport::parse(t.trim()) {
            Some(t) => t,
            None => return Err(LabelError::Transport(truncate(t))),
        },
    };
    Ok(ServiceLabels {
        service: service.clone(),
        port,
        network,
        transport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names() {
        for ok in ["a", "docs", "0x", "a.b_c-d", &"a".repeat(63)] {
            assert!(validate_service_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "A",
            "a b",
            "a/b",
            &"a".repeat(64),
            "é",
            "a\n",
        ] {
            assert!(validate_service_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parse_labels() {
        let l = parse(&labels(&[(SERVICE, "docs")])).unwrap();
        assert_eq!((l.port, l.network), (8080, None));
        let l = parse(&labels(&[
            (SERVICE, "docs"),
            (PORT, "9000"),
            (NETWORK, "mesh"),
        ]))
        .unwrap();
        assert_eq!((l.port, l.network.as_deref()), (9000, Some("mesh")));
        assert_eq!(parse(&labels(&[])), Err(LabelError::MissingService));
        assert!(matches!(
            parse(&labels(&[(SERVICE, "docs"), (PORT, "0")])),
            Err(LabelError::Port(_))
        ));
        assert!(matches!(
            parse(&labels(&[(SERVICE, "docs"), (PORT, "x")])),
            Err(LabelError::Port(_))
        ));
        assert!(matches!(
            parse(&labels(&[(SERVICE, "Docs")])),
            Err(LabelError::ServiceName(_))
        ));
        let t = |v: &str| parse(&labels(&[(SERVICE, "docs"), (TRANSPORT, v)]));
        assert_eq!(t("tcp").unwrap().transport, Transport::Tcp);
        assert_eq!(t("sse").unwrap().transport, Transport::Sse);
        assert_eq!(
            parse(&labels(&[(SERVICE, "docs")])).unwrap().transport,
            Transport::StreamableHttp
        );
        assert_eq!(t("stdio").unwrap().transport, Transport::Stdio);
        assert!(matches!(t("http"), Err(LabelError::Transport(_))));
        for tr in Transport::ALL {
            assert_eq!(Transport::parse(tr.as_str()), Some(tr));
        }
        let long = "x".repeat(10_000);
        let e = parse(&labels(&[(SERVICE, &long)])).unwrap_err().to_string();
        assert!(e.len() < 400, "hostile label bounded in the message");
    }
}
