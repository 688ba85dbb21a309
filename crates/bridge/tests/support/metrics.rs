//! Prometheus text parsing.
#![allow(dead_code)]

use super::*;

// ------------------------------------------------------------ metrics ----

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_sum`... suffixes as written).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parses the sample lines of a Prometheus text exposition.
pub fn parse_samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((n, rest)) => {
                let inner = rest.trim_end_matches('}');
                let mut labels = BTreeMap::new();
                // Label values here never contain `",` (bounded, plain values).
                for pair in inner.split("\",") {
                    if let Some((k, v)) = pair.split_once("=\"") {
                        labels.insert(k.trim().to_string(), v.trim_end_matches('"').to_string());
                    }
                }
                (n.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// Metric family names declared by `# TYPE` lines.
pub fn family_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Sum of the samples named `name` whose labels include `labels`; None when
/// there is no such sample.
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = parse_samples(text)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    if matching.is_empty() {
        None
    } else {
        Some(matching.iter().sum())
    }
}

/// Quantile `q` of a histogram from its cumulative buckets (upper bound of the
/// bucket the quantile falls in), as Prometheus' `histogram_quantile` but
/// without interpolation.
pub fn histogram_quantile_upper(text: &str, name: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = parse_samples(text)
        .into_iter()
        .filter(|s| s.name == format!("{name}_bucket"))
        .filter_map(|s| {
            let le = s.labels.get("le")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, s.value))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    buckets.iter().find(|(_, c)| *c >= rank).map(|(le, _)| *le)
}
