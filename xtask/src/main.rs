//! Project tasks, run as `cargo xtask <task>` from anywhere in the workspace.
//!
//! - `cargo xtask test`: every check and test, as CI runs them (the demo
//!   and the Gateway API conformance suite among them).
//! - `cargo xtask demo [down] [--step N]`: the local sandbox of the hands-on.
//! - `cargo xtask crds [--check]`: regenerate (or check) the CRD YAML.
//! - `cargo xtask test-bed`: build or reuse the Kubernetes binaries.
//! - `cargo xtask images`: Sluice's OCI image archives from a release build.
//! - `cargo xtask bench proxy`: the proxy against nginx, HAProxy and Pingora.
//! - `cargo xtask bench instructions`: its user-space instructions per
//!   request against theirs (callgrind), alone.
//! - `cargo xtask bench control-plane`: HTTPRoute change to every proxy's ACK.
//! - `cargo xtask bench scale`: 10,000 Rollouts on one operator.
//! - `cargo xtask conformance`: the Gateway API conformance suite.

mod bench;
#[path = "../../tests/src/cargo_env.rs"]
mod cargo_env;
mod conformance;
mod failures;
mod fuzz;
mod handson;
mod target;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Sluice project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run formatting, lint, unit and end-to-end tests (what CI runs).
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Start the local sandbox and walk the hands-on (`down` stops it).
    Demo {
        /// `up` (default) or `down`.
        #[arg(default_value = "up")]
        action: String,
        /// Run only this part of the walkthrough.
        #[arg(long)]
        step: Option<u32>,
    },
    /// Write the CRD YAML generated from the Rust types.
    Crds {
        /// Only check that the committed YAML is current.
        #[arg(long)]
        check: bool,
    },
    /// Build or reuse the Kubernetes, etcd and helm binaries and print their paths.
    TestBed,
    /// Build the release binaries and write Sluice's OCI image archives
    /// (operator, proxy, demo-app, curl, pause) to `target/images/`.
    Images {
        /// Use the debug build instead (what the test bed runs).
        #[arg(long)]
        debug: bool,
        /// Build the proxy with a profile of the proxy benchmark's loads
        /// (PGO; the benchmark's tools, about 20 minutes more).
        #[arg(long, conflicts_with = "debug")]
        pgo: bool,
    },
    /// Run the cargo-fuzz targets of `fuzz/` (installs cargo-fuzz into the cache).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Benchmarks: `proxy` (sluice-proxy against a direct connection, nginx,
    /// HAProxy and Pingora), `instructions` (its user-space instructions per
    /// request against theirs, alone), `control-plane` (an HTTPRoute change to every
    /// connected proxy's ACK, with 1, 100 and 1,000 proxies) or `scale`
    /// (10,000 Rollouts on one operator: time to Healthy, RSS, change
    /// latency, soak).
    Bench {
        /// What to benchmark: `proxy`, `instructions`, `control-plane` or
        /// `scale`.
        what: String,
        /// Passed on to the benchmark (e.g. `--proxies 1,100 --changes 20`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The Gateway API conformance suite against Sluice on the test bed;
    /// the report goes to `docs/conformance/`.
    Conformance {
        /// The MESH-HTTP profile (sidecars, Istio's echo app as client and
        /// backend) instead of GATEWAY-HTTP.
        #[arg(long)]
        mesh: bool,
        /// Passed on to `sluice-conformance` (e.g. `--run-test HTTPRouteSimpleSameNamespace`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

/// The workspace root. `cargo run` tells the binary its manifest's
/// directory at run time: one xtask binary in a shared target directory
/// may have been built from another checkout, whose path it would carry.
fn root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// A cargo command at the workspace root, without the variables `cargo
/// run` set for xtask: build scripts that rerun when such a variable
/// changes (ring's reruns on `CARGO_MANIFEST_DIR`) would otherwise rebuild,
/// with everything above them, each time `cargo xtask` and a plain `cargo`
/// take turns, and in every new clone.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cargo_env::clear_run_vars(&mut cmd);
    target::configure(&mut cmd);
    cmd
}

/// Runs a command, echoing it, and fails with its exit status.
fn run(what: &str, mut cmd: Command) -> Result<()> {
    let start = Instant::now();
    eprintln!("\n==> {what}");
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    eprintln!(
        "<== {what}: {} in {:.1}s",
        if status.success() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn test_bed() -> Result<Command> {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/test-bed.sh"))
        .current_dir(root());
    Ok(cmd)
}

/// Runs one check of `cargo xtask test` outside `cargo test`, counted in
/// `totals`; a failure ends the run with the totals printed.
fn counted(totals: &mut Totals, what: &str, check: impl FnOnce() -> Result<()>) -> Result<()> {
    let started = Instant::now();
    match check() {
        Ok(()) => {
            totals.passed += 1;
            eprintln!("<== {what}: ok in {:.1}s", started.elapsed().as_secs_f64());
            Ok(())
        }
        Err(e) => {
            totals.failed += 1;
            println!("{totals}");
            Err(e.context(format!("{what} failed")))
        }
    }
}

fn task_test(no_lint: bool, extra: Vec<String>) -> Result<()> {
    let start = Instant::now();
    run(
        "install the test bed (Debian packages, Kubernetes, etcd, helm)",
        {
            let mut c = test_bed()?;
            c.stdout(Stdio::null());
            c
        },
    )?;
    if !no_lint {
        run("cargo fmt --check", {
            let mut c = cargo();
            c.args(["fmt", "--all", "--", "--check"]);
            c
        })?;
    }
    // One cargo invocation builds the whole workspace, the pods' binaries
    // (which must exist before the end-to-end tests start them) and the
    // tests together, so that the two cores stay busy through both; `cargo
    // test` below finds them built.
    run("build the workspace and its tests", {
        let mut c = cargo();
        c.args(["build", "--workspace", "--bins", "--tests"]);
        c
    })?;
    if !no_lint {
        run("cargo clippy --all-targets -- -D warnings", {
            let mut c = cargo();
            c.args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]);
            c
        })?;
    }
    let mut c = cargo();
    c.args(["test", "--workspace", "--no-fail-fast"])
        .env("SLUICE_SKIP_CARGO_BUILD", "1");
    if !extra.is_empty() {
        c.arg("--").args(&extra);
    }
    let mut totals = run_counting("cargo test --workspace", c)?;
    if extra.is_empty() {
        eprintln!("\n==> fuzzing, {}s per target", fuzz::TEST_SECONDS);
        counted(&mut totals, "the fuzz targets", || {
            fuzz::run_all(fuzz::TEST_SECONDS)
        })?;
    }
    // The main job itself, non-interactively: every step checks what it
    // measured and fails the run when an outcome is off.
    if !extra.is_empty() {
        eprintln!("\n(test filters given: the demo run is not part of this run)");
    } else if running_pid(&demo_dir()).is_some() {
        eprintln!(
            "\n(your sandbox is running and holds the node's ports: the demo run is skipped, not counted; `cargo xtask demo down` first)"
        );
    } else {
        let dir = demo_dir().with_file_name("demo-ci");
        eprintln!("\n==> the demo, end to end ({})", dir.display());
        counted(&mut totals, "the demo", || {
            let result = demo_up(&dir, None, Built::Already);
            result.and(demo_down(&dir))
        })?;
        // The Gateway API conformance suite's GATEWAY-HTTP profile, core
        // and the extended features Sluice claims; a failed test fails CI.
        let report = target::dir().join("conformance/report.yaml");
        counted(&mut totals, "the Gateway API conformance suite", || {
            conformance::conformance(
                conformance::Profile::Gateway,
                &[],
                Some(report),
                Built::Already,
            )
        })?;
    }
    eprintln!(
        "\nall checks passed in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    // One closing line for the whole suite (cargo prints one per test binary).
    println!("{totals}");
    Ok(())
}

/// Test counts added up over every test binary.
#[derive(Default, Debug)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "summary: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        )
    }
}

