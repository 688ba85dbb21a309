//! `mcp-stub`: a tiny MCP server for scenarios and tests (docs/DESIGN.md section 3).
//!
//! `mcp-stub` serves on `0.0.0.0:$MCP_STUB_PORT` (default 8080) with
//! `serverInfo.name` = `$MCP_STUB_NAME`; `mcp-stub --probe` checks
//! `http://127.0.0.1:$MCP_STUB_PORT/healthz` and exits 0 (healthy) or 1, for an
//! exec-form Docker HEALTHCHECK in a `FROM scratch` image; `mcp-stub --delay MS`
//! sets the running stub's answer delay (the `net-latency` fault, run through
//! `docker exec`); `mcp-stub --stdio` speaks MCP on stdin and stdout instead
//! (a stdio server: `docker run -d -i`).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use mesh_chaos::stub::{self, StubConfig};

const USAGE: &str = "\
usage: mcp-stub [--probe | --delay MS | --stdio]

Serves MCP (JSON-RPC 2.0) on POST /mcp and GET /healthz.
  --stdio        serve MCP as newline-delimited JSON-RPC on stdin and stdout
                 instead (until stdin ends); a second initialize is refused
  --probe        GET http://127.0.0.1:$MCP_STUB_PORT/healthz, exit 0 if healthy, else 1
  --delay MS     make the stub on 127.0.0.1:$MCP_STUB_PORT delay every /mcp answer
                 by MS milliseconds (0 ends it); prints the delay in force
  -h, --help     this text
  -V, --version  print the version
environment:
  MCP_STUB_PORT  listening port (default 8080)
  MCP_STUB_NAME  serverInfo.name returned by initialize (default mcp-stub)
";

enum Mode {
    Serve,
    Stdio,
    Probe,
    Delay(u64),
}

/// The stub's configuration from its environment; None (reported) when bad.
fn config_from_env() -> Option<StubConfig> {
    StubConfig::from_env()
        .inspect_err(|e| eprintln!("mcp-stub: {e}"))
        .ok()
}

fn main() -> ExitCode {
    let mut mode = Mode::Serve;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--probe" => mode = Mode::Probe,
            "--stdio" => mode = Mode::Stdio,
            "--delay" => {
                let raw = args.next().unwrap_or_default();
                match stub::parse_delay(raw.as_bytes()) {
                    Ok(ms) => mode = Mode::Delay(ms),
                    Err(e) => {
                        eprintln!("mcp-stub --delay: {e}\n{USAGE}");
                        return ExitCode::from(2);
                    }
                }
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("mcp-stub {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("mcp-stub: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let port = match stub::port_from_env() {
        Ok(port) => port,
        Err(e) => {
            eprintln!("mcp-stub: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-stub: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match mode {
        Mode::Probe => {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            match runtime.block_on(stub::healthz(addr, Duration::from_secs(2))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mcp-stub --probe: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Mode::Delay(ms) => {
            match runtime.block_on(stub::set_delay(port, ms, Duration::from_secs(2))) {
                Ok(now) => {
                    println!("{now}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mcp-stub --delay: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Mode::Stdio => {
            let Some(config) = config_from_env() else {
                return ExitCode::from(2);
            };
            eprintln!(
                "mcp-stub {}: serving {:?} on stdio",
                env!("CARGO_PKG_VERSION"),
                config.name
            );
            let served = runtime.block_on(async {
                tokio::select! {
                    r = stub::stdio::serve(&config, tokio::io::stdin(), tokio::io::stdout()) => r,
                    () = stub::shutdown_signal() => Ok(()),
                }
            });
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mcp-stub --stdio: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Mode::Serve => {
            let Some(config) = config_from_env() else {
                return ExitCode::from(2);
            };
            eprintln!(
                "mcp-stub {}: serving {:?} on 0.0.0.0:{port}",
                env!("CARGO_PKG_VERSION"),
                config.name
            );
            let result = runtime.block_on(stub::run(port, config, async {
                stub::shutdown_signal().await;
                eprintln!("mcp-stub: signal received, shutting down");
            }));
            match result {
                Ok(()) => {
                    eprintln!("mcp-stub: stopped");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mcp-stub: cannot serve on port {port}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
