//! Configuration of `mesh-bridge run`: command-line flags, `MESH_BRIDGE_*`
//! environment variables and an optional TOML file, resolved in that order of
//! precedence and validated up front.
//!
//! Every refusal names the key (flag, variable and file key), the value and
//! the fix, so an operator can correct it without reading code.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::pool::PortRanges;

/// Default port range.
pub const DEFAULT_PORTS: &str = "11100-11199";
/// Default address mesh ports bind to.
pub const DEFAULT_BIND_IP: &str = "127.0.0.1";
/// Default API and metrics listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// Smallest `--stdio-max-message`.
const MIN_MESSAGE: usize = 1024;
/// Largest `--stdio-max-message`.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A size in bytes: a whole number, or one followed by KiB or MiB.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = num.parse().ok()?;
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Flags of `mesh-bridge run`. Every flag also reads `MESH_BRIDGE_<NAME>`.
/// Values stay strings here so that one validator serves flags, environment
/// and file alike.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML file with any of the keys below (flags and environment win over it).
    #[arg(long, env = "MESH_BRIDGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Docker engine URL (unix:///var/run/docker.sock, tcp://host:2375); DOCKER_HOST is honoured.
    #[arg(long, env = "MESH_BRIDGE_DOCKER_HOST", value_name = "URL")]
    pub docker_host: Option<String>,
    /// Inclusive host port ranges, comma separated [default: 11100-11199].
    #[arg(long, env = "MESH_BRIDGE_PORTS", value_name = "RANGES")]
    pub ports: Option<String>,
    /// Address the mesh ports listen on [default: 127.0.0.1].
    #[arg(long, env = "MESH_BRIDGE_BIND_IP", value_name = "IP")]
    pub bind_ip: Option<String>,
    /// Address of the HTTP API and /metrics [default: 127.0.0.1:9464].
    #[arg(long, env = "MESH_BRIDGE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory of the durable store [default: $XDG_STATE_HOME/mesh-bridge or ./.mesh-bridge].
    #[arg(long, env = "MESH_BRIDGE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How long a released port is kept for its service [default: 300s].
    #[arg(long, env = "MESH_BRIDGE_GRACE", value_name = "DURATION")]
    pub grace: Option<String>,
    /// Interval of the full resync with Docker [default: 30s].
    #[arg(long, env = "MESH_BRIDGE_RESYNC", value_name = "DURATION")]
    pub resync: Option<String>,
    /// Resyncs without a container before a reservation is released [default: 3].
    #[arg(long, env = "MESH_BRIDGE_LEAK_CYCLES", value_name = "N")]
    pub leak_cycles: Option<String>,
    /// How long a connection waits for a running replica [default: 2s].
    #[arg(long, env = "MESH_BRIDGE_HOLD", value_name = "DURATION")]
    pub hold: Option<String>,
    /// Longest JSON-RPC message to or from a stdio server, in bytes (or
    /// with KiB/MiB) [default: 4MiB].
    #[arg(long, env = "MESH_BRIDGE_STDIO_MAX_MESSAGE", value_name = "SIZE")]
    pub stdio_max_message: Option<String>,
    /// File holding the bearer token that mutating API calls need.
    #[arg(long, env = "MESH_BRIDGE_API_TOKEN_FILE", value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Serve the API on a non-loopback --listen address without a token
    /// file (read-only: mutations stay disabled); refused otherwise.
    #[arg(long, env = "MESH_BRIDGE_API_ALLOW_PUBLIC")]
    pub api_allow_public: bool,
    /// Log format: text or json [default: text].
    #[arg(long, env = "MESH_BRIDGE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
}