/// Runs `cargo test`, passing its output through, and adds up its
/// `test result:` lines; when it fails, the failed tests and the ends of
/// their messages are repeated last.
fn run_counting(what: &str, mut cmd: Command) -> Result<Totals> {
    use std::io::{BufRead, BufReader};
    let start = Instant::now();
    eprintln!("\n==> {what}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut totals = Totals::default();
    let mut failed = failures::Failures::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            failed.feed(&line);
            let Some(rest) = line.strip_prefix("test result: ") else {
                continue;
            };
            for part in rest.split(';') {
                let part = part
                    .trim()
                    .trim_start_matches("ok. ")
                    .trim_start_matches("FAILED. ");
                let Some((n, word)) = part.split_once(' ') else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match word {
                    "passed" => totals.passed += n,
                    "failed" => totals.failed += n,
                    "ignored" => totals.ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    eprintln!(
        "<== {what}: {} in {:.1}s",
        if status.success() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    if !status.success() {
        totals.failed = totals.failed.max(1);
        print!("\n{}", failed.report());
        println!("{totals}");
        bail!("{what} failed ({status})");
    }
    Ok(totals)
}

/// A directory of the release binaries in `release`, with the
/// profile-guided build as `sluice-proxy`. Every file of `release` is
/// linked there (not a list of names), so that what `sluice-images`'
/// catalog reads is there as it is in `release`.
fn with_pgo_proxy(release: &Path) -> Result<PathBuf> {
    let proxy = bench::pgo_proxy()?;
    let bins = target::dir().join("images-pgo-bins");
    let _ = std::fs::remove_dir_all(&bins);
    std::fs::create_dir_all(&bins)?;
    for entry in std::fs::read_dir(release)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() || entry.file_name() == "sluice-proxy" {
            continue;
        }
        let to = bins.join(entry.file_name());
        if std::fs::hard_link(entry.path(), &to).is_err() {
            std::fs::copy(entry.path(), &to)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    std::fs::copy(&proxy, bins.join("sluice-proxy"))?;
    Ok(bins)
}

/// The project's cache outside the checkout (`SLUICE_CACHE`, else
/// `~/.cache/sluice`): what a new clone would otherwise download or build again.
fn cache_dir() -> PathBuf {
    std::env::var_os("SLUICE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sluice")))
        .unwrap_or_else(|| PathBuf::from("/tmp/sluice"))
}

fn tools_dir() -> PathBuf {
    cache_dir().join("tools")
}

/// The binaries the images hold, built in one cargo invocation, then the
/// archives written by `sluice-images`; with `pgo`, the proxy's image
/// holds the profile-guided build instead.
fn task_images(debug: bool, pgo: bool) -> Result<()> {
    let profile = if debug { "debug" } else { "release" };
    run(&format!("build the {profile} binaries"), {
        let mut c = cargo();
        c.args(["build", "--bins", "--locked"]);
        for p in [
            "sluice-operator",
            "sluice-proxy",
            "demo-app",
            "sluice-images",
        ] {
            c.args(["-p", p]);
        }
        if !debug {
            c.arg("--release");
        }
        c
    })?;
    let mut bins = target::dir().join(profile);
    if pgo {
        bins = with_pgo_proxy(&bins)?;
    }
    let out = target::dir().join("images");
    run("write the image archives", {
        let mut c = Command::new(bins.join("sluice-images"));
        c.arg("--bins").arg(&bins).arg("--out").arg(&out);
        c
    })?;
    eprintln!(
        "\nLoad them where your cluster pulls from, e.g.:\n  \
         kind load image-archive {out}/sluice_sluice-proxy.oci.tar\n  \
         k3d image import {out}/sluice_sluice-proxy.oci.tar\n  \
         ctr -n k8s.io images import {out}/sluice_sluice-proxy.oci.tar\n  \
         skopeo copy oci-archive:{out}/sluice_sluice-proxy.oci.tar docker://REGISTRY/sluice/sluice-proxy:TAG",
        out = out.display()
    );
    Ok(())
}

fn task_crds(check: bool) -> Result<()> {
    let mut c = cargo();
    c.args([
        "run",
        "--quiet",
        "-p",
        "sluice-crds",
        "--bin",
        "sluice-crdgen",
    ]);
    if check {
        c.args(["--", "--check"]);
    }
    run(
        if check {
            "check the CRD YAML"
        } else {
            "generate the CRD YAML"
        },
        c,
    )
}

/// Where the sandbox keeps its state.
fn demo_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_DEMO_DIR") {
        return PathBuf::from(dir);
    }
    cache_dir().join("demo")
}

/// The sandbox cluster's process, while it runs.
fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    runs(&stat).then_some(pid)
}

