//! `cargo xtask dashboards check`: lints the Grafana dashboards and the
//! Prometheus rules under `dashboards/`, runs promtool (rule lint, rule unit
//! tests, example config), and, given a Prometheus (`--prometheus URL`) or a
//! scenario run directory (`--run-dir DIR`), runs every panel query against it
//! and fails listing the panels that returned no data.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// Subcommands of `cargo xtask dashboards`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Lint the dashboards and rules, run promtool, and (with --prometheus or
    /// --run-dir) run every panel query: each must return data.
    Check(CheckArgs),
}

/// Flags of `cargo xtask dashboards check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// A Prometheus to run every panel query against (e.g. one that scraped a
    /// scenario run), as http://HOST:PORT[/PREFIX].
    #[arg(long, value_name = "URL", conflicts_with = "run_dir")]
    pub prometheus: Option<String>,
    /// A scenario run directory holding Prometheus' data directory in
    /// `prometheus/`: a Prometheus is started on a copy of it, on loopback,
    /// and every panel query is run against it.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// What `$__rate_interval` becomes in panel queries.
    #[arg(long, default_value = "1m")]
    pub rate_interval: String,
    /// Start of the time range queried (unix seconds); default: the oldest
    /// sample in the TSDB.
    #[arg(long)]
    pub start: Option<f64>,
    /// End of the time range queried (unix seconds); default: the newest
    /// sample in the TSDB.
    #[arg(long)]
    pub end: Option<f64>,
    /// Deadline in seconds for a started Prometheus to become ready.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout: u64,
    /// The prometheus binary started for --run-dir.
    #[arg(long, default_value = "prometheus")]
    pub prometheus_bin: String,
    /// The promtool binary.
    #[arg(long, default_value = "promtool")]
    pub promtool: String,
}

impl CheckArgs {
    /// The defaults, with or without a run directory to query.
    pub fn defaults(run_dir: Option<PathBuf>) -> CheckArgs {
        CheckArgs {
            prometheus: None,
            run_dir,
            rate_interval: "1m".into(),
            start: None,
            end: None,
            ready_timeout: 60,
            prometheus_bin: "prometheus".into(),
            promtool: "promtool".into(),
        }
    }
}

/// Runs a dashboards subcommand.
pub fn run(command: &Command) -> Result<()> {
    match command {
        Command::Check(args) => check(args),
    }
}

// ------------------------------------------------------------------ contract

use mesh_bridge::contract::metric::{self, Kind};

/// The bridge's metrics (`mesh_bridge::contract::metric`) and the harness's
/// (`mesh_chaos::metrics`). A dashboard or rule that names a `mesh_bridge_`
/// or `mesh_chaos_` series not in them fails the check.
fn contract() -> impl Iterator<Item = &'static metric::Def> {
    metric::ALL.iter().chain(mesh_chaos::metrics::ALL.iter())
}

/// Prefixes of the series names the check holds to a contract list.
const CHECKED_PREFIXES: &[&str] = &["mesh_bridge_", "mesh_bridge:", "mesh_chaos_"];

/// Functions through which a counter (or a histogram's series) may be read.
const COUNTER_FUNCTIONS: &[&str] = &["rate", "irate", "increase", "resets"];

const DASHBOARDS_DIR: &str = "dashboards/grafana";
const RULES_DIR: &str = "dashboards/prometheus";
const RUNBOOK: &str = "dashboards/RUNBOOK.md";

use crate::paths::workspace_root;

// ------------------------------------------------------------------ check

