//! `mesh-bridge state export|import|check`: moving state as JSON, including the seed system's legacy map.
//!
//! * `export [FILE]` writes the reservations as
//!   `{"version":1,"reservations":[{"service":"docs","port":11117,"state":"reserved","until":null,"since":"2024-01-01T00:00:00.000Z"}]}`
//!   to stdout, or atomically (temp file + rename) to FILE.
//! * `import FILE` reads that JSON, or the seed system's legacy map
//!   `{"service-name": port, ...}` (told apart by shape: an object whose
//!   `reservations` is an array is v1, any other object is the legacy map).
//!   All of it is validated first (size, JSON syntax, shape, service names,
//!   ports inside `--ports`, no port or service twice, no clash with another
//!   service's port in the store); then everything is written in one
//!   transaction, or nothing is. The error lists the first problems, each
//!   with its JSON path.
//! * `check` opens the store read-only and exits 0 with a one-line summary
//!   when it is intact and consistent; otherwise it fails naming the file and
//!   the reason. It never modifies anything.
//!
//! Timestamps are RFC 3339 in UTC (`Z`), with milliseconds on export.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::config::{self, ConfigError};
use crate::labels::validate_service_name;
use crate::pool::PortRanges;
use crate::store::{self, Change, RecordState, Store, StoreError};

/// Largest state file `import` reads.
pub const MAX_IMPORT_BYTES: u64 = 16 << 20;
/// Most entries one JSON array or object may hold (there are no more ports).
const MAX_ENTRIES: usize = 65_535;
/// How many problems an import error lists.
const SHOWN_PROBLEMS: usize = 5;
/// The two shapes `import` accepts, for error messages.
const SHAPES: &str = r#"expected the v1 export {"version":1,"reservations":[...]} or the legacy map {"service-name": port, ...}"#;

/// `mesh-bridge state ...`.
#[derive(Debug, clap::Args)]
pub struct StateArgs {
    /// Directory of the durable store.
    #[arg(long, env = "MESH_BRIDGE_STATE_DIR", global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Port ranges imports and checks are validated against.
    #[arg(long, env = "MESH_BRIDGE_PORTS", global = true, value_name = "RANGES")]
    pub ports: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: StateCommand,
}

/// The state subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum StateCommand {
    /// Write the reservations as JSON (stdout when FILE is left out).
    Export {
        /// Output file.
        file: Option<PathBuf>,
    },
    /// Import reservations from v1 JSON or the legacy {"service": port} map, all or nothing.
    Import {
        /// Input file.
        file: PathBuf,
    },
    /// Exit 0 when the store opens and is consistent; never modifies it.
    Check,
}

/// Why a state command failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `--ports` is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The input file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The input file is larger than [`MAX_IMPORT_BYTES`].
    #[error(
        "{path} is larger than the {limit} bytes a state file may have; nothing was imported (is it the right file?)"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The input file is not JSON (or nests too deep).
    #[error("{path} is not valid JSON ({message}); {SHAPES}; nothing was imported")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde_json's message, with line and column.
        message: String,
    },
    /// The input parsed but breaks the rules.
    #[error("{path} (read as the {shape}): nothing was imported, {} problem{}: {}{}", problems.len(), if problems.len() == 1 { "" } else { "s" }, problems.iter().take(SHOWN_PROBLEMS).cloned().collect::<Vec<_>>().join("; "), if problems.len() > SHOWN_PROBLEMS { format!("; and {} more", problems.len() - SHOWN_PROBLEMS) } else { String::new() })]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which of the two shapes the file was read as.
        shape: &'static str,
        /// Every problem, each starting with its JSON path.
        problems: Vec<String>,
    },
    /// The output could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file (or `-` for stdout).
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A stored timestamp cannot be written as RFC 3339.
    #[error("store holds a time of {0} ms, which RFC 3339 cannot express")]
    Time(u64),
}

