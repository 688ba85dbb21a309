//! The topology: the DinD engine (testcontainers, privileged-equivalent
//! flags), the images loaded into it, and the bridge, stubs and squatters
//! placed in it ([`Topo`]).

use super::*;

/// Fails unless the image exists locally (so nothing is ever pulled).
pub(super) async fn require_image(docker: &Docker, image: &str) -> Result<()> {
    docker
        .run(&["image", "inspect", "--format", "{{.Id}}", image])
        .await
        .map(drop)
        .with_context(|| {
            format!("{image} is missing locally; run `cargo xtask images` (no registry is used)")
        })
}

pub(super) fn free_local_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The loop around the DinD entrypoint: a dockerd that exits (engine-restart
/// fault) is started again; the container ends when /tmp/stop exists.
pub(super) const DIND_LOOP: &str =
    "while :; do /usr/local/bin/dind-entrypoint; [ -e /tmp/stop ] && exit 0; sleep 0.3; done";

/// Starts the DinD container through testcontainers; `--privileged` first,
/// then the privileged-equivalent flags if the engine refuses it.
pub(super) async fn start_dind(
    ports: &[u16],
    labels: &[(String, String)],
    say: &(dyn Fn(&str) + Sync),
) -> Result<(ContainerAsync<GenericImage>, String)> {
    let mut last_err = String::new();
    for privileged in [true, false] {
        let (repo, tag) = dind_image();
        let mut img = GenericImage::new(repo, tag)
            .with_entrypoint("/usr/bin/tini")
            .with_wait_for(WaitFor::Nothing)
            .with_exposed_port(ContainerPort::Tcp(2375))
            .with_exposed_port(ContainerPort::Tcp(API_PORT));
        for p in ports {
            img = img.with_exposed_port(ContainerPort::Tcp(*p));
        }
        let mut all: Vec<u16> = vec![2375, API_PORT];
        all.extend_from_slice(ports);
        let mut req = img
            .with_cmd(["--", "/bin/sh", "-c", DIND_LOOP])
            .with_cgroupns_mode(CgroupnsMode::Private)
            .with_startup_timeout(Duration::from_secs(60))
            .with_env_var("DIND_SHUTDOWN_TIMEOUT", "2");
        for (k, v) in labels {
            req = req.with_label(k.clone(), v.clone());
        }
        if privileged {
            req = req.with_privileged(true);
        } else {
            req = req
                .with_cap_add("ALL")
                .with_cap_drop("SYS_RESOURCE")
                .with_security_opt("seccomp=unconfined")
                .with_security_opt("apparmor=unconfined");
        }
        let req = req.with_host_config_modifier(move |hc: &mut HostConfig| {
            let mut b = HashMap::new();
            for p in &all {
                b.insert(
                    format!("{p}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                );
            }
            hc.port_bindings = Some(b);
            if !privileged {
                // The API form of the CLI's `--security-opt systempaths=unconfined`.
                hc.masked_paths = Some(Vec::new());
                hc.readonly_paths = Some(Vec::new());
            }
        });
        match req.start().await {
            Ok(c) => {
                let how = if privileged {
                    "--privileged".to_string()
                } else {
                    "privileged-equivalent flags (--cap-add ALL --cap-drop SYS_RESOURCE, seccomp/apparmor/systempaths unconfined)".to_string()
                };
                return Ok((c, how));
            }
            Err(e) => {
                last_err = format!("{e:#}");
                say(&format!(
                    "DinD start with privileged={privileged} refused: {last_err}"
                ));
                sweep(&format!("{}={}", labels[1].0, labels[1].1));
            }
        }
    }
    bail!("the DinD container could not be started: {last_err}")
}

/// Polls until `docker info` answers on `docker` (bounded).
pub(super) async fn wait_engine(docker: &Docker, limit: Duration) -> Result<()> {
    let what = format!("engine {:?} to answer `docker info`", docker.host);
    let info = || async {
        let args = ["info", "--format", "{{.ServerVersion}}"];
        docker
            .run_timeout(&args, Duration::from_secs(5))
            .await
            .map(drop)
            .map_err(|e| format!("{e:#}"))
    };
    let every = Duration::from_millis(500);
    mesh_chaos::wait::until_every_async(&what, limit, every, info).await?;
    Ok(())
}

/// The running topology.
pub(super) struct Topo {
    pub(super) target: Target,
    pub(super) ports: PortMap,
    pub(super) engine: Engine,
    pub(super) labels: Vec<String>,
    /// The scenario's services by name (how each is started); services a
    /// fault creates are stateless stubs.
    pub(super) specs: HashMap<String, ServiceSpec>,
}

impl Topo {
    /// This run's service containers on the inner engine that match a
    /// fault's target (a service, a `K=V` label, or every service).
    pub(super) async fn containers(&self, target: Option<&str>) -> Result<Vec<faults::Container>> {
        let mut filters = faults::target_labels(target);
        filters.extend(self.labels.iter().cloned());
        self.target.inner.list(&filters).await
    }

    /// Starts `name` as a stub container of `service` on the service engine.
    pub(super) async fn start_stub(&self, name: &str, service: &str) -> Result<()> {
        let args = self.stub_args(name, service);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.target.inner.run(&argv).await.map(drop)
    }

    /// Whether `service` is a stdio service (no network between the
    /// bridge and it: the network faults pass it by).
    pub(super) fn is_stdio(&self, service: &str) -> bool {
        self.specs
            .get(service)
            .is_some_and(|s| s.transport == ServiceTransport::Stdio)
    }

    /// Whether `service` keeps sessions (its clients cannot fail over).
    pub(super) fn has_sessions(&self, service: &str) -> bool {
        self.specs
            .get(service)
            .is_some_and(|s| s.transport != ServiceTransport::Stateless)
    }

    /// `docker run` arguments of one replica of `service`, as its spec
    /// says (the stateless stub for services a fault creates).
    pub(super) fn stub_args(&self, name: &str, service: &str) -> Vec<String> {
        let (transport, server) = self
            .specs
            .get(service)
            .map_or((ServiceTransport::Stateless, ServerKind::Stub), |s| {
                (s.transport, s.server)
            });
        let mut args = vec!["run".to_string(), "-d".into(), "--name".into(), name.into()];
        for l in &self.labels {
            args.push("--label".into());
            args.push(l.clone());
        }
        args.extend(
            [
                "--label",
                &format!("{}={service}", faults::SERVICE_LABEL),
                "-e",
                &format!("MCP_STUB_NAME={service}"),
                "-e",
                &format!("MCP_STUB_REPLICA={name}"),
                "--restart",
                "unless-stopped",
            ]
            .map(String::from),
        );
        match transport {
            ServiceTransport::Stateless => {}
            ServiceTransport::Stateful => {
                args.extend(["-e".into(), "MCP_STUB_STATEFUL=1".into()]);
            }
            ServiceTransport::Stdio => {
                // stdin kept open, no TTY: what the bridge needs to attach.
                let label = format!("{}={}", labels::TRANSPORT, Transport::Stdio.as_str());
                args.extend([
                    "-i".into(),
                    "--no-healthcheck".into(),
                    "--label".into(),
                    label,
                ]);
            }
        }
        if self.engine == Engine::Host {
            args.extend(["--network".to_string(), self.target.bridge_netns_net()]);
        }
        match (transport, server) {
            (_, ServerKind::McpServerTime) => args.extend(
                [
                    "--entrypoint",
                    "python3",
                    images::MCP_PYTHON,
                    "-m",
                    "mcp_server_time",
                    "--local-timezone",
                    "UTC",
                ]
                .map(String::from),
            ),
            (ServiceTransport::Stdio, ServerKind::Stub) => {
                args.extend([STUB_IMAGE.to_string(), "--stdio".into()]);
            }
            _ => args.push(STUB_IMAGE.into()),
        }
        args
    }
}

pub(super) trait NetExt {
    fn bridge_netns_net(&self) -> String;
}
impl NetExt for Target {
    /// Host topology: the network the services and the bridge's netns holder share.
    fn bridge_netns_net(&self) -> String {
        format!("{}-net", self.bridge)
    }
}
