//! `cargo xtask fuzz`, and the fuzzing `cargo xtask test` does: every
//! cargo-fuzz target of `fuzz/` for a bounded time.
//!
//! cargo-fuzz wants nightly flags; `RUSTC_BOOTSTRAP=1` lets the stable
//! toolchain take them. The sanitizer builds go to the cache. So do the
//! sources they build from: cargo keys a path dependency's build by its
//! path, so a fresh clone fuzzed in place rebuilds every crate of ours with
//! the sanitizers (minutes), where a copy kept at one place rebuilds what
//! changed.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cache_dir, cargo, cargo_env, root, run, tools_dir};

/// How long `cargo xtask test` fuzzes each target: long enough for a
/// regression in parsing or policy evaluation that a few seconds of inputs
/// reach to fail CI, short enough for every run.
pub const TEST_SECONDS: u64 = 15;

/// What cargo-fuzz keeps in the copy between runs (ignored by git, so not
/// among the sources): the corpus grows from run to run.
const KEPT: [&str; 4] = [
    "fuzz/corpus",
    "fuzz/artifacts",
    "fuzz/target",
    "fuzz/Cargo.lock",
];

/// Fuzzes every target for `seconds`.
pub fn run_all(seconds: u64) -> Result<()> {
    let tools = tools_dir();
    let cargo_fuzz = tools.join("bin/cargo-fuzz");
    if !cargo_fuzz.exists() {
        run("install cargo-fuzz", {
            let mut c = cargo();
            c.args(["install", "--locked", "cargo-fuzz"])
                .env("CARGO_INSTALL_ROOT", &tools);
            c
        })?;
    }
    let sources = cache_dir().join("fuzz-src");
    sync_sources(&root(), &sources)?;
    let build = cache_dir().join("fuzz-target");
    let fuzz = |args: &[&str]| {
        let mut c = Command::new(&cargo_fuzz);
        c.current_dir(&sources)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(args)
            .args(["--fuzz-dir", "fuzz"]);
        // The same environment as `cargo()`'s (see there).
        cargo_env::clear_run_vars(&mut c);
        c
    };
    let listed = fuzz(&["list"]).output().context("cargo fuzz list")?;
    if !listed.status.success() {
        bail!(
            "cargo fuzz list: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
    }
    let targets = String::from_utf8(listed.stdout)?;
    for target in targets.split_whitespace() {
        run(&format!("fuzz {target} for {seconds}s"), {
            let mut c = fuzz(&["run"]);
            c.arg("--target-dir").arg(&build).args([
                target,
                "--",
                &format!("-max_total_time={seconds}"),
            ]);
            c
        })?;
    }
    Ok(())
}

/// Makes `to` hold the checkout's sources (git's tracked and untracked
/// files, not the ignored ones): a file is written only when its content
/// changed, so cargo sees the others as built; files gone from the checkout
/// go from the copy.
fn sync_sources(from: &Path, to: &Path) -> Result<()> {
    let listed = Command::new("git")
        .current_dir(from)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .context("git ls-files")?;
    if !listed.status.success() {
        bail!("git ls-files: {}", String::from_utf8_lossy(&listed.stderr));
    }
    let files: BTreeSet<PathBuf> = listed
        .stdout
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| PathBuf::from(OsStr::from_bytes(f)))
        .collect();
    for file in &files {
        // Listed but deleted in the work tree: not a source any more.
        let Ok(content) = std::fs::read(from.join(file)) else {
            continue;
        };
        let dest = to.join(file);
        if std::fs::read(&dest).is_ok_and(|old| old == content) {
            continue;
        }
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&dest, content).with_context(|| format!("{}", dest.display()))?;
    }
    remove_stale(to, to, &files)
}

/// Removes the files under `dir` (within the copy `top`) that are not
/// `sources`, but for what cargo-fuzz keeps.
fn remove_stale(top: &Path, dir: &Path, sources: &BTreeSet<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let rel = path.strip_prefix(top)?.to_path_buf();
        if KEPT.iter().any(|k| rel == Path::new(k)) {
            continue;
        }
        if path.is_dir() {
            remove_stale(top, &path, sources)?;
        } else if !sources.contains(&rel) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}
