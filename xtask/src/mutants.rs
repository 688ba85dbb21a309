//! `cargo xtask mutants [--re REGEX]... [--iterate] [--jobs N]`: cargo-mutants
//! over the modules `.cargo/mutants.toml` names (pool, registry, reconcile,
//! store), judged by the tests that need no Docker engine, then a table per
//! file, the score and every missed mutant, each with the reason it is
//! harmless when it is one of [`HARMLESS`]. Fails below [`GOAL`] or when a
//! missed mutant has no reason.
//!
//! Not in CI: a full run builds and tests about 700 mutants, over an hour
//! on two cores. cargo-mutants copies the tree into a scratch directory
//! per job as the job starts, so an edit made during a run leaks into
//! later mutants: to go on working meanwhile, run it from a clone. `--iterate` tests again only what the last run (kept in
//! `target/mutants/mutants.out`) did not catch, plus mutants of changed
//! code, and counts what earlier runs caught, so its score is the whole one.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use crate::interrupt;
use crate::paths::{target_dir, workspace_root};

/// The cargo-mutants release installed when it is missing or another one is.
const CARGO_MUTANTS_VERSION: &str = "27.1.0";

/// The least share of viable mutants the tests must catch (timeouts count
/// as caught: the mutant made a test hang, and the run noticed).
const GOAL: f64 = 0.90;

/// Missed mutants that cannot change what the program does: the file, the
/// mutant as cargo-mutants describes it, the source text at its line and
/// column (so a reason never covers another mutant that moves there, or
/// another operator on the same line), and why.
const HARMLESS: &[Harmless] = &[
    Harmless {
        file: "crates/bridge/src/store/mod.rs",
        mutant: "replace | with ^ in Store::open_with",
        at: "| OpenFlags::SQLITE_OPEN_",
        why: "the SQLite open flags are distinct bits, so `^` gives what `|` gives",
    },
    Harmless {
        file: "crates/bridge/src/store/mod.rs",
        mutant: "replace > with >= in Store::open_with",
        at: "> 0)",
        why: "an empty file judged read-only too is a database of version 0 that passes quick_check",
    },
    Harmless {
        file: "crates/bridge/src/store/mod.rs",
        mutant: "replace > with >= in Store::apply",
        at: "> LAST_PORTS_LIMIT",
        why: "at the limit the history is counted once more, nothing is trimmed, and the bound becomes the exact count",
    },
    Harmless {
        file: "crates/bridge/src/store/mod.rs",
        mutant: "replace > with >= in Store::apply",
        at: "> 0 {",
        why: "at zero excess the trim deletes `LIMIT 0` rows: nothing",
    },
    Harmless {
        file: "crates/bridge/src/store/check.rs",
        mutant: "replace | with & in open_read_only",
        at: "| OpenFlags::SQLITE_OPEN_NO_MUTEX",
        why: "the flags become 0, and the bundled SQLite reads `file:` names as URIs anyway (SQLITE_USE_URI) and opens `mode=ro` read-only: the same connection",
    },
    Harmless {
        file: "crates/bridge/src/store/check.rs",
        mutant: "replace | with ^ in open_read_only",
        at: "| OpenFlags::SQLITE_OPEN_",
        why: "the SQLite open flags are distinct bits (read-only 0x1, URI 0x40, no-mutex 0x8000), so `^` gives what `|` gives",
    },
    Harmless {
        file: "crates/bridge/src/store/check.rs",
        mutant: "replace + with - in with_read_only",
        at: "+ WAL_FRAME_HEADER + 512",
        why: "a WAL of 520 to 567 bytes holds no whole frame, so no commit: reading it or only the main file gives the same store",
    },
    Harmless {
        file: "crates/bridge/src/pool/slot.rs",
        mutant: "replace | with ^ in Slot::reserved",
        at: "| 2)",
        why: "the low two bits of `service << 2` are zero, so `^ 2` sets them as `| 2` does",
    },
    Harmless {
        file: "crates/bridge/src/pool/services.rs",
        mutant: "replace Services::hash -> u32 with 0",
        at: "self.hasher.hash_one(name) as u32",
        why: "every name in one probe run: lookups compare names, so they stay right, only slower (the pool benchmark measures speed, the tests behaviour)",
    },
    Harmless {
        file: "crates/bridge/src/pool/services.rs",
        mutant: "replace + with * in Services::remove",
        at: "+ 1) & mask;\n",
        why: "the backward shift then starts at the hole itself, moves the removed entry onto itself, and goes on from hole + 1 as before",
    },
    Harmless {
        file: "crates/bridge/src/pool.rs",
        mutant: "replace match guard self.record(i).changed with true in Pool::take_changed",
        at: "self.record(i).changed =>",
        why: "a record found for a name freed since the last take was made after the free, and a kept record got its holding or history through record_mut, which marks it changed: the guard is always true there",
    },
    Harmless {
        file: "crates/bridge/src/pool.rs",
        mutant: "replace * with + in Pool::remember",
        at: "* self.history_kept",
        why: "it changes only how soon a prune that freed little runs again (its cost, not which ports anyone gets): the pool benchmark's burst measures that",
    },
    Harmless {
        file: "crates/bridge/src/reconcile/mod.rs",
        mutant: "delete match arm Change::Rejected(reason) in Core::note_change",
        at: "Change::Rejected(reason) =>",
        why: "the arm only logs the rejection; the state and reason the API and the metrics show come from the registry",
    },
    Harmless {
        file: "crates/bridge/src/pool/slot.rs",
        mutant: "replace | with ^ in Slot::quarantined",
        at: "| 3)",
        why: "the low two bits of `service << 2` are zero, so `^ 3` sets them as `| 3` does",
    },
    Harmless {
        file: "crates/bridge/src/pool/services.rs",
        mutant: "replace | with ^ in Services::place",
        at: "| u64::from(i);",
        why: "the hash sits above bit 32 and the record index below it: disjoint bits, so `^` gives what `|` gives",
    },
    Harmless {
        file: "crates/bridge/src/pool/services.rs",
        mutant: "replace > with >= in Services::insert",
        at: "> 3 * self.index.len()",
        why: "the index grows at exactly 3/8 full instead of just above it: a load factor, not a lookup result",
    },
    Harmless {
        file: "crates/bridge/src/pool/services.rs",
        mutant: "replace * with + in Services::insert",
        at: "* self.index.len()",
        why: "the index grows once it is 1/8 full instead of 3/8: more memory, the same lookups",
    },
    Harmless {
        file: "crates/bridge/src/pool/services.rs",
        mutant: "replace > with >= in Services::remove",
        at: "> 4096",
        why: "compaction at exactly 4096 bytes of garbage instead of 4097: a one-byte memory threshold",
    },
    Harmless {
        file: "crates/bridge/src/pool/services.rs",
        mutant: "replace > with >= in Services::remove",
        at: "> self.arena.len()",
        why: "compaction at exactly half garbage instead of just over it: a memory threshold, names stay found either way",
    },
    Harmless {
        file: "crates/bridge/src/pool/ranges.rs",
        mutant: "replace PortRange::is_empty -> bool with false",
        at: "self.end < self.start",
        why: "parsing and validation never make a range with its end before its start; the method exists for clippy's len_without_is_empty",
    },
];