fn check(args: &CheckArgs) -> Result<()> {
    let root = workspace_root();
    let mut problems = Vec::new();

    let recorded = recorded_rule_names(&root.join(RULES_DIR).join("rules.yml"))?;
    let dashboards = load_dashboards(&root.join(DASHBOARDS_DIR), &recorded, &mut problems)?;
    let panels: usize = dashboards.iter().map(|d| d.queries.len()).sum();
    println!(
        "dashboards: {} dashboards, {} panel queries linted",
        dashboards.len(),
        panels
    );
    lint_rules(&root, &recorded, &mut problems)?;
    if !problems.is_empty() {
        eprintln!("dashboards check: {} problems:", problems.len());
        for p in &problems {
            eprintln!("  - {p}");
        }
        bail!("dashboards lint failed ({} problems)", problems.len());
    }
    println!("dashboards: lint ok");

    run_promtool(&root, &args.promtool)?;

    if let Some(url) = &args.prometheus {
        let prom = Prom::parse(url)?;
        run_queries(&prom, &dashboards, args, &[])?;
    } else if let Some(dir) = &args.run_dir {
        let data = find_data_dir(dir)?;
        let blocks = block_ranges(&data)?;
        let launched = Launched::start(&data, args)?;
        run_queries(&launched.prom, &dashboards, args, &blocks)?;
        drop(launched);
    } else {
        println!(
            "dashboards: panel queries not run (give --prometheus URL or --run-dir DIR to run them)"
        );
    }
    println!("dashboards check: ok");
    Ok(())
}

// ------------------------------------------------------------------ dashboards lint

#[derive(Debug)]
struct PanelQuery {
    panel: String,
    ref_id: String,
    expr: String,
}

#[derive(Debug)]
struct Dashboard {
    file: String,
    title: String,
    /// Template variables and the value a check query substitutes for them.
    variables: BTreeMap<String, String>,
    queries: Vec<PanelQuery>,
}

fn load_dashboards(
    dir: &Path,
    recorded: &BTreeSet<String>,
    problems: &mut Vec<String>,
) -> Result<Vec<Dashboard>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no dashboards in {}", dir.display());

    let mut uids: BTreeMap<String, String> = BTreeMap::new();
    let mut titles: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for path in files {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let json: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{file}: not valid JSON: {e}"));
                continue;
            }
        };
        let mut p = |msg: String| problems.push(format!("{file}: {msg}"));

        let uid = json["uid"].as_str().unwrap_or("");
        if !stable_uid(uid) {
            p(format!(
                "uid {uid:?} must be set, 1-40 characters of [A-Za-z0-9_-] (a stable uid)"
            ));
        } else if let Some(other) = uids.insert(uid.to_string(), file.clone()) {
            p(format!("uid {uid:?} is also used by {other}"));
        }
        let title = json["title"].as_str().unwrap_or("").to_string();
        if title.is_empty() {
            p("dashboard has no title".into());
        } else if let Some(other) = titles.insert(title.clone(), file.clone()) {
            p(format!("title {title:?} is also used by {other}"));
        }
        if json.get("__inputs").is_some() {
            p(
                "has __inputs (an export for sharing); use the `datasource` variable instead"
                    .into(),
            );
        }

        // Template variables.
        let vars = json["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ds_vars: Vec<&Value> = vars.iter().filter(|v| v["type"] == "datasource").collect();
        if ds_vars.len() != 1 || ds_vars[0]["name"] != "datasource" {
            p("needs exactly one datasource variable, named `datasource`".into());
        } else if ds_vars[0]["query"] != "prometheus" {
            p("the `datasource` variable must be of plugin type `prometheus`".into());
        }
        let mut variables = BTreeMap::new();
        for v in &vars {
            let name = v["name"].as_str().unwrap_or("").to_string();
            if v["type"] == "datasource" {
                continue;
            }
            if v["type"] == "query" {
                check_datasource(&v["datasource"], &format!("variable {name}"), &mut p);
                let q = v["query"]
                    .as_str()
                    .or_else(|| v["query"]["query"].as_str())
                    .unwrap_or("");
                for m in metric_problems(q, recorded, false) {
                    p(format!("variable {name}: {m}"));
                }
            }
            variables.insert(name, variable_value(v));
        }

        // Annotation queries: variable datasource, contract metrics.
        for a in json["annotations"]["list"].as_array().into_iter().flatten() {
            if a["builtIn"].as_u64() == Some(1) {
                continue;
            }
            let name = a["name"].as_str().unwrap_or("?");
            check_datasource(&a["datasource"], &format!("annotation {name:?}"), &mut p);
            let expr = a["expr"].as_str().unwrap_or("");
            for m in metric_problems(expr, recorded, true) {
                p(format!("annotation {name:?}: {m}"));
            }
        }

        // Panels, rows included.
        let mut all = Vec::new();
        flatten_panels(&json["panels"], &mut all);
        if all.is_empty() {
            p("has no panels".into());
        }
        let mut ids = BTreeSet::new();
        let mut queries = Vec::new();
        for panel in all {
            let kind = panel["type"].as_str().unwrap_or("");
            let ptitle = panel["title"].as_str().unwrap_or("").to_string();
            let Some(id) = panel["id"].as_u64() else {
                p(format!("panel {ptitle:?} has no numeric id"));
                continue;
            };
            let label = format!("panel {id} {ptitle:?}");
            if !ids.insert(id) {
                p(format!("panel id {id} is used twice ({ptitle:?})"));
            }
            if ptitle.is_empty() {
                p(format!("panel {id} has no title"));
            }
            if matches!(kind, "row" | "text" | "dashlist" | "alertlist" | "news") {
                continue;
            }
            if panel["description"]
                .as_str()
                .unwrap_or("")
                .trim()
                .is_empty()
            {
                p(format!("{label} has no description"));
            }
            if matches!(kind, "timeseries" | "stat" | "gauge" | "bargauge" | "graph")
                && panel["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .unwrap_or("")
                    .is_empty()
            {
                p(format!("{label} has no unit (fieldConfig.defaults.unit)"));
            }
            check_datasource(&panel["datasource"], &label, &mut p);
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            let mut any = false;
            for t in &targets {
                let ref_id = t["refId"].as_str().unwrap_or("?").to_string();
                check_datasource(&t["datasource"], &format!("{label} query {ref_id}"), &mut p);
                let expr = t["expr"].as_str().unwrap_or("").trim().to_string();
                if expr.is_empty() {
                    p(format!("{label} query {ref_id} has no expr"));
                    continue;
                }
                any = true;
                for m in metric_problems(&expr, recorded, true) {
                    p(format!("{label} query {ref_id}: {m}"));
                }
                queries.push(PanelQuery {
                    panel: label.clone(),
                    ref_id,
                    expr,
                });
            }
            if !any {
                p(format!("{label} has no query"));
            }
        }
        out.push(Dashboard {
            file,
            title,
            variables,
            queries,
        });
    }
    Ok(out)
}

