//! `cargo xtask teeth [--only BUG] [--list]`: shows that the reliability
//! suite fails when the bridge regresses. Each entry of [`BUGS`] is a
//! realistic bug (the incident's three among them) written as text edits of
//! the bridge's source. For each bug, one at a time: the edits are applied to
//! a scratch copy of the workspace (`target/teeth/src`; the working tree is
//! never touched), the bridge is built from it (`target/teeth/target`, shared
//! by every bug so dependencies compile once) into the image
//! `mesh-bridge/bridge:teeth`, and the bug's scenarios run against that
//! image. A bug is caught when some invariant of some scenario fails. The
//! table and `target/teeth/report.json` say which scenario and invariant
//! caught each; exit status non-zero when any bug went uncaught.
//! Slow (a release build per bug plus its scenarios, about 2-4 min a bug on
//! 2 cores), so not part of CI.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use crate::interrupt;
use crate::scenario::{self, Engine, RunArgs};

/// The image a patched bridge is tested as.
const TEETH_IMAGE: &str = mesh_bridge::contract::images::BRIDGE_TEETH;

/// One text edit: `find` must occur exactly once in `file`.
#[derive(Debug)]
pub struct Edit {
    /// Path from the workspace root.
    pub file: &'static str,
    /// The text replaced.
    pub find: &'static str,
    /// What replaces it.
    pub replace: &'static str,
}

/// A bug re-introduced on purpose.
#[derive(Debug)]
pub struct Bug {
    /// Short id.
    pub id: &'static str,
    /// What the bug is, in the words of its victims.
    pub what: &'static str,
    /// The invariant expected to catch it.
    pub expected: &'static str,
    /// The edits that introduce it.
    pub edits: &'static [Edit],
    /// The scenarios run against it.
    pub scenarios: &'static [&'static str],
}

