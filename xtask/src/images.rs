//! `cargo xtask images`: builds the local images with no registry.
//!
//! - `mesh-bridge/mcp-stub:dev`: the static `mcp-stub` binary `FROM scratch`
//!   (`xtask/images/mcp-stub/Dockerfile`).
//! - `mesh-bridge/bridge:dev`: the static `mesh-bridge` binary `FROM scratch`
//!   (`xtask/images/bridge/Dockerfile`).
//! - `mesh-bridge/dind:dev`: built by [`crate::dind::build`].
//! - `mesh-bridge/mcp-python:dev`: built by [`crate::mcp_python::build`].
//!
//! The two binaries are built in one cargo run by [`crate::release`] (static
//! glibc, no debug info, `target/static`), the build the bench shares.
//! Each image's build context is a throwaway directory holding only its
//! Dockerfile and binary.
//! The image carries the sha256 of (recipe, Dockerfile, binary) as the label
//! `mesh-bridge.content-hash`; when the tag already has that label the build
//! is skipped ("up to date") unless `--force`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use mesh_bridge::contract::images;

use crate::docker::{docker, image_label, image_size};

/// Label holding the content hash of an image's inputs.
pub const HASH_LABEL: &str = "mesh-bridge.content-hash";
/// Bumped when the way these images are assembled changes (not their inputs).
const RECIPE: &str = "mesh-bridge-images/1";

/// Flags of `cargo xtask images`.
#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// Rebuild even when an image's content hash is unchanged.
    #[arg(long)]
    pub force: bool,
    /// Build only these images (repeat the flag or separate with commas).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "IMAGE")]
    pub only: Vec<Image>,
}

/// The images `cargo xtask images` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Image {
    /// `mesh-bridge/mcp-stub:dev`
    Stub,
    /// `mesh-bridge/bridge:dev`
    Bridge,
    /// `mesh-bridge/dind:dev`
    Dind,
    /// `mesh-bridge/mcp-python:dev`
    McpPython,
}

/// One `FROM scratch` image around one static binary of the workspace.
struct ScratchImage {
    image: Image,
    tag: &'static str,
    /// The binary (one of [`ALL_BINS`]).
    bin: &'static str,
    /// Directory under `xtask/images/` holding the Dockerfile.
    dir: &'static str,
    /// Empty directories the Dockerfile copies in (scratch has no `mkdir`).
    empty_dirs: &'static [&'static str],
}

const SCRATCH_IMAGES: [ScratchImage; 2] = [
    ScratchImage {
        image: Image::Stub,
        tag: images::STUB,
        bin: "mcp-stub",
        dir: "mcp-stub",
        empty_dirs: &[],
    },
    ScratchImage {
        image: Image::Bridge,
        tag: images::BRIDGE,
        bin: "mesh-bridge",
        dir: "bridge",
        empty_dirs: &["state"],
    },
];

/// The release binaries every static build makes (the images' two): one set,
/// so that builds for different purposes reuse each other's output.
pub const ALL_BINS: [(&str, &str); 2] =
    [("mesh-bridge", "mesh-bridge"), ("mesh-chaos", "mcp-stub")];

/// What happened to one image.
struct Outcome {
    tag: String,
    result: Result<&'static str>,
    secs: f64,
}

/// Builds one debootstrap-based image (`force`), returning its tag.
type RootfsBuild = fn(bool) -> Result<String>;