fn stable_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 40
        && uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A datasource must be absent (inherits the dashboard default) or refer to
/// the `datasource` variable; a fixed uid breaks on every other Grafana.
fn check_datasource(ds: &Value, what: &str, p: &mut impl FnMut(String)) {
    let uid = match ds {
        Value::Null => return,
        Value::String(s) => s.as_str(),
        Value::Object(o) => match o.get("uid") {
            None | Some(Value::Null) => return,
            Some(v) => v.as_str().unwrap_or(""),
        },
        _ => "",
    };
    if !matches!(uid, "${datasource}" | "$datasource" | "[[datasource]]") {
        p(format!(
            "{what}: datasource {uid:?} is fixed; use the `datasource` variable (\"${{datasource}}\")"
        ));
    }
}

/// The value a check query substitutes for a template variable: its current
/// concrete value, else its "All" value, else a match-anything regex.
fn variable_value(v: &Value) -> String {
    let current = &v["current"]["value"];
    let concrete = match current {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) if a.len() == 1 => a[0].as_str().map(str::to_string),
        _ => None,
    };
    match concrete {
        Some(s) if !s.is_empty() && s != "$__all" => s,
        _ => v["allValue"].as_str().unwrap_or(".*").to_string(),
    }
}

fn flatten_panels<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
    for panel in panels.as_array().into_iter().flatten() {
        out.push(panel);
        flatten_panels(&panel["panels"], out);
    }
}

// ------------------------------------------------------------------ PromQL scanning