/// The bugs, two or more per invariant where a realistic one exists.
pub const BUGS: &[Bug] = &[
    Bug {
        id: "counter-only-grows",
        what: "the cursor only grows and the scan never wraps: a freed port below it is never handed out again (the incident's exhausted range)",
        expected: "I3, I5",
        edits: &[
            Edit {
                file: "crates/bridge/src/pool.rs",
                find: "for i in 1..=words {\n            let w = (w0 + i) % words;",
                replace: "for w in (w0 + 1)..words {",
            },
            Edit {
                file: "crates/bridge/src/pool.rs",
                find: "self.cursor = (off + 1) % self.capacity;",
                replace: "self.cursor = (off + 1).min(self.capacity - 1);",
            },
        ],
        scenarios: &["crowded-pool"],
    },
    Bug {
        id: "restore-skips-bitmap",
        what: "restoring from the store writes the slot but not the free bitmap: after a restart a new service is handed a restored service's port",
        expected: "I3, I5",
        edits: &[Edit {
            file: "crates/bridge/src/pool/restore.rs",
            find: "            RestoreState::Reserved => {\n                self.set_slot(off, Slot::reserved(i));",
            replace: "            RestoreState::Reserved => {\n                self.slots[off] = Slot::reserved(i);",
        }],
        scenarios: &["changing-world"],
    },
    Bug {
        id: "quarantine-looks-free",
        what: "the free bitmap treats quarantined ports as free: a flood takes a port held for a service within grace, which then comes back to it too",
        expected: "I1",
        edits: &[Edit {
            file: "crates/bridge/src/pool.rs",
            find: "        if slot == Slot::FREE {\n            self.bits[w] &= !(1u64 << b);",
            replace: "        if slot == Slot::FREE || matches!(slot.get(), SlotState::Quarantined(_)) {\n            self.bits[w] &= !(1u64 << b);",
        }],
        scenarios: &["comeback"],
    },
    Bug {
        id: "resync-reregisters",
        what: "the periodic resync registers known containers again, counting a duplicate each time (the incident's monitoring loop)",
        expected: "I5",
        edits: &[Edit {
            file: "crates/bridge/src/registry.rs",
            find: "    pub fn observe(&mut self, info: &ContainerInfo, now: Millis) -> Change {\n        self.apply(info, now)",
            replace: "    pub fn observe(&mut self, info: &ContainerInfo, now: Millis) -> Change {\n        self.register(info, now)",
        }],
        scenarios: &["steady"],
    },
    Bug {
        id: "allocations-not-restored",
        what: "the store is written but not read back at start: every restart re-derives the ports from Docker (the incident's 11 of 15 refused connections)",
        expected: "I2",
        edits: &[
            Edit {
                file: "crates/bridge/src/app.rs",
                find: "for r in &snap.reservations {",
                replace: "for r in snap.reservations.iter().take(0) {",
            },
            Edit {
                file: "crates/bridge/src/app.rs",
                find: "for (service, port) in snap.last_ports.iter().rev() {",
                replace: "for (service, port) in snap.last_ports.iter().rev().take(0) {",
            },
        ],
        scenarios: &["changing-world"],
    },
    Bug {
        id: "no-quarantine",
        what: "a released port is free at once, ignoring --grace: a service that comes back within grace can find its port taken",
        expected: "I2",
        edits: &[Edit {
            file: "crates/bridge/src/pool.rs",
            find: "        if self.grace_ms == 0 {\n            self.set_slot(off, Slot::FREE);",
            replace: "        if self.grace_ms < u64::MAX {\n            self.set_slot(off, Slot::FREE);",
        }],
        scenarios: &["comeback", "crowded-pool"],
    },
    Bug {
        id: "catalog-lists-twice",
        what: "the catalog adds every held port's service again from the pool: the incident's catalog of 19 entries for 15 services",
        expected: "I9",
        edits: &[Edit {
            file: "crates/bridge/src/reconcile/views.rs",
            find: "            if named.contains(service) {\n                continue;\n            }",
            replace: "",
        }],
        scenarios: &["steady"],
    },
    Bug {
        id: "leaks-never-released",
        what: "the repair loop never releases the port of a service whose containers vanished unseen",
        expected: "I3, I9",
        edits: &[Edit {
            file: "crates/bridge/src/reconcile/mod.rs",
            find: "if *n >= self.leak_cycles {",
            replace: "if *n >= u32::MAX {",
        }],
        scenarios: &["repair-loop"],
    },
    Bug {
        id: "store-writes-dropped",
        what: "the store transaction is reported written but carries nothing: after a kill -9 the store is empty",
        expected: "I6, I2",
        edits: &[Edit {
            file: "crates/bridge/src/app.rs",
            find: "match store.apply(&removes) {",
            replace: "match store.apply(&removes[..0]) {",
        }],
        scenarios: &["backend-restart"],
    },
    Bug {
        id: "routes-to-any-replica",
        what: "a service's endpoints include every running container, whatever its service: another service answers",
        expected: "I7",
        edits: &[Edit {
            file: "crates/bridge/src/registry.rs",
            find: "        self.replicas(service)\n            .into_iter()\n            .filter(|c| c.running)\n            .filter_map(Container::upstream)",
            replace: "        let _ = service;\n        self.containers\n            .values()\n            .filter(|c| c.running)\n            .filter_map(Container::upstream)",
        }],
        scenarios: &["steady"],
    },
    Bug {
        id: "no-failover",
        what: "a replica that refuses the dial ends the client's connection instead of trying the next replica (ejection then hides it from most clients, so only I4's no-failure promise sees it)",
        expected: "I4",
        edits: &[
            Edit {
                file: "crates/bridge/src/forward/tcp.rs",
                find: "                    Ok(Err(e)) => {\n                        ctx.dial_failed(addr, &endpoints, &mut counted);",
                replace: "                    Ok(Err(e)) => {\n                        ctx.dial_failed(addr, &endpoints, &mut counted);\n                        if !e.to_string().is_empty() {\n                            return None;\n                        }",
            },
            Edit {
                file: "crates/bridge/src/forward/http.rs",
                find: "            Err(SendError::Connect(e, back)) => {\n                out = *back;\n                ctx.dial_failed(up.addr, &endpoints.addrs(), &mut counted);",
                replace: "            Err(SendError::Connect(e, back)) => {\n                out = *back;\n                ctx.dial_failed(up.addr, &endpoints.addrs(), &mut counted);\n                if !e.to_string().is_empty() {\n                    return error(StatusCode::BAD_GATEWAY, \"no failover\");\n                }",
            },
        ],
        scenarios: &["network"],
    },
    Bug {
        id: "stray-listener",
        what: "the API also opens a health listener on the next port up: the bridge holds a port outside --ports that nobody gave it, and whatever else needs that port cannot bind it",
        expected: "I10",
        edits: &[Edit {
            file: "crates/bridge/src/api.rs",
            find: "pub async fn serve(listener: TcpListener, state: ApiState, shutdown: CancellationToken) {\n    let tracker = TaskTracker::new();",
            replace: "pub async fn serve(listener: TcpListener, state: ApiState, shutdown: CancellationToken) {\n    let _health = match listener.local_addr() {\n        Ok(a) => TcpListener::bind((a.ip(), a.port().wrapping_add(1))).await.ok(),\n        Err(_) => None,\n    };\n    let tracker = TaskTracker::new();",
        }],
        scenarios: &["steady"],
    },
    Bug {
        id: "sessions-not-pinned",
        what: "requests of a session go to the replica with the fewest sessions, as a new session's do, instead of the replica that created it: clients of a stateful server lose their sessions at random (404 from a replica that never saw them)",
        expected: "I8",
        edits: &[Edit {
            file: "crates/bridge/src/forward/http.rs",
            find: "                vec![u]\n",
            replace: "                drop(u);\n                ctx.order_by_sessions(&endpoints.upstreams)\n",
        }],
        scenarios: &["sessions"],
    },
    Bug {
        id: "pause-ends-sessions",
        what: "a paused replica is taken for a stopped one: its sessions are told it is gone (404) though its process is only frozen, and every client of it starts over after a `docker pause`",
        expected: "I8",
        edits: &[Edit {
            file: "crates/bridge/src/registry.rs",
            find: ".filter(|c| !c.running && (c.paused || c.transport == Transport::Stdio))",
            replace: ".filter(|c| !c.running && c.transport == Transport::Stdio)",
        }],
        scenarios: &["sessions"],
    },
    Bug {
        id: "stdio-restart-drops-sessions",
        what: "a stdio server's new process starts with no sessions: every client of a restarted container gets 404 and must start over, though the bridge promised its sessions go on",
        expected: "I8",
        edits: &[Edit {
            file: "crates/bridge/src/stdio/process.rs",
            find: "            let out = self.mux.restarted();\n            self.deliver(out);\n",
            replace: "            let out = self.mux.restarted();\n            self.deliver(out);\n            self.mux = Mux::new(self.config.limits);\n            self.streams.clear();\n",
        }],
        scenarios: &["stdio"],
    },
];