/// Runs a state subcommand.
pub fn run(args: &StateArgs) -> Result<ExitCode, StateError> {
    let dir = args
        .state_dir
        .clone()
        .unwrap_or_else(config::default_state_dir);
    let ranges = config::parse_ports(args.ports.as_deref().unwrap_or(config::DEFAULT_PORTS), None)?;
    match &args.command {
        StateCommand::Export { file } => export(&dir, file.as_deref()),
        StateCommand::Import { file } => import(&dir, file, &ranges),
        StateCommand::Check => {
            let report = Store::check(&dir, Some(&ranges))?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

// ---------------------------------------------------------------- export

#[derive(Debug, Serialize)]
struct ExportFile {
    version: u32,
    reservations: Vec<ExportEntry>,
}

#[derive(Debug, Serialize)]
struct ExportEntry {
    service: String,
    port: u16,
    state: &'static str,
    until: Option<String>,
    since: String,
}

fn rfc3339(ms: u64) -> Result<String, StateError> {
    if ms > store::MAX_MS {
        return Err(StateError::Time(ms));
    }
    Ok(humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string())
}

pub(crate) fn export(dir: &Path, file: Option<&Path>) -> Result<ExitCode, StateError> {
    let db = dir.join(crate::contract::files::STORE);
    if !db.exists() {
        // Opening would create an empty store: say so instead.
        return Err(StoreError::NotFound { path: db }.into());
    }
    let snap = Store::open(dir)?.load()?;
    let mut reservations = Vec::with_capacity(snap.reservations.len());
    for r in snap.reservations {
        let (state, until) = match r.state {
            RecordState::Reserved => ("reserved", None),
            RecordState::Quarantined { until_ms } => ("quarantined", Some(rfc3339(until_ms)?)),
        };
        reservations.push(ExportEntry {
            service: r.service,
            port: r.port,
            state,
            until,
            since: rfc3339(r.since_ms)?,
        });
    }
    let doc = ExportFile {
        version: 1,
        reservations,
    };
    let mut text = serde_json::to_string_pretty(&doc).map_err(|e| StateError::Write {
        path: file.map_or_else(|| PathBuf::from("-"), Path::to_path_buf),
        source: io::Error::other(e),
    })?;
    text.push('\n');
    match file {
        None => {
            let mut out = io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| StateError::Write {
                    path: PathBuf::from("-"),
                    source,
                })?;
        }
        Some(path) => {
            write_atomically(path, text.as_bytes()).map_err(|source| StateError::Write {
                path: path.to_path_buf(),
                source,
            })?;
            eprintln!(
                "mesh-bridge: exported {} reservations to {}",
                doc.reservations.len(),
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it
/// over `path`, so readers see the old file or the new one, never half.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = parent.join(tmp_name);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(&parent) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

// ---------------------------------------------------------------- import

/// A JSON value that keeps every key of an object, duplicates included
/// (serde_json's `Value` would silently keep only the last).
#[derive(Debug)]
enum Json {
    Null,
    Bool,
    U(u64),
    I(i64),
    F(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Json, E> {
        Ok(Json::Bool)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::U(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::I(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        Ok(Json::F(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element()? {
            if out.len() == MAX_ENTRIES {
                return Err(de::Error::custom(format!(
                    "an array has more than {MAX_ENTRIES} entries, more than there are ports"
                )));
            }
            out.push(v);
        }
        Ok(Json::Arr(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut out = Vec::new();
        while let Some(kv) = map.next_entry::<String, Json>()? {
            if out.len() == MAX_ENTRIES {
                return Err(de::Error::custom(format!(
                    "an object has more than {MAX_ENTRIES} keys, more than there are ports"
                )));
            }
            out.push(kv);
        }
        Ok(Json::Obj(out))
    }
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool => "a boolean",
        Json::U(_) | Json::I(_) | Json::F(_) => "a number",
        Json::Str(_) => "a string",
        Json::Arr(_) => "an array",
        Json::Obj(_) => "an object",
    }
}

/// A string from the input, bounded and escaped for messages.
fn show(s: &str) -> String {
    let mut out: String = s.chars().take(60).flat_map(char::escape_default).collect();
    if s.chars().count() > 60 {
        out.push('…');
    }
    out
}

/// `base.key`, or `base["key"]` when the key is not a plain identifier.
fn key_path(base: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= 60
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !key.as_bytes()[0].is_ascii_digit();
    if plain {
        format!("{base}.{key}")
    } else {
        format!("{base}[\"{}\"]", show(key))
    }
}

/// One reservation read from the input.
#[derive(Debug)]
struct Entry {
    at: String,
    service: String,
    port: u16,
    state: RecordState,
    since_ms: Option<u64>,
}

fn port_of(v: &Json) -> Result<u16, String> {
    const WANT: &str = "want an integer from 1 to 65535";
    match v {
        Json::U(n) if (1..=65535).contains(n) => Ok(*n as u16),
        Json::U(n) => Err(format!("{n} is not a port ({WANT})")),
        Json::I(n) => Err(format!("{n} is not a port ({WANT})")),
        Json::F(x) => Err(format!("{x} is not a port ({WANT})")),
        other => Err(format!("expected a port number, found {}", kind(other))),
    }
}

fn time_of(v: &Json) -> Result<u64, String> {
    let Json::Str(s) = v else {
        return Err(format!(
            "expected an RFC 3339 time such as \"2024-01-31T12:00:00Z\", found {}",
            kind(v)
        ));
    };
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| {
        format!(
            "\"{}\" is not an RFC 3339 UTC time ({e}); write e.g. \"2024-01-31T12:00:00Z\"",
            show(s)
        )
    })?;
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("\"{}\" is before 1970", show(s)))?
        .as_millis();
    u64::try_from(ms)
        .ok()
        .filter(|ms| *ms <= store::MAX_MS)
        .ok_or_else(|| format!("\"{}\" is too far in the future", show(s)))
}

/// Reads the legacy `{"service": port}` map.
fn legacy(entries: &[(String, Json)], problems: &mut Vec<String>) -> Vec<Entry> {
    let mut out = Vec::new();
    for (service, value) in entries {
        let at = key_path("$", service);
        match port_of(value) {
            Ok(port) => out.push(Entry {
                at,
                service: service.clone(),
                port,
                state: RecordState::Reserved,
                since_ms: None,
            }),
            Err(e) => {
                problems.push(format!("{at}: {e}"));
                if let Err(e) = validate_service_name(service) {
                    problems.push(format!("{at}: {e}"));
                }
            }
        }
    }
    out
}

/// Reads the v1 export.
fn v1(top: &[(String, Json)], problems: &mut Vec<String>) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    for (key, value) in top {
        if seen.insert(key.as_str(), ()).is_some() {
            problems.push(format!("{}: key given twice", key_path("$", key)));
            continue;
        }
        match (key.as_str(), value) {
            ("version", Json::U(1)) => {}
            ("version", Json::U(n)) => problems.push(format!(
                "$.version: version {n} is not supported; this mesh-bridge reads version 1"
            )),
            ("version", other) => problems.push(format!(
                "$.version: expected the number 1, found {}",
                kind(other)
            )),
            ("reservations", Json::Arr(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(e) = v1_entry(&format!("$.reservations[{i}]"), item, problems) {
                        out.push(e);
                    }
                }
            }
            ("reservations", other) => problems.push(format!(
                "$.reservations: expected an array, found {}",
                kind(other)
            )),
            (k, _) => problems.push(format!(
                "{}: unknown key (a v1 file has `version` and `reservations`)",
                key_path("$", k)
            )),
        }
    }
    if !seen.contains_key("version") {
        problems.push("$.version: missing (want 1)".into());
    }
    out
}

fn v1_entry(at: &str, item: &Json, problems: &mut Vec<String>) -> Option<Entry> {
    let Json::Obj(fields) = item else {
        problems.push(format!("{at}: expected an object, found {}", kind(item)));
        return None;
    };
    let before = problems.len();
    let mut get: HashMap<&str, &Json> = HashMap::new();
    for (k, v) in fields {
        let p = key_path(at, k);
        if !matches!(k.as_str(), "service" | "port" | "state" | "until" | "since") {
            problems.push(format!(
                "{p}: unknown key (want service, port, state, until, since)"
            ));
        } else if get.insert(k.as_str(), v).is_some() {
            problems.push(format!("{p}: key given twice"));
        }
    }
    let service = match get.get("service") {
        Some(Json::Str(s)) => Some(s.clone()),
        Some(other) => {
            problems.push(format!(
                "{at}.service: expected a string, found {}",
                kind(other)
            ));
            None
        }
        None => {
            problems.push(format!("{at}.service: missing"));
            None
        }
    };
    let port = match get.get("port") {
        Some(v) => port_of(v)
            .map_err(|e| problems.push(format!("{at}.port: {e}")))
            .ok(),
        None => {
            problems.push(format!("{at}.port: missing"));
            None
        }
    };
    let until = match get.get("until") {
        None | Some(Json::Null) => None,
        Some(v) => time_of(v)
            .map_err(|e| problems.push(format!("{at}.until: {e}")))
            .ok(),
    };
    let since_ms = match get.get("since") {
        None | Some(Json::Null) => None,
        Some(v) => time_of(v)
            .map_err(|e| problems.push(format!("{at}.since: {e}")))
            .ok(),
    };
    let has_until = !matches!(get.get("until"), None | Some(Json::Null));
    let state = match get.get("state") {
        Some(Json::Str(s)) if s == "reserved" => {
            if has_until {
                problems.push(format!(
                    "{at}.until: a reserved port has no deadline; use null"
                ));
            }
            Some(RecordState::Reserved)
        }
        Some(Json::Str(s)) if s == "quarantined" => match until {
            Some(until_ms) => Some(RecordState::Quarantined { until_ms }),
            None => {
                if !has_until {
                    problems.push(format!(
                        "{at}.until: a quarantined port needs a deadline (RFC 3339)"
                    ));
                }
                None
            }
        },
        Some(Json::Str(s)) => {
            problems.push(format!(
                "{at}.state: \"{}\" is not a state (want \"reserved\" or \"quarantined\")",
                show(s)
            ));
            None
        }
        Some(other) => {
            problems.push(format!(
                "{at}.state: expected a string, found {}",
                kind(other)
            ));
            None
        }
        None => {
            problems.push(format!("{at}.state: missing"));
            None
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(Entry {
        at: at.to_string(),
        service: service?,
        port: port?,
        state: state?,
        since_ms,
    })
}

/// Names, ranges and duplicates within the file.
fn validate(entries: &[Entry], ranges: &PortRanges, problems: &mut Vec<String>) {
    let mut ports: HashMap<u16, &Entry> = HashMap::new();
    let mut services: HashMap<&str, &Entry> = HashMap::new();
    for e in entries {
        if let Err(err) = validate_service_name(&e.service) {
            problems.push(format!("{}: {err}", e.at));
        }
        if !ranges.contains(e.port) {
            problems.push(format!(
                "{}: port {} is outside the ranges {ranges} (pass --ports with the bridge's ranges)",
                e.at, e.port
            ));
        }
        if let Some(first) = ports.insert(e.port, e) {
            problems.push(format!(
                "{}: port {} is given twice (also at {})",
                e.at, e.port, first.at
            ));
        }
        if let Some(first) = services.insert(&e.service, e) {
            problems.push(format!(
                "{}: service `{}` is given twice (also at {})",
                e.at,
                show(&e.service),
                first.at
            ));
        }
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, StateError> {
    let read_err = |source| StateError::Read {
        path: path.to_path_buf(),
        source,
    };
    let f = fs::File::open(path).map_err(read_err)?;
    let meta = f.metadata().map_err(read_err)?;
    if meta.is_dir() {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is a directory",
        )));
    }
    if meta.len() > MAX_IMPORT_BYTES {
        return Err(StateError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_IMPORT_BYTES,
        });
    }
    let mut bytes = Vec::new();
    // The limit holds even for files whose size the metadata does not tell.
    f.take(MAX_IMPORT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_IMPORT_BYTES {
        return Err(StateError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_IMPORT_BYTES,
        });
    }
    Ok(bytes)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn import(dir: &Path, file: &Path, ranges: &PortRanges) -> Result<ExitCode, StateError> {
    // A running daemon would not see the import and would later clash with it.
    let _lock = crate::store::DirLock::probe(dir)?;
    let bytes = read_limited(file)?;
    let json: Json = serde_json::from_slice(&bytes).map_err(|e| StateError::Parse {
        path: file.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut problems = Vec::new();
    let (shape, entries) = match &json {
        Json::Obj(top)
            if top
                .iter()
                .any(|(k, v)| k == "reservations" && matches!(v, Json::Arr(_))) =>
        {
            ("v1 export", v1(top, &mut problems))
        }
        Json::Obj(top) => ("legacy map {\"service\": port}", legacy(top, &mut problems)),
        other => {
            return Err(StateError::Invalid {
                path: file.to_path_buf(),
                shape: "neither shape",
                problems: vec![format!("$: found {}; {SHAPES}", kind(other))],
            });
        }
    };
    let invalid = |problems| StateError::Invalid {
        path: file.to_path_buf(),
        shape,
        problems,
    };
    validate(&entries, ranges, &mut problems);
    if !problems.is_empty() {
        return Err(invalid(problems));
    }

    // The file is sound; now compare it with the store.
    let mut store = Store::open(dir)?;
    let snap = store.load()?;
    let importing: HashMap<&str, ()> = entries.iter().map(|e| (e.service.as_str(), ())).collect();
    let held: HashMap<u16, &str> = snap
        .reservations
        .iter()
        .map(|r| (r.port, r.service.as_str()))
        .collect();
    for e in &entries {
        if let Some(holder) = held.get(&e.port)
            && *holder != e.service
            && !importing.contains_key(holder)
        {
            problems.push(format!(
                "{}: port {} is held in {} by `{holder}`; remove or export-edit-import it first",
                e.at,
                e.port,
                store.path().display()
            ));
        }
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }

    // Replace the records of every imported service in one transaction:
    // forget them first, so ports can move between imported services.
    let now = now_ms();
    let mut changes = Vec::with_capacity(entries.len() * 3);
    for e in &entries {
        if snap.reservations.iter().any(|r| r.service == e.service) {
            changes.push(Change::Remove {
                service: e.service.clone(),
            });
        }
    }
    let mut quarantined = 0;
    for e in &entries {
        changes.push(Change::Reserve {
            service: e.service.clone(),
            port: e.port,
            since_ms: e.since_ms.unwrap_or(now),
        });
        if let RecordState::Quarantined { until_ms } = e.state {
            quarantined += 1;
            changes.push(Change::Quarantine {
                service: e.service.clone(),
                port: e.port,
                until_ms,
            });
        }
        changes.push(Change::LastPort {
            service: e.service.clone(),
            port: e.port,
            seen_ms: now,
        });
    }
    store.apply(&changes)?;
    println!(
        "imported {} reservations ({quarantined} quarantined) from {} into {}",
        entries.len(),
        file.display(),
        store.path().display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests;
