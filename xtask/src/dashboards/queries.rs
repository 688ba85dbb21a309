//! Every panel query run against a run's Prometheus over its time range;
//! each must return data.

use super::*;

// ------------------------------------------------------------------ running the panel queries

/// The time range holding data: head stats of the TSDB plus persisted blocks,
/// unless --start/--end say otherwise. Seconds.
pub(super) fn time_range(
    prom: &Prom,
    args: &CheckArgs,
    blocks: &[(i64, i64)],
) -> Result<(f64, f64)> {
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
pub(super) fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
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

pub(super) fn run_queries(
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
pub(super) fn has_number(series: &Value) -> bool {
    series["values"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&series["value"]))
        .filter_map(|sample| sample[1].as_str())
        .any(|v| v.parse::<f64>().is_ok_and(|f| !f.is_nan()))
}