#[derive(Debug, PartialEq)]
enum Token {
    Ident(usize, String),
    Range(String),
}

/// A small PromQL scanner: identifiers (with their byte offset) and the
/// contents of range selectors, skipping string literals, numbers, and
/// Grafana variables (`$x`, `${x}`).
fn scan(expr: &str) -> Vec<Token> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    if b[i] == b'\\' && c != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                i += 1;
                if i < b.len() && b[i] == b'{' {
                    while i < b.len() && b[i] != b'}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < b.len() && ident(b[i]) {
                        i += 1;
                    }
                }
            }
            b'[' => {
                let start = i + 1;
                while i < b.len() && b[i] != b']' {
                    i += 1;
                }
                out.push(Token::Range(expr[start..i.min(b.len())].trim().to_string()));
                i += 1;
            }
            b'0'..=b'9' | b'.' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                out.push(Token::Ident(start, expr[start..i].to_string()));
            }
            _ => i += 1,
        }
    }
    out
}

/// The name of the function whose parentheses directly enclose `pos`.
fn enclosing_function(expr: &str, pos: usize) -> Option<String> {
    let b = expr.as_bytes();
    let mut depth = 0usize;
    let mut i = pos;
    while i > 0 {
        i -= 1;
        match b[i] {
            b')' => depth += 1,
            b'(' if depth == 0 => {
                let mut end = i;
                while end > 0 && b[end - 1].is_ascii_whitespace() {
                    end -= 1;
                }
                let mut start = end;
                while start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
                    start -= 1;
                }
                return Some(expr[start..end].to_string());
            }
            b'(' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Problems with the series an expression names: unknown to the contract,
/// counters read without rate/increase, fixed range windows in dashboards.
fn metric_problems(expr: &str, recorded: &BTreeSet<String>, dashboard: bool) -> Vec<String> {
    let mut out = Vec::new();
    for token in scan(expr) {
        match token {
            Token::Range(r) => {
                if dashboard && !(r.starts_with("$__") || r.starts_with("${__")) {
                    out.push(format!(
                        "range [{r}] is fixed; use [$__rate_interval] (or another $__ variable)"
                    ));
                }
            }
            Token::Ident(pos, name) => {
                if !CHECKED_PREFIXES.iter().any(|p| name.starts_with(p)) {
                    continue;
                }
                if name.contains(':') {
                    if !recorded.contains(&name) {
                        out.push(format!("{name} is not a recording rule of rules.yml"));
                    }
                    continue;
                }
                let Some((base, kind, suffix)) = contract_series(&name) else {
                    out.push(format!(
                        "{name} is not a metric of the contract (docs/DESIGN.md section 3; harness metrics: section 4)"
                    ));
                    continue;
                };
                let counter_like = match kind {
                    Kind::Counter => true,
                    Kind::Histogram if suffix.is_empty() => {
                        out.push(format!(
                            "{base} is a histogram: use {base}_bucket, _sum or _count"
                        ));
                        continue;
                    }
                    Kind::Histogram => true,
                    Kind::Gauge => false,
                };
                if counter_like && dashboard {
                    let f = enclosing_function(expr, pos).unwrap_or_default();
                    if !COUNTER_FUNCTIONS.contains(&f.as_str()) {
                        out.push(format!(
                            "counter {name} is read without rate() or increase()"
                        ));
                    }
                }
            }
        }
    }
    out
}

/// Resolves a series name to its contract metric, kind and histogram suffix.
fn contract_series(name: &str) -> Option<(&'static str, Kind, &'static str)> {
    for d in contract() {
        let (metric, kind) = (d.name, d.kind);
        if name == metric {
            return Some((metric, kind, ""));
        }
        if kind == Kind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                if name.strip_suffix(suffix) == Some(metric) {
                    return Some((metric, kind, suffix));
                }
            }
        }
    }
    None
}

// ------------------------------------------------------------------ rules lint

