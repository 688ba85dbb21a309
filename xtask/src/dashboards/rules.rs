//! The Prometheus rules lint (names, runbook anchors, contract metrics)
//! and `promtool check rules` / `promtool test rules`.

use super::*;

// ------------------------------------------------------------------ rules lint

pub(super) fn recorded_rule_names(rules: &Path) -> Result<BTreeSet<String>> {
    let text = fs::read_to_string(rules).with_context(|| format!("reading {}", rules.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|n| n.trim().to_string())
        .collect())
}

/// The rule blocks of a rules file: (kind, name, text) for every `- alert:`
/// or `- record:` item, text being the item's lines.
pub(super) fn rule_blocks(text: &str) -> Vec<(String, String, String)> {
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
pub(super) fn rule_expr(block: &str) -> String {
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
pub(super) fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

pub(super) fn lint_rules(
    root: &Path,
    recorded: &BTreeSet<String>,
    problems: &mut Vec<String>,
) -> Result<()> {
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

pub(super) fn run_promtool(root: &Path, promtool: &str) -> Result<()> {
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
