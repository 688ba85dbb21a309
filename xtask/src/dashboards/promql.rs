//! A small PromQL scanner: the series names an expression reads and the
//! function around each, so counters are read only through rate & co.

use super::*;

// ------------------------------------------------------------------ PromQL scanning

#[derive(Debug, PartialEq)]
pub(super) enum Token {
    Ident(usize, String),
    Range(String),
}

/// A small PromQL scanner: identifiers (with their byte offset) and the
/// contents of range selectors, skipping string literals, numbers, and
/// Grafana variables (`$x`, `${x}`).
pub(super) fn scan(expr: &str) -> Vec<Token> {
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
pub(super) fn enclosing_function(expr: &str, pos: usize) -> Option<String> {
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
pub(super) fn metric_problems(
    expr: &str,
    recorded: &BTreeSet<String>,
    dashboard: bool,
) -> Vec<String> {
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
pub(super) fn contract_series(name: &str) -> Option<(&'static str, Kind, &'static str)> {
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