fn recorded_rule_names(rules: &Path) -> Result<BTreeSet<String>> {
    let text = fs::read_to_string(rules).with_context(|| format!("reading {}", rules.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|n| n.trim().to_string())
        .collect())
}

/// The rule blocks of a rules file: (kind, name, text) for every `- alert:`
/// or `- record:` item, text being the item's lines.
fn rule_blocks(text: &str) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t
            .strip_prefix("- alert:")
            .or_else(|| t.strip_prefix("- record:"))
        {
            let kind = if t.starts_with("- alert:") {
                "alert"
            } else {
                "record"
            };
            out.push((kind.into(), rest.trim().into(), String::new()));
        } else if t.starts_with("- name:") {
            continue;
        }
        if let Some(last) = out.last_mut() {
            last.2.push_str(line);
            last.2.push('\n');
        }
    }
    out
}

/// The PromQL of a rule block's `expr:` (inline or a block scalar).
fn rule_expr(block: &str) -> String {
    let mut lines = block.lines();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        let Some(rest) = t.strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if !(rest.starts_with('|') || rest.starts_with('>')) {
            return rest.trim_matches(|c| c == '"' || c == '\'').to_string();
        }
        let indent = line.len() - t.len();
        let mut expr = String::new();
        for l in lines.by_ref() {
            let lt = l.trim_start();
            if !lt.is_empty() && l.len() - lt.len() <= indent {
                break;
            }
            expr.push_str(lt);
            expr.push('\n');
        }
        return expr;
    }
    String::new()
}

/// GitHub's heading anchors: lower case, punctuation dropped, spaces to '-'.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn lint_rules(root: &Path, recorded: &BTreeSet<String>, problems: &mut Vec<String>) -> Result<()> {
    let rules_path = root.join(RULES_DIR).join("rules.yml");
    let text = fs::read_to_string(&rules_path)?;
    let runbook =
        fs::read_to_string(root.join(RUNBOOK)).with_context(|| format!("reading {RUNBOOK}"))?;
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let mut alerts = 0;
    for (kind, name, block) in rule_blocks(&text) {
        let expr = rule_expr(&block);
        if expr.trim().is_empty() {
            problems.push(format!("rules.yml: {kind} {name} has no expr"));
        }
        for m in metric_problems(&expr, recorded, false) {
            problems.push(format!("rules.yml: {kind} {name}: {m}"));
        }
        if kind != "alert" {
            continue;
        }
        alerts += 1;
        for key in ["severity:", "summary:", "description:", "runbook_url:"] {
            if !block.lines().any(|l| l.trim_start().starts_with(key)) {
                problems.push(format!(
                    "rules.yml: alert {name} has no {}",
                    key.trim_end_matches(':')
                ));
            }
        }
        let want = format!("{RUNBOOK}#{}", name.to_lowercase());
        let url = block
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("runbook_url:"))
            .map(str::trim)
            .unwrap_or("");
        if !url.ends_with(&want) {
            problems.push(format!(
                "rules.yml: alert {name}: runbook_url {url:?} should end with {want}"
            ));
        }
        if !anchors.contains(&name.to_lowercase()) {
            problems.push(format!(
                "{RUNBOOK}: no section for alert {name} (a heading `## {name}`)"
            ));
        }
    }
    ensure!(alerts > 0, "rules.yml has no alerts");
    println!(
        "rules: {alerts} alert rules and {} recording rules linted, runbook sections present",
        recorded.len()
    );
    Ok(())
}

// ------------------------------------------------------------------ promtool

