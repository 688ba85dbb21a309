//! stdio servers through the Engine API: the stub in `--stdio` mode in a
//! real container (`docker run -d -i`), attached with bollard, driven by the
//! process task; a container restart is a new process, initialised again.
// Helpers outside `#[test]` functions panic on purpose: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use mesh_bridge::stdio::attach::{AttachError, attach};
use mesh_bridge::stdio::mux::SessionId;
use mesh_bridge::stdio::process::{Config, Handle};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::*;

fn req(id: Value, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

async fn ask(h: &Handle, session: SessionId, msg: Value) -> Value {
    let (tx, mut rx) = mpsc::channel(4);
    h.send(session, msg, Some(tx)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an answer within 10 s")
        .expect("answered")
}

fn echo(text: &str) -> Value {
    json!({"name": "echo", "arguments": {"text": text}})
}

/// A stdio stub answering as `name`, started as the bridge needs it.
fn stdio_stub(ctx: &TestCtx, name: &str, options: &[&str]) -> TestContainer {
    let env = format!("MCP_STUB_NAME={name}");
    let mut opts = vec!["--no-healthcheck", "-e", env.as_str()];
    opts.extend_from_slice(options);
    ctx.run_image(STUB_IMAGE, &[], &opts, &["--stdio"])
}

#[test]
fn a_stdio_container_serves_twenty_sessions_and_a_restart_is_a_new_process() {
    let ctx = TestCtx::new("stdio_attach");
    let c = stdio_stub(&ctx, "stdio-e2e", &["-i"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let docker = bollard::Docker::connect_with_local_defaults().unwrap();
        let a = attach(&docker, &c.id).await.unwrap();
        let first_key = a.key.clone();
        let h = Handle::spawn("stdio-e2e", Config::default(), None);
        h.attach(a.key, a.input, a.output).await.unwrap();
        let init = req(
            json!(1),
            "initialize",
            mesh_chaos::stub::initialize_params(),
        );
        let mut tasks = JoinSet::new();
        for i in 0..20 {
            let (h, init) = (h.clone(), init.clone());
            tasks.spawn(async move {
                let s = h.open().await.unwrap();
                // The stub refuses a second initialize in one process.
                let answer = ask(&h, s.id, init).await;
                assert_eq!(
                    answer["result"]["serverInfo"]["name"], "stdio-e2e",
                    "{answer}"
                );
                for n in 0..5 {
                    let text = format!("session {i} call {n}");
                    let answer = ask(&h, s.id, req(json!(1), "tools/call", echo(&text))).await;
                    assert_eq!(answer["result"]["content"][0]["text"], text, "{answer}");
                }
                s.id
            });
        }
        let sessions = tasks.join_all().await;

        docker_ok(&["restart", "-t", "1", &c.id]);
        let deadline = Instant::now() + Duration::from_secs(20);
        let again = loop {
            match attach(&docker, &c.id).await {
                Ok(a) if a.key != first_key => break a,
                Ok(_) | Err(AttachError::NotRunning { .. }) => {}
                Err(e) => panic!("{e}"),
            }
            assert!(
                Instant::now() < deadline,
                "the restarted container never ran"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        h.attach(again.key, again.input, again.output)
            .await
            .unwrap();
        let answer = ask(&h, sessions[0], req(json!(2), "tools/call", echo("after"))).await;
        assert_eq!(answer["result"]["content"][0]["text"], "after", "{answer}");
        assert_eq!(
            h.stats.restarts.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    });
}

#[test]
fn a_container_without_open_stdin_or_with_a_tty_is_refused_with_the_fix() {
    let ctx = TestCtx::new("stdio_refused");
    let closed = stdio_stub(&ctx, "closed", &[]);
    let tty = stdio_stub(&ctx, "tty", &["-i", "-t"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let docker = bollard::Docker::connect_with_local_defaults().unwrap();
        for (c, fix) in [(&closed, "docker run -d -i"), (&tty, "no `-t`")] {
            match attach(&docker, &c.id).await {
                Err(AttachError::NotServable { reason, .. }) => {
                    assert!(reason.contains(fix), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
    });
}
