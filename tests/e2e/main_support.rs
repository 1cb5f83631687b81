//! Shared driver of the end-to-end test binaries: one real cluster per
//! binary, started once, with each scenario a libtest-mimic trial in a
//! namespace of its own. Output and filtering are cargo test's.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

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
    let trials = scenarios
        .iter()
        .map(|&(name, scenario)| {
            let cluster = cluster.clone();
            let handle = handle.clone();
            Trial::test(name, move || {
                let cluster =
                    cluster.map_err(|e| Failed::from(format!("cluster did not start: {e}")))?;
                let diag = cluster.clone();
                handle
                    .block_on(scenario(cluster))
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
    // Tear down inside the runtime: pod tasks are aborted, processes killed.
    runtime.block_on(async move { drop(cluster) });
    conclusion.exit_code()
}