/// Whether the process of `/proc/<pid>/stat` text `stat` runs. One that
/// exited but is not reaped yet (a zombie) does not: `cargo xtask test`
/// starts the sandbox and stops it from the same process, which never
/// waits for it, so its `/proc` entry stays until that process ends.
fn runs(stat: &str) -> bool {
    // The state follows the command name, which is in parentheses and may
    // hold spaces and parentheses itself.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z" | "X" | "x"))
}

/// `kubectl ARGS` against the sandbox in `dir`, with the workspace's
/// binaries (the `kubectl sluice` plugin) first on PATH; its output whatever
/// its exit status.
fn kubectl_output(dir: &Path, args: &[&str]) -> Result<std::process::Output> {
    let paths = test_bed_paths()?;
    let kubectl = paths
        .iter()
        .find(|(k, _)| k == "KUBECTL")
        .map(|(_, v)| v.clone())
        .context("no KUBECTL")?;
    let path = format!(
        "{}:{}",
        target::dir().join("debug").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(&kubectl)
        .args(args)
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env("PATH", path)
        .output()
        .with_context(|| format!("running {kubectl}"))
}

/// `kubectl ARGS` against the sandbox; its stdout, or an error with stderr.
fn kubectl(dir: &Path, args: &[&str]) -> Result<String> {
    let out = kubectl_output(dir, args)?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The test bed's tool paths (`KUBECTL=...`), from `scripts/test-bed.sh
/// --quiet`, run once per process: the demo calls kubectl dozens of times.
fn test_bed_paths() -> Result<&'static [(String, String)]> {
    static PATHS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    if let Some(p) = PATHS.get() {
        return Ok(p);
    }
    let out = test_bed()?
        .arg("--quiet")
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("scripts/test-bed.sh failed");
    }
    let paths = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    Ok(PATHS.get_or_init(|| paths))
}

