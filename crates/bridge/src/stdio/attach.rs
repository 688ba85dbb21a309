//! The Docker side of a stdio server: whether a container can be served
//! over stdio (stdin open, no TTY, stdin kept open when an attach ends),
//! the key naming its process (its start time), and the attach to its
//! stdin, stdout and stderr through the Engine API (bollard), over the
//! local socket and a DinD engine's tcp alike.

use std::io;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::ContainerConfig;
use bollard::query_parameters::{AttachContainerOptionsBuilder, InspectContainerOptions};
use futures_util::StreamExt;

use super::process::{Chunk, Input, Output};

/// Why a stdio container cannot be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// It was not started so that the bridge can serve it over stdio.
    #[error("container {container} cannot be served over stdio: {reason}")]
    NotServable {
        /// The container.
        container: String,
        /// What is wrong and how to start it instead.
        reason: &'static str,
    },
    /// It does not run (its process is gone).
    #[error("container {container} is not running")]
    NotRunning {
        /// The container.
        container: String,
    },
    /// No engine could be reached.
    #[error("docker, container {container}: {reason}")]
    Engine {
        /// The container.
        container: String,
        /// Why.
        reason: String,
    },
    /// The engine refused or failed.
    #[error("docker, container {container}: {source}")]
    Docker {
        /// The container.
        container: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
}

/// Why `config` cannot be served over stdio, and how to start it instead;
/// None when it can.
pub fn unservable(config: &ContainerConfig) -> Option<&'static str> {
    if config.tty == Some(true) {
        return Some(
            "it has a TTY (`-t`), which mixes stderr into stdout and rewrites line ends: \
             start it with `docker run -d -i` and no `-t`",
        );
    }
    if config.open_stdin != Some(true) {
        return Some(
            "its stdin is closed: start it with `docker run -d -i` (`-i` keeps stdin open \
             for the bridge)",
        );
    }
    if config.stdin_once == Some(true) {
        return Some(
            "its stdin closes when the first attach ends (`StdinOnce`, set by `docker run -i` \
             in the foreground), so a bridge restart would end the server: start it detached \
             with `docker run -d -i`",
        );
    }
    None
}

/// An attached process: its key (a new key is a new process), stdin and
/// the stream of its output.
pub struct Attached {
    /// The container's start time: the same while the process runs.
    pub key: String,
    /// Its stdin.
    pub input: Input,
    /// Its stdout and stderr.
    pub output: Output,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached").field("key", &self.key).finish()
    }
}

/// Attaches to container `id` (checked with [`unservable`] first). Only
/// output written from now on is read (`logs=false`): what the process
/// wrote before answered requests of an earlier attach.
pub async fn attach(docker: &Docker, id: &str) -> Result<Attached, AttachError> {
    let docker_err = |source| AttachError::Docker {
        container: id.to_string(),
        source,
    };
    let c = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .map_err(docker_err)?;
    if let Some(reason) = unservable(&c.config.unwrap_or_default()) {
        return Err(AttachError::NotServable {
            container: id.to_string(),
            reason,
        });
    }
    let state = c.state.unwrap_or_default();
    if state.running != Some(true) {
        return Err(AttachError::NotRunning {
            container: id.to_string(),
        });
    }
    let key = state.started_at.unwrap_or_default();
    let options = AttachContainerOptionsBuilder::default()
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .stream(true)
        .logs(false)
        .build();
    let attached = docker
        .attach_container(id, Some(options))
        .await
        .map_err(docker_err)?;
    let output = attached.output.filter_map(|item| async move {
        match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                Some(Ok(Chunk::Stdout(message)))
            }
            Ok(LogOutput::StdErr { message }) => Some(Ok(Chunk::Stderr(message))),
            Ok(LogOutput::StdIn { .. }) => None,
            Err(e) => Some(Err(io::Error::other(e))),
        }
    });
    Ok(Attached {
        key,
        input: attached.input,
        output: Box::pin(output),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tty: bool, open_stdin: bool, stdin_once: bool) -> ContainerConfig {
        ContainerConfig {
            tty: Some(tty),
            open_stdin: Some(open_stdin),
            stdin_once: Some(stdin_once),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_detached_container_with_open_stdin_and_no_tty_is_served() {
        assert_eq!(unservable(&config(false, true, false)), None);
        let tty = unservable(&config(true, true, false)).unwrap();
        assert!(tty.contains("no `-t`"), "{tty}");
        let closed = unservable(&config(false, false, false)).unwrap();
        assert!(closed.contains("docker run -d -i"), "{closed}");
        let once = unservable(&config(false, true, true)).unwrap();
        assert!(once.contains("StdinOnce"), "{once}");
        assert!(
            unservable(&ContainerConfig::default()).is_some(),
            "unknown is not servable"
        );
    }
}