/// Flags of `cargo xtask teeth`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Only these bugs (ids; repeat the flag).
    #[arg(long)]
    pub only: Vec<String>,
    /// List the bugs and exit.
    #[arg(long)]
    pub list: bool,
}

/// What one bug's runs showed.
#[derive(Debug)]
struct Outcome {
    bug: &'static Bug,
    /// `(scenario, failed invariant ids or the run's error)`.
    runs: Vec<(String, Result<Vec<String>, String>)>,
    secs: f64,
}

impl Outcome {
    fn caught_by(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter_map(|(s, r)| match r {
                Ok(failed) if !failed.is_empty() => Some(format!("{s}: {}", failed.join(" "))),
                _ => None,
            })
            .collect()
    }
}

fn teeth_dir() -> PathBuf {
    crate::paths::target_dir().join("teeth")
}

/// Copies the workspace's sources (not its target) to `dst`.
fn scratch_copy(dst: &Path) -> Result<()> {
    let root = crate::paths::workspace_root();
    fs::create_dir_all(dst)?;
    for item in ["Cargo.toml", "Cargo.lock", ".cargo", "crates", "xtask"] {
        let from = root.join(item);
        if !from.exists() {
            continue;
        }
        let to = dst.join(item);
        if to.exists() {
            if to.is_dir() {
                fs::remove_dir_all(&to)?;
            } else {
                fs::remove_file(&to)?;
            }
        }
        let st = Command::new("cp")
            .arg("-a")
            .arg(&from)
            .arg(&to)
            .status()
            .context("cannot run cp")?;
        ensure!(st.success(), "copying {} failed", from.display());
    }
    Ok(())
}

/// Applies `edits` under `root`, returning the original texts to restore.
fn apply(root: &Path, edits: &[Edit]) -> Result<Vec<(PathBuf, String)>> {
    let mut originals: Vec<(PathBuf, String)> = Vec::new();
    for e in edits {
        let path = root.join(e.file);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        if !originals.iter().any(|(p, _)| *p == path) {
            originals.push((path.clone(), text.clone()));
        }
        let n = text.matches(e.find).count();
        ensure!(
            n == 1,
            "{}: the text to replace occurs {n} times (the source moved on; update the bug):\n{}",
            e.file,
            e.find
        );
        fs::write(&path, text.replacen(e.find, e.replace, 1))?;
    }
    Ok(originals)
}

