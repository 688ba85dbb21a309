//! Images on a Debian rootfs built with no registry: the DinD image
//! `mesh-bridge/dind:dev` (dockerd) here, and through [`build_rootfs_image`]
//! the MCP Python image (`crate::mcp_python`).
//!
//! Steps (see `xtask/images/dind/README.md`):
//! 1. content hash = sha256 of (suite, `packages.txt`, `Dockerfile`, `entrypoint.sh`); when the
//!    tag already carries it as the label `mesh-bridge.content-hash`, nothing is done.
//! 2. `debootstrap --variant=minbase --include=<packages.txt>` into a scratch directory under
//!    `target/images/`, packed as `target/images/dind-rootfs-<suite>-<hash>.tar` (reused when
//!    present unless `force`).
//! 3. `docker import` of that tarball as `mesh-bridge/dind-rootfs:<hash>`.
//! 4. `docker build` (classic builder, no registry) of `xtask/images/dind/Dockerfile` on top.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::docker::{
    capture, docker, image_exists, image_id, image_label, image_size, quietly, run,
};
use crate::images::sha256_hex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Tag of the final image.
pub const TAG: &str = mesh_bridge::contract::images::DIND;
/// Label carrying the content hash on the final image.
const HASH_LABEL: &str = "mesh-bridge.content-hash";
/// Bumped when the way the rootfs is made changes (not its inputs).
const RECIPE: &str = "mesh-bridge-dind-rootfs/2";

/// An image built on a debootstrap rootfs: `xtask/images/<name>/` holds
/// `packages.txt` and a `Dockerfile` (`ARG ROOTFS`, `FROM ${ROOTFS}`).
pub struct RootfsImage<'a> {
    /// Short name: the source directory, the rootfs tarball and its repo.
    pub name: &'a str,
    /// Tag of the final image.
    pub tag: &'a str,
    /// The build context (the source directory, or a staged copy).
    pub context: PathBuf,
    /// Everything else the image is made of, for its content hash.
    pub hashed: Vec<u8>,
}

/// Builds (or reuses, by content hash) the DinD image and returns its tag.
#[allow(dead_code)]
pub fn build(force: bool) -> Result<String> {
    let src = source_dir("dind");
    let entrypoint = read(&src.join("entrypoint.sh"))?;
    build_rootfs_image(
        &RootfsImage {
            name: "dind",
            tag: TAG,
            context: src,
            hashed: entrypoint.into_bytes(),
        },
        force,
    )
}

/// Builds (or reuses, by content hash) an image on a debootstrap rootfs.
pub fn build_rootfs_image(spec: &RootfsImage<'_>, force: bool) -> Result<String> {
    let t0 = Instant::now();
    let name = spec.name;
    let tag = spec.tag;
    let src = source_dir(name);
    let packages_txt = read(&src.join("packages.txt"))?;
    let dockerfile = read(&src.join("Dockerfile"))?;
    let packages = parse_packages(&packages_txt);
    ensure!(!packages.is_empty(), "packages.txt lists no package");
    let (suite, mirror) = debian_source()?;

    let hash = sha256_hex(&[
        RECIPE.as_bytes(),
        suite.as_bytes(),
        packages_txt.as_bytes(),
        dockerfile.as_bytes(),
        &spec.hashed,
    ])?;
    let rootfs_hash = sha256_hex(&[
        RECIPE.as_bytes(),
        suite.as_bytes(),
        packages.join(",").as_bytes(),
    ])?;
    let rootfs_hash = &rootfs_hash[..16];
    progress(t0, &format!("{tag}: content hash {}", &hash[..16]));

    if !force && image_label(tag, HASH_LABEL)?.as_deref() == Some(hash.as_str()) {
        progress(t0, &format!("{tag} up to date"));
        return Ok(tag.to_string());
    }

    let out_dir = target_dir().join("images");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let tarball = out_dir.join(format!("{name}-rootfs-{suite}-{rootfs_hash}.tar"));
    let rootfs_image = format!("mesh-bridge/{name}-rootfs:{rootfs_hash}");

    let mut fresh_tarball = false;
    if force || !tarball.is_file() {
        make_rootfs_tarball(t0, name, &out_dir, &tarball, &suite, &mirror, &packages)?;
        fresh_tarball = true;
    } else {
        progress(t0, &format!("reusing rootfs {}", tarball.display()));
    }

    if fresh_tarball || !image_exists(&rootfs_image)? {
        let previous_rootfs = image_id(&rootfs_image)?;
        progress(t0, &format!("docker import -> {rootfs_image}"));
        run(docker(["import", "--change"])
            .arg(format!("LABEL mesh-bridge.rootfs-hash={rootfs_hash}"))
            .arg(&tarball)
            .arg(&rootfs_image)
            .stdout(Stdio::null()))?;
        remove_if_replaced(&rootfs_image, previous_rootfs);
    } else {
        progress(t0, &format!("reusing imported {rootfs_image}"));
    }

    let previous = image_id(tag)?;
    progress(t0, &format!("docker build -> {tag}"));
    capture(
        docker(["build", "--quiet", "--rm", "--force-rm"])
            .env("DOCKER_BUILDKIT", "0")
            .arg("--build-arg")
            .arg(format!("ROOTFS={rootfs_image}"))
            .arg("--label")
            .arg(format!("{HASH_LABEL}={hash}"))
            .arg("--tag")
            .arg(tag)
            .arg("--file")
            .arg(src.join("Dockerfile"))
            .arg(&spec.context),
    )?;

    remove_if_replaced(tag, previous);

    let size_mb = image_size(tag).unwrap_or(0) / 1_000_000;
    progress(t0, &format!("built {tag} ({size_mb} MB)"));
    Ok(tag.to_string())
}

