//! User-space instructions of a process, counted by valgrind's callgrind:
//! the same count for the same binary and the same work, whatever else the
//! machine is doing. P7's throughput ratios move by a tenth from run to run
//! on a shared 2-core machine; this count moved by 0.2%.
//!
//! The process starts under [`launcher`] with counting off; [`set`] turns
//! it on and off around the work, and [`total`] dumps what was counted and
//! reads the sum. The process runs some 50 times slower meanwhile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

/// How long a dump may take to appear.
const DUMP_WAIT: Duration = Duration::from_secs(30);

/// The command that runs a program under callgrind, counting nothing until
/// [`set`] turns counting on; its counts go to `out`.
pub fn launcher(out: &Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--instr-atstart=no".into(),
        // Threads take turns fairly (the bridge runs one per core).
        "--fair-sched=yes".into(),
        format!("--callgrind-out-file={}", out.display()),
    ]
}

/// Turns counting in process `pid` on or off.
pub fn set(pid: u32, on: bool) -> Result<()> {
    control(pid, &["-i", if on { "on" } else { "off" }])
}

/// Everything counted in `pid` so far, from the first dump to `out`
/// (callgrind writes it to `out.1`).
pub fn total(pid: u32, out: &Path) -> Result<u64> {
    let dump = PathBuf::from(format!("{}.1", out.display()));
    let _ = std::fs::remove_file(&dump);
    control(pid, &["-d"])?;
    // The file is complete once its totals line is in.
    let n = mesh_chaos::wait::until("callgrind's dump", DUMP_WAIT, || {
        std::fs::read_to_string(&dump)
            .ok()
            .and_then(|text| totals(&text))
            .ok_or_else(|| format!("no totals in {} yet", dump.display()))
    })?;
    Ok(n)
}

/// The `totals:` line of a callgrind output file (its `summary:` line, when
/// there is no `totals:`; with counting off at the start, `summary:` is 0).
fn totals(text: &str) -> Option<u64> {
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    line("totals:").or_else(|| line("summary:"))
}

fn control(pid: u32, args: &[&str]) -> Result<()> {
    let out = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .output()
        .context("running callgrind_control")?;
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && said.contains("OK"),
        "callgrind_control {} {pid}: {said}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_read_from_either_line() {
        assert_eq!(totals("events: Ir\nsummary: 123 4\n"), Some(123));
        assert_eq!(totals("fn=(1) x\n0 5\ntotals: 77\n"), Some(77));
        assert_eq!(totals("summary: 0\nfn=(1) x\n0 5\ntotals: 5\n"), Some(5));
        assert_eq!(totals("events: Ir\n"), None);
    }
}
