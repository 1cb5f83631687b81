//! `cargo xtask fuzz`, and the fuzzing `cargo xtask test` does: every
//! cargo-fuzz target of `fuzz/` for a bounded time, as many at once as the
//! machine has cores. `cargo xtask test` builds the targets beside its
//! other checks, at the lowest CPU priority, and fuzzes them at its end.
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
use std::process::{Child, Command, Stdio};
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
    let targets = Targets::prepare()?;
    run("build the fuzz targets", targets.build_command())?;
    targets.fuzz(seconds)
}

/// The fuzz targets of a copy of the checkout's sources, cargo-fuzz
/// installed.
pub struct Targets {
    cargo_fuzz: PathBuf,
    sources: PathBuf,
    build: PathBuf,
    names: Vec<String>,
}

impl Targets {
    /// Installs cargo-fuzz when missing, brings the copy of the sources up
    /// to date and lists its targets.
    pub fn prepare() -> Result<Self> {
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
        let mut targets = Targets {
            cargo_fuzz,
            sources,
            build: cache_dir().join("fuzz-target"),
            names: Vec::new(),
        };
        let listed = targets
            .command(&["list"])
            .output()
            .context("cargo fuzz list")?;
        if !listed.status.success() {
            bail!(
                "cargo fuzz list: {}",
                String::from_utf8_lossy(&listed.stderr)
            );
        }
        targets.names = String::from_utf8(listed.stdout)?
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        Ok(targets)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.cargo_fuzz);
        c.current_dir(&self.sources)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(args)
            .args(["--fuzz-dir", "fuzz"]);
        // The same environment as `cargo()`'s (see there).
        cargo_env::clear_run_vars(&mut c);
        c
    }

    /// One cargo invocation that builds every target; each run of
    /// [`Targets::fuzz`] then finds its target built and only fuzzes.
    fn build_command(&self) -> Command {
        let mut c = self.command(&["build"]);
        c.arg("--target-dir").arg(&self.build);
        c
    }

    /// Starts the build of every target beside other work, at the lowest
    /// CPU priority and with its output in a log: it takes only the CPU
    /// that work leaves idle (the end-to-end tests mostly wait on the
    /// cluster), so the build is done, or nearly, when fuzzing begins.
    pub fn build_beside(self) -> Result<Building> {
        let log = cache_dir().join("fuzz-logs/build.log");
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let out = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        eprintln!(
            "\n==> build the fuzz targets beside what follows, at nice 19 (log: {})",
            log.display()
        );
        let child = niced(&self.build_command())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // In the run's process group: a Ctrl-C, or `timeout` ending
            // the run, reaches the build's rustcs too.
            .spawn()
            .context("starting the fuzz targets' build")?;
        Ok(Building {
            targets: Some(self),
            child,
            log,
            began: Instant::now(),
        })
    }

    /// Fuzzes every built target for `seconds`.
    pub fn fuzz(&self, seconds: u64) -> Result<()> {
        // libFuzzer keeps one core busy: as many targets at once as there
        // are cores, each writing to a log of its own so that their lines
        // do not mix.
        let at_once = std::thread::available_parallelism().map_or(1, |n| n.get());
        let logs = cache_dir().join("fuzz-logs");
        std::fs::create_dir_all(&logs)?;
        for batch in self.names.chunks(at_once) {
            let started: Vec<_> = batch
                .iter()
                .map(|target| {
                    let log = logs.join(format!("{target}.log"));
                    let mut c = self.command(&["run"]);
                    c.arg("--target-dir")
                        .arg(&self.build)
                        .args([target, "--"])
                        .arg(format!("-max_total_time={seconds}"));
                    Fuzzing::start(target, c, log)
                })
                .collect::<Result<_>>()?;
            // Every one of the batch is waited for before a failure is told.
            let finished: Vec<Result<()>> =
                started.into_iter().map(|f| f.finish(seconds)).collect();
            finished.into_iter().collect::<Result<()>>()?;
        }
        Ok(())
    }
}

/// `cmd` at the lowest CPU priority (`nice -n 19`), with its arguments,
/// environment and directory.
fn niced(cmd: &Command) -> Command {
    let mut niced = Command::new("nice");
    niced
        .args(["-n", "19"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => niced.env(key, value),
            None => niced.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        niced.current_dir(dir);
    }
    niced
}

/// The fuzz targets' build running beside other work; dropped unfinished
/// (a run that failed before fuzzing), it stops the build.
pub struct Building {
    targets: Option<Targets>,
    child: Child,
    log: PathBuf,
    began: Instant,
}

impl Building {
    /// Waits for the build; on a failure, shows the end of its log.
    pub fn finish(mut self) -> Result<Targets> {
        let waiting = Instant::now();
        let status = self.child.wait()?;
        let waited = waiting.elapsed().as_secs_f64();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if !status.success() {
            eprintln!("{}", tail(&log, 60));
            eprintln!(
                "<== build the fuzz targets: FAILED ({:.1}s after it started)",
                self.began.elapsed().as_secs_f64()
            );
            bail!(
                "building the fuzz targets failed ({status}); its log: {}",
                self.log.display()
            );
        }
        // cargo's own last word says how long the build took.
        let finished = log
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("Finished "))
            .unwrap_or("no summary");
        eprintln!("<== build the fuzz targets: ok ({finished}), waited for it {waited:.1}s");
        self.targets
            .take()
            .context("the fuzz targets were taken already")
    }
}

impl Drop for Building {
    fn drop(&mut self) {
        if self.targets.is_none() || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // cargo-fuzz, the cargo it runs and that cargo's rustcs.
        let pid = self.child.id();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg("--")
            .args(descendants(pid).iter().map(u32::to_string))
            .arg(pid.to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// The processes below `pid` (its children, theirs, and so on), read from
/// `/proc`.
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            Some((child, parent_in_stat(&stat)?))
        })
        .collect();
    let mut found = vec![pid];
    let mut next = 0;
    while let Some(&p) = found.get(next) {
        found.extend(parents.iter().filter(|&&(_, pp)| pp == p).map(|&(c, _)| c));
        next += 1;
    }
    found.split_off(1)
}

/// The parent pid in a `/proc/PID/stat` line: "pid (comm) state ppid ...",
/// where comm may hold spaces and parentheses.
fn parent_in_stat(stat: &str) -> Option<u32> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The last `n` lines of `log`.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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
        eprintln!(
            "{}\n<== fuzz {target} for {seconds}s: FAILED in {took:.1}s",
            tail(&log, 60)
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_lines_parent_is_found_past_a_command_with_parentheses() {
        assert_eq!(
            parent_in_stat("4242 (rustc) S 4200 4100 4100 0"),
            Some(4200)
        );
        assert_eq!(parent_in_stat("7 (a) b (c) R 1 7 7 0"), Some(1));
        assert_eq!(parent_in_stat("garbage"), None);
    }

    #[test]
    fn a_process_has_its_children_among_its_descendants() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("starting sleep");
        let found = descendants(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
    }
}