/// `xtask/images/<name>`.
pub fn source_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("images")
        .join(name)
}

use crate::paths::target_dir;

pub(crate) fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn progress(t0: Instant, msg: &str) {
    println!("[rootfs {:>6.1}s] {msg}", t0.elapsed().as_secs_f64());
}

/// Package names of `packages.txt`: one a line, `#` starts a comment.
fn parse_packages(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The Debian suite and mirror the host's apt uses (`MESH_DIND_SUITE` / `MESH_DIND_MIRROR`
/// override them), so the rootfs comes from wherever the host is allowed to fetch packages.
fn debian_source() -> Result<(String, String)> {
    let mut found: Option<(String, String)> = None;
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let entries = if file.extension().is_some_and(|e| e == "sources") {
            parse_deb822(&text)
        } else if file.extension().is_some_and(|e| e == "list") {
            parse_one_line(&text)
        } else {
            continue;
        };
        if let Some(hit) = entries
            .into_iter()
            .find(|(uri, suite)| is_debian_main(uri, suite))
        {
            found = Some(hit);
            break;
        }
    }
    let codename = || -> Option<String> {
        let text = fs::read_to_string("/etc/os-release").ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
            .map(|s| s.trim_matches('"').to_string())
    };
    let (mut mirror, mut suite) = found.unwrap_or_else(|| {
        (
            "http://deb.debian.org/debian".to_string(),
            codename().unwrap_or_else(|| "bookworm".to_string()),
        )
    });
    if let Ok(s) = std::env::var("MESH_DIND_SUITE") {
        suite = s;
    }
    if let Ok(m) = std::env::var("MESH_DIND_MIRROR") {
        mirror = m;
    }
    ensure!(
        suite
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "odd Debian suite name {suite:?}"
    );
    Ok((suite, mirror))
}

/// A Debian archive's base suite (not -updates/-security/-backports, not a third-party repo).
fn is_debian_main(uri: &str, suite: &str) -> bool {
    uri.contains("debian")
        && !uri.contains("security")
        && !suite.contains('-')
        && !suite.contains('/')
}

/// `deb [opts] URI SUITE COMPONENTS...` lines -> (URI, SUITE).
fn parse_one_line(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push((uri.to_string(), suite.to_string()));
        }
    }
    out
}

/// deb822 `.sources` stanzas -> (URI, SUITE) for each pair of a `Types: deb` stanza.
fn parse_deb822(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| -> Vec<String> {
            stanza
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(name).then(|| v.to_string())
                })
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        if !field("Types").iter().any(|t| t == "deb")
            || field("Enabled")
                .iter()
                .any(|e| e.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        for uri in field("URIs") {
            for suite in field("Suites") {
                out.push((uri.clone(), suite));
            }
        }
    }
    out
}

/// After `tag` was rebuilt: removes the image it used to name (`previous`), now untagged,
/// unless a container (or a child image) still uses it; failures are ignored.
fn remove_if_replaced(tag: &str, previous: Option<String>) {
    if let Some(old) = previous.filter(|old| image_id(tag).ok().flatten().as_ref() != Some(old)) {
        quietly(&mut docker(["image", "rm", &old]));
    }
}

/// Runs `cmd` with stdout+stderr appended to `log`, printing a heartbeat with the last log
/// line every 15 s; on failure, the log's tail goes into the error.
fn run_logged(t0: Instant, what: &str, cmd: &mut Command, log: &Path) -> Result<()> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("running {what}"))?;
    let mut last_beat = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(sig) = crate::interrupt::requested() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("interrupted by {sig} (stopped {what})");
        }
        if last_beat.elapsed() >= Duration::from_secs(15) {
            last_beat = Instant::now();
            progress(t0, &format!("  {what}: {}", last_line(log)));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if !status.success() {
        let tail = fs::File::open(log)
            .map(|f| {
                let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
                lines[lines.len().saturating_sub(25)..].join("\n")
            })
            .unwrap_or_default();
        bail!("{what} failed ({status}); log {}:\n{tail}", log.display());
    }
    Ok(())
}

