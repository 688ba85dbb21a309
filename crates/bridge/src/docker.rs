//! The Docker watcher: turns the engine's truth into [`Event`]s for the app.
//!
//! Order on every (re)connect: the event subscription is opened with `since`
//! set just before the container list is taken, so nothing falls between the
//! two; events the list already reflects are marked `replayed` and are applied
//! as observations (they count no duplicate registration). A full resync runs
//! every `--resync`. On a lost connection the app keeps serving what it knows,
//! `docker_connected` goes to 0, and the watcher reconnects with jittered
//! exponential backoff, resyncing on reconnect.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::query_parameters::{EventsOptions, InspectContainerOptions, ListContainersOptions};
use futures_util::StreamExt;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::labels;
use crate::metrics::Metrics;
use crate::registry::ContainerInfo;

/// Longest a single list or inspect call may take before the connection is
/// taken as lost. A cut connection (packets dropped) otherwise hangs the
/// call for good and the bridge never notices the engine is gone.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the watcher tells the app.
#[derive(Debug)]
pub enum Event {
    /// The event stream is (re)connected; a resync follows.
    Connected,
    /// The engine cannot be reached (sent once per state change).
    Disconnected {
        /// Why, for the log and /readyz.
        reason: String,
    },
    /// The engine refuses connections: its process is gone, so its
    /// containers are stopping or restarting and their addresses are not to
    /// be trusted until the next resync (sent once per outage).
    EngineDown,
    /// A container started, restarted or was unpaused.
    Started {
        /// What Docker says about it now.
        info: ContainerInfo,
        /// When Docker emitted the event (registration latency starts here).
        at: SystemTime,
        /// The event predates the last list: apply as an observation.
        replayed: bool,
    },
    /// A container stopped running (die, stop): its process is gone.
    Stopped {
        /// Container id.
        id: String,
    },
    /// A container was frozen (`docker pause`): it serves nothing until
    /// unpaused (a `Started` event), but its process and the MCP sessions
    /// it holds are intact.
    Paused {
        /// Container id.
        id: String,
    },
    /// A container was removed.
    Destroyed {
        /// Container id.
        id: String,
    },
    /// A full list of the labelled containers.
    Resync {
        /// Every container carrying the service label, running or not.
        containers: Vec<ContainerInfo>,
        /// When the list was taken.
        started: Instant,
    },
}

/// Errors of the watcher.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine could not be reached or answered with an error.
    #[error("docker engine at {host}: {source}")]
    Engine {
        /// The engine address.
        host: String,
        /// bollard's error.
        source: bollard::errors::Error,
    },
}

impl DockerError {
    /// Whether the engine refused the connection (nobody listens: the engine
    /// process is down), as opposed to a cut, a timeout or an API error.
    pub fn engine_refused(&self) -> bool {
        let DockerError::Engine { source, .. } = self;
        match source {
            bollard::errors::Error::HyperLegacyError { err } => {
                err.is_connect()
                    && std::error::Error::source(err)
                        .and_then(|e| e.downcast_ref::<std::io::Error>())
                        .is_none_or(|io| {
                            matches!(
                                io.kind(),
                                std::io::ErrorKind::ConnectionRefused
                                    | std::io::ErrorKind::NotFound
                            )
                        })
            }
            bollard::errors::Error::SocketNotFoundError(_) => true,
            bollard::errors::Error::IOError { err } => matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ),
            _ => false,
        }
    }
}

/// Connects to `host` (or `DOCKER_HOST`, or the local socket) and agrees on an API version.
pub async fn connect(host: Option<&str>) -> Result<Docker, DockerError> {
    let shown = host
        .map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
    let engine = |source| DockerError::Engine {
        host: shown.clone(),
        source,
    };
    let docker = match host {
        Some(h) => Docker::connect_with_host(h),
        None => Docker::connect_with_defaults(),
    }
    .map_err(engine)?
    // Bounds the wait for every response's headers (bollard's default is 120 s).
    .with_timeout(CALL_TIMEOUT);
    let docker = docker.negotiate_version().await.map_err(engine)?;
    docker.ping().await.map_err(engine)?;
    Ok(docker)
}

fn label_filter() -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![labels::SERVICE.to_string()])])
}

