//! `cargo xtask conformance`: the Gateway API conformance suite against
//! Sluice on the test bed.
//!
//! A real cluster (control plane and node), Sluice installed with its Helm
//! chart, the suite's echo backend built from its Go module and imported
//! into the node under the name the suite's manifests use, then the suite's
//! own test binary (`scripts/conformance.sh` builds both) with the
//! GatewayClass `sluice-dedicated`, whose Gateways each get proxies of
//! their own, as Istio's do (`--gateway-class sluice` runs it against the
//! shared gateway). The suite writes its `ConformanceReport`; this
//! prints the passed, failed and skipped tests of each profile.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Deserialize;
use sluice_tests::Cluster;
use sluice_tests::operator::helm_install_mesh;

#[derive(Parser)]
#[command(about = "The Gateway API conformance suite against Sluice on the test bed")]
struct Args {
    /// The suite's test binary (`go test -c sigs.k8s.io/gateway-api/conformance`).
    #[arg(long)]
    suite: PathBuf,
    /// The echo backend (`sigs.k8s.io/gateway-api/conformance/echo-basic`).
    #[arg(long)]
    echo_basic: PathBuf,
    /// The image name the suite's manifests run the echo backend under.
    #[arg(long)]
    echo_image: String,
    /// CoreDNS with the plugins of the suite's Corefile (its UDP backend).
    #[arg(long)]
    coredns: PathBuf,
    /// The image name the suite's manifests run CoreDNS under.
    #[arg(long)]
    coredns_image: String,
    /// Istio's echo app, for the MESH-HTTP profile (`scripts/conformance.sh mesh`).
    #[command(flatten)]
    mesh: MeshEcho,
    /// Where the suite writes its ConformanceReport.
    #[arg(long)]
    report: PathBuf,
    /// Where the suite's own output goes.
    #[arg(long)]
    log: PathBuf,
    /// Conformance profiles.
    #[arg(long, default_value = "GATEWAY-HTTP")]
    profiles: String,
    /// Features claimed: the core ones and the extended ones implemented.
    #[arg(long, default_value = SUPPORTED)]
    supported_features: String,
    /// Only this test (its short name, e.g. `HTTPRouteSimpleSameNamespace`).
    #[arg(long)]
    run_test: Option<String>,
    /// The implementation's version in the report.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    version: String,
    /// The GatewayClass the suite's Gateways use: the dedicated one (each
    /// Gateway its own proxies and Service) or `sluice` (the shared gateway).
    #[arg(long, default_value = "sluice-dedicated")]
    gateway_class: String,
    /// Minutes before the suite is stopped.
    #[arg(long, default_value_t = 40)]
    minutes: u64,
}

/// The programs and files of Istio's echo app, which the MESH-HTTP
/// profile's manifests run as `echo-advanced` and whose `client` the suite
/// execs in a meshed pod.
#[derive(clap::Args)]
struct MeshEcho {
    /// `istio.io/istio/pkg/test/echo/cmd/server`.
    #[arg(long)]
    istio_echo_server: Option<PathBuf>,
    /// `istio.io/istio/pkg/test/echo/cmd/client`.
    #[arg(long)]
    istio_echo_client: Option<PathBuf>,
    /// The certificate its HTTPS port serves.
    #[arg(long)]
    istio_echo_cert: Option<PathBuf>,
    /// Its key.
    #[arg(long)]
    istio_echo_key: Option<PathBuf>,
    /// The image name the mesh manifests run it under.
    #[arg(long)]
    echo_advanced_image: Option<String>,
}

impl MeshEcho {
    /// The image, when every part was given.
    fn image(&self) -> Result<Option<sluice_images::Image>> {
        let (Some(server), Some(client), Some(cert), Some(key), Some(reference)) = (
            &self.istio_echo_server,
            &self.istio_echo_client,
            &self.istio_echo_cert,
            &self.istio_echo_key,
            &self.echo_advanced_image,
        ) else {
            return Ok(None);
        };
        let parts = sluice_images::catalog::IstioEcho {
            reference,
            server,
            client,
            cert,
            key,
        };
        Ok(Some(sluice_images::catalog::istio_echo(&parts)?))
    }
}

/// The profile whose manifests run Istio's echo app.
const MESH_PROFILE: &str = "MESH-HTTP";

/// The core features of GATEWAY-HTTP and the extended ones Sluice serves.
const SUPPORTED: &str = "Gateway,HTTPRoute,ReferenceGrant,\
GatewayPort8080,\
HTTPRouteQueryParamMatching,HTTPRouteMethodMatching,HTTPRouteParentRefPort,HTTPRouteNamedRouteRule,\
HTTPRouteResponseHeaderModification,\
HTTPRoutePortRedirect,HTTPRouteSchemeRedirect,HTTPRoutePathRedirect,\
HTTPRoute303RedirectStatusCode,HTTPRoute307RedirectStatusCode,HTTPRoute308RedirectStatusCode,\
HTTPRouteHostRewrite,HTTPRoutePathRewrite,\
HTTPRouteRequestMirror,HTTPRouteRequestMultipleMirrors,HTTPRouteRequestPercentageMirror,\
HTTPRouteRequestTimeout,HTTPRouteBackendTimeout,\
HTTPRouteBackendProtocolH2C,HTTPRouteBackendProtocolWebSocket,\
GatewayHTTPListenerIsolation,GatewayInfrastructurePropagation";

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let cluster = Cluster::start().await?;
    helm_install_mesh(&cluster).await?;
    import_backends(&cluster, &args)?;
    let log = args.log.clone();
    let started = Instant::now();
    let outcome = run_suite(&cluster, &args, &log).await;
    eprintln!(
        "the suite ran for {:.0} s (its log: {})",
        started.elapsed().as_secs_f64(),
        log.display()
    );
    outcome?;
    summarize(&args.report)
}