/// Builds every image asked for. All are attempted; the command fails at the
/// end, naming each image that failed.
pub fn run(args: &Args) -> Result<()> {
    let t0 = Instant::now();
    let wanted = |image: Image| args.only.is_empty() || args.only.contains(&image);
    docker_available()?;

    let scratch: Vec<&ScratchImage> = SCRATCH_IMAGES.iter().filter(|s| wanted(s.image)).collect();
    let mut outcomes = Vec::new();
    if !scratch.is_empty() {
        let started = Instant::now();
        match build_static_binaries(t0, &scratch) {
            Ok(bin_dir) => {
                for spec in &scratch {
                    let started = Instant::now();
                    let result = build_scratch_image(t0, spec, spec.tag, &bin_dir, args.force);
                    if let Err(e) = &result {
                        progress(t0, &format!("{}: FAILED: {e:#}", spec.tag));
                    }
                    outcomes.push(Outcome {
                        tag: spec.tag.to_owned(),
                        result,
                        secs: started.elapsed().as_secs_f64(),
                    });
                }
            }
            Err(e) => {
                progress(t0, &format!("static build FAILED: {e:#}"));
                for spec in &scratch {
                    outcomes.push(Outcome {
                        tag: spec.tag.to_owned(),
                        result: Err(anyhow::anyhow!(
                            "static build of {} failed: {e:#}",
                            spec.bin
                        )),
                        secs: started.elapsed().as_secs_f64(),
                    });
                }
            }
        }
    }
    let rootfs: [(Image, &str, &str, RootfsBuild); 2] = [
        (
            Image::Dind,
            images::DIND,
            "xtask/src/dind.rs",
            crate::dind::build,
        ),
        (
            Image::McpPython,
            images::MCP_PYTHON,
            "xtask/src/mcp_python.rs",
            crate::mcp_python::build,
        ),
    ];
    for (image, tag, how, build) in rootfs {
        if !wanted(image) {
            continue;
        }
        let started = Instant::now();
        progress(t0, &format!("{tag}: building ({how})"));
        let result = build(args.force);
        if let Err(e) = &result {
            progress(t0, &format!("{tag}: FAILED: {e:#}"));
        }
        outcomes.push(Outcome {
            tag: result
                .as_ref()
                .map_or_else(|_| tag.to_owned(), Clone::clone),
            result: result.map(|_| "done"),
            secs: started.elapsed().as_secs_f64(),
        });
    }

    println!();
    println!("{:<28} {:>10} {:>9}  result", "image", "size", "time");
    let mut failed = Vec::new();
    for o in &outcomes {
        let size = image_size(&o.tag).map_or_else(|| "-".to_owned(), human_size);
        let result = match &o.result {
            Ok(what) => (*what).to_owned(),
            Err(e) => {
                failed.push(format!("{}: {e:#}", o.tag));
                "FAILED".to_owned()
            }
        };
        println!("{:<28} {size:>10} {:>8.1}s  {result}", o.tag, o.secs);
    }
    println!("total {:.1}s", t0.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!(
            "{} image(s) failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// Builds the binaries of `specs` statically in one cargo run (see
/// [`crate::release`]) and returns the directory holding them.
fn build_static_binaries(t0: Instant, specs: &[&ScratchImage]) -> Result<PathBuf> {
    let names: Vec<&str> = specs.iter().map(|s| s.bin).collect();
    progress(
        t0,
        &format!(
            "cargo build --release (static, {}) of {}",
            crate::release::TARGET,
            names.join(", ")
        ),
    );
    // Always the same set, so the bench's and the images' builds share it.
    let bin_dir = crate::release::build(&ALL_BINS)?;
    for spec in specs {
        let path = bin_dir.join(spec.bin);
        ensure_static(&path)?;
        let size = fs::metadata(&path)?.len();
        progress(
            t0,
            &format!(
                "{} is static ({}): {}",
                spec.bin,
                human_size(size),
                path.display()
            ),
        );
    }
    Ok(bin_dir)
}

/// Builds the bridge image from the `mesh-bridge` binary in `bin_dir` under
/// another tag (`cargo xtask teeth` tests patched bridges this way).
pub fn build_bridge_image_as(tag: &str, bin_dir: &Path) -> Result<()> {
    let spec = SCRATCH_IMAGES
        .iter()
        .find(|s| s.image == Image::Bridge)
        .context("no bridge image spec")?;
    build_scratch_image(Instant::now(), spec, tag, bin_dir, false).map(drop)
}

/// Builds one `FROM scratch` image unless `tag` already carries the content hash.
fn build_scratch_image(
    t0: Instant,
    spec: &ScratchImage,
    tag: &str,
    bin_dir: &Path,
    force: bool,
) -> Result<&'static str> {
    let dockerfile_path = workspace_root()
        .join("xtask")
        .join("images")
        .join(spec.dir)
        .join("Dockerfile");
    let dockerfile = fs::read(&dockerfile_path)
        .with_context(|| format!("reading {}", dockerfile_path.display()))?;
    let bin_path = bin_dir.join(spec.bin);
    let binary = fs::read(&bin_path).with_context(|| format!("reading {}", bin_path.display()))?;

    let mut parts: Vec<&[u8]> = vec![RECIPE.as_bytes(), &dockerfile, spec.bin.as_bytes(), &binary];
    parts.extend(spec.empty_dirs.iter().map(|d| d.as_bytes()));
    let hash = sha256_hex(&parts)?;
    progress(t0, &format!("{}: content hash {}", tag, &hash[..16]));

    if !force && image_label(tag, HASH_LABEL)?.as_deref() == Some(&hash) {
        progress(t0, &format!("{}: up to date", tag));
        return Ok("up to date");
    }

    // The context: just the Dockerfile and the binary (plus empty dirs).
    let ctx = workspace_root().join("target").join("images").join(format!(
        "ctx-{}-{}",
        spec.dir,
        std::process::id()
    ));
    if ctx.exists() {
        fs::remove_dir_all(&ctx)?;
    }
    fs::create_dir_all(&ctx).with_context(|| format!("creating {}", ctx.display()))?;
    let result = (|| -> Result<()> {
        fs::write(ctx.join("Dockerfile"), &dockerfile)?;
        fs::copy(&bin_path, ctx.join(spec.bin))?;
        for dir in spec.empty_dirs {
            fs::create_dir_all(ctx.join(dir))?;
        }
        progress(
            t0,
            &format!("{}: docker build (--network none, no pull)", tag),
        );
        let mut cmd = docker(["build", "--network", "none", "--pull=false", "--quiet"]);
        cmd.env("DOCKER_BUILDKIT", "0")
            .args(force.then_some("--no-cache"))
            .args(["--label", &format!("{HASH_LABEL}={hash}")])
            .args(["--label", &format!("mesh-bridge.image={}", spec.dir)])
            .args(["--tag", tag])
            .arg(&ctx)
            .stdin(Stdio::null());
        // Quiet on success (the legacy builder's deprecation notice is noise
        // here); everything it said on failure.
        let out = cmd.output().context("running docker build")?;
        ensure!(
            out.status.success(),
            "docker build of {} failed ({}):\n{}{}",
            tag,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })();
    let _ = fs::remove_dir_all(&ctx);
    result?;

    let label = image_label(tag, HASH_LABEL)?;
    ensure!(
        label.as_deref() == Some(hash.as_str()),
        "{} was built but carries {HASH_LABEL}={label:?}, expected {hash}",
        tag
    );
    // Earlier builds of this image that lost the tag: drop those that no
    // container uses (prune only touches untagged images).
    let _ = docker(["image", "prune", "--force", "--filter"])
        .arg(format!("label=mesh-bridge.image={}", spec.dir))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    progress(t0, &format!("{}: built", tag));
    Ok(if force { "rebuilt (--force)" } else { "built" })
}

/// Checks that `path` is an ELF executable without a program interpreter
/// (`PT_INTERP`), i.e. runs in `FROM scratch` with no loader or libc.
fn ensure_static(path: &Path) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let interp = elf_has_interpreter(&bytes)
        .with_context(|| format!("{} is not a 64-bit little-endian ELF", path.display()))?;
    ensure!(
        !interp,
        "{} is dynamically linked (has PT_INTERP): was RUSTFLAGS=-C target-feature=+crt-static applied?",
        path.display()
    );
    Ok(())
}

/// `Some(true)` when the ELF64 image has a `PT_INTERP` program header.
fn elf_has_interpreter(b: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if b.get(..4)? != b"\x7fELF" || *b.get(4)? != 2 || *b.get(5)? != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?);
        if p_type == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

fn docker_available() -> Result<()> {
    let out = docker(["version", "--format", "{{.Server.Version}}"])
        .output()
        .context("running docker (is the docker CLI installed?)")?;
    ensure!(
        out.status.success(),
        "the Docker engine is not reachable: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// sha256 (hex) of the length-prefixed parts, so part boundaries matter.
/// Infallible; a `Result` keeps the callers' `?` chains uniform.
pub(crate) fn sha256_hex(parts: &[&[u8]]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in parts {
        h.update(format!("{}:", part.len()).as_bytes());
        h.update(part);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

use crate::paths::workspace_root;

fn progress(t0: Instant, msg: &str) {
    println!("[images {:>6.1}s] {msg}", t0.elapsed().as_secs_f64());
}

#[allow(clippy::cast_precision_loss)]
fn human_size(bytes: u64) -> String {
    let mut s = String::new();
    if bytes >= 1 << 20 {
        let _ = write!(s, "{:.1} MiB", bytes as f64 / f64::from(1u32 << 20));
    } else {
        let _ = write!(s, "{:.1} KiB", bytes as f64 / 1024.0);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_interpreter_detection() {
        assert_eq!(elf_has_interpreter(b"not an elf"), None);
        // The running test binary is a normal (dynamic) executable.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_has_interpreter(&me), Some(true));
    }

    #[test]
    fn hash_depends_on_part_boundaries() {
        let a = sha256_hex(&[b"ab", b"c"]).unwrap();
        let b = sha256_hex(&[b"a", b"bc"]).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, sha256_hex(&[b"ab", b"c"]).unwrap());
    }
}
