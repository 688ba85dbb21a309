//! SIGINT and SIGTERM for the long commands (`reliability`, `scenario run`,
//! `bench`, `test`).
//!
//! [`install`] takes both signals away from their default action: the first
//! one sets a process-wide flag and wakes every [`wait`]er, so a run stops
//! what it is doing, removes what it started and returns; `main` then exits
//! with [`EXIT_CODE`] and says so. A second signal exits at once (what is left
//! carries the owner label, and the next run removes it: see `owner`).
//! Blocking children (cargo, debootstrap, docker build) are run through
//! [`status`], which kills the child when the flag is set.

use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::watch;

/// The exit status of an interrupted command (128 + SIGINT, as shells use).
pub const EXIT_CODE: i32 = 130;

/// The signal's name once one came; `None` before.
type Flag = watch::Sender<Option<&'static str>>;

fn flag() -> &'static Flag {
    static FLAG: OnceLock<Flag> = OnceLock::new();
    FLAG.get_or_init(|| watch::Sender::new(None))
}

/// Installs the handlers (a thread of its own, so they work whether or not a
/// runtime is running). Call once, at start.
pub fn install() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the signal runtime")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (mut int, mut term) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) {
                    (Ok(i), Ok(t)) => (i, t),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut seen = 0u32;
                loop {
                    let name = tokio::select! {
                        _ = int.recv() => "SIGINT",
                        _ = term.recv() => "SIGTERM",
                    };
                    seen += 1;
                    if seen == 1 {
                        eprintln!(
                            "\n{name}: stopping and removing what this run started \
                             (send it again to exit at once)"
                        );
                        flag().send_replace(Some(name));
                    } else {
                        eprintln!(
                            "{name} again: exiting now; the next run removes what is left \
                             (label {})",
                            crate::owner::label()
                        );
                        std::process::exit(EXIT_CODE);
                    }
                }
            });
        })
        .context("cannot start the signal thread")?;
    ready_rx
        .recv()
        .context("the signal thread ended early")?
        .context("cannot install the SIGINT/SIGTERM handlers")
}

/// The signal that asked this process to stop, if one did.
pub fn requested() -> Option<&'static str> {
    *flag().borrow()
}

/// Fails with "interrupted by SIG..." once a signal came.
pub fn check() -> Result<()> {
    match requested() {
        Some(sig) => bail!("interrupted by {sig}"),
        None => Ok(()),
    }
}

/// Resolves when a signal comes (at once if one already did).
pub async fn wait() -> &'static str {
    let mut rx = flag().subscribe();
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.unwrap_or("a signal"),
        // The sender lives in a static: never dropped.
        Err(_) => std::future::pending().await,
    }
}

/// Runs `cmd` to its end, or kills it (SIGKILL) when a signal comes and
/// returns "interrupted". For the blocking children of the harness.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd.spawn().with_context(|| format!("cannot run {prog}"))?;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if let Some(sig) = requested() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("interrupted by {sig} (stopped {prog})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
