//! The registry: containers grouped into services by the `mesh-bridge.service`
//! label.
//!
//! Registration is keyed by container id and idempotent. A Docker `start`
//! event for a container that is already registered and running changes
//! nothing and counts one duplicate-registration attempt; a resync that merely
//! observes known containers ([`Registry::observe`]) counts nothing. A
//! container whose labels are invalid is kept as `rejected` with the reason,
//! and never stops the bridge.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use crate::forward::Upstream;
use crate::labels::{self, LabelError, Transport};
use crate::pool::Millis;

/// What Docker says about one container (built by the watcher from bollard's types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Full container id.
    pub id: String,
    /// Container name, for humans.
    pub name: String,
    /// All labels.
    pub labels: HashMap<String, String>,
    /// Networks with the container's address on each, in Docker's order.
    pub networks: Vec<(String, Option<IpAddr>)>,
    /// Whether it runs (not paused, not exited).
    pub running: bool,
    /// Whether `docker pause` froze it (then not `running`).
    pub paused: bool,
    /// Why it could not be served over stdio, were it a `stdio` service
    /// (stdin closed, a TTY: [`crate::stdio::attach::unservable`]); None
    /// when it can, or when the watcher did not look (not `stdio`).
    pub stdio_unservable: Option<String>,
}

/// One registered container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Full container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// Its service.
    pub service: String,
    /// The container port to dial.
    pub port: u16,
    /// The address to dial (None: not attached to the named network, or no address yet).
    pub address: Option<IpAddr>,
    /// Whether it runs and serves (not paused, not exited).
    pub running: bool,
    /// Whether it is frozen (`docker pause`): not `running`, but its
    /// process, and the sessions it holds, wait for it to be unpaused.
    pub paused: bool,
    /// Why it cannot be dialled, if so.
    pub problem: Option<String>,
    /// What it speaks (`mesh-bridge.transport`).
    pub transport: Transport,
}

impl Container {
    /// Where it is reached: its stdio process, or its address (None: no
    /// address to dial).
    fn upstream(&self) -> Option<Upstream> {
        if self.transport == Transport::Stdio {
            return Some(Upstream::stdio(&self.id));
        }
        let addr = SocketAddr::new(self.address?, self.port);
        Some(Upstream::new(addr, &self.id))
    }
}

/// A container whose labels were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Full container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// The service label as given (possibly invalid), bounded in length.
    pub service: Option<String>,
    /// Why.
    pub reason: String,
}

/// What a registration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A container joined a service (the service may be new).
    Added {
        /// The service.
        service: String,
        /// Whether this is the service's first container.
        new_service: bool,
    },
    /// A known container changed (state, address, port).
    Updated {
        /// The service.
        service: String,
    },
    /// Nothing changed.
    Unchanged,
    /// The container was already registered and running: a duplicate attempt.
    Duplicate,
    /// The labels were refused (first time seen with this reason).
    Rejected(String),
}

/// A service: its containers and when it first appeared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    /// Container ids.
    pub containers: BTreeSet<String>,
    /// When the service's first container was registered.
    pub since: Millis,
}

/// The registry of containers and services.
#[derive(Debug, Default)]
pub struct Registry {
    containers: HashMap<String, Container>,
    services: BTreeMap<String, Service>,
    rejected: BTreeMap<String, Rejected>,
    duplicates: u64,
}