/// A missed mutant known to be harmless; see [`HARMLESS`].
struct Harmless {
    file: &'static str,
    mutant: &'static str,
    /// What the source reads from the mutant's column on (a line's end is `\n`).
    at: &'static str,
    why: &'static str,
}

/// Flags of `cargo xtask mutants`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Only mutants whose name (`file:line:col: description`) matches this
    /// regex, e.g. `store/check\.rs` (repeatable; cargo-mutants' `-F`).
    /// Narrows what `.cargo/mutants.toml` names, where `-f` would add to it.
    #[arg(long = "re")]
    pub only: Vec<String>,
    /// Test only what the last run missed, plus mutants of changed code.
    #[arg(long)]
    pub iterate: bool,
    /// Mutants built and tested at once (each in its own copy of the tree).
    #[arg(long, default_value_t = 2)]
    pub jobs: u32,
}

/// Installs the pinned cargo-mutants unless `cargo mutants --version` says it.
fn ensure_tool() -> Result<()> {
    let out = Command::new("cargo")
        .args(["mutants", "--version"])
        .stderr(Stdio::null())
        .output();
    let version = out
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if version.as_deref() == Some(&format!("cargo-mutants {CARGO_MUTANTS_VERSION}")) {
        return Ok(());
    }
    println!(
        "[mutants] installing cargo-mutants {CARGO_MUTANTS_VERSION} from crates.io (found: {})",
        version.as_deref().unwrap_or("none")
    );
    let st = interrupt::status(Command::new("cargo").args([
        "install",
        "cargo-mutants",
        "--locked",
        "--version",
        CARGO_MUTANTS_VERSION,
    ]))?;
    ensure!(st.success(), "`cargo install cargo-mutants` failed ({st})");
    Ok(())
}

/// One mutant of a result list: `file:line:col: description`.
#[derive(Debug, PartialEq)]
struct Mutant {
    file: String,
    line: u32,
    column: u32,
    description: String,
}