fn parse_networks<I>(networks: I) -> Vec<(String, Option<IpAddr>)>
where
    I: IntoIterator<Item = (String, Option<String>)>,
{
    let mut out: Vec<(String, Option<IpAddr>)> = networks
        .into_iter()
        .map(|(name, ip)| (name, ip.and_then(|s| s.parse().ok())))
        .collect();
    // Docker returns networks as a map; sort so "the first" is stable.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Lists every container carrying the service label.
pub async fn list(docker: &Docker) -> Result<Vec<ContainerInfo>, bollard::errors::Error> {
    let opts = ListContainersOptions {
        all: true,
        filters: Some(label_filter()),
        ..Default::default()
    };
    let summaries = docker.list_containers(Some(opts)).await?;
    let mut infos: Vec<ContainerInfo> = summaries
        .into_iter()
        .filter_map(|s| {
            let id = s.id?;
            let running = matches!(
                s.state,
                Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            );
            let paused = matches!(
                s.state,
                Some(bollard::models::ContainerSummaryStateEnum::PAUSED)
            );
            let networks = s
                .network_settings
                .and_then(|n| n.networks)
                .unwrap_or_default()
                .into_iter()
                .map(|(name, ep)| (name, ep.ip_address.filter(|ip| !ip.is_empty())));
            Some(ContainerInfo {
                name: s
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_else(|| id.chars().take(12).collect()),
                id,
                labels: s.labels.unwrap_or_default(),
                networks: parse_networks(networks),
                running,
                paused,
                stdio_unservable: None,
            })
        })
        .collect();
    // The list does not say how a container's stdin was set up; a stdio
    // server's registration needs it.
    for info in infos.iter_mut().filter(|i| is_stdio(&i.labels)) {
        if let Some(full) = inspect(docker, &info.id).await? {
            *info = full;
        }
    }
    Ok(infos)
}

fn is_stdio(labels: &HashMap<String, String>) -> bool {
    labels
        .get(crate::contract::labels::TRANSPORT)
        .is_some_and(|t| t.trim() == crate::contract::labels::Transport::Stdio.as_str())
}

/// Inspects one container; None when it is already gone.
pub async fn inspect(
    docker: &Docker,
    id: &str,
) -> Result<Option<ContainerInfo>, bollard::errors::Error> {
    let r = match docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
    {
        Ok(r) => r,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let state = r.state.unwrap_or_default();
    let paused = state.paused.unwrap_or(false);
    let running = state.running.unwrap_or(false) && !paused;
    let config = r.config.unwrap_or_default();
    let labels = config.labels.clone().unwrap_or_default();
    let stdio_unservable = is_stdio(&labels)
        .then(|| crate::stdio::attach::unservable(&config).map(str::to_string))
        .flatten();
    let networks = r
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, ep)| (name, ep.ip_address.filter(|ip| !ip.is_empty())));
    Ok(Some(ContainerInfo {
        id: r.id.unwrap_or_else(|| id.to_string()),
        name: r
            .name
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default(),
        labels,
        networks: parse_networks(networks),
        running,
        paused,
        stdio_unservable,
    }))
}

/// The watcher task.
#[derive(Debug)]
pub struct Watcher {
    /// `--docker-host`, if given.
    pub host: Option<String>,
    /// `--resync`.
    pub resync: Duration,
    /// Where events go.
    pub tx: mpsc::Sender<Event>,
    /// Metrics.
    pub metrics: Metrics,
}

enum Ended {
    Shutdown,
    Lost(String),
}