fn run_promtool(root: &Path, promtool: &str) -> Result<()> {
    let dir = root.join(RULES_DIR);
    let runs: [&[&str]; 3] = [
        &["check", "rules", "--lint=all", "--lint-fatal", "rules.yml"],
        &["test", "rules", "rules_test.yml"],
        &["check", "config", "prometheus.yml"],
    ];
    for args in runs {
        let out = Process::new(promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .with_context(|| {
                format!("running {promtool} (install it: apt-get install prometheus)")
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            eprintln!("{text}");
            bail!("promtool {} failed ({})", args.join(" "), out.status);
        }
        println!("promtool {}: ok", args.join(" "));
    }
    Ok(())
}

// ------------------------------------------------------------------ Prometheus HTTP

/// A Prometheus reachable over plain HTTP (loopback in practice).
#[derive(Debug, Clone)]
struct Prom {
    host: String,
    port: u16,
    prefix: String,
}

impl Prom {
    fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("--prometheus {url:?}: only http:// URLs are supported"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().with_context(|| format!("port of {url:?}"))?,
            ),
            None => (authority.to_string(), 80),
        };
        ensure!(!host.is_empty(), "--prometheus {url:?} has no host");
        let prefix = path.trim_end_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("/{prefix}")
        };
        Ok(Prom { host, port, prefix })
    }

    fn url(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.prefix)
    }

    /// A GET over HTTP/1.0 (so the body is neither chunked nor kept alive).
    fn get(&self, path: &str, timeout: Duration) -> Result<(u16, String)> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .with_context(|| format!("resolving {}", self.host))?;
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(
            stream,
            "GET {}{} HTTP/1.0\r\nHost: {}:{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
            self.prefix, path, self.host, self.port
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("malformed HTTP response")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("malformed HTTP status line")?;
        Ok((status, body.to_string()))
    }

    /// A Prometheus API call: the `data` of a `"status":"success"` answer.
    fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = self.get(path, Duration::from_secs(30))?;
        let json: Value = serde_json::from_str(&body).with_context(|| {
            format!(
                "HTTP {status} from {path}: {}",
                body.chars().take(200).collect::<String>()
            )
        })?;
        if json["status"] != "success" {
            bail!(
                "{}: {}",
                json["errorType"].as_str().unwrap_or("error"),
                json["error"].as_str().unwrap_or(&body)
            );
        }
        Ok(json["data"].clone())
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ------------------------------------------------------------------ a Prometheus over a run's data

fn find_data_dir(run_dir: &Path) -> Result<PathBuf> {
    let nested = run_dir.join("prometheus");
    for dir in [&nested, &run_dir.to_path_buf()] {
        if dir.join("wal").is_dir() || dir.join("chunks_head").is_dir() || has_blocks(dir) {
            return Ok(dir.clone());
        }
    }
    bail!(
        "{} holds no Prometheus data directory (expected {}/wal or blocks)",
        run_dir.display(),
        nested.display()
    )
}

fn has_blocks(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|rd| rd.flatten().any(|e| e.path().join("meta.json").is_file()))
        .unwrap_or(false)
}

/// (minTime, maxTime) in ms of the persisted blocks of a data directory.
fn block_ranges(dir: &Path) -> Result<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)?.flatten() {
        let meta = entry.path().join("meta.json");
        if let Ok(text) = fs::read_to_string(&meta) {
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", meta.display()))?;
            if let (Some(a), Some(b)) = (v["minTime"].as_i64(), v["maxTime"].as_i64()) {
                out.push((a, b));
            }
        }
    }
    Ok(out)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "lock" {
            continue;
        }
        let ty = entry.file_type()?;
        if ty.is_dir() {
            copy_dir(&entry.path(), &to.join(&name))?;
        } else if ty.is_file() {
            fs::copy(entry.path(), to.join(&name))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// A Prometheus this check started on a copy of a run's data directory
/// (the run's own files are never written). Dropping it kills the process and
/// removes the copy, also when the check fails half way.
#[derive(Debug)]
struct Launched {
    child: Child,
    dir: PathBuf,
    prom: Prom,
}

impl Launched {
    fn start(data: &Path, args: &CheckArgs) -> Result<Self> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "mesh-bridge-dashboards-{}-{nanos}",
            std::process::id()
        ));
        let tsdb = dir.join("data");
        copy_dir(data, &tsdb).with_context(|| format!("copying {}", data.display()))?;
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            "global:\n  scrape_interval: 1m\nscrape_configs: []\n",
        )?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log_path = dir.join("prometheus.log");
        let log = fs::File::create(&log_path)?;
        let child = Process::new(&args.prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=100y")
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(anyhow::Error::new(e).context(format!(
                    "starting {} (install it: apt-get install prometheus)",
                    args.prometheus_bin
                )));
            }
        };
        let mut me = Launched {
            child,
            dir,
            prom: Prom {
                host: "127.0.0.1".into(),
                port,
                prefix: String::new(),
            },
        };
        println!(
            "prometheus: started pid {} on {} over a copy of {}",
            me.child.id(),
            me.prom.url(),
            data.display()
        );
        let deadline = Instant::now() + Duration::from_secs(args.ready_timeout);
        loop {
            if let Some(status) = me.child.try_wait()? {
                bail!(
                    "prometheus exited before it was ready ({status}):\n{}",
                    tail(&log_path)
                );
            }
            if let Ok((200, _)) = me.prom.get("/-/ready", Duration::from_secs(2)) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "prometheus not ready within {}s:\n{}",
                    args.ready_timeout,
                    tail(&log_path)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        println!("prometheus: ready");
        // On the error paths above, dropping `me` stops the process.
        Ok(me)
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
        println!("prometheus: stopped pid {}", self.child.id());
    }
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

