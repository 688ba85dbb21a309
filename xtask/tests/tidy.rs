//! Tidy checks over the whole repository, run by `cargo test` (as
//! rust-analyzer keeps one): every Rust file opens with a `//!` doc saying
//! its job; nothing points outside the repository (a clone is all a reader
//! has); no references to an issue tracker's numbering; README's first code
//! block holds exactly the commands `.ci/run` runs; every relative link in a
//! Markdown file resolves inside the repository.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// Directories never read: build output, VCS data, fuzzing work dirs.
const SKIP_DIRS: [&str; 5] = ["target", ".git", "corpus", "artifacts", "node_modules"];

/// Every file of the repository (walked, so untracked files count too).
fn files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if p.is_dir() {
                if !SKIP_DIRS.contains(&name.as_ref()) {
                    stack.push(p);
                }
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// Text files that people read or that ship (binary and lock files are not).
fn text_files() -> Vec<(PathBuf, String)> {
    files()
        .into_iter()
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.as_deref() != Some("Cargo.lock")
        })
        .filter_map(|p| {
            let bytes = fs::read(&p).ok()?;
            if bytes.contains(&0) {
                return None;
            }
            Some((p, String::from_utf8(bytes).ok()?))
        })
        .collect()
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let missing: Vec<String> = files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter(|p| {
            let text = fs::read_to_string(p).unwrap_or_default();
            !text.starts_with("//!")
        })
        .map(|p| rel(&p))
        .collect();
    assert!(
        missing.is_empty(),
        "these .rs files do not start with a `//!` doc saying what the module holds:\n  {}",
        missing.join("\n  ")
    );
}

/// A reference to an issue or ticket by number (see the test below for the
/// forms): numbers a clone cannot look up.
fn tracker_reference(line: &str) -> Option<String> {
    let lower = line.to_ascii_lowercase();
    for word in ["issue", "ticket"] {
        let mut from = 0;
        while let Some(at) = lower[from..].find(word) {
            let start = from + at;
            from = start + word.len();
            let before = lower[..start].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric()) {
                continue;
            }
            let rest = &lower[from..];
            let rest = rest.strip_prefix('s').unwrap_or(rest);
            let rest = rest.trim_start_matches([' ', '\t']);
            let rest = rest.strip_prefix('#').unwrap_or(rest);
            if rest.starts_with(|c: char| c.is_ascii_digit()) {
                return Some(line.trim().to_string());
            }
        }
    }
    None
}

#[test]
fn nothing_points_outside_the_repository() {
    // Spelled in pieces so this file does not match itself.
    let outside = [
        concat!("..", "/shared"),
        concat!("shared", "/DESIGN"),
        concat!("/work", "/"),
    ];
    let mut found = Vec::new();
    for (path, text) in text_files() {
        for (n, line) in text.lines().enumerate() {
            for pat in outside {
                if line.contains(pat) {
                    found.push(format!(
                        "{}:{}: `{pat}` in: {}",
                        rel(&path),
                        n + 1,
                        line.trim()
                    ));
                }
            }
            if let Some(l) = tracker_reference(line) {
                found.push(format!("{}:{}: tracker number in: {l}", rel(&path), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "references a clone of the repository cannot follow (write the fact itself, or \
         point at a file in the repository):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn the_tracker_pattern_catches_what_it_should() {
    assert!(tracker_reference(&format!("see {} 12", "issue")).is_some());
    assert!(tracker_reference(&format!("the {} 3 and 4", "Issues")).is_some());
    assert!(tracker_reference(&format!("{} #7", "ticket")).is_some());
    assert!(tracker_reference("no issue here, 12 ports").is_none());
    assert!(tracker_reference(&format!("t{} 4", "issue")).is_none());
}

#[test]
fn markdown_links_resolve_inside_the_repository() {
    let mut broken = Vec::new();
    for (path, text) in text_files() {
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = rest[..end].split('#').next().unwrap_or("").trim();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let resolved = dir.join(target);
            let inside = resolved
                .canonicalize()
                .is_ok_and(|p| p.starts_with(root().canonicalize().unwrap_or_else(|_| root())));
            if !inside {
                broken.push(format!("{}: ({target})", rel(&path)));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "Markdown links that do not resolve to a file in the repository:\n  {}",
        broken.join("\n  ")
    );
}

/// The commands of a shell text: lines that are not blank or comments, with
/// any trailing `# comment` cut.
fn commands_of(block: &str) -> Vec<String> {
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn readme_opens_with_the_commands_ci_runs() {
    let readme = fs::read_to_string(root().join("README.md")).expect("README.md");
    let start = readme.find("```").expect("README.md has no code block");
    let body = &readme[start + 3..];
    let body = &body[body.find('\n').expect("fence line ends") + 1..];
    let block = &body[..body
        .find("```")
        .expect("README's first code block is closed")];
    let mut readme_cmds = commands_of(block);

    let ci = fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    // What .ci/run runs: its cargo invocations (everything else is plumbing).
    let mut ci_cmds: Vec<String> = commands_of(&ci)
        .into_iter()
        .filter(|c| c.starts_with("cargo "))
        .collect();
    assert_eq!(
        readme_cmds.len(),
        2,
        "README's first code block must hold exactly the two commands (main job, tests): {readme_cmds:?}"
    );
    readme_cmds.sort();
    ci_cmds.sort();
    assert_eq!(
        readme_cmds, ci_cmds,
        "README's first code block and .ci/run must name the same commands"
    );
}
