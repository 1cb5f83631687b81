//! Shared driver of the end-to-end test binaries: one real cluster per
//! binary, started once, with each scenario a libtest-mimic trial in a
//! namespace of its own. Output and filtering are cargo test's.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use sluice_tests::Cluster;

/// A scenario: an async function of the shared cluster.
pub type Scenario = fn(Arc<Cluster>) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Runs `scenarios` (in parallel) against one fresh cluster and exits as
/// cargo test does.
#[allow(dead_code)] // each test binary uses one of `run` and `run_sequential`
pub fn run(scenarios: &[(&'static str, Scenario)]) -> ExitCode {
    run_with(scenarios, false)
}

/// Runs `scenarios` one after another, in order: for scenarios that share
/// state (a gateway, the operator) and disturb it.
#[allow(dead_code)]
pub fn run_sequential(scenarios: &[(&'static str, Scenario)]) -> ExitCode {
    run_with(scenarios, true)
}

fn run_with(scenarios: &[(&'static str, Scenario)], sequential: bool) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .init();
    let mut args = Arguments::from_args();
    if sequential {
        args.test_threads = Some(1);
    }
    let selected = scenarios
        .iter()
        .any(|(name, _)| args.filter.as_deref().is_none_or(|f| name.contains(f)));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cluster: Result<Arc<Cluster>, String> = if args.list || !selected {
        Err("not started".into())
    } else {
        runtime
            .block_on(Cluster::start())
            .map(Arc::new)
            .map_err(|e| e.to_string())
    };
    let handle = runtime.handle().clone();
    let times = Arc::new(Mutex::new(Vec::new()));
    let trials = scenarios
        .iter()
        .map(|&(name, scenario)| {
            let cluster = cluster.clone();
            let handle = handle.clone();
            let times = times.clone();
            Trial::test(name, move || {
                let cluster =
                    cluster.map_err(|e| Failed::from(format!("cluster did not start: {e}")))?;
                let diag = cluster.clone();
                let started = Instant::now();
                let outcome = handle.block_on(scenario(cluster));
                times
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((name, started.elapsed()));
                outcome
                    // The error last too: a report cut to its tail still names it.
                    .map_err(|e| {
                        Failed::from(format!(
                            "{e:#}\n{}--- the failure, again ---\n{e:#}",
                            diag.diagnostics()
                        ))
                    })
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    print_times(&times.lock().unwrap_or_else(|p| p.into_inner()));
    // Tear down inside the runtime: pod tasks are aborted, processes killed.
    runtime.block_on(async move { drop(cluster) });
    conclusion.exit_code()
}

/// The slowest scenarios, for whoever shortens the suite.
fn print_times(times: &[(&str, Duration)]) {
    if times.len() < 2 {
        return;
    }
    let mut sorted = times.to_vec();
    sorted.sort_by_key(|&(_, took)| std::cmp::Reverse(took));
    let total: Duration = times.iter().map(|&(_, took)| took).sum();
    println!(
        "scenario times: {:.1}s in {} scenarios; the slowest:",
        total.as_secs_f64(),
        times.len()
    );
    for (name, took) in sorted.iter().take(10) {
        println!("{:>8.1}s  {name}", took.as_secs_f64());
    }
}
