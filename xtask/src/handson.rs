//! The hands-on, step by step, on the sandbox cluster: what each step
//! applies (the files of `examples/handson/`) and what it measured.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::kubectl;

const APP_HOST: &str = "app.example.com";
const ROLLOUT_HOST: &str = "rollout.example.com";
/// The gateway's NodePort (the chart's default, as in the hands-on).
const GATEWAY_NODE_PORT: u16 = 32080;
const NS: &str = "handson";

/// Fails unless `key` got `percent`% ± 5 of `total` answers: the demo
/// checks what it shows.
fn share_within(
    counts: &BTreeMap<String, usize>,
    key: &str,
    total: usize,
    percent: usize,
) -> Result<()> {
    let got = counts.get(key).copied().unwrap_or(0) * 100;
    let (lo, hi) = (percent.saturating_sub(5) * total, (percent + 5) * total);
    if got < lo || got > hi {
        bail!("expected {percent}% ± 5 {key} of {total} answers, got {counts:?}");
    }
    Ok(())
}

/// The sandbox and where the hands-on's files are.
pub struct Demo<'a> {
    /// The sandbox state directory (kubeconfig).
    pub dir: &'a Path,
    /// `examples/handson/`.
    pub files: &'a Path,
    /// The node's address: the gateway answers on its NodePort there.
    pub node: String,
}

