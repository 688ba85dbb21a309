//! Who owns a Docker object the harness created, and the removal of what a
//! killed run left behind.
//!
//! Every container, network and volume that a scenario run or the bench
//! creates on the host engine carries [`LABEL`]`=<pid of the xtask process>`.
//! A run that ends (normally, with an error, or on SIGINT/SIGTERM) removes its
//! own objects; a run killed with SIGKILL cannot, so each new run first calls
//! [`sweep_dead`], which removes every labelled object whose owner process is
//! gone and says how many it removed. Objects of a live owner (a concurrent
//! run, or a test running beside this one) are never touched. The same sweep
//! stops the harness's own child processes (a scenario's Prometheus) that a
//! killed run orphaned: they are recognised by their data directory under the
//! run root, and by a parent that is no longer an xtask.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

/// The owner label's key.
pub const LABEL: &str = "mesh-bridge.owner";

/// This process's owner label value.
pub fn me() -> String {
    std::process::id().to_string()
}

/// `mesh-bridge.owner=<this pid>`, as `docker run --label` takes it.
pub fn label() -> String {
    format!("{LABEL}={}", me())
}

/// The kinds of Docker object the harness creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `docker ps -a` / `docker rm -fv` (anonymous volumes go with it).
    Container,
    /// `docker network ls` / `docker network rm`.
    Network,
    /// `docker volume ls` / `docker volume rm -f`.
    Volume,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Container, Kind::Network, Kind::Volume];

    fn list_args(self) -> [&'static str; 2] {
        match self {
            Kind::Container => ["ps", "-a"],
            Kind::Network => ["network", "ls"],
            Kind::Volume => ["volume", "ls"],
        }
    }

    fn id_format(self) -> &'static str {
        match self {
            Kind::Volume => "{{.Name}}",
            _ => "{{.ID}}",
        }
    }

    fn rm_args(self) -> &'static [&'static str] {
        match self {
            Kind::Container => &["rm", "-fv"],
            Kind::Network => &["network", "rm"],
            Kind::Volume => &["volume", "rm", "-f"],
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Container => "container",
            Kind::Network => "network",
            Kind::Volume => "volume",
        }
    }
}

/// `(id, owner pid)` of every object of `kind` carrying the owner label.
pub fn list(kind: Kind) -> Vec<(String, String)> {
    let format = format!("{} {{{{.Label \"{LABEL}\"}}}}", kind.id_format());
    let out = crate::docker::docker(kind.list_args())
        .args(["--filter", &format!("label={LABEL}"), "--format", &format])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let Ok(out) = out else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next().unwrap_or("").to_string()))
        })
        .collect()
}

/// Whether a process with this pid runs on this machine.
pub fn pid_alive(pid: &str) -> bool {
    !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && Path::new("/proc").join(pid).exists()
}

/// Removes the objects of `kind` with these ids (in chunks; errors ignored:
/// an object already gone is what we wanted).
fn remove(kind: Kind, ids: &[String]) {
    for chunk in ids.chunks(50) {
        let _ = crate::docker::docker(kind.rm_args())
            .args(chunk)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes every object owned by `pid` (containers first: a network or volume
/// in use cannot go).
pub fn remove_owned_by(pid: &str) {
    for kind in Kind::ALL {
        let ids: Vec<String> = list(kind)
            .into_iter()
            .filter(|(_, owner)| owner == pid)
            .map(|(id, _)| id)
            .collect();
        remove(kind, &ids);
    }
}

/// The parent pid and argv of a process, from /proc.
fn proc_info(pid: &str) -> Option<(String, Vec<String>)> {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces, so cut after ')'.
    let ppid = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .to_string();
    let cmdline = std::fs::read(Path::new("/proc").join(pid).join("cmdline")).ok()?;
    let argv = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some((ppid, argv))
}

fn is_xtask(pid: &str) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid).join("comm"))
        .is_ok_and(|c| c.trim() == "xtask")
}

/// Pids of Prometheus servers started for a run under `run_root` whose
/// parent is no longer an xtask process.
fn orphaned_children(run_root: &Path) -> Vec<String> {
    let marker = format!("--storage.tsdb.path={}", run_root.display());
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let (ppid, argv) = proc_info(&pid)?;
            let ours = argv.first().is_some_and(|a| a.ends_with("prometheus"))
                && argv.iter().any(|a| a.starts_with(&marker));
            (ours && !is_xtask(&ppid)).then_some(pid)
        })
        .collect()
}

/// Removes what runs killed with SIGKILL left behind: every labelled object
/// whose owner process is gone, and the orphaned Prometheus servers of runs
/// under `run_root`. Prints one line when it removed anything and returns
/// how many objects and processes it removed.
pub fn sweep_dead(run_root: &Path, say: &dyn Fn(&str)) -> usize {
    let me = me();
    let mut removed = Vec::new();
    let mut total = 0;
    let mut owners = BTreeSet::new();
    for kind in Kind::ALL {
        let dead: Vec<(String, String)> = list(kind)
            .into_iter()
            .filter(|(_, owner)| *owner != me && !pid_alive(owner))
            .collect();
        if dead.is_empty() {
            continue;
        }
        owners.extend(dead.iter().map(|(_, o)| o.clone()));
        let ids: Vec<String> = dead.into_iter().map(|(id, _)| id).collect();
        remove(kind, &ids);
        total += ids.len();
        removed.push(format!(
            "{} {}{}",
            ids.len(),
            kind.noun(),
            if ids.len() == 1 { "" } else { "s" }
        ));
    }
    let orphans = orphaned_children(run_root);
    if !orphans.is_empty() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&orphans)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
        total += orphans.len();
        removed.push(format!(
            "{} orphaned prometheus ({})",
            orphans.len(),
            orphans.join(", ")
        ));
    }
    if total > 0 {
        say(&format!(
            "removed leftovers of killed runs: {} (label {LABEL}, owner pids [{}] no longer running)",
            removed.join(", "),
            owners.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    total
}
