//! The Grafana dashboards lint: stable uids, datasources, variables,
//! every panel query held to the metric contract.

use super::*;

// ------------------------------------------------------------------ dashboards lint

#[derive(Debug)]
pub(super) struct PanelQuery {
    pub(super) panel: String,
    pub(super) ref_id: String,
    pub(super) expr: String,
}

#[derive(Debug)]
pub(super) struct Dashboard {
    pub(super) file: String,
    pub(super) title: String,
    /// Template variables and the value a check query substitutes for them.
    pub(super) variables: BTreeMap<String, String>,
    pub(super) queries: Vec<PanelQuery>,
}

pub(super) fn load_dashboards(
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

pub(super) fn stable_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 40
        && uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A datasource must be absent (inherits the dashboard default) or refer to
/// the `datasource` variable; a fixed uid breaks on every other Grafana.
pub(super) fn check_datasource(ds: &Value, what: &str, p: &mut impl FnMut(String)) {
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
pub(super) fn variable_value(v: &Value) -> String {
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

pub(super) fn flatten_panels<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
    for panel in panels.as_array().into_iter().flatten() {
        out.push(panel);
        flatten_panels(&panel["panels"], out);
    }
}