// ------------------------------------------------------------------ running the panel queries

/// The time range holding data: head stats of the TSDB plus persisted blocks,
/// unless --start/--end say otherwise. Seconds.
fn time_range(prom: &Prom, args: &CheckArgs, blocks: &[(i64, i64)]) -> Result<(f64, f64)> {
    let mut lo = i64::MAX;
    let mut hi = i64::MIN;
    let status = prom.api("/api/v1/status/tsdb");
    if status.is_err() && blocks.is_empty() && (args.start.is_none() || args.end.is_none()) {
        return status
            .map(|_| (0.0, 0.0))
            .with_context(|| format!("asking {} for its TSDB time range", prom.url()));
    }
    if let Ok(data) = status {
        let head = &data["headStats"];
        match (head["minTime"].as_i64(), head["maxTime"].as_i64()) {
            (Some(a), Some(b)) if a <= b => {
                lo = lo.min(a);
                hi = hi.max(b);
            }
            _ => {}
        }
    }
    for &(a, b) in blocks {
        lo = lo.min(a);
        hi = hi.max(b);
    }
    let start = args.start.or((lo <= hi).then(|| lo as f64 / 1000.0));
    let end = args.end.or((lo <= hi).then(|| hi as f64 / 1000.0));
    match (start, end) {
        (Some(s), Some(e)) if s < e => Ok((s, e)),
        (Some(s), Some(e)) => {
            bail!("empty time range {s}..{e}: the TSDB holds no samples (or give --start/--end)")
        }
        _ => bail!("the TSDB holds no samples; give --start and --end"),
    }
}