fn unix_nanos(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

impl Watcher {
    /// Runs until `shutdown` is cancelled or the app stops listening.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        let mut connected_once = false;
        let mut down_reported = false;
        let mut refused_reported = false;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let docker = tokio::select! {
                () = shutdown.cancelled() => return,
                r = connect(self.host.as_deref()) => r,
            };
            let ended = match docker {
                Ok(docker) => {
                    if connected_once {
                        self.metrics.docker_reconnects.inc();
                    }
                    connected_once = true;
                    down_reported = false;
                    refused_reported = false;
                    backoff = Duration::from_millis(200);
                    self.session(&docker, &shutdown).await
                }
                Err(e) => {
                    if e.engine_refused() && !refused_reported {
                        refused_reported = true;
                        if self.tx.send(Event::EngineDown).await.is_err() {
                            return;
                        }
                    }
                    Ended::Lost(e.to_string())
                }
            };
            self.metrics.docker_connected.set(0);
            match ended {
                Ended::Shutdown => return,
                Ended::Lost(reason) => {
                    if !down_reported {
                        tracing::warn!(%reason, "docker engine unreachable; serving what is known and reconnecting");
                        down_reported = true;
                        if self.tx.send(Event::Disconnected { reason }).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let jitter = rand::rng().random_range(0.5..1.5);
            let wait = backoff.mul_f64(jitter);
            // Capped low: while the engine is away new connections wait for the resync.
            backoff = (backoff * 2).min(Duration::from_secs(2));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One connected session: subscribe, list, then stream events and resync
    /// periodically until the stream fails.
    async fn session(&self, docker: &Docker, shutdown: &CancellationToken) -> Ended {
        // Subscribe from just before the list so nothing falls between.
        let listed_at = SystemTime::now();
        let since = listed_at - Duration::from_secs(1);
        let since_arg = since
            .duration_since(UNIX_EPOCH)
            .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
            .unwrap_or_default();
        let mut filters = label_filter();
        filters.insert("type".into(), vec!["container".into()]);
        let mut events = docker.events(Some(EventsOptions {
            since: Some(since_arg),
            until: None,
            filters: Some(filters),
        }));
        let started = Instant::now();
        let containers = match tokio::time::timeout(CALL_TIMEOUT, list(docker)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Ended::Lost(e.to_string()),
            Err(_) => return Ended::Lost(format!("listing containers took over {CALL_TIMEOUT:?}")),
        };
        // Events up to the latest list are already reflected by it.
        let mut listed_ns = unix_nanos(SystemTime::now());
        self.metrics.docker_connected.set(1);
        tracing::info!(
            containers = containers.len(),
            "connected to the docker engine"
        );
        if self.tx.send(Event::Connected).await.is_err()
            || self
                .tx
                .send(Event::Resync {
                    containers,
                    started,
                })
                .await
                .is_err()
        {
            return Ended::Shutdown;
        }
        let mut ticker = tokio::time::interval(self.resync);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate; the list above was it
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ended::Shutdown,
                _ = ticker.tick() => {
                    let started = Instant::now();
                    match list(docker).await {
                        Ok(containers) => {
                            listed_ns = unix_nanos(SystemTime::now());
                            if self.tx.send(Event::Resync { containers, started }).await.is_err() {
                                return Ended::Shutdown;
                            }
                        }
                        Err(e) => return Ended::Lost(e.to_string()),
                    }
                }
                next = events.next() => {
                    let msg = match next {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => return Ended::Lost(e.to_string()),
                        None => return Ended::Lost("event stream ended".into()),
                    };
                    let action = msg.action.unwrap_or_default();
                    self.metrics.docker_event(&action);
                    let Some(id) = msg.actor.and_then(|a| a.id) else { continue };
                    let at_ns = msg.time_nano.map(i128::from).unwrap_or_else(|| {
                        msg.time.map(|s| i128::from(s) * 1_000_000_000).unwrap_or(0)
                    });
                    let at = UNIX_EPOCH + Duration::from_nanos(u64::try_from(at_ns).unwrap_or(0));
                    let base = action.split(':').next().unwrap_or("");
                    let event = match base {
                        "start" | "restart" | "unpause" => {
                            match tokio::time::timeout(CALL_TIMEOUT, inspect(docker, &id))
                                .await
                                .unwrap_or_else(|_| Err(bollard::errors::Error::RequestTimeoutError))
                            {
                                // `restart` comes after the `start` of the same
                                // restart, and `unpause` thaws a registered
                                // container: observations, not registrations.
                                Ok(Some(info)) => Event::Started {
                                    info,
                                    at,
                                    replayed: at_ns <= listed_ns || base != "start",
                                },
                                Ok(None) => continue,
                                Err(e) => return Ended::Lost(e.to_string()),
                            }
                        }
                        "die" | "stop" => Event::Stopped { id },
                        "pause" => Event::Paused { id },
                        "destroy" => Event::Destroyed { id },
                        _ => continue,
                    };
                    if self.tx.send(event).await.is_err() {
                        return Ended::Shutdown;
                    }
                }
            }
        }
    }
}
