//! `kubectl sluice`: watch and steer Rollouts.
//!
//! On PATH as `kubectl-sluice`, kubectl runs it for `kubectl sluice ...`.
//! Requests (promote, abort, retry) are an annotation the controller acts
//! on and removes; pause and resume set `spec.paused`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use sluice_crds::rollout::{AnalysisStatus, Request};
use sluice_crds::{Rollout, RolloutPhase};
use sluice_operator::rollout::canary_routes::{header_routes_in_force, mirror_routes_in_force};
use sluice_operator::rollout::{HASH_LABEL, ROLLOUT_LABEL, edit, lint, revisions};

#[derive(Parser)]
#[command(name = "kubectl sluice", about = "Watch and steer Sluice Rollouts")]
struct Cli {
    /// Namespace (defaults to the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show a rollout as a tree: revisions, ReplicaSets, pods, weights,
    /// step and analysis.
    Get {
        /// Only `rollout` is known.
        kind: String,
        /// The Rollout.
        name: String,
        /// Refresh every second until interrupted.
        #[arg(short, long)]
        watch: bool,
    },
    /// Finish the current pause (or, with --full, every remaining step).
    Promote {
        /// The Rollout.
        name: String,
        /// Skip all remaining steps.
        #[arg(long)]
        full: bool,
    },
    /// Send all traffic back to stable and stop the canary.
    Abort {
        /// The Rollout.
        name: String,
    },
    /// Start an aborted canary again from its first step.
    Retry {
        /// The Rollout.
        name: String,
    },
    /// Hold the rollout at its current step (`spec.paused`).
    Pause {
        /// The Rollout.
        name: String,
    },
    /// Undo `pause`.
    Resume {
        /// The Rollout.
        name: String,
    },
    /// Change the rollout's pod template (starts a new revision).
    Set {
        #[command(subcommand)]
        what: SetCmd,
    },
    /// Go back to the previous revision's pod template (or the one named),
    /// as `kubectl rollout undo` does: the template becomes current again
    /// and goes through the steps as a canary.
    Undo {
        /// The Rollout.
        name: String,
        /// The revision to go back to (see `get rollout`).
        #[arg(long)]
        to_revision: Option<u64>,
    },
    /// Validate the Rollouts of a file offline (`-` reads standard input),
    /// as admission and the controller would: exit 1 when one is invalid.
    Lint {
        /// A YAML file of one or more documents; other kinds are skipped.
        file: String,
    },
    /// Wait until the rollout is Healthy (exit 0) or Degraded (exit 1).
    Status {
        /// The Rollout.
        name: String,
        /// Give up after this many seconds (exit 2).
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum SetCmd {
    /// Set container images, as `kubectl set image` does for a Deployment:
    /// `kubectl sluice set image ROLLOUT CONTAINER=IMAGE...` (`*=IMAGE`
    /// sets every container).
    Image {
        /// The Rollout.
        name: String,
        /// `CONTAINER=IMAGE`, one or more.
        #[arg(required = true, num_args = 1..)]
        images: Vec<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // Offline: no cluster needed.
    if let Cmd::Lint { file } = &cli.cmd {
        return lint_file(file);
    }
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let ns = cli
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<Rollout> = Api::namespaced(client.clone(), &ns);
    match cli.cmd {
        Cmd::Get { kind, name, watch } => {
            if !matches!(kind.as_str(), "rollout" | "rollouts" | "ro") {
                bail!("unknown kind {kind:?}: use `rollout`");
            }
            loop {
                let tree = tree(&client, &ns, &name).await?;
                if watch {
                    // Clear the screen and redraw.
                    print!("\x1b[2J\x1b[H{tree}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } else {
                    print!("{tree}");
                    return Ok(());
                }
            }
        }
        Cmd::Promote { name, full } => {
            let r = if full {
                Request::PromoteFull
            } else {
                Request::Promote
            };
            request(&api, &name, r).await
        }
        Cmd::Abort { name } => request(&api, &name, Request::Abort).await,
        Cmd::Retry { name } => request(&api, &name, Request::Retry).await,
        Cmd::Set {
            what: SetCmd::Image { name, images },
        } => set_image(&api, &name, &images).await,
        Cmd::Undo { name, to_revision } => undo(&client, &api, &ns, &name, to_revision).await,
        Cmd::Pause { name } => set_paused(&api, &name, true).await,
        Cmd::Resume { name } => set_paused(&api, &name, false).await,
        // Handled before connecting.
        Cmd::Lint { .. } => Ok(()),
        Cmd::Status { name, timeout } => {
            let deadline = Instant::now() + Duration::from_secs(timeout);
            let mut last = String::new();
            loop {
                let ro = api.get(&name).await?;
                let st = ro.status.unwrap_or_default();
                let line = format!(
                    "{:?}: {}",
                    st.phase.unwrap_or(RolloutPhase::Progressing),
                    st.message.unwrap_or_default()
                );
                if line != last {
                    println!("{line}");
                    last = line;
                }
                let current = st.observed_generation == ro.metadata.generation;
                match st.phase {
                    Some(RolloutPhase::Healthy) if current => return Ok(()),
                    Some(RolloutPhase::Degraded) if current => std::process::exit(1),
                    _ => {}
                }
                if Instant::now() > deadline {
                    eprintln!("timed out after {timeout}s");
                    std::process::exit(2);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn request(api: &Api<Rollout>, name: &str, request: Request) -> Result<()> {
    let what = request.as_str();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {Request::ANNOTATION: what}}})),
    )
    .await
    .with_context(|| format!("requesting {what} of rollout {name}"))?;
    println!("rollout {name}: {what} requested");
    Ok(())
}

async fn set_image(api: &Api<Rollout>, name: &str, args: &[String]) -> Result<()> {
    let changes = args
        .iter()
        .map(|a| a.parse::<edit::ImageChange>())
        .collect::<Result<Vec<_>, _>>()?;
    let rollout = api
        .get(name)
        .await
        .with_context(|| format!("reading rollout {name}"))?;
    own_template(&rollout, "kubectl set image deployment/")?;
    let patch = edit::set_image(&rollout.spec.template, &changes)?;
    json_patch(api, name, patch, "setting the images").await?;
    println!("rollout {name}: image updated ({})", args.join(" "));
    Ok(())
}

/// Refuses to edit the template of a Rollout that takes it from a
/// Deployment: the Deployment is where it changes (`how` + its name).
fn own_template(rollout: &Rollout, how: &str) -> Result<()> {
    if let Some(w) = &rollout.spec.workload_ref {
        bail!(
            "rollout {} takes its pod template from Deployment {}: change it there ({how}{})",
            rollout.name_any(),
            w.name,
            w.name
        );
    }
    Ok(())
}

/// Applies JSON Patch `patch` to Rollout `name`; `doing` names the edit in
/// the error.
async fn json_patch(
    api: &Api<Rollout>,
    name: &str,
    patch: serde_json::Value,
    doing: &str,
) -> Result<()> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(patch)?),
    )
    .await
    .with_context(|| format!("{doing} of rollout {name}"))?;
    Ok(())
}

async fn owned_replicasets(client: &Client, ns: &str, name: &str) -> Result<Vec<ReplicaSet>> {
    Ok(Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{ROLLOUT_LABEL}={name}")))
        .await?
        .items)
}

async fn undo(
    client: &Client,
    api: &Api<Rollout>,
    ns: &str,
    name: &str,
    to: Option<u64>,
) -> Result<()> {
    let rollout = api
        .get(name)
        .await
        .with_context(|| format!("reading rollout {name}"))?;
    own_template(&rollout, "kubectl rollout undo deployment/")?;
    let owned = owned_replicasets(client, ns, name).await?;
    let current = revisions::current_hash(&owned, &rollout.spec.template);
    let target = revisions::undo_target(&owned, &current, to)?;
    let template = revisions::template_of(target)
        .with_context(|| format!("ReplicaSet {} has no pod template", target.name_any()))?;
    // Refused if the Rollout changed since it was read.
    let patch = json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": rollout.resource_version()},
        {"op": "replace", "path": "/spec/template", "value": template},
    ]);
    json_patch(api, name, patch, "restoring the template").await?;
    println!(
        "rollout {name}: back to revision {} ({})",
        revisions::revision(target).map_or("?".into(), |n| n.to_string()),
        target.labels().get(HASH_LABEL).cloned().unwrap_or_default()
    );
    Ok(())
}