fn parse_line(line: &str) -> Option<Mutant> {
    let (file, rest) = line.split_once(':')?;
    let (line_no, rest) = rest.split_once(':')?;
    let (column, description) = rest.split_once(": ")?;
    Some(Mutant {
        file: file.to_string(),
        line: line_no.parse().ok()?,
        column: column.parse().ok()?,
        description: description.trim().to_string(),
    })
}

/// The mutants of one result file (`caught.txt`, `missed.txt`, ...); a
/// missing file is an empty list (cargo-mutants writes only what it has).
fn read_list(dir: &Path, name: &str) -> Result<Vec<Mutant>> {
    let path = dir.join(name);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            parse_line(l).with_context(|| format!("{}: unexpected line `{l}`", path.display()))
        })
        .collect()
}

/// Why a missed mutant is harmless, if it is a known one: same file, same
/// description, and the source at its place reads as the known code.
fn harmless(m: &Mutant, source_at: Option<&str>) -> Option<&'static str> {
    HARMLESS
        .iter()
        .find(|h| {
            m.file == h.file
                && m.description == h.mutant
                && source_at.is_some_and(|s| s.starts_with(h.at))
        })
        .map(|h| h.why)
}

/// The source of a workspace file from line `line`, column `column` (both
/// from 1, columns in characters) to the end of that line, with its `\n`.
fn source_at(file: &str, line: u32, column: u32) -> Option<String> {
    let text = fs::read_to_string(workspace_root().join(file)).ok()?;
    let l = text.lines().nth(line.checked_sub(1)? as usize)?;
    let mut rest: String = l.chars().skip(column.checked_sub(1)? as usize).collect();
    rest.push('\n');
    Some(rest)
}

/// Counts per file and in all.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Counts {
    caught: usize,
    timeout: usize,
    missed: usize,
    unviable: usize,
}

impl Counts {
    /// Caught (timeouts included) over viable mutants; None when none was viable.
    fn score(&self) -> Option<f64> {
        let viable = self.caught + self.timeout + self.missed;
        (viable > 0).then(|| (self.caught + self.timeout) as f64 / viable as f64)
    }
}

/// What a run's lists say.
struct Results {
    per_file: BTreeMap<String, Counts>,
    total: Counts,
    missed: Vec<Mutant>,
}

fn results(dir: &Path) -> Result<Results> {
    let mut per_file: BTreeMap<String, Counts> = BTreeMap::new();
    let mut total = Counts::default();
    let mut missed = Vec::new();
    // `--iterate` carries what earlier runs caught in `previously_caught.txt`.
    let names = [
        "caught.txt",
        "previously_caught.txt",
        "timeout.txt",
        "missed.txt",
        "unviable.txt",
    ];
    for name in names {
        let list = read_list(dir, name)?;
        for m in &list {
            for c in [per_file.entry(m.file.clone()).or_default(), &mut total] {
                match name {
                    "caught.txt" | "previously_caught.txt" => c.caught += 1,
                    "timeout.txt" => c.timeout += 1,
                    "missed.txt" => c.missed += 1,
                    _ => c.unviable += 1,
                }
            }
        }
        if name == "missed.txt" {
            missed = list;
        }
    }
    Ok(Results {
        per_file,
        total,
        missed,
    })
}

fn pct(score: Option<f64>) -> String {
    score.map_or("-".into(), |s| format!("{:.1}%", 100.0 * s))
}

