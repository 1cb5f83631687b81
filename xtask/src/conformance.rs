//! `cargo xtask conformance`: the Gateway API conformance suite (its own
//! Go test binary, at the Gateway API version the test bed carries)
//! against Sluice on the test bed; the report goes to `docs/conformance/`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{cargo, root, run};

/// Builds the suite and its echo backend (`scripts/conformance.sh`), then
/// runs `sluice-conformance` with what it printed and `args`. The report
/// goes to `report`, or else to `docs/conformance/`.
pub fn conformance(args: &[String], report: Option<PathBuf>) -> Result<()> {
    run(
        "install the test bed (Kubernetes, etcd, Gateway API CRDs)",
        {
            let mut c = crate::test_bed()?;
            c.stdout(Stdio::null());
            c
        },
    )?;
    eprintln!("\n==> build the conformance suite and its echo backend (Go)");
    let out = Command::new("bash")
        .arg(root().join("scripts/conformance.sh"))
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
        root().join(format!(
            "docs/conformance/gateway-api-{version}-report.yaml"
        ))
    });
    run(
        "run the conformance suite against Sluice on the test bed",
        {
            let mut c = cargo();
            c.args([
                "run",
                "--quiet",
                "-p",
                "sluice-tests",
                "--bin",
                "sluice-conformance",
                "--",
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
            let log = crate::target_dir().join("conformance/suite.log");
            c.arg(&report).arg("--log").arg(log).args(args);
            c
        },
    )
}