async fn set_paused(api: &Api<Rollout>, name: &str, paused: bool) -> Result<()> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": paused}})),
    )
    .await?;
    println!(
        "rollout {name} {}",
        if paused { "paused" } else { "resumed" }
    );
    Ok(())
}

/// `lint FILE`: each Rollout's and analysis template's findings, exit 1
/// if any.
fn lint_file(file: &str) -> Result<()> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    let report = lint::lint(&text).with_context(|| format!("linting {file}"))?;
    if report.objects.is_empty() {
        bail!(
            "{file}: no Rollout or analysis template found ({} other documents)",
            report.skipped
        );
    }
    for o in &report.objects {
        let name = format!("{}/{}", o.kind.as_str().to_lowercase(), o.name);
        if o.findings.is_empty() {
            println!("{name}: valid");
        }
        for f in &o.findings {
            println!("{name}: {f}");
        }
    }
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}

/// The rollout as text: what `get` prints.
async fn tree(client: &Client, ns: &str, name: &str) -> Result<String> {
    let ro = Api::<Rollout>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    let st = ro.status.clone().unwrap_or_default();
    let mut out = String::new();
    let w = st.weights.clone().unwrap_or_default();
    out += &format!("Name:       {name}\nNamespace:  {ns}\n");
    out += &format!(
        "Status:     {:?}{}\nMessage:    {}\n",
        st.phase.unwrap_or(RolloutPhase::Progressing),
        st.reason.map_or(String::new(), |r| format!(" ({r})")),
        st.message.clone().unwrap_or_default(),
    );
    if let Some(w) = &ro.spec.workload_ref {
        out += &format!("Workload:   Deployment {} (its pod template)\n", w.name);
    }
    match (&ro.spec.strategy.blue_green, &st.blue_green) {
        (Some(bg), sel) => {
            let (active, preview) = sel.as_ref().map_or(("-", "-"), |s| {
                (s.active_revision.as_str(), s.preview_revision.as_str())
            });
            out += &format!(
                "Strategy:   blue-green\nActive:     {} → {active}\n",
                bg.active_service
            );
            if let Some(p) = &bg.preview_service {
                out += &format!("Preview:    {p} → {preview}\n");
            }
        }
        (None, _) => {
            out += &format!(
                "Step:       {}\nWeights:    stable {}%  canary {}%\n",
                st.step.clone().unwrap_or_default(),
                w.stable,
                w.canary
            );
        }
    }
    if !st.header_routes.is_empty() {
        out += &format!(
            "Header routes to the canary: {}\n",
            header_routes_in_force(&ro.spec.strategy.canary.steps, &st).join(", ")
        );
    }
    if !st.mirror_routes.is_empty() {
        out += &format!(
            "Mirror routes to the canary: {}\n",
            mirror_routes_in_force(&ro.spec.strategy.canary.steps, &st).join(", ")
        );
    }
    if let Some(a) = &st.analysis {
        out += &analysis_lines(a);
    }
    let mut rs = owned_replicasets(client, ns, name).await?;
    // Newest revision first.
    rs.sort_by_key(|r| std::cmp::Reverse(revisions::revision(r)));
    let pods: Vec<Pod> = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(HASH_LABEL))
        .await?
        .items;
    let mut by_hash: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in &pods {
        if let Some(h) = p.labels().get(HASH_LABEL) {
            by_hash.entry(h.clone()).or_default().push(p);
        }
    }
    out += &format!("⟳ {name}\n");
    for r in &rs {
        let hash = r.labels().get(HASH_LABEL).cloned().unwrap_or_default();
        let role = if st.stable_revision.as_deref() == Some(&hash) {
            "stable"
        } else if st.canary_revision.as_deref() == Some(&hash) {
            if ro.spec.strategy.blue_green.is_some() {
                "preview"
            } else {
                "canary"
            }
        } else {
            "old"
        };
        let active = st
            .blue_green
            .as_ref()
            .is_some_and(|b| b.active_revision == hash);
        let role = if active {
            format!("{role}, active")
        } else {
            role.to_owned()
        };
        let s = r.status.clone().unwrap_or_default();
        let number = revisions::revision(r).map_or(String::new(), |n| format!(" #{n}"));
        out += &format!(
            "├── revision {hash}{number} ({role})\n│   └── ReplicaSet {} {}/{} ready\n",
            r.name_any(),
            s.ready_replicas.unwrap_or(0),
            r.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
        );
        for p in by_hash.get(&hash).into_iter().flatten() {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            out += &format!(
                "│       └── Pod {} {}\n",
                p.name_any(),
                if ready { "ready" } else { "not ready" }
            );
        }
    }
    Ok(out)
}