fn demo_down(dir: &Path) -> Result<()> {
    match running_pid(dir) {
        Some(pid) => {
            eprintln!("stopping the sandbox cluster (pid {pid})");
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while running_pid(dir).is_some() {
                if Instant::now() > deadline {
                    Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status()?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        None => eprintln!("no sandbox cluster is running"),
    }
    let _ = std::fs::remove_dir_all(dir);
    eprintln!("sandbox removed");
    Ok(())
}

/// Whether the demo and the conformance run build Sluice first. Within
/// `cargo xtask test` they use what its build made with the tests: a build
/// of the binaries alone would compile them again (without the tests'
/// dev-dependencies cargo unifies other features, tokio's among them) for
/// the same sources, about 35 s each time.
#[derive(Clone, Copy, PartialEq)]
enum Built {
    /// The binaries are built from these sources already.
    Already,
    /// Build them (cargo skips what is fresh).
    NotYet,
}

/// The workspace's debug binary `name`, told that Sluice is built (so
/// that it builds nothing itself).
fn built_binary(name: &str) -> Command {
    let mut c = Command::new(target::dir().join("debug").join(name));
    c.env("SLUICE_SKIP_CARGO_BUILD", "1");
    c
}

fn demo_up(dir: &Path, step: Option<u32>, built: Built) -> Result<()> {
    run(
        "install the test bed (Debian packages, Kubernetes, etcd, helm)",
        {
            let mut c = test_bed()?;
            c.stdout(Stdio::null());
            c
        },
    )?;
    if built == Built::NotYet {
        run("build Sluice", {
            let mut c = cargo();
            c.args(["build", "--workspace", "--bins"]);
            c
        })?;
    }
    if running_pid(dir).is_some() && dir.join("ready").exists() {
        eprintln!("\n==> the sandbox cluster is already running; reusing it");
    } else {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::File::create(dir.join("cluster.log"))?;
        eprintln!(
            "\n==> start the local cluster (log: {})",
            dir.join("cluster.log").display()
        );
        let child = {
            use std::os::unix::process::CommandExt;
            built_binary("sluice-cluster")
                .args(["up", "--state-dir"])
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .context("starting sluice-cluster")?
        };
        std::fs::write(dir.join("pid"), child.id().to_string())?;
        let start = Instant::now();
        while !dir.join("ready").exists() {
            if running_pid(dir).is_none() {
                bail!(
                    "the cluster exited; see {}",
                    dir.join("cluster.log").display()
                );
            }
            if start.elapsed() > Duration::from_secs(180) {
                bail!(
                    "the cluster was not ready after 180 s; see {}",
                    dir.join("cluster.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("<== cluster ready in {:.1}s", start.elapsed().as_secs_f64());
        eprintln!(
            "    helm install sluice charts/sluice -n sluice-system --create-namespace --wait \\\n      --set operator.replicas=1,dashboard.nodePort=32001"
        );
    }
    let handson = root().join("examples/handson");
    let node = std::fs::read_to_string(dir.join("node-address"))
        .context("the sandbox has no node-address; `cargo xtask demo down` and start again")?
        .trim()
        .to_owned();
    let demo = handson::Demo {
        dir,
        files: &handson,
        node,
    };
    for n in 1..=5 {
        if step.is_none_or(|s| s == n) {
            demo.step(n)?;
        }
    }
    eprintln!("\n==> the cluster");
    print!(
        "{}",
        kubectl(
            dir,
            &["get", "nodes,pods,endpointslices", "-A", "-o", "wide"]
        )?
    );
    let kubeconfig = dir.join("kubeconfig");
    let paths = test_bed_paths()?;
    let kubectl_bin = paths
        .iter()
        .find(|(k, _)| k == "KUBECTL")
        .map(|(_, v)| v.as_str())
        .unwrap_or("kubectl");
    let dashboard = std::fs::read_to_string(dir.join("dashboard-url"))
        .map(|u| u.trim().to_owned())
        .context("the sandbox has no dashboard-url; `cargo xtask demo down` and start again")?;
    // The URL printed below must work: its graph lists the handson workloads.
    // The page takes `token=` once (the tab keeps it); the API wants it as
    // a bearer header, as any client outside loopback does.
    let (page, token) = dashboard
        .split_once("&token=")
        .map_or((dashboard.as_str(), None), |(p, t)| (p, Some(t)));
    let graph = page.replacen("/?", "/api/graph?", 1);
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--noproxy", "*", "--max-time", "10", "-f", &graph]);
    if let Some(t) = token {
        curl.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = curl.output().context("running curl")?;
    let body = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !body.contains("handson") {
        bail!(
            "the dashboard did not show the handson graph at {graph}: {} {body}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    println!(
        "\nThe sandbox keeps running. Use it with:\n\n    export KUBECONFIG={}\n    alias kubectl={}\n    kubectl get pods -A\n    kubectl get rollouts -A\n\nThe dashboard (the mesh graph, rollouts, policies): {dashboard}\n\nStop it with `cargo xtask demo down`.",
        kubeconfig.display(),
        kubectl_bin,
    );
    Ok(())
}

/// Ends with the error's chain on one line and exit status 1: no
/// backtrace after it, so that the last lines of a failed run stay the
/// failures and the summary.
fn main() -> std::process::ExitCode {
    match task(Cli::parse().task) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn task(task: Task) -> Result<()> {
    match task {
        Task::Test {
            no_lint,
            cargo_test_args,
        } => {
            target::use_cache();
            task_test(no_lint, cargo_test_args)
        }
        Task::Demo { action, step } => match action.as_str() {
            "up" => {
                target::use_cache();
                demo_up(&demo_dir(), step, Built::NotYet)
            }
            "down" => demo_down(&demo_dir()),
            other => bail!("unknown demo action {other:?}: use `up` or `down`"),
        },
        Task::Crds { check } => task_crds(check),
        Task::TestBed => run("install the test bed", test_bed()?),
        Task::Images { debug, pgo } => task_images(debug, pgo),
        Task::Fuzz { seconds } => fuzz::run_all(seconds),
        Task::Conformance { mesh, args } => {
            let profile = if mesh {
                conformance::Profile::Mesh
            } else {
                conformance::Profile::Gateway
            };
            conformance::conformance(profile, &args, None, Built::NotYet)
        }
        Task::Bench { what, args } => match what.as_str() {
            "proxy" => bench::proxy(),
            "instructions" => bench::instructions(),
            "control-plane" => bench::control_plane(&args),
            "scale" => bench::scale(&args),
            other => bail!(
                "unknown benchmark {other:?}: use `proxy`, `instructions`, `control-plane` or `scale`"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn a_zombie_does_not_run_and_a_sleeping_process_does() {
        assert!(runs("2876 (sluice-cluster) S 1 2876 2876 0 -1 4194560"));
        assert!(!runs("2876 (sluice-cluster) Z 1 2876 2876 0 -1 4194560"));
        assert!(runs("7 (a) b (c)) R 1 7"));
        assert!(!runs("7 (a) b) Z 1 7"));
        assert!(!runs(""));
    }
}