/// Runs every chosen bug; prints the table.
pub fn run(args: &Args) -> Result<()> {
    if args.list {
        for b in BUGS {
            println!(
                "{:<26} expected {:<7} scenarios {:<28} {}",
                b.id,
                b.expected,
                b.scenarios.join(","),
                b.what
            );
        }
        return Ok(());
    }
    let chosen: Vec<&'static Bug> = BUGS
        .iter()
        .filter(|b| args.only.is_empty() || args.only.iter().any(|o| o == b.id))
        .collect();
    if chosen.is_empty() {
        bail!("no bug selected; `cargo xtask teeth --list` names them");
    }
    crate::provision::run(&crate::provision::Args { no_images: false })?;
    let t0 = Instant::now();
    let src = teeth_dir().join("src");
    let target = teeth_dir().join("target");
    scratch_copy(&src)?;
    let rt = scenario::runtime()?;
    let mut outcomes = Vec::new();
    for (i, bug) in chosen.iter().enumerate() {
        interrupt::check()?;
        let t = Instant::now();
        println!(
            "[teeth {}/{} {:>5.0}s] {}: {}",
            i + 1,
            chosen.len(),
            t0.elapsed().as_secs_f64(),
            bug.id,
            bug.what
        );
        let originals = apply(&src, bug.edits)?;
        let built = (|| -> Result<()> {
            let mut cmd = crate::release::cargo_in(&src, &target, "build");
            cmd.args(["-p", "mesh-bridge", "--bin", "mesh-bridge"]);
            let st = interrupt::status(&mut cmd)?;
            ensure!(st.success(), "building the patched bridge failed ({st})");
            crate::images::build_bridge_image_as(
                TEETH_IMAGE,
                &target.join(crate::release::TARGET).join("release"),
            )
        })();
        for (path, text) in &originals {
            fs::write(path, text)?;
        }
        built?;
        let mut runs = Vec::new();
        for s in bug.scenarios {
            interrupt::check()?;
            let say = |m: &str| println!("    [{}] {m}", s);
            let r = rt.block_on(scenario::run_named(
                &RunArgs {
                    chosen: crate::scenario::Chosen::named(s, None),
                    engine: Engine::Dind,
                    bridge_image: TEETH_IMAGE.into(),
                },
                &say,
            ));
            let r = r
                .map(|out| {
                    out.report
                        .invariants
                        .iter()
                        .filter(|v| !v.held)
                        .map(|v| v.id.clone())
                        .collect::<Vec<_>>()
                })
                .map_err(|e| format!("{e:#}"));
            runs.push(((*s).to_string(), r));
        }
        let o = Outcome {
            bug,
            runs,
            secs: t.elapsed().as_secs_f64(),
        };
        let caught = o.caught_by();
        println!(
            "[teeth {}/{}] {} -> {}",
            i + 1,
            chosen.len(),
            bug.id,
            if caught.is_empty() {
                "MISSED".to_string()
            } else {
                format!("caught by {}", caught.join("; "))
            }
        );
        outcomes.push(o);
    }
    println!(
        "\n{:<26} {:<8} {:<50} {:>6}",
        "BUG", "EXPECTED", "CAUGHT BY (scenario: failed invariants)", "TIME"
    );
    let mut report = Vec::new();
    let mut missed = 0;
    for o in &outcomes {
        let caught = o.caught_by();
        if caught.is_empty() {
            missed += 1;
        }
        let errors: Vec<String> = o
            .runs
            .iter()
            .filter_map(|(s, r)| r.as_ref().err().map(|e| format!("{s}: error: {e}")))
            .collect();
        println!(
            "{:<26} {:<8} {:<50} {:>5.0}s",
            o.bug.id,
            o.bug.expected,
            if caught.is_empty() {
                "MISSED".to_string()
            } else {
                caught.join("; ")
            },
            o.secs
        );
        for e in &errors {
            println!("    {e}");
        }
        report.push(serde_json::json!({
            "bug": o.bug.id,
            "what": o.bug.what,
            "expected": o.bug.expected,
            "caught_by": caught,
            "errors": errors,
            "secs": o.secs,
        }));
    }
    fs::write(
        teeth_dir().join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!(
        "teeth: {} caught, {missed} missed, {:.0}s total",
        outcomes.len() - missed,
        t0.elapsed().as_secs_f64()
    );
    if missed > 0 {
        bail!("{missed} re-introduced bug(s) went uncaught: add a scenario or invariant");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every bug still applies to the current source (each edit's text occurs
    /// exactly once) and names scenarios that exist.
    #[test]
    fn every_bug_applies_to_the_current_source() {
        let root = crate::paths::workspace_root();
        for b in BUGS {
            for e in b.edits {
                let text = fs::read_to_string(root.join(e.file)).expect("source file");
                assert_eq!(
                    text.matches(e.find).count(),
                    1,
                    "bug {}: the text to replace in {} must occur exactly once",
                    b.id,
                    e.file
                );
            }
            for s in b.scenarios {
                assert!(
                    scenario::scenario_dir().join(format!("{s}.toml")).is_file(),
                    "bug {}: no scenario {s}",
                    b.id
                );
            }
        }
        let mut ids: Vec<&str> = BUGS.iter().map(|b| b.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), BUGS.len(), "bug ids are unique");
    }
}