/// Builds the backends' images and imports them into the node.
fn import_backends(cluster: &Cluster, args: &Args) -> Result<()> {
    let out = cluster.dir().join("conformance-images");
    let images = [
        sluice_images::catalog::named_program(&args.echo_image, &args.echo_basic, 65532)?,
        // Upstream's binds 53 through a file capability; root with the
        // NET_BIND_SERVICE the manifest adds does the same here.
        sluice_images::catalog::named_program(&args.coredns_image, &args.coredns, 0)?,
    ];
    let mesh = args.mesh.image()?;
    if mesh.is_none() && args.profiles.split(',').any(|p| p == MESH_PROFILE) {
        bail!(
            "{MESH_PROFILE} needs Istio's echo app: run `scripts/conformance.sh mesh` and pass what it prints"
        );
    }
    let images = images.iter().chain(&mesh);
    for image in images {
        let archive = image.build(&out)?;
        let path = archive.display().to_string();
        cluster
            .node()
            .ctr(&["images", "import", "--platform", "linux/amd64", &path])?;
    }
    Ok(())
}

/// Runs the suite's binary until it ends or `--minutes` pass; Ctrl-C or
/// SIGTERM stops it, and the cluster is torn down as usual.
async fn run_suite(cluster: &Cluster, args: &Args, log: &Path) -> Result<()> {
    for dir in [args.report.parent(), log.parent()].into_iter().flatten() {
        std::fs::create_dir_all(dir)?;
    }
    // A report left from an earlier run must not pass for this one's.
    if args.report.exists() {
        std::fs::remove_file(&args.report)
            .with_context(|| format!("removing the old {}", args.report.display()))?;
    }
    let log_file = std::fs::File::create(log)?;
    let mut cmd = tokio::process::Command::new(&args.suite);
    cmd.args([
        "-test.run",
        "TestConformance",
        "-test.v",
        &format!("-test.timeout={}m", args.minutes),
        &format!("-gateway-class={}", args.gateway_class),
        &format!("-conformance-profiles={}", args.profiles),
        &format!("-supported-features={}", args.supported_features),
        &format!("-report-output={}", args.report.display()),
        "-organization=sluice",
        "-project=sluice",
        "-url=https://sluice.dev",
        &format!("-version={}", args.version),
        "-contact=@sluice/maintainers",
        "-cleanup-base-resources=false",
        // The mesh profile's namespaces get the sidecar.
        "-namespace-labels=sluice.dev/inject=enabled",
    ]);
    if let Some(tests) = &args.run_test {
        cmd.arg(format!("-run-test={tests}"));
    }
    let mut child = cmd
        .env("KUBECONFIG", cluster.kubeconfig())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {}", args.suite.display()))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let status = tokio::select! {
        status = child.wait() => status?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    };
    // Failed tests make the binary exit non-zero; the report says which.
    if !args.report.exists() {
        bail!(
            "the suite wrote no report (exit {status}); see {}",
            log.display()
        );
    }
    Ok(())
}

#[derive(Deserialize)]
struct Report {
    profiles: Vec<Profile>,
}

#[derive(Deserialize)]
struct Profile {
    name: String,
    core: Status,
    extended: Option<Status>,
}

#[derive(Deserialize)]
struct Status {
    result: String,
    statistics: Statistics,
    #[serde(rename = "failedTests", default)]
    failed_tests: Vec<String>,
    #[serde(rename = "skippedTests", default)]
    skipped_tests: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Statistics {
    passed: u32,
    failed: u32,
    skipped: u32,
}

/// Prints each profile's core and extended results; fails when a test of
/// a claimed feature failed.
fn summarize(report: &Path) -> Result<()> {
    let text = std::fs::read_to_string(report)?;
    let r: Report = serde_yaml::from_str(&text).context("reading the ConformanceReport")?;
    for p in &r.profiles {
        for (part, s) in
            std::iter::once(("core", &p.core)).chain(p.extended.iter().map(|e| ("extended", e)))
        {
            println!(
                "{} {part}: {} ({} passed, {} failed, {} skipped)",
                p.name, s.result, s.statistics.passed, s.statistics.failed, s.statistics.skipped
            );
            for t in &s.failed_tests {
                println!("  failed: {t}");
            }
            for t in &s.skipped_tests {
                println!("  skipped: {t}");
            }
        }
    }
    println!("report: {}", report.display());
    let failed: u32 = r
        .profiles
        .iter()
        .flat_map(|p| std::iter::once(&p.core).chain(p.extended.as_ref()))
        .map(|s| s.statistics.failed)
        .sum();
    if failed > 0 {
        bail!("{failed} conformance tests failed");
    }
    Ok(())
}