/// Runs cargo-mutants, prints the table and the missed mutants, judges the score.
pub fn run(args: &Args) -> Result<()> {
    ensure!(args.jobs > 0, "--jobs must be at least 1");
    ensure_tool()?;
    let out_parent = target_dir().join("mutants");
    fs::create_dir_all(&out_parent)?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .args(["mutants", "--no-shuffle", "-j"])
        .arg(args.jobs.to_string())
        .arg("-o")
        .arg(&out_parent);
    if args.iterate {
        cmd.arg("--iterate");
    }
    for re in &args.only {
        cmd.arg("-F").arg(re);
    }
    println!(
        "[mutants] cargo mutants -j {} (config .cargo/mutants.toml; output {})",
        args.jobs,
        out_parent.join("mutants.out").display()
    );
    let t0 = Instant::now();
    let st = interrupt::status(&mut cmd).context("cargo mutants")?;
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    // 0: all caught; 2: some missed; 3: some timed out. Anything else
    // (usage, a failing baseline) means the lists are not a verdict.
    match st.code() {
        Some(0 | 2 | 3) => {}
        _ => bail!(
            "cargo mutants failed ({st}); see {}",
            out_parent.join("mutants.out/debug.log").display()
        ),
    }
    let r = results(&out_parent.join("mutants.out"))?;
    println!(
        "\n{:<44} {:>7} {:>7} {:>7} {:>8} {:>7}",
        "file", "caught", "timeout", "missed", "unviable", "score"
    );
    for (file, c) in &r.per_file {
        println!(
            "{:<44} {:>7} {:>7} {:>7} {:>8} {:>7}",
            file,
            c.caught,
            c.timeout,
            c.missed,
            c.unviable,
            pct(c.score())
        );
    }
    let t = r.total;
    println!(
        "{:<44} {:>7} {:>7} {:>7} {:>8} {:>7}",
        "all",
        t.caught,
        t.timeout,
        t.missed,
        t.unviable,
        pct(t.score())
    );
    let mut unexplained = 0;
    if !r.missed.is_empty() {
        println!("\nmissed:");
    }
    for m in &r.missed {
        match harmless(m, source_at(&m.file, m.line, m.column).as_deref()) {
            Some(why) => println!(
                "  {}:{}: {} (harmless: {why})",
                m.file, m.line, m.description
            ),
            None => {
                unexplained += 1;
                println!("  {}:{}: {} (NO TEST)", m.file, m.line, m.description)
            }
        }
    }
    println!("\n[mutants] {minutes:.0} min");
    if !args.only.is_empty() {
        println!("[mutants] a partial run (--re): the score covers only what it tested");
        return Ok(());
    }
    let score = t.score().unwrap_or(0.0);
    ensure!(
        score >= GOAL,
        "mutation score {} is below {:.0}%: add tests for the missed mutants above",
        pct(Some(score)),
        100.0 * GOAL
    );
    ensure!(
        unexplained == 0,
        "{unexplained} missed mutant(s) have neither a test nor a reason in xtask/src/mutants.rs HARMLESS"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_line_splits_into_file_line_and_description() {
        let m = parse_line("crates/bridge/src/pool.rs:425:25: replace % with / in Pool::next_free")
            .unwrap();
        assert_eq!(
            m,
            Mutant {
                file: "crates/bridge/src/pool.rs".into(),
                line: 425,
                column: 25,
                description: "replace % with / in Pool::next_free".into(),
            }
        );
        assert!(parse_line("no location here").is_none());
        assert!(parse_line("f.rs:x:1: replace").is_none());
    }

    #[test]
    fn timeouts_count_as_caught_and_unviable_not_at_all() {
        let c = Counts {
            caught: 8,
            timeout: 1,
            missed: 1,
            unviable: 50,
        };
        assert_eq!(c.score(), Some(0.9));
        assert_eq!(Counts::default().score(), None);
    }

    #[test]
    fn the_lists_of_a_run_are_counted_per_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("caught.txt"),
            "a.rs:1:1: replace x with y in f\nb.rs:2:1: replace x with y in g\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("missed.txt"),
            "a.rs:3:1: replace + with - in f\n",
        )
        .unwrap();
        let r = results(dir.path()).unwrap();
        assert_eq!(r.total.caught, 2);
        assert_eq!(r.total.missed, 1);
        assert_eq!(r.per_file["a.rs"].score(), Some(0.5));
        assert_eq!(r.missed[0].line, 3);
        fs::write(
            dir.path().join("previously_caught.txt"),
            "a.rs:9:1: replace x with y in h\n",
        )
        .unwrap();
        assert_eq!(results(dir.path()).unwrap().per_file["a.rs"].caught, 2);
        fs::write(dir.path().join("timeout.txt"), "garbage\n").unwrap();
        assert!(results(dir.path()).is_err());
    }

    #[test]
    fn a_reason_covers_only_its_own_place() {
        let m = Mutant {
            file: "crates/bridge/src/pool.rs".into(),
            line: 1,
            column: 1,
            description: "replace * with + in Pool::remember".into(),
        };
        assert!(harmless(&m, Some("* self.history_kept) {\n")).is_some());
        assert!(harmless(&m, Some("* self.capacity + 1024)\n")).is_none());
        assert!(harmless(&m, None).is_none());
    }

    #[test]
    fn every_harmless_entry_names_code_that_is_there() {
        // A reason whose code moved away or changed must be looked at again.
        for h in HARMLESS {
            let text = fs::read_to_string(workspace_root().join(h.file)).unwrap();
            let found = text.lines().any(|l| {
                (0..l.len())
                    .filter(|i| l.is_char_boundary(*i))
                    .any(|i| format!("{}\n", &l[i..]).starts_with(h.at))
            });
            assert!(found, "{}: `{}` is not in the source", h.file, h.at);
            // "... in F" names the function; "replace F -> T with V" too.
            let function = match h.mutant.rsplit_once(" in ") {
                Some((_, f)) => f,
                None => h.mutant.split(' ').nth(1).unwrap(),
            };
            let name = function.rsplit("::").next().unwrap();
            assert!(
                text.contains(&format!("fn {name}")),
                "{}: no fn {name}",
                h.file
            );
        }
    }
}