/// Keys of the optional TOML file (same names as the flags, with `_`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    docker_host: Option<String>,
    ports: Option<String>,
    bind_ip: Option<String>,
    listen: Option<String>,
    state_dir: Option<PathBuf>,
    grace: Option<String>,
    resync: Option<String>,
    leak_cycles: Option<u64>,
    hold: Option<String>,
    stdio_max_message: Option<String>,
    api_token_file: Option<PathBuf>,
    api_allow_public: Option<bool>,
    log_format: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// A validated configuration of `mesh-bridge run`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Docker engine URL; None means DOCKER_HOST or the local socket.
    pub docker_host: Option<String>,
    /// Port ranges of the pool.
    pub ports: PortRanges,
    /// Address mesh ports bind to.
    pub bind_ip: IpAddr,
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Directory of the durable store.
    pub state_dir: PathBuf,
    /// Quarantine after release.
    pub grace: Duration,
    /// Full resync interval.
    pub resync: Duration,
    /// Resyncs without a container before release.
    pub leak_cycles: u32,
    /// Wait for a replica before closing a connection.
    pub hold: Duration,
    /// Longest message to or from a stdio server.
    pub stdio_max_message: usize,
    /// Bearer token file for mutating endpoints.
    pub api_token_file: Option<PathBuf>,
    /// Log format.
    pub log_format: LogFormat,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has a bad value.
    #[error("invalid {key} = `{value}`{origin}: {reason}")]
    Invalid {
        /// Flag, variable and file key.
        key: String,
        /// The value given.
        value: String,
        /// " (from FILE)" when it came from the config file.
        origin: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}; check the path given to --config")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for us.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml said (names the key and the line).
        message: String,
    },
}

/// One value with where it came from, for error messages.
struct Source<'a, T> {
    value: Option<T>,
    from_file: Option<&'a Path>,
}

fn pick<'a, T>(cli: Option<T>, file: Option<T>, path: Option<&'a Path>) -> Source<'a, T> {
    match cli {
        Some(v) => Source {
            value: Some(v),
            from_file: None,
        },
        None => Source {
            from_file: file.as_ref().and(path),
            value: file,
        },
    }
}

fn key_name(flag: &str) -> String {
    let env = format!("MESH_BRIDGE_{}", flag.to_uppercase().replace('-', "_"));
    let file = flag.replace('-', "_");
    format!("--{flag} (env {env}, file key `{file}`)")
}

fn invalid(
    flag: &str,
    value: &str,
    from_file: Option<&Path>,
    reason: impl Into<String>,
) -> ConfigError {
    let mut value: String = value.chars().take(200).collect();
    value = value.escape_default().to_string();
    ConfigError::Invalid {
        key: key_name(flag),
        value,
        origin: from_file
            .map(|p| format!(" (from {})", p.display()))
            .unwrap_or_default(),
        reason: reason.into(),
    }
}

/// Parses a duration such as `300s`, `5m`, `1h 30m` or `0s`.
fn duration(flag: &str, src: Source<'_, String>, default: &str) -> Result<Duration, ConfigError> {
    let raw = src.value.unwrap_or_else(|| default.to_string());
    let t = raw.trim();
    if t.starts_with('-') {
        return Err(invalid(
            flag,
            &raw,
            src.from_file,
            "durations cannot be negative; use e.g. 0s or 300s",
        ));
    }
    humantime::parse_duration(t).map_err(|e| {
        invalid(
            flag,
            &raw,
            src.from_file,
            format!("{e}; write a duration with a unit, e.g. 300s, 5m or 1h"),
        )
    })
}

/// Reads the ranges from a string, naming `--ports` in the error.
pub fn parse_ports(raw: &str, from_file: Option<&Path>) -> Result<PortRanges, ConfigError> {
    raw.parse::<PortRanges>()
        .map_err(|e| invalid("ports", raw, from_file, e.to_string()))
}

/// The default state directory: `$XDG_STATE_HOME/mesh-bridge`, else `./.mesh-bridge`.
pub fn default_state_dir() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x).join("mesh-bridge"),
        _ => PathBuf::from(".mesh-bridge"),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.len() > 1 << 20 {
        return Err(ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!(
                "{} bytes is too large for a config file (limit 1 MiB)",
                meta.len()
            ),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim().replace('\n', " "),
    })
}