impl Demo<'_> {
    /// Runs step `n` (1 to 5).
    pub fn step(&self, n: u32) -> Result<()> {
        match n {
            1 => self.ingress(),
            2 => self.weighted(),
            3 => self.l4(),
            4 => self.l7(),
            5 => self.rollout(),
            _ => bail!("there is no step {n}: steps are 1 to 5"),
        }
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        kubectl(self.dir, args)
    }

    fn apply(&self, file: &str) -> Result<()> {
        eprintln!("    kubectl apply -f examples/handson/{file}");
        let path = self.files.join(file).display().to_string();
        self.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &path])?;
        Ok(())
    }

    fn delete(&self, file: &str) -> Result<()> {
        eprintln!("    kubectl delete -f examples/handson/{file}");
        let path = self.files.join(file).display().to_string();
        self.kubectl(&["delete", "-f", &path])?;
        Ok(())
    }

    /// `n` requests for `host` through the gateway, in one curl run;
    /// counted by answer (`blue`, `yellow`, `500`...).
    fn sample(&self, host: &str, n: usize) -> Result<BTreeMap<String, usize>> {
        let url = format!("http://{}:{GATEWAY_NODE_PORT}/", self.node);
        let mut cmd = Command::new("curl");
        // `-w` must not start with `@` (that reads the format from a file).
        cmd.args(["-sS", "--noproxy", "*", "--max-time", "20"])
            .args(["-H", &format!("Host: {host}")])
            .args(["-w", "~~%{http_code}\\n"]);
        for _ in 0..n {
            cmd.arg(&url);
        }
        let out = cmd.output().context("running curl")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut counts = BTreeMap::new();
        let mut body = String::new();
        for line in text.lines() {
            match line.split_once("~~") {
                Some((rest, code)) => {
                    body.push_str(rest);
                    let key = if code == "200" {
                        body.trim().to_owned()
                    } else {
                        code.to_owned()
                    };
                    *counts.entry(key).or_insert(0) += 1;
                    body.clear();
                }
                None => body.push_str(line),
            }
        }
        Ok(counts)
    }

    /// Polls `sample` until `want` answers every one of 20 requests.
    fn until_all(&self, host: &str, want: &str) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let counts = self.sample(host, 20)?;
            if counts.get(want) == Some(&20) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("{host} did not answer {want} within 60 s (last: {counts:?})");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ingress(&self) -> Result<()> {
        eprintln!("\n==> step 1: ingress — Gateway + HTTPRoute, {APP_HOST} answers blue");
        for f in [
            "00-namespace.yaml",
            "10-handson-blue.yaml",
            "20-gateway.yaml",
            "30-route-blue.yaml",
        ] {
            self.apply(f)?;
        }
        self.kubectl(&[
            "wait",
            "-n",
            NS,
            "--for=condition=Available",
            "deployment/handson-blue",
            "--timeout=120s",
        ])?;
        let took = self.until_all(APP_HOST, "blue")?;
        eprintln!(
            "    curl -H 'Host: {APP_HOST}' http://{}:{GATEWAY_NODE_PORT}/ -> blue (route live {took:.1?} after the wait)",
            self.node
        );
        let other = self.sample("other.example.com", 1)?;
        eprintln!("    curl -H 'Host: other.example.com' ... -> {other:?}");
        print!("{}", self.kubectl(&["get", "gateway,httproute", "-n", NS])?);
        Ok(())
    }

    fn weighted(&self) -> Result<()> {
        eprintln!("\n==> step 2: weighted routing — 50/50 between blue and yellow, then 0/100");
        self.apply("40-handson-yellow.yaml")?;
        self.kubectl(&[
            "wait",
            "-n",
            NS,
            "--for=condition=Available",
            "deployment/handson-yellow",
            "--timeout=120s",
        ])?;
        self.apply("41-route-weighted.yaml")?;
        // The split settles within milliseconds; sample once it shows both.
        let start = Instant::now();
        while self.sample(APP_HOST, 20)?.len() < 2 {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("the 50/50 route did not take effect within 60 s");
            }
        }
        let counts = self.sample(APP_HOST, 1000)?;
        eprintln!("    1,000 requests: {counts:?}");
        share_within(&counts, "yellow", 1000, 50)?;
        eprintln!(
            "    kubectl patch -n {NS} httproute handson --type merge --patch-file examples/handson/42-route-all-yellow.patch.yaml"
        );
        let patch = self
            .files
            .join("42-route-all-yellow.patch.yaml")
            .display()
            .to_string();
        self.kubectl(&[
            "patch",
            "-n",
            NS,
            "httproute",
            "handson",
            "--type",
            "merge",
            "--patch-file",
            &patch,
        ])?;
        let took = self.until_all(APP_HOST, "yellow")?;
        let counts = self.sample(APP_HOST, 200)?;
        eprintln!("    all yellow {took:.1?} after the patch; 200 requests: {counts:?}");
        if counts.get("yellow") != Some(&200) {
            bail!("after the 0/100 patch: {counts:?}");
        }
        Ok(())
    }

    /// An unmodified `curl -X METHOD handson:8080{path}` run with `kubectl
    /// exec` in `pod` (its sidecar intercepts it): (status, body); status
    /// `000` when the connection closed without an answer.
    fn curl(&self, pod: &str, method: &str, path: &str) -> Result<(String, String)> {
        let url = format!("handson:8080{path}");
        let out = crate::kubectl_output(
            self.dir,
            &[
                "exec",
                "-n",
                NS,
                pod,
                "--",
                "curl",
                "-s",
                "-m",
                "3",
                "-X",
                method,
                "-w",
                "\n%{http_code}",
                &url,
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        Ok((code.trim().to_owned(), body.to_owned()))
    }

    /// The command a reader pastes for [`Demo::curl`].
    fn curl_command(pod: &str, method: &str, path: &str) -> String {
        let method = if method == "GET" {
            String::new()
        } else {
            format!("-X {method} ")
        };
        format!(
            "kubectl exec -n {NS} {pod} -- curl -s -w '\\n%{{http_code}}\\n' {method}handson:8080{path}"
        )
    }

    /// Polls `curl` until `pod` gets `want`; returns how long it took.
    fn until_status(&self, pod: &str, method: &str, want: &str) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let (code, _) = self.curl(pod, method, "/")?;
            if code == want {
                return Ok(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("{pod} {method}: expected {want} within 60 s, last {code}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The three clients, injected, each with a certificate.
    fn clients(&self) -> Result<()> {
        self.apply("50-clients.yaml")?;
        self.kubectl(&[
            "wait",
            "-n",
            NS,
            "--for=condition=Ready",
            "pod/curl",
            "pod/curl-allow",
            "pod/curl-deny",
            "--timeout=120s",
        ])?;
        print!(
            "{}",
            self.kubectl(&[
                "get", "pods", "-n", NS, "-o",
                "custom-columns=POD:.metadata.name,SERVICEACCOUNT:.spec.serviceAccountName,INIT:.spec.initContainers[*].name,CONTAINERS:.spec.containers[*].name",
            ])?
        );
        for pod in ["curl", "curl-allow", "curl-deny"] {
            self.until_status(pod, "GET", "200")?;
        }
        Ok(())
    }

    fn l4(&self) -> Result<()> {
        eprintln!(
            "\n==> step 3: L4 authorization — curl-deny's identity denied on port 8080 (403, as Istio answers on HTTP ports), curl-allow served"
        );
        self.clients()?;
        let show = |pod: &str| -> Result<String> {
            let (code, body) = self.curl(pod, "GET", "/")?;
            let said = if code == "000" {
                "(connection closed, no HTTP status)"
            } else {
                body.trim()
            };
            eprintln!(
                "    {} -> {code} {said}",
                Self::curl_command(pod, "GET", "/")
            );
            Ok(code)
        };
        show("curl-allow")?;
        show("curl-deny")?;
        let start = Instant::now();
        self.apply("51-deny-curl-deny.yaml")?;
        let took = self.until_status("curl-deny", "GET", "403")?;
        eprintln!(
            "    curl-deny denied {took:.1?} after the apply (from the apply: {:.1?})",
            start.elapsed()
        );
        let allow = show("curl-allow")?;
        let (deny, body) = self.curl("curl-deny", "GET", "/")?;
        eprintln!(
            "    {} -> {deny} {}",
            Self::curl_command("curl-deny", "GET", "/"),
            body.trim()
        );
        if allow != "200" || deny != "403" || body.trim() != "RBAC: access denied" {
            bail!("under the DENY policy: curl-allow {allow}, curl-deny {deny} {body:?}");
        }
        self.delete("51-deny-curl-deny.yaml")?;
        self.until_status("curl-deny", "GET", "200")?;
        Ok(())
    }

    fn l7(&self) -> Result<()> {
        eprintln!("\n==> step 4: L7 authorization — only GET from curl; POST and DELETE get 403");
        self.clients()?;
        self.apply("52-allow-get-only.yaml")?;
        let took = self.until_status("curl", "POST", "403")?;
        eprintln!("    in effect {took:.1?} after the apply");
        let mut seen = Vec::new();
        for (method, path) in [("GET", "/"), ("POST", "/"), ("DELETE", "/id/123")] {
            let (code, body) = self.curl("curl", method, path)?;
            eprintln!(
                "    {} -> {code} {}",
                Self::curl_command("curl", method, path),
                body.trim()
            );
            seen.push((code, body));
        }
        let ok = seen[0].0 == "200"
            && seen[1..]
                .iter()
                .all(|(c, b)| c == "403" && b == "RBAC: access denied");
        if !ok {
            bail!("under the GET-only policy: {seen:?}");
        }
        self.delete("52-allow-get-only.yaml")?;
        self.until_status("curl", "POST", "200")?;
        Ok(())
    }

    fn set_image(&self, colour: &str, error_rate: &str) -> Result<()> {
        let patch = format!(
            r#"[{{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"sluice/demo-app:{colour}"}},{{"op":"add","path":"/spec/template/spec/containers/0/env","value":[{{"name":"ERROR_RATE","value":"{error_rate}"}}]}}]"#
        );
        eprintln!(
            "    kubectl patch rollout rollout-demo: image sluice/demo-app:{colour}, ERROR_RATE={error_rate}"
        );
        self.kubectl(&[
            "patch",
            "-n",
            NS,
            "rollout",
            "rollout-demo",
            "--type",
            "json",
            "-p",
            &patch,
        ])?;
        Ok(())
    }

    fn show_rollout(&self) -> Result<()> {
        print!(
            "{}",
            self.kubectl(&["get", "rollout", "-n", NS, "rollout-demo"])?
        );
        print!(
            "{}",
            self.kubectl(&[
                "get", "rollout", "-n", NS, "rollout-demo", "-o",
                "jsonpath={range .status.conditions[*]}    {.type}={.status} {.reason}: {.message}{\"\\n\"}{end}",
            ])?
        );
        Ok(())
    }

    fn rollout(&self) -> Result<()> {
        eprintln!(
            "\n==> step 5: a Rollout — a good version promoted step by step, a bad one rolled back on its own"
        );
        // A fresh start, so that running the demo twice gives the same story.
        self.kubectl(&[
            "delete",
            "-n",
            NS,
            "rollout",
            "rollout-demo",
            "--ignore-not-found",
            "--wait",
        ])?;
        self.apply("60-rollout.yaml")?;
        self.kubectl(&[
            "wait",
            "-n",
            NS,
            "rollout/rollout-demo",
            "--for=condition=Healthy",
            "--timeout=120s",
        ])?;
        self.until_all(ROLLOUT_HOST, "blue")?;
        self.show_rollout()?;

        eprintln!("\n    a good version: yellow");
        self.set_image("yellow", "0")?;
        for w in ["20", "50"] {
            self.kubectl(&[
                "wait",
                "-n",
                NS,
                "rollout/rollout-demo",
                &format!("--for=jsonpath={{.status.weights.canary}}={w}"),
                "--timeout=120s",
            ])?;
            // Enough requests for ±5% at three standard deviations, within
            // the 5 s pause of the 20% step.
            let n = if w == "20" { 600 } else { 1000 };
            let counts = self.sample(ROLLOUT_HOST, n)?;
            eprintln!("    canary weight {w}%: {n} requests {counts:?}");
            share_within(&counts, "yellow", n, w.parse()?)?;
        }
        self.kubectl(&[
            "wait",
            "-n",
            NS,
            "rollout/rollout-demo",
            "--for=condition=Paused",
            "--timeout=60s",
        ])?;
        self.show_rollout()?;
        eprintln!("    kubectl sluice promote rollout-demo");
        print!(
            "{}",
            self.kubectl(&["sluice", "-n", NS, "promote", "rollout-demo"])?
        );
        print!(
            "{}",
            self.kubectl(&[
                "sluice",
                "-n",
                NS,
                "status",
                "rollout-demo",
                "--timeout",
                "120"
            ])?
        );
        self.until_all(ROLLOUT_HOST, "yellow")?;
        self.show_rollout()?;

        eprintln!(
            "\n    a bad version: red, answering 50% of requests with 500, under steady traffic"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let stop = stop.clone();
            let node = self.node.clone();
            let files = self.files.to_owned();
            let dir = self.dir.to_owned();
            std::thread::spawn(move || {
                let demo = Demo {
                    dir: &dir,
                    files: &files,
                    node,
                };
                let mut total: BTreeMap<String, usize> = BTreeMap::new();
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Ok(c) = demo.sample(ROLLOUT_HOST, 50) {
                        for (k, v) in c {
                            *total.entry(k).or_insert(0) += v;
                        }
                    }
                }
                total
            })
        };
        let start = Instant::now();
        self.set_image("red", "0.5")?;
        let waited = self.kubectl(&[
            "wait",
            "-n",
            NS,
            "rollout/rollout-demo",
            "--for=condition=RolledBack",
            "--timeout=120s",
        ]);
        let took = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        let total = load.join().unwrap_or_default();
        waited?;
        eprintln!("    rolled back {took:.1?} after the change; traffic meanwhile: {total:?}");
        self.until_all(ROLLOUT_HOST, "yellow")?;
        self.show_rollout()?;
        print!(
            "{}",
            self.kubectl(&[
                "get",
                "events",
                "-n",
                NS,
                "--field-selector",
                "involvedObject.name=rollout-demo,reason=AnalysisFailed",
            ])?
        );
        Ok(())
    }
}