/// The analysis in a line (the built-in judge) or a line per template
/// metric: its phase, counts and latest measurement.
fn analysis_lines(a: &AnalysisStatus) -> String {
    let verdict = a.verdict.map_or("-", |v| v.as_str());
    if a.metrics.is_empty() {
        return format!(
            "Analysis:   {verdict} — canary {} requests, error rate {} (stable {} over {}), p99 {}\n",
            a.canary_requests,
            a.canary_error_rate.as_deref().unwrap_or("-"),
            a.stable_error_rate.as_deref().unwrap_or("-"),
            a.stable_requests,
            a.canary_p99_ms.map_or("-".into(), |v| format!("{v} ms"))
        );
    }
    let mut out = format!(
        "Analysis:   {verdict} ({} analysis)\n",
        a.run.as_deref().unwrap_or("-")
    );
    for m in &a.metrics {
        let last = m.measurements.last();
        let value = last.and_then(|l| l.value.as_deref()).unwrap_or("-");
        let message = last
            .and_then(|l| l.message.as_deref())
            .map_or_else(String::new, |t| format!(" ({t})"));
        out += &format!(
            "  {:<20} {:<12} {} measured: {} ok, {} failed, {} inconclusive, {} errors; last {value}{message}{}\n",
            m.name,
            m.phase.as_str(),
            m.count,
            m.successful,
            m.failed,
            m.inconclusive,
            m.error,
            if m.dry_run { " [dry run]" } else { "" }
        );
    }
    out
}