fn last_line(log: &Path) -> String {
    fs::read_to_string(log)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Makes sure we are root and `debootstrap` is installed (see `provision`).
fn ensure_debootstrap(t0: Instant) -> Result<()> {
    let uid = capture(Command::new("id").arg("-u"))?;
    ensure!(
        uid.trim() == "0",
        "debootstrap needs root (uid is {}); run as root or build the rootfs tarball elsewhere",
        uid.trim()
    );
    crate::provision::install(t0, &[crate::provision::DEBOOTSTRAP])
}

/// debootstrap -> clean -> tar, atomically renamed to `tarball`.
fn make_rootfs_tarball(
    t0: Instant,
    name: &str,
    out_dir: &Path,
    tarball: &Path,
    suite: &str,
    mirror: &str,
    packages: &[String],
) -> Result<()> {
    let log = out_dir.join(format!("{name}-rootfs.log"));
    let _ = fs::remove_file(&log);
    ensure_debootstrap(t0)?;
    let work = out_dir.join(format!("{name}-rootfs.work.{}", std::process::id()));
    remove_tree(&work)?;
    let result = (|| -> Result<()> {
        progress(
            t0,
            &format!(
                "debootstrap --variant=minbase {suite} from {mirror} (+ {}); log {}",
                packages.join(","),
                log.display()
            ),
        );
        run_logged(
            t0,
            "debootstrap",
            Command::new("debootstrap")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .arg("--variant=minbase")
                .arg(format!("--include={}", packages.join(",")))
                .arg(suite)
                .arg(&work)
                .arg(mirror),
            &log,
        )?;
        // Nothing of the host may stay mounted in the tree we are about to pack.
        unmount_under(&work)?;
        for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
            let dir = work.join(dir);
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.path().is_file() {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
        let _ = fs::remove_dir_all(work.join("debootstrap"));
        // Documentation and translations: ~50 MB nobody reads in a test engine.
        for dir in [
            "usr/share/doc",
            "usr/share/man",
            "usr/share/info",
            "usr/share/locale",
        ] {
            let dir = work.join(dir);
            if dir.is_dir() {
                remove_tree(&dir)?;
                fs::create_dir_all(&dir)?;
            }
        }
        progress(t0, &format!("packing {}", tarball.display()));
        let partial = tarball.with_extension("tar.partial");
        run(Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
            .arg(&work)
            .args(["-cf"])
            .arg(&partial)
            .arg("."))?;
        fs::rename(&partial, tarball)?;
        Ok(())
    })();
    let cleanup = remove_tree(&work);
    result?;
    cleanup
}

/// Lazily unmounts every mount point at or below `dir` (deepest first).
fn unmount_under(dir: &Path) -> Result<()> {
    let Ok(canon) = dir.canonicalize() else {
        return Ok(());
    };
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| Path::new(p).starts_with(&canon))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let status = Command::new("umount").args(["-l", p]).status()?;
        ensure!(status.success(), "could not unmount {p}");
    }
    Ok(())
}

/// Removes a scratch tree, never crossing into a mounted filesystem.
fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    unmount_under(dir)?;
    run(Command::new("rm")
        .arg("-rf")
        .arg("--one-file-system")
        .arg(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\n# c\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n";
        let e = parse_deb822(deb822);
        assert_eq!(e.len(), 3);
        let main: Vec<_> = e.iter().filter(|(u, s)| is_debian_main(u, s)).collect();
        assert_eq!(
            main,
            [&(
                "http://deb.debian.org/debian".to_string(),
                "bookworm".to_string()
            )]
        );

        let list = "deb [signed-by=/x.gpg] https://packages.cloud.google.com/apt cloud-sdk-bookworm main\ndeb http://ftp.de.debian.org/debian trixie main # x\n";
        let e = parse_one_line(list);
        assert_eq!(e.len(), 2);
        assert!(!is_debian_main(&e[0].0, &e[0].1));
        assert!(is_debian_main(&e[1].0, &e[1].1));
    }

    #[test]
    fn packages_skip_comments() {
        assert_eq!(
            parse_packages("# a\ndocker.io\n tini # x\n\n"),
            ["docker.io", "tini"]
        );
    }

    /// Builds the real image: `cargo test -p xtask dind::tests::build_image -- --ignored`.
    #[test]
    #[ignore = "needs root, docker and apt"]
    fn build_image() {
        let force = std::env::var_os("MESH_DIND_FORCE").is_some();
        assert_eq!(build(force).expect("build"), TAG);
    }
}
