//! `cargo xtask conformance`: the Gateway API conformance suite (its own
//! Go test binary, at the Gateway API version the test bed carries)
//! against Sluice on the test bed; the report goes to `docs/conformance/`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{Built, cargo, root, run};

/// Which of the suite's profiles runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// GATEWAY-HTTP: the ingress gateway (what CI runs).
    Gateway,
    /// MESH-HTTP: routes on Services between sidecars; needs Istio's echo
    /// app, built from the Istio module (large, so only on demand).
    Mesh,
}

/// The features claimed in the MESH-HTTP run: its core ones and the
/// extended ones that pass. Not claimed: `MeshClusterIPMatching` (sidecars
/// route by the request's Host, not by the address dialled),
/// `HTTPRoute307RedirectStatusCode` (v1.5.1's mesh test applies the 303
/// manifest; fixed upstream after the release), backendRef filters, GRPCRoute.
const MESH_FEATURES: &str = "Mesh,HTTPRoute,\
HTTPRoute303RedirectStatusCode,HTTPRoute308RedirectStatusCode,\
HTTPRouteParentRefPort,HTTPRouteResponseHeaderModification,\
MeshConsumerRoute,MeshHTTPRouteNamedRouteRule,MeshHTTPRouteQueryParamMatching,\
MeshHTTPRouteRedirectPath,MeshHTTPRouteRedirectPort,MeshHTTPRouteRewritePath,\
MeshHTTPRouteSchemeRedirect";

/// Builds the suite and its echo backend (`scripts/conformance.sh`), then
/// runs `sluice-conformance` with what it printed and `args`. The report
/// goes to `report`, or else to `docs/conformance/`. With
/// [`Built::Already`], Sluice's binaries (`sluice-conformance` among them)
/// are taken as built, not built again.
pub fn conformance(
    profile: Profile,
    args: &[String],
    report: Option<PathBuf>,
    built: Built,
) -> Result<()> {
    run(
        "install the test bed (Kubernetes, etcd, Gateway API CRDs)",
        {
            let mut c = crate::test_bed()?;
            c.stdout(Stdio::null());
            c
        },
    )?;
    eprintln!("\n==> build the conformance suite and its echo backend (Go)");
    let mut script = Command::new("bash");
    script.arg(root().join("scripts/conformance.sh"));
    if profile == Profile::Mesh {
        script.arg("mesh");
    }
    let out = script
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("running scripts/conformance.sh")?;
    if !out.status.success() {
        bail!("scripts/conformance.sh failed");
    }
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let value = |key: &str| -> Result<String> {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .with_context(|| format!("scripts/conformance.sh printed no {key}"))
    };
    let version = value("GATEWAY_API_VERSION")?;
    let report = report.unwrap_or_else(|| {
        let suffix = match profile {
            Profile::Gateway => "",
            Profile::Mesh => "-mesh",
        };
        root().join(format!(
            "docs/conformance/gateway-api-{version}{suffix}-report.yaml"
        ))
    });
    let mut mesh = Vec::new();
    if profile == Profile::Mesh {
        for (flag, key) in [
            ("--istio-echo-server", "ISTIO_ECHO_SERVER"),
            ("--istio-echo-client", "ISTIO_ECHO_CLIENT"),
            ("--istio-echo-cert", "ISTIO_ECHO_CERT"),
            ("--istio-echo-key", "ISTIO_ECHO_KEY"),
            ("--echo-advanced-image", "ECHO_ADVANCED_IMAGE"),
        ] {
            mesh.extend([flag.to_owned(), value(key)?]);
        }
        mesh.extend(
            [
                "--profiles",
                "MESH-HTTP",
                "--supported-features",
                MESH_FEATURES,
            ]
            .map(str::to_owned),
        );
    }
    run(
        "run the conformance suite against Sluice on the test bed",
        {
            let mut c = match built {
                Built::Already => {
                    let mut c = crate::built_binary("sluice-conformance");
                    c.current_dir(root());
                    c
                }
                Built::NotYet => {
                    let mut c = cargo();
                    c.args([
                        "run",
                        "--quiet",
                        "-p",
                        "sluice-tests",
                        "--bin",
                        "sluice-conformance",
                        "--",
                    ]);
                    c
                }
            };
            c.args([
                "--suite",
                &value("SUITE")?,
                "--echo-basic",
                &value("ECHO_BASIC")?,
                "--echo-image",
                &value("ECHO_IMAGE")?,
                "--coredns",
                &value("COREDNS")?,
                "--coredns-image",
                &value("COREDNS_IMAGE")?,
                "--report",
            ]);
            let log = crate::target::dir().join("conformance/suite.log");
            c.arg(&report).arg("--log").arg(log).args(&mesh).args(args);
            c
        },
    )
}