impl Config {
    /// Resolves flags/environment over the optional file over defaults, and validates.
    pub fn resolve(args: &RunArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let fp = args.config.as_deref();

        let ports_src = pick(args.ports.clone(), file.ports, fp);
        let ports_raw = ports_src.value.unwrap_or_else(|| DEFAULT_PORTS.to_string());
        let ports = parse_ports(&ports_raw, ports_src.from_file)?;

        let bind = pick(args.bind_ip.clone(), file.bind_ip, fp);
        let bind_raw = bind.value.unwrap_or_else(|| DEFAULT_BIND_IP.to_string());
        let bind_ip: IpAddr = bind_raw.trim().parse().map_err(|_| {
            invalid(
                "bind-ip",
                &bind_raw,
                bind.from_file,
                "not an IP address; use e.g. 127.0.0.1 or 0.0.0.0",
            )
        })?;

        let listen_src = pick(args.listen.clone(), file.listen, fp);
        let listen_raw = listen_src
            .value
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_raw.trim().parse().map_err(|_| {
            invalid(
                "listen",
                &listen_raw,
                listen_src.from_file,
                "not IP:PORT; use e.g. 127.0.0.1:9464",
            )
        })?;
        if ports.contains(listen.port())
            && (listen.ip() == bind_ip || listen.ip().is_unspecified() || bind_ip.is_unspecified())
        {
            return Err(invalid(
                "listen",
                &listen_raw,
                listen_src.from_file,
                format!(
                    "port {} lies inside --ports {ports}; move the API outside the mesh range",
                    listen.port()
                ),
            ));
        }

        let grace = duration("grace", pick(args.grace.clone(), file.grace, fp), "300s")?;
        let resync = duration("resync", pick(args.resync.clone(), file.resync, fp), "30s")?;
        if resync.is_zero() {
            return Err(invalid(
                "resync",
                "0s",
                None,
                "the resync interval must be above zero; use e.g. 30s",
            ));
        }
        let hold = duration("hold", pick(args.hold.clone(), file.hold, fp), "2s")?;
        let mm = pick(args.stdio_max_message.clone(), file.stdio_max_message, fp);
        let mm_raw = mm.value.unwrap_or_else(|| "4MiB".to_string());
        let stdio_max_message = match parse_size(&mm_raw) {
            Some(n) if (MIN_MESSAGE..=MAX_MESSAGE).contains(&n) => n,
            _ => {
                return Err(invalid(
                    "stdio-max-message",
                    &mm_raw,
                    mm.from_file,
                    "must be a size from 1KiB to 64MiB: bytes, or a number with KiB or MiB (e.g. 4MiB)",
                ));
            }
        };

        let lc = pick(
            args.leak_cycles.clone(),
            file.leak_cycles.map(|n| n.to_string()),
            fp,
        );
        let lc_raw = lc.value.unwrap_or_else(|| "3".to_string());
        let leak_cycles = match lc_raw.trim().parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(invalid(
                    "leak-cycles",
                    &lc_raw,
                    lc.from_file,
                    "must be a whole number from 1 to 1000 (resyncs without a container before release)",
                ));
            }
        };

        let lf = pick(args.log_format.clone(), file.log_format, fp);
        let log_format = match lf.value.as_deref().map(str::trim) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "log-format",
                    other,
                    lf.from_file,
                    "use text or json",
                ));
            }
        };

        let docker_host = args.docker_host.clone().or(file.docker_host);
        if let Some(h) = &docker_host
            && !["unix://", "tcp://", "http://", "https://"]
                .iter()
                .any(|p| h.starts_with(p))
        {
            return Err(invalid(
                "docker-host",
                h,
                None,
                "use unix:///var/run/docker.sock or tcp://HOST:PORT",
            ));
        }

        let api_token_file = args.api_token_file.clone().or(file.api_token_file);
        let allow_public = args.api_allow_public || file.api_allow_public.unwrap_or(false);
        if !listen.ip().is_loopback() && api_token_file.is_none() && !allow_public {
            return Err(invalid(
                "listen",
                &listen_raw,
                listen_src.from_file,
                "not a loopback address, and no --api-token-file: give the API a token file, \
                 or pass --api-allow-public to serve it read-only to the network",
            ));
        }

        Ok(Config {
            docker_host,
            ports,
            bind_ip,
            listen,
            state_dir: args
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(default_state_dir),
            grace,
            resync,
            leak_cycles,
            hold,
            stdio_max_message,
            api_token_file,
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs::default()
    }

    #[test]
    fn the_stdio_message_limit_takes_bytes_kib_or_mib_within_bounds() {
        assert_eq!(Config::resolve(&args()).unwrap().stdio_max_message, 4 << 20);
        for (given, want) in [("2048", 2048), ("64KiB", 65536), ("16MiB", 16 << 20)] {
            let mut a = args();
            a.stdio_max_message = Some(given.into());
            assert_eq!(
                Config::resolve(&a).unwrap().stdio_max_message,
                want,
                "{given}"
            );
        }
        for bad in ["1000", "65MiB", "4MB", "-1", "", "99999999999999999999MiB"] {
            let mut a = args();
            a.stdio_max_message = Some(bad.into());
            let e = Config::resolve(&a).unwrap_err().to_string();
            assert!(
                e.contains("stdio-max-message") && e.contains("4MiB"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_public_api_needs_a_token_or_an_explicit_yes() {
        let mut a = args();
        a.listen = Some("0.0.0.0:9464".into());
        let e = Config::resolve(&a).unwrap_err().to_string();
        assert!(
            e.contains("--api-allow-public") && e.contains("--api-token-file"),
            "{e}"
        );
        let mut with_token = a.clone();
        with_token.api_token_file = Some("/run/token".into());
        assert!(Config::resolve(&with_token).is_ok());
        let mut allowed = a.clone();
        allowed.api_allow_public = true;
        assert!(Config::resolve(&allowed).is_ok());
        a.listen = Some("[::1]:9464".into());
        assert!(Config::resolve(&a).is_ok(), "loopback needs neither");
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::resolve(&args()).unwrap();
        assert_eq!(c.ports.to_string(), DEFAULT_PORTS);
        assert_eq!(c.grace, Duration::from_secs(300));
        assert_eq!(c.leak_cycles, 3);
    }

    #[test]
    fn bad_values_name_key_and_fix() {
        let cases: Vec<(RunArgs, &str)> = vec![
            (
                RunArgs {
                    ports: Some("200-100".into()),
                    ..args()
                },
                "write it as 100-200",
            ),
            (
                RunArgs {
                    ports: Some("1-10,5-20".into()),
                    ..args()
                },
                "overlap",
            ),
            (
                RunArgs {
                    ports: Some("0-10".into()),
                    ..args()
                },
                "1-65535",
            ),
            (
                RunArgs {
                    ports: Some("".into()),
                    ..args()
                },
                "no port range",
            ),
            (
                RunArgs {
                    grace: Some("-5s".into()),
                    ..args()
                },
                "cannot be negative",
            ),
            (
                RunArgs {
                    grace: Some("5".into()),
                    ..args()
                },
                "with a unit",
            ),
            (
                RunArgs {
                    resync: Some("0s".into()),
                    ..args()
                },
                "above zero",
            ),
            (
                RunArgs {
                    leak_cycles: Some("0".into()),
                    ..args()
                },
                "from 1 to 1000",
            ),
            (
                RunArgs {
                    bind_ip: Some("localhost".into()),
                    ..args()
                },
                "not an IP",
            ),
            (
                RunArgs {
                    listen: Some("127.0.0.1:11150".into()),
                    ..args()
                },
                "inside --ports",
            ),
            (
                RunArgs {
                    log_format: Some("xml".into()),
                    ..args()
                },
                "text or json",
            ),
            (
                RunArgs {
                    docker_host: Some("/var/run/docker.sock".into()),
                    ..args()
                },
                "unix://",
            ),
        ];
        for (a, want) in cases {
            let e = Config::resolve(&a).unwrap_err().to_string();
            assert!(e.contains(want), "{e} should contain {want}");
            assert!(e.contains("--"), "{e} names the flag");
        }
    }

    #[test]
    fn file_is_read_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bridge.toml");
        std::fs::write(
            &p,
            "ports = \"12000-12009\"\ngrace = \"10s\"\nleak_cycles = 5\n",
        )
        .unwrap();
        let c = Config::resolve(&RunArgs {
            config: Some(p.clone()),
            grace: Some("1s".into()),
            ..args()
        })
        .unwrap();
        assert_eq!(c.ports.to_string(), "12000-12009");
        assert_eq!(c.grace, Duration::from_secs(1));
        assert_eq!(c.leak_cycles, 5);

        std::fs::write(&p, "ports = \"9-1\"\n").unwrap();
        let e = Config::resolve(&RunArgs {
            config: Some(p.clone()),
            ..args()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("bridge.toml") && e.contains("write it as 1-9"),
            "{e}"
        );

        std::fs::write(&p, "portz = \"1-9\"\n").unwrap();
        let e = Config::resolve(&RunArgs {
            config: Some(p.clone()),
            ..args()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("portz"), "{e}");

        let e = Config::resolve(&RunArgs {
            config: Some(dir.path().join("missing.toml")),
            ..args()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }
}
