//! Reports in the run directory: `report.json`, `junit.xml`, `summary.md`,
//! `timeline.png` (and the raw `history.json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use mesh_bridge::contract::metric;

use crate::invariants::{Figures, Verdict};
use crate::probe::{History, Outcome, PoolView};

/// `report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// pass | fail.
    pub verdict: String,
    /// Engine topology used (dind | host).
    pub engine: String,
    /// Wall time of the run, ms.
    pub duration_ms: u64,
    /// Faults as injected.
    pub faults: Vec<ReportFault>,
    /// Invariant verdicts.
    pub invariants: Vec<ReportInvariant>,
    /// Availability of services not under fault.
    pub availability: f64,
    /// Availability of the probed services over the whole run, fault
    /// windows included.
    #[serde(default)]
    pub availability_all: f64,
    /// Worst recovery after a bridge restart, ms (null when none).
    pub recovery_ms: Option<u64>,
    /// Faults injected by kind.
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Probe results by outcome.
    pub probes_by_outcome: BTreeMap<String, u64>,
    /// Sessions of the session probes and the SDK client: started,
    /// completed, lost and why (I8).
    #[serde(default)]
    pub sessions: crate::invariants::sessions::SessionFigures,
    /// Observations that are not invariants (e.g. whether the bridge noticed
    /// an engine cut).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One fault in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportFault {
    /// ms from the start.
    pub t_ms: u64,
    /// Kind.
    pub kind: String,
    /// Target.
    pub target: String,
    /// Injection error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One invariant in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportInvariant {
    /// One of `invariants::IDS`.
    pub id: String,
    /// Held?
    pub held: bool,
    /// Evidence.
    pub detail: String,
    /// What it says.
    pub title: String,
}

/// Builds the report.
pub fn build(
    scenario: &str,
    seed: u64,
    engine: &str,
    h: &History,
    verdicts: &[Verdict],
    fig: &Figures,
    duration_ms: u64,
) -> Report {
    let mut by_kind = BTreeMap::new();
    for f in &h.faults {
        *by_kind.entry(f.kind.to_string()).or_insert(0) += 1;
    }
    let mut by_outcome = BTreeMap::new();
    for s in &h.samples {
        *by_outcome
            .entry(s.outcome.as_str().to_string())
            .or_insert(0) += 1;
    }
    Report {
        scenario: scenario.into(),
        seed,
        verdict: if verdicts.iter().all(|v| v.held) {
            "pass".into()
        } else {
            "fail".into()
        },
        engine: engine.into(),
        duration_ms,
        faults: h
            .faults
            .iter()
            .map(|f| ReportFault {
                t_ms: f.t_ms,
                kind: f.kind.to_string(),
                target: f.target.clone(),
                error: f.error.clone(),
            })
            .collect(),
        invariants: verdicts
            .iter()
            .map(|v| ReportInvariant {
                id: v.id.clone(),
                held: v.held,
                detail: v.detail.clone(),
                title: v.title.clone(),
            })
            .collect(),
        availability: fig.availability,
        availability_all: fig.availability_all,
        recovery_ms: fig.recovery_ms,
        faults_by_kind: by_kind,
        probes_by_outcome: by_outcome,
        sessions: fig.sessions.clone(),
        notes: notes(h),
    }
}