/// Replaces Grafana's variables in a panel query.
fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, consumed) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => {
                    let full = &inner[..end];
                    (full.split(':').next().unwrap_or(full), end + 2)
                }
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match vars.get(name) {
            Some(v) if consumed > 0 => {
                out.push_str(v);
                rest = &after[consumed..];
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn run_queries(
    prom: &Prom,
    dashboards: &[Dashboard],
    args: &CheckArgs,
    blocks: &[(i64, i64)],
) -> Result<()> {
    let (start, end) = time_range(prom, args, blocks)?;
    let span = end - start;
    let step = (span / 500.0).ceil().max(1.0);
    println!(
        "queries: against {} over {:.0}s of data ({start:.0}..{end:.0}, step {step}s, $__rate_interval={})",
        prom.url(),
        span,
        args.rate_interval
    );
    let mut failures = Vec::new();
    let mut total = 0;
    for d in dashboards {
        let mut vars = d.variables.clone();
        vars.insert("__rate_interval".into(), args.rate_interval.clone());
        vars.insert("__interval".into(), format!("{step}s"));
        vars.insert("__interval_ms".into(), format!("{}", step * 1000.0));
        vars.insert("__range".into(), format!("{}s", span.ceil()));
        vars.insert("__range_s".into(), format!("{}", span.ceil()));
        for q in &d.queries {
            total += 1;
            let expr = substitute(&q.expr, &vars);
            let path = format!(
                "/api/v1/query_range?query={}&start={start}&end={end}&step={step}",
                urlencode(&expr)
            );
            let verdict = match prom.api(&path) {
                Ok(data) => {
                    let result = data["result"].as_array().cloned().unwrap_or_default();
                    if result.is_empty() {
                        Some("no data".to_string())
                    } else if !result.iter().any(has_number) {
                        Some(format!("{} series, all NaN", result.len()))
                    } else {
                        None
                    }
                }
                Err(e) => Some(format!("error: {e:#}")),
            };
            match verdict {
                None => println!("  ok       {} / {} [{}]", d.title, q.panel, q.ref_id),
                Some(why) => {
                    let tag = if why.starts_with("error") {
                        "ERROR  "
                    } else {
                        "NO DATA"
                    };
                    println!("  {tag}  {} / {} [{}]", d.title, q.panel, q.ref_id);
                    failures.push(format!(
                        "{} ({}) / {} query {}: {why}\n      {expr}",
                        d.title, d.file, q.panel, q.ref_id
                    ));
                }
            }
        }
    }
    if !failures.is_empty() {
        eprintln!(
            "{} of {total} panel queries returned no data:",
            failures.len()
        );
        for f in &failures {
            eprintln!("  - {f}");
        }
        bail!(
            "{} of {total} panel queries returned no data",
            failures.len()
        );
    }
    println!("queries: all {total} panel queries returned data");
    Ok(())
}

/// Whether a series of a query_range answer has a sample that is a number
/// (a p99 of a histogram that never observed anything is all NaN).
fn has_number(series: &Value) -> bool {
    series["values"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&series["value"]))
        .filter_map(|sample| sample[1].as_str())
        .any(|v| v.parse::<f64>().is_ok_and(|f| !f.is_nan()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    #[test]
    fn counters_need_rate() {
        let p = metric_problems("mesh_bridge_store_errors_total > 0", &none(), true);
        assert_eq!(p.len(), 1, "{p:?}");
        let p = metric_problems(
            r#"sum by (le) (rate(mesh_bridge_store_write_duration_seconds_bucket{job=~"$job"}[$__rate_interval]))"#,
            &none(),
            true,
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn unknown_metrics_and_fixed_ranges_are_reported() {
        let p = metric_problems("rate(mesh_bridge_nope_total[5m])", &none(), true);
        assert_eq!(p.len(), 2, "{p:?}");
        let p = metric_problems(r#"up{job="mesh_bridge_x"}"#, &none(), true);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn variables_are_substituted() {
        let mut vars = BTreeMap::new();
        vars.insert("job".to_string(), "mesh-bridge".to_string());
        vars.insert("__rate_interval".to_string(), "1m".to_string());
        assert_eq!(
            substitute(
                r#"rate(x{job=~"$job",a="${job:regex}"}[$__rate_interval]) $other"#,
                &vars
            ),
            r#"rate(x{job=~"mesh-bridge",a="mesh-bridge"}[1m]) $other"#
        );
    }

    #[test]
    fn prometheus_urls() {
        let p = Prom::parse("http://127.0.0.1:9090/prom/").expect("url");
        assert_eq!(
            (p.host.as_str(), p.port, p.prefix.as_str()),
            ("127.0.0.1", 9090, "/prom")
        );
        assert!(Prom::parse("https://x").is_err());
    }

    #[test]
    fn the_repository_passes_the_lint() {
        let root = workspace_root();
        let recorded = recorded_rule_names(&root.join(RULES_DIR).join("rules.yml")).expect("rules");
        let mut problems = Vec::new();
        load_dashboards(&root.join(DASHBOARDS_DIR), &recorded, &mut problems).expect("dashboards");
        lint_rules(&root, &recorded, &mut problems).expect("rules");
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
