//! The HTTP API against its OpenAPI document (`/v1/openapi.json`): the
//! served document is the one in the repository, and schemathesis (pinned,
//! installed by `cargo xtask provision`) finds no failure on a live bridge
//! with a token and without one: no 5xx, every status, header and body as
//! documented, invalid input refused with a 4xx, valid input accepted.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::*;

/// A fixed seed, so that CI runs the same cases each time; change it (or
/// drop `--seed`) locally to search further.
const SEED: &str = "20261203";

/// Runs `schemathesis run` on `bridge`'s document with every check, and
/// fails the test with its report unless it found nothing.
fn schemathesis(bridge: &Bridge, extra: &[&str]) {
    let report = bridge
        .dir()
        .join(format!("schemathesis-{}.txt", extra.len()));
    let out = fs::File::create(&report).expect("the report file");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/schemathesis.toml");
    let url = format!(
        "http://{}{}",
        bridge.api,
        mesh_bridge::contract::api::OPENAPI
    );
    let child = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .args(["run", &url, "--checks", "all", "--max-examples", "60"])
        .args(["--seed", SEED, "--no-color", "--request-timeout", "10"])
        .args(extra)
        .current_dir(bridge.dir())
        .env("PYTHONPATH", schemathesis_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("the report file"))
        .stderr(out)
        .spawn()
        .expect("python3 runs schemathesis");
    let mut child = KillOnDrop(child);
    let status = wait_for("schemathesis to finish", Duration::from_secs(600), || {
        child
            .0
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "running".to_string())
    });
    let text = fs::read_to_string(&report).unwrap_or_default();
    assert!(
        status.success() && text.contains("passed"),
        "schemathesis {extra:?} failed ({status}):\n{text}\n--- bridge log ---\n{}",
        bridge.log()
    );
}

/// Stops schemathesis when the test fails before it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_api_keeps_its_openapi_contract() {
    schemathesis_dir();
    let ctx = TestCtx::new("contract");
    let proxy = DockerProxy::start(&ctx);
    let bridge = Bridge::start(BridgeOpts::new(6).via(&proxy));
    // A listed service, so that the links from the list reach a real one.
    let _stub = ctx.stub("docs", "contract-docs");
    bridge.wait_port("docs", 1, REGISTER);

    let served = bridge
        .get(mesh_bridge::contract::api::OPENAPI)
        .expect("the document");
    assert_eq!(served.status, 200);
    assert_eq!(
        served.text(),
        mesh_bridge::contract::api::OPENAPI_DOCUMENT,
        "the bridge serves the document in the repository"
    );

    let auth = format!("Authorization: Bearer {TOKEN}");
    schemathesis(&bridge, &["-H", &auth]);
}

#[test]
fn the_api_keeps_its_openapi_contract_without_a_token() {
    schemathesis_dir();
    let ctx = TestCtx::new("contract-ro");
    let proxy = DockerProxy::start(&ctx);
    let mut opts = BridgeOpts::new(4).via(&proxy);
    opts.token = false;
    let bridge = Bridge::start(opts);
    let _stub = ctx.stub("docs", "contract-ro-docs");
    bridge.wait_port("docs", 1, REGISTER);
    // Without a token file no credentials can help, so a mutation without
    // any is 403 (mutations disabled), not the 401 this check asks for; the
    // run with a token holds the API to it.
    schemathesis(&bridge, &["--exclude-checks", "missing_required_header"]);
}
