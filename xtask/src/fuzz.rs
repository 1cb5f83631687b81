//! `cargo xtask fuzz`, and the fuzzing `cargo xtask test` does: every
//! cargo-fuzz target of `fuzz/` for a bounded time, as many at once as the
//! machine has cores.
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
use std::process::{Child, Command};
use std::time::Instant;

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
    let targets: Vec<&str> = targets.split_whitespace().collect();
    // One cargo invocation builds them all; each `run` below then finds its
    // target built and only fuzzes.
    run("build the fuzz targets", {
        let mut c = fuzz(&["build"]);
        c.arg("--target-dir").arg(&build);
        c
    })?;
    // libFuzzer keeps one core busy: as many targets at once as there are
    // cores, each writing to a log of its own so that their lines do not mix.
    let at_once = std::thread::available_parallelism().map_or(1, |n| n.get());
    let logs = cache_dir().join("fuzz-logs");
    std::fs::create_dir_all(&logs)?;
    for batch in targets.chunks(at_once) {
        let started: Vec<_> = batch
            .iter()
            .map(|target| {
                let log = logs.join(format!("{target}.log"));
                let mut c = fuzz(&["run"]);
                c.arg("--target-dir")
                    .arg(&build)
                    .args([target, "--"])
                    .arg(format!("-max_total_time={seconds}"));
                Fuzzing::start(target, c, log)
            })
            .collect::<Result<_>>()?;
        // Every one of the batch is waited for before a failure is told.
        let finished: Vec<Result<()>> = started.into_iter().map(|f| f.finish(seconds)).collect();
        finished.into_iter().collect::<Result<()>>()?;
    }
    Ok(())
}

/// One fuzz target running, its output going to `log`.
struct Fuzzing<'a> {
    target: &'a str,
    child: Child,
    log: PathBuf,
    began: Instant,
}

impl<'a> Fuzzing<'a> {
    fn start(target: &'a str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        eprintln!("==> fuzz {target} (log: {})", log.display());
        let out = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        let child = cmd
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting the fuzzing of {target}"))?;
        Ok(Fuzzing {
            target,
            child,
            log,
            began: Instant::now(),
        })
    }

    /// Waits for the target; on a failure (a crash, a leak, a timeout), shows
    /// the end of its log, where libFuzzer names the input that did it.
    fn finish(mut self, seconds: u64) -> Result<()> {
        let status = self.child.wait()?;
        let took = self.began.elapsed().as_secs_f64();
        let target = self.target;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if status.success() {
            // libFuzzer's last word: "Done N runs in S second(s)".
            let done = log.lines().rev().find(|l| l.starts_with("Done "));
            eprintln!(
                "<== fuzz {target} for {seconds}s: ok in {took:.1}s ({})",
                done.unwrap_or("no summary")
            );
            return Ok(());
        }
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        eprintln!("{tail}\n<== fuzz {target} for {seconds}s: FAILED in {took:.1}s");
        bail!(
            "fuzzing {target} failed ({status}); its log: {}",
            self.log.display()
        )
    }
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
