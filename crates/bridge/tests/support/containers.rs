//! Docker for the tests: the CLI, the stub image, and [`TestCtx`] with the
//! containers and networks it labels and removes.
#![allow(dead_code)]

use super::*;

// ------------------------------------------------------------- docker ----

pub(crate) fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `docker {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`docker {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs a docker CLI command; panics with its stderr on failure.
#[track_caller]
pub fn docker_ok(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Fails the test (never skips) when the engine cannot be reached.
pub fn require_docker() {
    static OK: OnceLock<Result<(), String>> = OnceLock::new();
    let r = OK.get_or_init(|| {
        docker(&["version", "--format", "{{.Server.Version}}"]).map(drop).map_err(|e| {
            format!(
                "these end-to-end tests need a running Docker Engine reachable by the `docker` CLI \
                 (socket {DOCKER_SOCK}); they fail rather than skip when it is missing: {e}"
            )
        })
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Builds the stub image when it is missing, once per process, serialised
/// across test processes by a file lock under `target/`.
pub fn ensure_stub_image() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        if docker(&["image", "inspect", "--format", "{{.Id}}", STUB_IMAGE]).is_ok() {
            return Ok(());
        }
        let _lock = DirLock::acquire(
            &Path::new(env!("CARGO_TARGET_TMPDIR")).join("mesh-bridge-stub-image.lock"),
            Duration::from_secs(900),
        )?;
        // Another process may have built it while we waited.
        if docker(&["image", "inspect", "--format", "{{.Id}}", STUB_IMAGE]).is_ok() {
            return Ok(());
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
        eprintln!("building {STUB_IMAGE}: {cargo} run -q -p xtask -- images --only stub");
        let out = Command::new(&cargo)
            .args(["run", "-q", "-p", "xtask", "--", "images", "--only", "stub"])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {cargo}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`cargo xtask images --only stub` failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        docker(&["image", "inspect", "--format", "{{.Id}}", STUB_IMAGE])
            .map(drop)
            .map_err(|e| format!("{STUB_IMAGE} still missing after the build: {e}"))
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// A lock between processes: a directory created atomically, holding the
/// owner's pid; a lock whose owner is gone is taken over. (`File::lock` is
/// newer than the workspace's MSRV.)
pub(crate) struct DirLock(PathBuf);

impl DirLock {
    fn acquire(path: &Path, timeout: Duration) -> Result<DirLock, String> {
        let deadline = Instant::now() + timeout;
        if let Some(parent) = path.parent() {
            let _ = fs::create_dir_all(parent);
        }
        loop {
            match fs::create_dir(path) {
                Ok(()) => {
                    let _ = fs::write(path.join("pid"), std::process::id().to_string());
                    return Ok(DirLock(path.to_path_buf()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = fs::read_to_string(path.join("pid")).unwrap_or_default();
                    let age = fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_default();
                    let stale = if owner.trim().is_empty() {
                        age > Duration::from_secs(60)
                    } else {
                        !pid_alive(owner.trim())
                    };
                    if stale {
                        let _ = fs::remove_dir_all(path);
                        continue;
                    }
                }
                Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
            }
            if Instant::now() >= deadline {
                return Err(format!("{} still held after {timeout:?}", path.display()));
            }
            // Another test process is building the image: wait for it.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn pid_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

/// Per-test context: checks the engine and the image, removes containers a
/// killed earlier run of this test left behind, and on drop removes every
/// container carrying this test's label and run.
#[derive(Debug)]
pub struct TestCtx {
    /// The test's name (label value).
    pub name: String,
    /// This process's id (run label value).
    pub run: String,
    seq: AtomicU16,
}

impl TestCtx {
    /// Sets up the context of test `name`.
    pub fn new(name: &str) -> TestCtx {
        require_docker();
        ensure_stub_image();
        let run = std::process::id().to_string();
        // Containers of an earlier run that was killed before its guards ran.
        let stale = docker_ok(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={TEST_LABEL}={name}"),
            "--format",
            &format!("{{{{.ID}}}} {{{{.Label \"{RUN_LABEL}\"}}}}"),
        ]);
        for line in stale.lines() {
            let mut it = line.split_whitespace();
            if let (Some(id), owner) = (it.next(), it.next().unwrap_or(""))
                && owner != run
                && !pid_alive(owner)
            {
                let _ = docker(&["rm", "-f", id]);
            }
        }
        TestCtx {
            name: name.to_string(),
            run,
            seq: AtomicU16::new(0),
        }
    }

    /// Label filters (Docker `label=` syntax) that select this test's containers.
    pub fn label_filters(&self) -> Vec<String> {
        vec![
            format!("{TEST_LABEL}={}", self.name),
            format!("{RUN_LABEL}={}", self.run),
        ]
    }

    /// Starts one stub container for `service` answering as `stub_name`.
    #[track_caller]
    pub fn stub(&self, service: &str, stub_name: &str) -> TestContainer {
        self.container(&[("mesh-bridge.service", service)], stub_name)
    }

    /// Starts one stub container with these labels (plus the test labels).
    #[track_caller]
    pub fn container(&self, labels: &[(&str, &str)], stub_name: &str) -> TestContainer {
        self.container_with(labels, stub_name, &[])
    }

    /// Like [`TestCtx::container`], with extra `docker run` options.
    #[track_caller]
    pub fn container_with(
        &self,
        labels: &[(&str, &str)],
        stub_name: &str,
        options: &[&str],
    ) -> TestContainer {
        let env = format!("MCP_STUB_NAME={stub_name}");
        let mut opts = vec!["-e", env.as_str()];
        opts.extend_from_slice(options);
        self.run_image(STUB_IMAGE, labels, &opts, &[])
    }

    /// Starts a container of `image` with these labels (plus the test
    /// labels), `docker run` options and arguments after the image.
    #[track_caller]
    pub fn run_image(
        &self,
        image: &str,
        labels: &[(&str, &str)],
        options: &[&str],
        cmd: &[&str],
    ) -> TestContainer {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let cname = format!("mb-e2e-{}-{}-{n}", self.name.replace('_', "-"), self.run);
        let test_label = format!("{TEST_LABEL}={}", self.name);
        let run_label = format!("{RUN_LABEL}={}", self.run);
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            cname.clone(),
            "--label".into(),
            test_label,
            "--label".into(),
            run_label,
        ];
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(options.iter().map(|o| o.to_string()));
        args.push(image.into());
        args.extend(cmd.iter().map(|c| c.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = docker_ok(&refs);
        TestContainer { id, name: cname }
    }

    /// Starts stub containers for `(service, stub name)` pairs, a few at a time
    /// in parallel; returned in the order given.
    pub fn stubs(&self, specs: &[(String, String)]) -> Vec<TestContainer> {
        let out: Vec<Mutex<Option<TestContainer>>> =
            specs.iter().map(|_| Mutex::new(None)).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((svc, name)) = specs.get(i) else {
                            break;
                        };
                        *out[i].lock().unwrap() = Some(self.stub(svc, name));
                    }
                });
            }
        });
        out.into_iter()
            .map(|m| m.into_inner().unwrap().expect("container started"))
            .collect()
    }
}

impl Drop for TestCtx {
    fn drop(&mut self) {
        if let Ok(ids) = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={TEST_LABEL}={}", self.name),
            "--filter",
            &format!("label={RUN_LABEL}={}", self.run),
        ]) {
            for id in ids.split_whitespace() {
                let _ = docker(&["rm", "-f", id]);
            }
        }
    }
}

/// A stub container of this test; `docker rm -f` on drop.
#[derive(Debug)]
pub struct TestContainer {
    /// Full id.
    pub id: String,
    /// Container name.
    pub name: String,
}

impl TestContainer {
    /// Removes it now (`docker rm -f`).
    pub fn remove(self) {
        docker_ok(&["rm", "-f", &self.id]);
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.id]);
    }
}

/// A user-defined Docker network of this test; removed on drop (drop it after
/// the containers attached to it).
#[derive(Debug)]
pub struct TestNetwork {
    /// Its name.
    pub name: String,
}

impl TestNetwork {
    /// Creates `mb-e2e-<what>-<pid>` (removing a leftover of that name).
    pub fn create(what: &str) -> TestNetwork {
        require_docker();
        let name = format!("mb-e2e-{what}-{}", std::process::id());
        let _ = docker(&["network", "rm", &name]);
        docker_ok(&[
            "network",
            "create",
            "--label",
            &format!("{TEST_LABEL}={what}"),
            &name,
        ]);
        TestNetwork { name }
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}