fn dial_address(info: &ContainerInfo, network: Option<&str>) -> (Option<IpAddr>, Option<String>) {
    match network {
        Some(n) => match info.networks.iter().find(|(name, _)| name == n) {
            Some((_, addr)) => (
                *addr,
                addr.is_none()
                    .then(|| format!("no address on network `{n}`")),
            ),
            None => (
                None,
                Some(format!(
                    "not attached to network `{n}` named by mesh-bridge.network"
                )),
            ),
        },
        None => match info.networks.iter().find_map(|(_, a)| *a) {
            Some(a) => (Some(a), None),
            None => (None, Some("no network address".to_string())),
        },
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a container from a Docker `start` event (or an API call).
    /// A container already registered and running counts a duplicate attempt.
    pub fn register(&mut self, info: &ContainerInfo, now: Millis) -> Change {
        let was_running = self.containers.get(&info.id).is_some_and(|c| c.running);
        let change = self.apply(info, now);
        if was_running && info.running && change == Change::Unchanged {
            self.duplicates += 1;
            return Change::Duplicate;
        }
        change
    }

    /// Records what a resync saw; never counts duplicates.
    pub fn observe(&mut self, info: &ContainerInfo, now: Millis) -> Change {
        self.apply(info, now)
    }

    fn apply(&mut self, info: &ContainerInfo, now: Millis) -> Change {
        let parsed = match labels::parse(&info.labels) {
            Ok(p) => p,
            Err(e) => return self.reject(info, &e),
        };
        // Every replica of a service speaks one transport: the first decides.
        let other = self
            .replicas(&parsed.service)
            .into_iter()
            .find(|c| c.id != info.id && c.transport != parsed.transport)
            .map(|c| (c.name.clone(), c.transport));
        if let Some((name, theirs)) = other {
            let e = LabelError::TransportMismatch {
                service: parsed.service,
                theirs,
                by: name,
                ours: parsed.transport,
            };
            return self.reject(info, &e);
        }
        if parsed.transport == Transport::Stdio
            && let Some(reason) = &info.stdio_unservable
        {
            return self.reject(info, &LabelError::StdioUnservable(reason.clone()));
        }
        self.rejected.remove(&info.id);
        // A stdio server is attached through the engine, never dialled.
        let (address, problem) = if parsed.transport == Transport::Stdio {
            (None, None)
        } else {
            dial_address(info, parsed.network.as_deref())
        };
        let next = Container {
            id: info.id.clone(),
            name: info.name.clone(),
            service: parsed.service.clone(),
            port: parsed.port,
            address,
            running: info.running,
            paused: info.paused && !info.running,
            problem,
            transport: parsed.transport,
        };
        match self.containers.get(&info.id) {
            Some(old) if *old == next => Change::Unchanged,
            Some(old) if old.service == next.service => {
                self.containers.insert(info.id.clone(), next);
                Change::Updated {
                    service: parsed.service,
                }
            }
            old => {
                // New container, or a container whose service label changed (re-created).
                if old.is_some() {
                    self.remove(&info.id);
                }
                let svc = self
                    .services
                    .entry(parsed.service.clone())
                    .or_insert_with(|| Service {
                        containers: BTreeSet::new(),
                        since: now,
                    });
                let new_service = svc.containers.is_empty();
                svc.containers.insert(info.id.clone());
                self.containers.insert(info.id.clone(), next);
                Change::Added {
                    service: parsed.service,
                    new_service,
                }
            }
        }
    }

    fn reject(&mut self, info: &ContainerInfo, e: &LabelError) -> Change {
        // A container that was valid and now is not (labels never change in Docker,
        // but be safe): drop it from its service, keep its rejection record.
        let earlier = self.rejected.remove(&info.id);
        self.remove(&info.id);
        if let Some(r) = earlier {
            self.rejected.insert(info.id.clone(), r);
        }
        let reason = e.to_string();
        let service = info
            .labels
            .get(labels::SERVICE)
            .map(|s| s.chars().take(80).collect::<String>());
        let unchanged = self
            .rejected
            .get(&info.id)
            .is_some_and(|r| r.reason == reason);
        self.rejected.insert(
            info.id.clone(),
            Rejected {
                id: info.id.clone(),
                name: info.name.clone(),
                service,
                reason: reason.clone(),
            },
        );
        if unchanged {
            Change::Unchanged
        } else {
            Change::Rejected(reason)
        }
    }

    /// Marks a container stopped (die/stop events: its process is gone).
    /// Returns its service if that changed anything.
    pub fn set_stopped(&mut self, id: &str) -> Option<String> {
        let c = self.containers.get_mut(id)?;
        if !c.running && !c.paused {
            return None;
        }
        c.running = false;
        c.paused = false;
        Some(c.service.clone())
    }

    /// Marks a container paused (pause event: frozen, its process intact).
    /// Returns its service if that changed anything.
    pub fn set_paused(&mut self, id: &str) -> Option<String> {
        let c = self.containers.get_mut(id)?;
        if c.paused {
            return None;
        }
        c.running = false;
        c.paused = true;
        Some(c.service.clone())
    }

    /// Removes a container (destroy event, or gone at resync). Returns its
    /// service and whether the service has no container left.
    pub fn remove(&mut self, id: &str) -> Option<(String, bool)> {
        self.rejected.remove(id);
        let c = self.containers.remove(id)?;
        let empty = match self.services.get_mut(&c.service) {
            Some(s) => {
                s.containers.remove(id);
                s.containers.is_empty()
            }
            None => true,
        };
        if empty {
            self.services.remove(&c.service);
        }
        Some((c.service, empty))
    }

    /// Container ids currently known (registered or rejected).
    pub fn known_ids(&self) -> BTreeSet<String> {
        self.containers
            .keys()
            .chain(self.rejected.keys())
            .cloned()
            .collect()
    }

    /// Services, by name.
    pub fn services(&self) -> &BTreeMap<String, Service> {
        &self.services
    }

    /// A container by id.
    pub fn container(&self, id: &str) -> Option<&Container> {
        self.containers.get(id)
    }

    /// The containers of a service, in id order.
    pub fn replicas(&self, service: &str) -> Vec<&Container> {
        self.services
            .get(service)
            .map(|s| {
                s.containers
                    .iter()
                    .filter_map(|id| self.containers.get(id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Running replicas that can be dialled, each with the short id that
    /// names it in the session ids clients see.
    pub fn endpoints(&self, service: &str) -> Vec<Upstream> {
        self.replicas(service)
            .into_iter()
            .filter(|c| c.running)
            .filter_map(Container::upstream)
            .collect()
    }

    /// The replicas that do not run now but whose MCP sessions wait for
    /// them rather than end: a paused one (any transport: its process is
    /// frozen, not gone), and a stopped `stdio` one (the bridge carries its
    /// sessions over to the container's next process). Other stopped
    /// replicas' sessions end with their process.
    pub fn waiting(&self, service: &str) -> Vec<Upstream> {
        self.replicas(service)
            .into_iter()
            .filter(|c| !c.running && (c.paused || c.transport == Transport::Stdio))
            .filter_map(Container::upstream)
            .collect()
    }

    /// What a service speaks (its replicas agree; the default when it has none).
    pub fn transport(&self, service: &str) -> Transport {
        self.replicas(service)
            .first()
            .map_or(Transport::default(), |c| c.transport)
    }

    /// Rejected containers.
    pub fn rejected(&self) -> impl Iterator<Item = &Rejected> {
        self.rejected.values()
    }

    /// Duplicate registration attempts so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

/// A container of `service` on the default bridge network, for tests.
#[cfg(test)]
pub(crate) fn sample(id: &str, service: &str, running: bool) -> ContainerInfo {
    ContainerInfo {
        id: id.into(),
        name: format!("c-{id}"),
        labels: [(labels::SERVICE.to_string(), service.to_string())].into(),
        networks: vec![("bridge".into(), "172.17.0.2".parse().ok())],
        running,
        paused: false,
        stdio_unservable: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, service: &str, running: bool) -> ContainerInfo {
        sample(id, service, running)
    }

    #[test]
    fn replicas_of_one_service_speak_one_transport() {
        let mut r = Registry::new();
        let mut sse = info("a", "docs", true);
        sse.labels
            .insert(labels::TRANSPORT.to_string(), "sse".to_string());
        assert!(matches!(r.observe(&sse, 1), Change::Added { .. }));
        assert_eq!(r.transport("docs"), Transport::Sse, "the replica decides");
        assert_eq!(r.transport("none"), Transport::default());
        // A second replica with the default transport disagrees: rejected.
        assert!(matches!(
            r.observe(&info("b", "docs", true), 2),
            Change::Rejected(_)
        ));
        assert_eq!(r.rejected().count(), 1);
        assert_eq!(r.services()["docs"].containers.len(), 1);
        // The first replica observed again is not judged against itself.
        assert_eq!(r.observe(&sse, 3), Change::Unchanged);
    }

    #[test]
    fn stdio_replicas_need_open_stdin_and_no_address_and_are_listed_when_stopped() {
        let mut r = Registry::new();
        let stdio = |id: &str, running: bool, unservable: Option<&str>| {
            let mut c = info(id, "tools", running);
            c.labels
                .insert(labels::TRANSPORT.to_string(), "stdio".to_string());
            c.networks.clear();
            c.stdio_unservable = unservable.map(str::to_string);
            c
        };
        let refused = r.observe(&stdio("c", true, Some("its stdin is closed")), 1);
        assert!(
            matches!(&refused, Change::Rejected(why) if why.contains("stdin is closed")),
            "{refused:?}"
        );
        assert!(matches!(
            r.observe(&stdio("a", true, None), 1),
            Change::Added { .. }
        ));
        assert!(matches!(
            r.observe(&stdio("b", false, None), 1),
            Change::Added { .. }
        ));
        let keys = |u: Vec<Upstream>| u.into_iter().map(|u| u.key.to_string()).collect::<Vec<_>>();
        assert_eq!(keys(r.endpoints("tools")), ["a"], "no address needed");
        assert_eq!(keys(r.waiting("tools")), ["b"]);
        assert!(r.container("a").unwrap().problem.is_none());
        // The same container served over HTTP would need an address.
        let mut http = info("h", "web", true);
        http.networks.clear();
        let _ = r.observe(&http, 1);
        assert!(r.endpoints("web").is_empty());
        assert!(
            r.waiting("web").is_empty(),
            "only stdio lists stopped replicas"
        );
    }

    #[test]
    fn a_container_whose_service_changed_moves_to_the_new_service() {
        let mut r = Registry::new();
        let _ = r.observe(&info("a", "docs", true), 1);
        assert_eq!(
            r.observe(&info("a", "wiki", true), 2),
            Change::Added {
                service: "wiki".into(),
                new_service: true
            }
        );
        assert!(
            !r.services().contains_key("docs"),
            "{:?}",
            r.services().keys()
        );
    }

    #[test]
    fn registration_is_idempotent_and_counts_duplicates() {
        let mut r = Registry::new();
        assert_eq!(
            r.register(&info("a", "docs", true), 1),
            Change::Added {
                service: "docs".into(),
                new_service: true
            }
        );
        assert_eq!(r.register(&info("a", "docs", true), 2), Change::Duplicate);
        assert_eq!(r.register(&info("a", "docs", true), 3), Change::Duplicate);
        assert_eq!(r.duplicates(), 2);
        // A resync observing it counts nothing.
        assert_eq!(r.observe(&info("a", "docs", true), 4), Change::Unchanged);
        assert_eq!(r.duplicates(), 2);
        // A restart after a stop is a state change, not a duplicate.
        r.set_stopped("a");
        assert_eq!(
            r.register(&info("a", "docs", true), 5),
            Change::Updated {
                service: "docs".into()
            }
        );
        assert_eq!(r.duplicates(), 2);
        assert_eq!(r.services()["docs"].since, 1);
    }

    #[test]
    fn a_paused_replica_takes_no_new_work_but_its_sessions_wait_for_it() {
        let mut r = Registry::new();
        let _ = r.register(&info("a", "docs", true), 0);
        let _ = r.register(&info("b", "docs", true), 0);
        let keys = |u: Vec<Upstream>| u.into_iter().map(|u| u.key.to_string()).collect::<Vec<_>>();
        assert_eq!(r.set_paused("a"), Some("docs".into()));
        assert_eq!(r.set_paused("a"), None, "once per state change");
        assert_eq!(keys(r.endpoints("docs")), ["b"]);
        assert_eq!(keys(r.waiting("docs")), ["a"], "an HTTP replica too");
        // The unpause event registers it again: a state change, not a duplicate.
        assert!(matches!(
            r.register(&info("a", "docs", true), 1),
            Change::Updated { .. }
        ));
        assert_eq!(r.duplicates(), 0);
        assert_eq!(r.endpoints("docs").len(), 2);
        assert!(r.waiting("docs").is_empty());
        // A paused container that is then stopped has no sessions to keep.
        let _ = r.set_paused("b");
        assert_eq!(r.set_stopped("b"), Some("docs".into()));
        assert!(r.waiting("docs").is_empty());
        // A resync that lists it paused says the same as the event.
        let listed = ContainerInfo {
            running: false,
            paused: true,
            ..info("a", "docs", false)
        };
        assert!(matches!(r.observe(&listed, 2), Change::Updated { .. }));
        assert_eq!(keys(r.waiting("docs")), ["a"]);
    }

    #[test]
    fn replicas_group_and_removal_empties_service() {
        let mut r = Registry::new();
        r.register(&info("a", "docs", true), 0);
        assert_eq!(
            r.register(&info("b", "docs", true), 0),
            Change::Added {
                service: "docs".into(),
                new_service: false
            }
        );
        assert_eq!(r.endpoints("docs").len(), 2);
        assert_eq!(r.remove("a"), Some(("docs".into(), false)));
        assert_eq!(r.remove("b"), Some(("docs".into(), true)));
        assert!(r.services().is_empty());
        assert_eq!(r.remove("b"), None);
    }

    #[test]
    fn bad_labels_are_rejected_once_with_reason() {
        let mut r = Registry::new();
        let bad = info("x", "Not Valid", true);
        assert!(
            matches!(r.register(&bad, 0), Change::Rejected(ref why) if why.contains("invalid"))
        );
        assert_eq!(
            r.register(&bad, 0),
            Change::Unchanged,
            "one log line per state change"
        );
        assert_eq!(r.rejected().count(), 1);
        assert!(r.services().is_empty());
        let mut wrong_net = info("y", "docs", true);
        wrong_net
            .labels
            .insert(labels::NETWORK.into(), "mesh".into());
        r.register(&wrong_net, 0);
        assert!(
            r.container("y")
                .unwrap()
                .problem
                .as_deref()
                .unwrap()
                .contains("mesh")
        );
        assert!(r.endpoints("docs").is_empty());
    }
}