/// Observations on the history that are reported, not judged.
pub fn notes(h: &History) -> Vec<String> {
    let mut out = Vec::new();
    for f in h.faults.iter().filter(|f| {
        matches!(
            f.kind,
            crate::faults::FaultKind::EngineCut | crate::faults::FaultKind::EngineRestart
        ) && f.error.is_none()
    }) {
        let seen = h
            .snapshots
            .iter()
            .filter(|s| s.t_ms >= f.t_ms && s.t_ms <= f.until_ms + 3_000)
            .filter_map(|s| s.metric(metric::DOCKER_CONNECTED.name))
            .any(|c| c < 0.5);
        out.push(format!(
            "{} at t={}ms for {}ms: the bridge {} (mesh_bridge_docker_connected {})",
            f.kind,
            f.t_ms,
            f.until_ms.saturating_sub(f.t_ms),
            if seen {
                "noticed the engine was unreachable"
            } else {
                "did NOT notice the engine was unreachable"
            },
            if seen { "went to 0" } else { "stayed 1" }
        ));
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `junit.xml`: a testcase per invariant.
pub fn junit(r: &Report) -> String {
    let failures = r.invariants.iter().filter(|i| !i.held).count();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites><testsuite name=\"{}-{}\" tests=\"{}\" failures=\"{}\" time=\"{:.3}\">",
        xml_escape(&r.scenario),
        r.seed,
        r.invariants.len(),
        failures,
        r.duration_ms as f64 / 1000.0
    );
    for i in &r.invariants {
        let _ = write!(
            x,
            "  <testcase classname=\"reliability.{}\" name=\"{} {}\">",
            xml_escape(&r.scenario),
            i.id,
            xml_escape(&i.title)
        );
        if i.held {
            let _ = writeln!(
                x,
                "<system-out>{}</system-out></testcase>",
                xml_escape(&i.detail)
            );
        } else {
            let _ = writeln!(
                x,
                "<failure message=\"{}\">{}</failure></testcase>",
                xml_escape(&i.detail),
                xml_escape(&i.detail)
            );
        }
    }
    x.push_str("</testsuite></testsuites>\n");
    x
}

/// `summary.md`.
pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# {} (seed {}): {}\n",
        r.scenario,
        r.seed,
        r.verdict.to_uppercase()
    );
    let _ = writeln!(
        s,
        "Engine: {}. Wall time {:.1}s. Availability of services not under fault: {:.4} (whole run, fault windows included: {:.4}). Worst recovery after a bridge restart: {}.\n",
        r.engine,
        r.duration_ms as f64 / 1000.0,
        r.availability,
        r.availability_all,
        r.recovery_ms
            .map_or("n/a".to_string(), |m| if m == u64::MAX {
                "never (a service did not come back)".to_string()
            } else {
                format!("{m} ms")
            })
    );
    s.push_str("| invariant | held | detail |\n|---|---|---|\n");
    for i in &r.invariants {
        let _ = writeln!(
            s,
            "| {} {} | {} | {} |",
            i.id,
            i.title,
            if i.held { "yes" } else { "**NO**" },
            i.detail.replace('|', "\\|")
        );
    }
    s.push_str("\n| fault | injected |\n|---|---|\n");
    for (k, n) in &r.faults_by_kind {
        let _ = writeln!(s, "| {k} | {n} |");
    }
    s.push_str("\n| probe outcome | count |\n|---|---|\n");
    for (k, n) in &r.probes_by_outcome {
        let _ = writeln!(s, "| {k} | {n} |");
    }
    let f = &r.sessions;
    if f.started > 0 || f.sdk_runs > 0 {
        let _ = writeln!(
            s,
            "\nSessions: {} started, {} ended by their client, {} whose DELETE went unanswered, {} lost; {} of {} requests answered; {} stream notes. SDK client: {} runs ({} failed, under faults), {} sessions, {} calls answered.\n",
            f.started,
            f.completed,
            f.unended,
            f.lost,
            f.answered,
            f.requests,
            f.stream_notes,
            f.sdk_runs,
            f.sdk_failed,
            f.sdk_sessions,
            f.sdk_calls
        );
        s.push_str("| service | started | completed | lost |\n|---|---|---|---|\n");
        for (svc, [a, b, c]) in &f.by_service {
            let _ = writeln!(s, "| {svc} | {a} | {b} | {c} |");
        }
        if !f.lost_why.is_empty() {
            s.push_str("\n| why a session was lost | sessions |\n|---|---|\n");
            for (why, n) in &f.lost_why {
                let _ = writeln!(s, "| {why} | {n} |");
            }
        }
    }
    if !r.notes.is_empty() {
        s.push_str("\nNotes:\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s.push_str("\n![timeline](timeline.png)\n");
    s
}

/// Colour of a fault kind on the timeline.
fn fault_colour(kind: crate::faults::FaultKind) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    let i = crate::faults::FaultKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(0);
    const P: [RGBColor; 7] = [
        RGBColor(214, 39, 40),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    P[i % P.len()]
}

/// Registers DejaVu Sans (Debian `fonts-dejavu-core`) for plotters' text;
/// false when no font file is there (the chart is then drawn without text).
fn register_font() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        for p in [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
        ] {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(
                    "sans-serif",
                    plotters::style::FontStyle::Normal,
                    bytes,
                )
                .is_ok()
                {
                    return true;
                }
            }
        }
        false
    })
}

/// `timeline.png`: ports in use and availability against time, faults as
/// vertical lines.
pub fn timeline(h: &History, title: &str, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let text = register_font();
    let end_s = (h.end_ms.max(1000) as f64) / 1000.0;
    let root = BitMapBackend::new(path, (1200, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(320);
    let max_ports = h
        .snapshots
        .iter()
        .filter_map(|s| s.pool_field(|p| p.in_use))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.2;

    let mut c1 = ChartBuilder::on(&top);
    c1.margin(10)
        .x_label_area_size(if text { 25 } else { 5 })
        .y_label_area_size(if text { 50 } else { 5 });
    if text {
        c1.caption(
            format!("{title}: ports in use (blue), quarantined (grey)"),
            ("sans-serif", 18),
        );
    }
    let mut ch1 = c1.build_cartesian_2d(0f64..end_s, 0f64..max_ports)?;
    if text {
        ch1.configure_mesh().x_desc("s").draw()?;
    }
    let pts = |k: fn(&PoolView) -> usize| {
        h.snapshots
            .iter()
            .filter_map(move |s| Some((s.t_ms as f64 / 1000.0, s.pool_field(k)? as f64)))
    };
    ch1.draw_series(LineSeries::new(pts(|p| p.in_use), BLUE.stroke_width(2)))?;
    ch1.draw_series(LineSeries::new(
        pts(|p| p.quarantined),
        RGBColor(150, 150, 150).stroke_width(1),
    ))?;
    for f in &h.faults {
        let x = f.t_ms as f64 / 1000.0;
        ch1.draw_series(std::iter::once(PathElement::new(
            vec![(x, 0.0), (x, max_ports)],
            fault_colour(f.kind).stroke_width(2),
        )))?;
    }

    // Availability per second (all probed services).
    let mut buckets: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
    for s in &h.samples {
        let e = buckets.entry(s.t_ms / 1000).or_insert((0, 0));
        e.1 += 1;
        if s.outcome == Outcome::Ok {
            e.0 += 1;
        }
    }
    let mut c2 = ChartBuilder::on(&bottom);
    c2.margin(10)
        .x_label_area_size(if text { 25 } else { 5 })
        .y_label_area_size(if text { 50 } else { 5 });
    if text {
        c2.caption(
            "availability (green, per second), faults (vertical lines)",
            ("sans-serif", 18),
        );
    }
    let mut ch2 = c2.build_cartesian_2d(0f64..end_s, 0f64..1.05f64)?;
    if text {
        ch2.configure_mesh().x_desc("s").draw()?;
    }
    ch2.draw_series(LineSeries::new(
        buckets
            .iter()
            .map(|(t, (ok, n))| (*t as f64 + 0.5, f64::from(*ok) / f64::from((*n).max(1)))),
        RGBColor(44, 160, 44).stroke_width(2),
    ))?;
    for f in &h.faults {
        let x = f.t_ms as f64 / 1000.0;
        let x2 = f.until_ms.max(f.t_ms) as f64 / 1000.0;
        ch2.draw_series(std::iter::once(Rectangle::new(
            [(x, 0.0), (x2.max(x + 0.1), 1.05)],
            fault_colour(f.kind).mix(0.25).filled(),
        )))?;
        // Labels only while they fit; long runs keep the colours alone.
        if text && h.faults.len() <= 24 {
            ch2.draw_series(std::iter::once(Text::new(
                f.kind.to_string(),
                (x, 0.08),
                ("sans-serif", 11).into_font().color(&fault_colour(f.kind)),
            )))?;
        }
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Writes every report file into `dir`.
pub fn write_all(dir: &Path, r: &Report, h: &History) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(dir.join("junit.xml"), junit(r))?;
    std::fs::write(dir.join("summary.md"), summary(r))?;
    std::fs::write(dir.join("history.json"), serde_json::to_string(h)?)?;
    timeline(
        h,
        &format!("{} seed {}", r.scenario, r.seed),
        &dir.join("timeline.png"),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::{Marks, check};
    use crate::probe::{Sample, Snapshot};

    #[test]
    fn writes_every_file() {
        let mut h = History {
            end_ms: 5_000,
            live: vec![],
            probed: vec!["a".into()],
            ..History::default()
        };
        for i in 0..10 {
            h.samples.push(Sample {
                t_ms: i * 500,
                service: "a".into(),
                port: Some(1),
                outcome: Outcome::Ok,
                server: Some("a".into()),
                latency_ms: 1.0,
            });
            h.snapshots.push(Snapshot {
                t_ms: i * 500,
                pool: Some(PoolView::default()),
                ..Snapshot::default()
            });
        }
        let (vs, fig) = check(
            &h,
            Marks {
                availability: 0.5,
                recovery_ms: 1,
            },
        );
        let r = build("t", 7, "dind", &h, &vs, &fig, 5_000);
        let dir = tempfile::tempdir().expect("tmp");
        write_all(dir.path(), &r, &h).expect("write");
        for f in ["report.json", "junit.xml", "summary.md", "timeline.png"] {
            assert!(dir.path().join(f).metadata().expect(f).len() > 0, "{f}");
        }
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).expect("read"))
                .expect("json");
        for k in [
            "scenario",
            "seed",
            "verdict",
            "faults",
            "invariants",
            "availability",
            "recovery_ms",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
        assert_eq!(
            junit(&r).matches("<testcase").count(),
            crate::invariants::IDS.len()
        );
    }
}
