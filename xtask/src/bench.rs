//! `cargo xtask bench proxy`: sluice-proxy side by side with a direct
//! connection, nginx and HAProxy (Debian's) and Pingora (a minimal
//! one-upstream proxy in `bench/pingora-peer`), in one run on this machine.
//!
//! Every proxy runs with one worker thread pinned to CPU 0; the backend (an
//! nginx answering `200 ok`) and the load generators are pinned to CPU 1, so
//! each proxy gets the same single core. Peak throughput comes from `wrk`
//! (closed loop); latency at a fixed 2,000 requests/s from `sluice-bench
//! rate` (open loop); CPU per request from the proxy's threads' CPU time
//! over each of those runs; memory from `/proc` idle and with 1,000 open
//! keep-alive connections held by `sluice-bench hold`. The single proxies
//! run side by side and take turns (in an order reversed every other
//! round), [`ROUNDS`] rounds of the peak and [`FIXED_ROUNDS`] of the fixed
//! rate; every figure is the median of its rounds, and every comparison
//! of two proxies the median of their round-by-round ratios or
//! differences, with an interval for it that says whether a target is met,
//! missed or within the noise ([`paired`]).
//!
//! The TLS rows are nginx and sluice-proxy, each another process of one
//! worker on CPU 0, terminating TLS (the gateway certificate from
//! `sluice-bench certs`, HTTP/1.1) in front of the same plaintext backend.
//!
//! The mesh rows chain two sluice proxies (a client sidecar and a server
//! sidecar, both on CPU 0) in front of the same backend: plaintext between
//! them, mTLS between them (certificates from `sluice-bench certs`), and
//! mTLS with a 100-rule ALLOW policy on the server side whose last rule is
//! the one that matches.
//!
//! The "PGO" row is sluice-proxy built with a profile of the benchmark's
//! own loads ([`pgo`]), beside the plain release build's row.
//!
//! Last, [`instructions`] counts each single proxy's user-space
//! instructions per request under callgrind: a figure without the
//! machine's noise, for the part of the CPU per request that is the
//! proxy's own.

mod instructions;
mod paired;
mod pgo;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, root, run};
use paired::{Paired, median, ratio};

const BACKEND_PORT: u16 = 19_001;
/// Seconds of each peak-throughput round.
const PEAK_SECONDS: u32 = 4;
const FIXED_RPS: u32 = 2_000;

struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    /// Sends `signal` (`-TERM`, `-INT`) and waits up to `within` for the
    /// process to exit; whether it did.
    fn stop(&mut self, signal: &str, within: Duration) -> bool {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Already stopped (and reaped): its pid may be another process's.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if !self.stop("-TERM", Duration::from_secs(5)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn pinned(cpu: &str, program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", cpu, program]);
    c
}

fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Proc> {
    let log = std::fs::File::create(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Proc { name, child })
}

/// Waits until `port` answers an HTTP request with 200.
fn wait_http(port: u16, proc: &mut Proc) -> Result<()> {
    wait_url(&format!("http://127.0.0.1:{port}/"), proc)
}

/// Waits until `url` answers 200 (over TLS without checking the
/// certificate: `sluice-bench` checks it).
fn wait_url(url: &str, proc: &mut Proc) -> Result<()> {
    wait_url_within(url, proc, Duration::from_secs(15))
}

/// [`wait_url`], for up to `within`.
fn wait_url_within(url: &str, proc: &mut Proc, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let ok = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", url])
            .output()
            .map(|o| o.stdout == b"200")
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            bail!("{} exited ({status}) before serving", proc.name);
        }
        if Instant::now() > deadline {
            bail!("{} did not serve {url} within {within:?}", proc.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `pid` and its descendants (nginx's master and worker, say).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        all.push(p);
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(children) = std::fs::read_to_string(t.path().join("children")) {
                    stack.extend(
                        children
                            .split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
            }
        }
    }
    all
}

/// Resident memory of `pid` and its descendants, in KiB.
fn rss_kib(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// CPU time spent so far by every thread of `pids` and their descendants,
/// in nanoseconds (`schedstat`, not the 10 ms ticks of `stat`: a 10 s run
/// at 2,000 req/s costs a proxy a few hundred milliseconds).
fn cpu_ns(pids: &[u32]) -> u64 {
    pids.iter()
        .flat_map(|&pid| process_tree(pid))
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/task")).ok())
        .flat_map(|tasks| tasks.flatten())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Runs `load` and returns what it measured, with the CPU microseconds
/// `pids` spent per request it served (`requests` reads the count).
fn with_cpu_per_request<T>(
    pids: &[u32],
    load: impl FnOnce() -> Result<T>,
    requests: impl Fn(&T) -> u64,
) -> Result<(T, f64)> {
    let before = cpu_ns(pids);
    let measured = load()?;
    let ns = cpu_ns(pids).saturating_sub(before);
    let n = requests(&measured);
    let per_request = if n == 0 {
        0.0
    } else {
        ns as f64 / 1000.0 / n as f64
    };
    Ok((measured, per_request))
}

/// One contender's figures: its rounds' (every comparison pairs them
/// round by round; the table shows their medians) and its memory.
#[derive(Debug, Default, Clone)]
struct Row {
    name: &'static str,
    errors: u64,
    rss_idle_kib: u64,
    rss_conns_kib: u64,
    /// The proxy's CPU per request at the fixed rate, in µs, by round.
    cpu_fixed_rounds: Vec<f64>,
    /// The proxy's CPU per request at peak throughput, in µs, by round.
    cpu_peak_rounds: Vec<f64>,
    /// Peak requests per second, by round.
    peak_rounds: Vec<f64>,
    /// p50 and p99 at the fixed rate, in µs, by round.
    p50_rounds: Vec<f64>,
    p99_rounds: Vec<f64>,
}

impl Row {
    /// Whether it was measured at all (a row that is not is left out of
    /// the comparisons).
    fn measured(&self) -> bool {
        !self.peak_rounds.is_empty()
    }

    fn peak_rps(&self) -> f64 {
        median(self.peak_rounds.clone())
    }

    fn cpu_fixed_us(&self) -> f64 {
        median(self.cpu_fixed_rounds.clone())
    }

    fn cpu_peak_us(&self) -> f64 {
        median(self.cpu_peak_rounds.clone())
    }

    fn p50_us(&self) -> u64 {
        median(self.p50_rounds.clone()) as u64
    }

    fn p99_us(&self) -> u64 {
        median(self.p99_rounds.clone()) as u64
    }
}

/// What one `wrk` run measured.
struct Peak {
    rps: f64,
    requests: u64,
}

fn wrk_peak(url: &str, seconds: u32) -> Result<Peak> {
    let out = pinned("1", "wrk")
        .args(["-t1", "-c50", &format!("-d{seconds}s"), url])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    // "  1234567 requests in 10.00s, 180.00MB read"
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse::<u64>().ok())
        .with_context(|| format!("no request count in wrk output:\n{text}"))?;
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk saw errors against {url}:\n{text}");
    }
    Ok(Peak { rps, requests })
}

/// What one `sluice-bench rate` run measured.
struct Fixed {
    p50_us: u64,
    p99_us: u64,
    errors: u64,
    /// Requests answered, warm-up included.
    answered: u64,
}

/// Seconds of each fixed-rate round (after its own 1 s warm-up).
const FIXED_SECONDS: u64 = 5;

fn fixed_rate(bench: &Path, target: &[String]) -> Result<Fixed> {
    rate(bench, target, FIXED_RPS, FIXED_SECONDS)
}

/// `sluice-bench rate` at `rps` for `seconds` (after its 1 s warm-up).
fn rate(bench: &Path, target: &[String], rps: u32, seconds: u64) -> Result<Fixed> {
    let out = pinned("1", &bench.display().to_string())
        .arg("rate")
        .args(target)
        .args(["--rps", &rps.to_string(), "--seconds", &seconds.to_string()])
        .output()
        .context("running sluice-bench rate")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| -> u64 {
        text.split(&format!("\"{k}\":"))
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    if field("requests") == 0 {
        bail!(
            "sluice-bench rate failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Fixed {
        p50_us: field("p50_us"),
        p99_us: field("p99_us"),
        errors: field("errors"),
        answered: field("answered"),
    })
}

fn hold_and_measure(bench: &Path, target: &[String], pid: u32) -> Result<u64> {
    let mut holder = pinned("1", &bench.display().to_string())
        .arg("hold")
        .args(target)
        .args(["--connections", "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running sluice-bench hold")?;
    let mut line = String::new();
    if let Some(out) = holder.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    let rss = if line.starts_with("ready 1000") {
        Ok(rss_kib(pid))
    } else {
        Err(anyhow::anyhow!("holder said {line:?}"))
    };
    drop(holder.stdin.take());
    let _ = holder.wait();
    rss
}

/// A proxy being measured: where it listens, whose CPU counts (the server
/// sidecar of a mesh row too) and whose memory is reported.
struct Contender {
    name: &'static str,
    port: u16,
    /// Over TLS, trusting these roots (HTTP/1.1 either way).
    tls_roots: Option<PathBuf>,
    pid: Option<u32>,
    cpu_pids: Vec<u32>,
    rss_idle_kib: u64,
}

impl Contender {
    /// Waits until `proc` serves on `port`, reads its idle memory and warms
    /// it up.
    fn ready(
        name: &'static str,
        port: u16,
        proc: Option<&mut Proc>,
        also: Option<&Proc>,
    ) -> Result<Contender> {
        Contender::ready_over(name, port, None, proc, also)
    }

    /// [`Contender::ready`] over TLS when `tls_roots` is given (the
    /// gateway certificate of `sluice-bench certs`, whose roots they are).
    fn ready_over(
        name: &'static str,
        port: u16,
        tls_roots: Option<PathBuf>,
        proc: Option<&mut Proc>,
        also: Option<&Proc>,
    ) -> Result<Contender> {
        let mut c = Contender {
            name,
            port,
            tls_roots,
            pid: proc.as_ref().map(|p| p.child.id()),
            cpu_pids: Vec::new(),
            rss_idle_kib: 0,
        };
        if let Some(p) = proc {
            wait_url(&c.url(), p)?;
        }
        c.cpu_pids = c
            .pid
            .into_iter()
            .chain(also.map(|p| p.child.id()))
            .collect();
        c.rss_idle_kib = c.pid.map(rss_kib).unwrap_or(0);
        eprintln!("    {name}: warming up");
        wrk_peak(&c.url(), 2)?;
        Ok(c)
    }

    /// What `wrk` is pointed at.
    fn url(&self) -> String {
        let scheme = if self.tls_roots.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// Where `sluice-bench rate` and `hold` connect, as their flags.
    fn bench_target(&self) -> Vec<String> {
        let mut args = vec!["--addr".to_owned(), format!("127.0.0.1:{}", self.port)];
        if let Some(roots) = &self.tls_roots {
            args.push("--tls-roots".to_owned());
            args.push(roots.display().to_string());
        }
        args
    }
}

/// Rounds of each load per contender. The contenders take turns round by
/// round, so that the shared machine's drift over the minutes of a run
/// falls on all of them alike, and the median of the rounds leaves out a
/// burst of noise that lands on one.
const ROUNDS: usize = 5;

/// Rounds of the fixed rate for the single proxies: more than of the
/// peak, since a fixed-rate round is cheap (6 s) and its CPU per request
/// and p99 are the noisiest figures, and the comparisons' interval narrows
/// with the rounds ([`paired`]).
const FIXED_ROUNDS: usize = 15;

/// What one round measured of one contender: peak throughput and the
/// CPU per request at it (in the first [`ROUNDS`] rounds), then the fixed
/// rate and the CPU per request at it.
struct Round {
    /// Requests per second and CPU µs per request.
    peak: Option<(f64, f64)>,
    fixed: Fixed,
    cpu_fixed_us: f64,
}

/// Round `round` on `c`: the peak load if `with_peak`, then the fixed rate.
fn one_round(c: &Contender, bench: &Path, round: usize, with_peak: bool) -> Result<Round> {
    let peak = if with_peak {
        eprintln!("    {}: round {round}: peak ({PEAK_SECONDS} s)", c.name);
        let (peak, cpu_us) = with_cpu_per_request(
            &c.cpu_pids,
            || wrk_peak(&c.url(), PEAK_SECONDS),
            |p| p.requests,
        )?;
        Some((peak.rps, cpu_us))
    } else {
        None
    };
    eprintln!(
        "    {}: round {round}: {FIXED_RPS} rps ({FIXED_SECONDS} s)",
        c.name
    );
    let target = c.bench_target();
    let (fixed, cpu_fixed_us) =
        with_cpu_per_request(&c.cpu_pids, || fixed_rate(bench, &target), |f| f.answered)?;
    Ok(Round {
        peak,
        fixed,
        cpu_fixed_us,
    })
}

/// `c`'s row: its rounds, and its memory with 1,000 open
/// connections (measured now, after the rounds).
fn row(c: &Contender, rounds: &[Round], bench: &Path) -> Result<Row> {
    let rss_conns_kib = match c.pid {
        Some(pid) => {
            eprintln!("    {}: memory with 1,000 open connections", c.name);
            hold_and_measure(bench, &c.bench_target(), pid)?
        }
        None => 0,
    };
    let by_round = |f: fn(&Round) -> f64| rounds.iter().map(f).collect();
    let peaks = || rounds.iter().filter_map(|r| r.peak);
    Ok(Row {
        name: c.name,
        errors: rounds.iter().map(|r| r.fixed.errors).sum(),
        cpu_fixed_rounds: by_round(|r| r.cpu_fixed_us),
        cpu_peak_rounds: peaks().map(|(_, cpu)| cpu).collect(),
        peak_rounds: peaks().map(|(rps, _)| rps).collect(),
        p50_rounds: by_round(|r| r.fixed.p50_us as f64),
        p99_rounds: by_round(|r| r.fixed.p99_us as f64),
        rss_idle_kib: c.rss_idle_kib,
        rss_conns_kib,
    })
}

/// The order `n` contenders take their turns in round `round` (from 1):
/// as listed in odd rounds, reversed in even ones, so that none always
/// runs right after the same one (and so always finds the machine as that
/// one left it).
fn turn_order(n: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if round.is_multiple_of(2) {
        order.reverse();
    }
    order
}

/// Measures `contenders` side by side: they take turns ([`turn_order`]),
/// each running the peak load in the first [`ROUNDS`] rounds and the fixed
/// rate in each of [`FIXED_ROUNDS`]; then memory with 1,000 open
/// connections, one after the other.
fn measure(contenders: &[Contender], bench: &Path) -> Result<Vec<Row>> {
    let mut rounds: Vec<Vec<Round>> = contenders.iter().map(|_| Vec::new()).collect();
    for round in 1..=FIXED_ROUNDS {
        for i in turn_order(contenders.len(), round) {
            rounds[i].push(one_round(&contenders[i], bench, round, round <= ROUNDS)?);
        }
    }
    contenders
        .iter()
        .zip(&rounds)
        .map(|(c, rounds)| row(c, rounds, bench))
        .collect()
}

/// The mesh rows: a client sidecar and a server sidecar on CPU 0, the
/// server without a policy (plaintext and mTLS rows) or with the 100-rule
/// policy. Each row of each round starts its own server sidecar and stops
/// it after: the servers take the workload's inbound port, so they cannot
/// run side by side, and a row measured on a server that another row had
/// already run on would not be measured alike.
fn measure_mesh(proxy_bin: &Path, dir: &Path, bench: &Path) -> Result<Vec<Row>> {
    let mut client = sluice(proxy_bin, dir, "sluice-client.yaml", Some("client"))?;
    let mut rounds: Vec<Vec<Round>> = MESH.iter().map(|_| Vec::new()).collect();
    let mut rows = Vec::new();
    for round in 1..=ROUNDS {
        for (&(name, config, port), rounds) in MESH.iter().zip(&mut rounds) {
            let mut server = sluice(proxy_bin, dir, config, Some("server"))?;
            wait_http(PORTS.server_plain, &mut server)?;
            let c = Contender::ready(name, port, Some(&mut client), Some(&server))?;
            rounds.push(one_round(&c, bench, round, true)?);
            if round == ROUNDS {
                rows.push(row(&c, rounds, bench)?);
            }
        }
    }
    Ok(rows)
}

fn write_configs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("nginx-tmp"))?;
    let nginx_common = "worker_processes 1;\nworker_rlimit_nofile 8192;\ndaemon off;\nmaster_process on;\nerror_log stderr warn;\nevents { worker_connections 8192; }\n";
    let temp = format!(
        "client_body_temp_path {d}/nginx-tmp/body; proxy_temp_path {d}/nginx-tmp/proxy; fastcgi_temp_path {d}/nginx-tmp/fcgi; uwsgi_temp_path {d}/nginx-tmp/uwsgi; scgi_temp_path {d}/nginx-tmp/scgi;",
        d = dir.display()
    );
    std::fs::write(
        dir.join("backend.conf"),
        format!(
            "{nginx_common}pid {d}/backend.pid;\nhttp {{ access_log off; {temp} keepalive_requests 10000000;\n  server {{ listen 127.0.0.1:{BACKEND_PORT} reuseport; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            d = dir.display()
        ),
    )?;
    // One proxy config for both nginx rows: the TLS row only listens with
    // `ssl` and the gateway certificate.
    let nginx_proxy = |name: &str, port: u16, listen: &str| {
        std::fs::write(
            dir.join(format!("{name}.conf")),
            format!(
                "{nginx_common}pid {d}/{name}.pid;\nhttp {{ access_log off; {temp} keepalive_requests 10000000;\n  upstream be {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 256; keepalive_requests 10000000; }}\n  server {{ listen 127.0.0.1:{port}{listen}; location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
                d = dir.display(),
            ),
        )
    };
    nginx_proxy("nginx", PORTS.nginx, "")?;
    // The instruction count's nginx: the same worker, without its master
    // process (callgrind follows the one process it starts).
    let worker_only = std::fs::read_to_string(dir.join("nginx.conf"))?
        .replace("master_process on;", "master_process off;")
        .replace("/nginx.pid;", "/nginx-callgrind.pid;");
    std::fs::write(dir.join("nginx-callgrind.conf"), worker_only)?;
    nginx_proxy(
        "nginx-tls",
        PORTS.nginx_tls,
        &format!(
            " ssl; ssl_certificate {d}/certs/gateway.crt; ssl_certificate_key {d}/certs/gateway.key",
            d = dir.display()
        ),
    )?;
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!(
            "global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n  option http-keep-alive\nfrontend fe\n  bind 127.0.0.1:{}\n  default_backend be\nbackend be\n  server s1 127.0.0.1:{BACKEND_PORT}\n",
            PORTS.haproxy
        ),
    )?;
    // Likewise for both sluice-proxy rows: the TLS row's listener only
    // adds its certificate.
    let sluice_proxy = |file: &str, listener: &str, port: u16, listener_extra: &str| {
        std::fs::write(
            dir.join(file),
            format!(
                "backends:\n  - name: backend\n    endpoints: [\"127.0.0.1:{BACKEND_PORT}\"]\n    protocol: http1\nlisteners:\n  - name: {listener}\n    address: 127.0.0.1:{port}\n    routes:\n      - name: all\n        backends: [{{name: backend}}]\n{listener_extra}",
            ),
        )
    };
    sluice_proxy("sluice.yaml", "bench", PORTS.sluice, "")?;
    sluice_proxy("sluice-pgo.yaml", "bench", PORTS.sluice_pgo, "")?;
    sluice_proxy(
        "sluice-tls.yaml",
        "bench-tls",
        PORTS.sluice_tls,
        &format!(
            "    tls:\n      certificates:\n        - hostnames: []\n          chain_pem: \"{}\"\n          key_pem: \"{}\"\n",
            pem_in_yaml(&dir.join("certs/gateway.crt"))?,
            pem_in_yaml(&dir.join("certs/gateway.key"))?,
        ),
    )?;
    Ok(())
}

/// The PEM file at `path` as the inside of a YAML double-quoted string:
/// PEM is base64, dashes and newlines.
fn pem_in_yaml(path: &Path) -> Result<String> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(pem.replace('\n', "\\n"))
}

struct Ports {
    nginx: u16,
    haproxy: u16,
    pingora: u16,
    sluice: u16,
    /// The TLS rows' nginx and sluice-proxy.
    nginx_tls: u16,
    sluice_tls: u16,
    /// Client sidecar → server sidecar's plain listener.
    chain_plain: u16,
    /// The server sidecar's plain listener.
    server_plain: u16,
    /// Client sidecar → server sidecar's inbound port, mTLS.
    chain_mtls: u16,
    /// The profile-guided build's row.
    sluice_pgo: u16,
}
const PORTS: Ports = Ports {
    nginx: 19_101,
    haproxy: 19_102,
    pingora: 19_107,
    sluice: 19_103,
    nginx_tls: 19_108,
    sluice_tls: 19_109,
    chain_plain: 19_104,
    server_plain: 19_105,
    chain_mtls: 19_106,
    sluice_pgo: 19_110,
};

/// The two sidecars' configs: the client's, and the server's without and
/// with the 100-rule policy.
fn write_mesh_configs(dir: &Path) -> Result<()> {
    let mesh_tls = format!(
        "mesh_tls:\n  trust_domain: bench.local\n  roots_pem: [\"{}\"]\n",
        pem_in_yaml(&dir.join("certs/roots.pem"))?
    );
    std::fs::write(
        dir.join("sluice-client.yaml"),
        format!(
            "backends:\n  - name: server-plain\n    endpoints: [\"127.0.0.1:{sp}\"]\n    protocol: http1\n  - name: server-mtls\n    endpoints: [\"127.0.0.1:{BACKEND_PORT}\"]\n    protocol: http1\n    mesh: {{\"127.0.0.1:{BACKEND_PORT}\": \"spiffe://bench.local/ns/bench/sa/server\"}}\nlisteners:\n  - name: plain\n    address: 127.0.0.1:{cp}\n    routes: [{{name: all, backends: [{{name: server-plain}}]}}]\n  - name: mtls\n    address: 127.0.0.1:{cm}\n    routes: [{{name: all, backends: [{{name: server-mtls}}]}}]\n{mesh_tls}",
            sp = PORTS.server_plain,
            cp = PORTS.chain_plain,
            cm = PORTS.chain_mtls,
        ),
    )?;
    let server = |policies: &str| {
        format!(
            "backends:\n  - name: backend\n    endpoints: [\"127.0.0.1:{BACKEND_PORT}\"]\n    protocol: http1\nlisteners:\n  - name: plain\n    address: 127.0.0.1:{sp}\n    routes: [{{name: all, backends: [{{name: backend}}]}}]\ninbound:\n  ports: [{{port: {BACKEND_PORT}}}]\n  policies: {policies}\n{mesh_tls}",
            sp = PORTS.server_plain,
        )
    };
    std::fs::write(dir.join("sluice-server.yaml"), server("[]"))?;
    // 99 rules for other callers, then the one that matches.
    let rules: Vec<String> = (0..100)
        .map(|i| {
            let who = if i == 99 {
                "bench.local/ns/bench/sa/client".to_owned()
            } else {
                format!("bench.local/ns/other/sa/client-{i}")
            };
            format!(
                "{{from: [{{source: {{principals: [\"{who}\"]}}}}], to: [{{operation: {{methods: [GET], paths: [\"/*\"]}}}}]}}"
            )
        })
        .collect();
    std::fs::write(
        dir.join("sluice-server-authz.yaml"),
        server(&format!(
            "[{{name: bench/allow-100, action: ALLOW, rules: [{}]}}]",
            rules.join(", ")
        )),
    )?;
    Ok(())
}

fn table(rows: &[Row]) -> String {
    let get = |n: &str| {
        rows.iter()
            .find(|r| r.name == n)
            .cloned()
            .unwrap_or_default()
    };
    let direct = get("direct");
    let mut s = String::new();
    s.push_str("| | peak req/s (1 core) | CPU/req at 2,000 req/s | CPU/req at peak | p50 at 2,000 req/s | p99 at 2,000 req/s | added p50 | added p99 | errors | RSS idle | RSS, 1,000 conns |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        // The direct connection has no proxy to measure or compare.
        let proxied = r.name != "direct";
        let shown = |v: String| if proxied { v } else { "-".to_owned() };
        let added = |v: u64, base: u64| shown(format!("{} µs", v as i64 - base as i64));
        let mem = |k: u64| shown(format!("{:.1} MiB", k as f64 / 1024.0));
        let cpu = |us: f64| shown(format!("{us:.1} µs"));
        s.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} µs | {} µs | {} | {} | {} | {} | {} |\n",
            r.name,
            r.peak_rps(),
            cpu(r.cpu_fixed_us()),
            cpu(r.cpu_peak_us()),
            r.p50_us(),
            r.p99_us(),
            added(r.p50_us(), direct.p50_us()),
            added(r.p99_us(), direct.p99_us()),
            r.errors,
            mem(r.rss_idle_kib),
            mem(r.rss_conns_kib),
        ));
    }
    s.push('\n');
    s.push_str(&ratios(&get("sluice-proxy"), &PEERS.map(get)));
    let pgo = get(PGO_ROW);
    if pgo.measured() {
        s.push_str(&ratios(&pgo, &PEERS.map(get)));
        s.push_str(&against(
            PGO_ROW,
            &pgo,
            "sluice-proxy",
            &get("sluice-proxy"),
        ));
        s.push('\n');
    }
    s.push_str(&ratios(&get(TLS_ROWS[1]), &[get(TLS_ROWS[0])]));
    let (plain, mtls, authz) = (get(MESH_ROWS[0]), get(MESH_ROWS[1]), get(MESH_ROWS[2]));
    if plain.measured() {
        let policy = "two sidecars, mTLS + 100-rule policy";
        for line in [
            against("two sidecars, mTLS", &mtls, "plaintext", &plain),
            against(policy, &authz, "plaintext", &plain),
            against(policy, &authz, "mTLS", &mtls),
        ] {
            s.push_str(&line);
            s.push('\n');
        }
    }
    s
}

/// The proxies sluice-proxy is compared with, in the table's order.
const PEERS: [&str; 3] = ["nginx", "haproxy", "pingora"];

/// The rows that terminate TLS (HTTP/1.1 from the client, plaintext to the
/// backend): nginx and sluice-proxy, each a process of its own, so that
/// TLS leaves the plaintext rows' memory as it was.
const TLS_ROWS: [&str; 2] = ["nginx, TLS", "sluice-proxy, TLS"];

/// `sluice` (sluice-proxy's row) against each peer: CPU per request (the target,
/// ≤ 1.0x) and p99 at the fixed rate (the added p99 against the same
/// direct connection, so ≤ 0 is the target) paired round by round, and
/// memory with 1,000 connections.
fn ratios(sluice: &Row, peers: &[Row]) -> String {
    let mut s = String::new();
    for peer in peers.iter().filter(|p| p.measured()) {
        let p = peer.name;
        let c = Compared::new(sluice, peer);
        let rss = ratio(sluice.rss_conns_kib as f64, peer.rss_conns_kib as f64);
        s.push_str(&format!(
            "{}; RSS with 1,000 conns {rss:.2}x\n",
            c.line(sluice.name, p),
        ));
        s.push_str(&format!(
            "  targets against {p}: CPU/req ≤ 1.0x at {FIXED_RPS} req/s {}, at peak {}; added p99 at {FIXED_RPS} req/s ≤ {p}'s {}; RSS with 1,000 conns ≤ 1.0x {}\n",
            c.cpu_fixed.at_most(1.0),
            c.cpu_peak.at_most(1.0),
            c.p99.at_most(0.0),
            if rss <= 1.0 { "met" } else { "missed" },
        ));
    }
    s
}

/// One row against another, paired round by round: CPU per request at
/// the fixed rate and at peak, throughput, and the difference of p99 at
/// the fixed rate.
struct Compared {
    cpu_fixed: Paired,
    cpu_peak: Paired,
    throughput: Paired,
    p99: Paired,
}

impl Compared {
    fn new(a: &Row, b: &Row) -> Compared {
        Compared {
            cpu_fixed: Paired::ratio(&a.cpu_fixed_rounds, &b.cpu_fixed_rounds),
            cpu_peak: Paired::ratio(&a.cpu_peak_rounds, &b.cpu_peak_rounds),
            throughput: Paired::ratio(&a.peak_rounds, &b.peak_rounds),
            p99: Paired::difference(&a.p99_rounds, &b.p99_rounds),
        }
    }

    /// "`a_name` against `b_name`: …", one line.
    fn line(&self, a_name: &str, b_name: &str) -> String {
        format!(
            "{a_name} against {b_name}: CPU/req at {FIXED_RPS} req/s {}, at peak {}; throughput {}; p99 at {FIXED_RPS} req/s {}",
            self.cpu_fixed.times(),
            self.cpu_peak.times(),
            self.throughput.times(),
            self.p99.micros(),
        )
    }
}

/// `a` against `b` ([`Compared`]), as a line.
fn against(a_name: &str, a: &Row, b_name: &str, b: &Row) -> String {
    Compared::new(a, b).line(a_name, b_name)
}

/// The mesh rows' names: plaintext, mTLS, mTLS with the policy.
const MESH_ROWS: [&str; 3] = [
    "2 sidecars, plaintext",
    "2 sidecars, mTLS",
    "2 sidecars, mTLS + 100-rule policy",
];

/// Each mesh row's name, its server sidecar's config and the client
/// sidecar's port it is reached through.
const MESH: [(&str, &str, u16); 3] = [
    (MESH_ROWS[0], "sluice-server.yaml", PORTS.chain_plain),
    (MESH_ROWS[1], "sluice-server.yaml", PORTS.chain_mtls),
    (MESH_ROWS[2], "sluice-server-authz.yaml", PORTS.chain_mtls),
];

/// The row of the profile-guided build ([`pgo`]).
const PGO_ROW: &str = "sluice-proxy, PGO";

/// nginx pinned to `cpu` with `<dir>/<config>.conf`, logging to
/// `<dir>/<config>.log` (the backend, and the nginx proxy row).
fn nginx(name: &'static str, cpu: &str, dir: &Path, config: &str) -> Result<Proc> {
    let mut c = pinned(cpu, "nginx");
    c.args(nginx_args(dir, config));
    spawn(name, c, &dir.join(format!("{config}.log")))
}

/// nginx's arguments: prefix `dir`, its `config`.conf there.
fn nginx_args(dir: &Path, config: &str) -> [String; 4] {
    [
        "-p".to_owned(),
        dir.display().to_string(),
        "-c".to_owned(),
        dir.join(format!("{config}.conf")).display().to_string(),
    ]
}

/// Starts a sluice proxy on CPU 0 with `config` (and a certificate).
fn sluice(bin: &Path, dir: &Path, config: &str, cert: Option<&str>) -> Result<Proc> {
    let c = sluice_command(bin, dir, config, cert);
    spawn("sluice-proxy", c, &dir.join(format!("{config}.log")))
}

/// The command [`sluice`] starts.
fn sluice_command(bin: &Path, dir: &Path, config: &str, cert: Option<&str>) -> Command {
    let mut c = pinned("0", &bin.display().to_string());
    c.args(sluice_args(dir, config)).env("RUST_LOG", "warn");
    if let Some(name) = cert {
        c.arg("--cert")
            .arg(dir.join(format!("certs/{name}.crt")))
            .arg("--key")
            .arg(dir.join(format!("certs/{name}.key")));
    }
    c
}

/// Builds the Pingora peer (its own lock file, its own target directory in
/// the cache: the project's builds never compile it) and returns its path.
fn build_pingora() -> Result<PathBuf> {
    let target = crate::cache_dir().join("pingora-target");
    run("build the Pingora peer (release)", {
        let mut c = cargo();
        c.args(["build", "--release", "--locked", "--manifest-path"])
            .arg(root().join("bench/pingora-peer/Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target);
        c
    })?;
    Ok(target.join("release/sluice-bench-pingora"))
}

/// sluice-proxy's arguments: one worker, the static `config` in `dir`.
fn sluice_args(dir: &Path, config: &str) -> [String; 5] {
    let config = dir.join(config).display().to_string();
    ["run", "--workers", "1", "--config", config.as_str()].map(str::to_owned)
}

/// HAProxy's arguments: in the foreground, with the config in `dir`.
fn haproxy_args(dir: &Path) -> [String; 3] {
    [
        "-db".to_owned(),
        "-f".to_owned(),
        dir.join("haproxy.cfg").display().to_string(),
    ]
}

/// Pingora's arguments: where it listens, and its one upstream.
fn pingora_args() -> [String; 2] {
    [
        format!("127.0.0.1:{}", PORTS.pingora),
        format!("127.0.0.1:{BACKEND_PORT}"),
    ]
}

/// The single plaintext proxies as [`instructions`] runs them: as in the
/// rows above, nginx without its master process; the profile-guided build
/// last, if given.
fn counted_proxies(
    dir: &Path,
    pingora: &Path,
    sluice: &Path,
    pgo: Option<&Path>,
) -> Vec<instructions::Subject> {
    let with = |program: String, args: &[String]| -> Vec<String> {
        std::iter::once(program)
            .chain(args.iter().cloned())
            .collect()
    };
    let pgo = pgo.map(|bin| instructions::Subject {
        name: PGO_ROW,
        port: PORTS.sluice_pgo,
        command: with(
            bin.display().to_string(),
            &sluice_args(dir, "sluice-pgo.yaml"),
        ),
    });
    let mut subjects = vec![
        instructions::Subject {
            name: "nginx",
            port: PORTS.nginx,
            command: with("nginx".to_owned(), &nginx_args(dir, "nginx-callgrind")),
        },
        instructions::Subject {
            name: "haproxy",
            port: PORTS.haproxy,
            command: with("haproxy".to_owned(), &haproxy_args(dir)),
        },
        instructions::Subject {
            name: "pingora",
            port: PORTS.pingora,
            command: with(pingora.display().to_string(), &pingora_args()),
        },
        instructions::Subject {
            name: "sluice-proxy",
            port: PORTS.sluice,
            command: with(
                sluice.display().to_string(),
                &sluice_args(dir, "sluice.yaml"),
            ),
        },
    ];
    subjects.extend(pgo);
    subjects
}

/// What the proxy benchmarks run: their directory (configs, certificates,
/// logs), the load tool and the two proxies built.
struct Prepared {
    dir: PathBuf,
    bench: PathBuf,
    proxy_bin: PathBuf,
    pingora_bin: PathBuf,
}

/// Installs the peers, builds the binaries and writes the configs.
fn prepare() -> Result<Prepared> {
    let (dir, bench, proxy_bin) = prepare_sluice()?;
    Ok(Prepared {
        dir,
        bench,
        proxy_bin,
        pingora_bin: build_pingora()?,
    })
}

/// What [`prepare`] does but the Pingora peer: the tools, sluice-proxy and
/// the load tool built, certificates and configs written. The directory,
/// the load tool and the proxy.
fn prepare_sluice() -> Result<(PathBuf, PathBuf, PathBuf)> {
    run("install nginx, HAProxy, wrk and valgrind", {
        let mut c = Command::new("bash");
        c.arg(root().join("scripts/bench-tools.sh"));
        c
    })?;
    run("build sluice-proxy and sluice-bench (release)", {
        let mut c = cargo();
        c.args([
            "build",
            "--release",
            "-p",
            "sluice-proxy",
            "-p",
            "sluice-bench",
        ]);
        c
    })?;
    let target = crate::target::dir();
    let dir = target.join("bench/proxy");
    std::fs::create_dir_all(&dir)?;
    let bench: PathBuf = target.join("release/sluice-bench");
    let proxy_bin = target.join("release/sluice-proxy");
    run("certificates (the TLS rows' and the mesh rows')", {
        let mut c = Command::new(&bench);
        c.arg("certs").arg(dir.join("certs"));
        c
    })?;
    write_configs(&dir)?;
    Ok((dir, bench, proxy_bin))
}

/// The profile-guided build of sluice-proxy alone, trained as for the
/// benchmark's PGO row ([`pgo`]): what `cargo xtask images --pgo` puts
/// into the proxy's image.
pub fn pgo_proxy() -> Result<PathBuf> {
    let (dir, bench, _) = prepare_sluice()?;
    let backend = backend(&dir)?;
    write_mesh_configs(&dir)?;
    let bin = pgo::build(&dir, &bench)?;
    drop(backend);
    Ok(bin)
}

impl Prepared {
    /// The instruction counts of the single proxies (the backend is up),
    /// and of the profile-guided build if given.
    fn count_instructions(&self, pgo: Option<&Path>) -> Result<Vec<instructions::Counted>> {
        eprintln!("\n==> user-space instructions per request (callgrind, CPU 0, one at a time)");
        let proxies = counted_proxies(&self.dir, &self.pingora_bin, &self.proxy_bin, pgo);
        instructions::measure(&proxies, &self.dir, &self.bench)
    }
}

/// The backend on CPU 1, serving.
fn backend(dir: &Path) -> Result<Proc> {
    eprintln!("\n==> backend: nginx answering 200 on 127.0.0.1:{BACKEND_PORT} (CPU 1)");
    let mut backend = nginx("backend", "1", dir, "backend")?;
    wait_http(BACKEND_PORT, &mut backend)?;
    Ok(backend)
}

/// The instruction counts alone (`cargo xtask bench instructions`): a few
/// minutes, for checking a change to the request path.
pub fn instructions() -> Result<()> {
    let p = prepare()?;
    let backend = backend(&p.dir)?;
    let counted = p.count_instructions(None)?;
    drop(backend);
    println!("\n{}", instructions::table(&counted, "sluice-proxy"));
    Ok(())
}

/// Runs the proxy benchmark and prints (and saves) the table.
pub fn proxy() -> Result<()> {
    let p = prepare()?;
    let (dir, bench, proxy_bin) = (&p.dir, &p.bench, &p.proxy_bin);
    let backend = backend(dir)?;
    // The training's loads include the mesh rows'.
    write_mesh_configs(dir)?;
    let pgo_bin = pgo::build(dir, bench)?;

    // The single proxies run side by side (an idle one costs the others
    // nothing) and take turns round by round.
    eprintln!("\n==> nginx, HAProxy, Pingora and sluice-proxy, each 1 worker on CPU 0");
    let mut nginx_proxy = nginx("nginx", "0", dir, "nginx")?;
    let mut haproxy = spawn(
        "haproxy",
        {
            let mut c = pinned("0", "haproxy");
            c.args(haproxy_args(dir));
            c
        },
        &dir.join("haproxy.log"),
    )?;
    let mut pingora = spawn(
        "pingora",
        {
            let mut c = pinned("0", &p.pingora_bin.display().to_string());
            c.args(pingora_args());
            c
        },
        &dir.join("pingora.log"),
    )?;
    let mut sluice_proxy = sluice(proxy_bin, dir, "sluice.yaml", None)?;
    let mut sluice_pgo = sluice(&pgo_bin, dir, "sluice-pgo.yaml", None)?;
    let mut nginx_tls = nginx("nginx, TLS", "0", dir, "nginx-tls")?;
    let mut sluice_tls = sluice(proxy_bin, dir, "sluice-tls.yaml", None)?;
    let roots = dir.join("certs/roots.pem");
    let contenders = [
        Contender::ready("direct", BACKEND_PORT, None, None)?,
        Contender::ready("nginx", PORTS.nginx, Some(&mut nginx_proxy), None)?,
        Contender::ready("haproxy", PORTS.haproxy, Some(&mut haproxy), None)?,
        Contender::ready("pingora", PORTS.pingora, Some(&mut pingora), None)?,
        Contender::ready("sluice-proxy", PORTS.sluice, Some(&mut sluice_proxy), None)?,
        Contender::ready(PGO_ROW, PORTS.sluice_pgo, Some(&mut sluice_pgo), None)?,
        Contender::ready_over(
            TLS_ROWS[0],
            PORTS.nginx_tls,
            Some(roots.clone()),
            Some(&mut nginx_tls),
            None,
        )?,
        Contender::ready_over(
            TLS_ROWS[1],
            PORTS.sluice_tls,
            Some(roots),
            Some(&mut sluice_tls),
            None,
        )?,
    ];
    let mut rows = measure(&contenders, bench)?;
    drop((
        nginx_proxy,
        haproxy,
        pingora,
        sluice_proxy,
        sluice_pgo,
        nginx_tls,
        sluice_tls,
    ));
    eprintln!("\n==> two sluice sidecars (1 worker each, both on CPU 0)");
    rows.extend(measure_mesh(proxy_bin, dir, bench)?);
    // Saved before the instruction counts too, which a peer that will not
    // stop under callgrind could otherwise take down with it.
    let timed = table(&rows);
    save(dir, &timed)?;
    save_rounds(dir, &rows)?;
    let counted = p.count_instructions(Some(&pgo_bin))?;
    drop(backend);
    let out = format!("{timed}\n{}", instructions::table(&counted, "sluice-proxy"));
    println!("\n{out}");
    save(dir, &out)
}

/// Writes every row's figures round by round to `<dir>/rounds.tsv`
/// (row, figure, then one column per round), so that rounds can be
/// compared or pooled across runs later.
fn save_rounds(dir: &Path, rows: &[Row]) -> Result<()> {
    let path = dir.join("rounds.tsv");
    std::fs::write(&path, rounds_tsv(rows))?;
    eprintln!("rounds saved to {}", path.display());
    Ok(())
}

fn rounds_tsv(rows: &[Row]) -> String {
    let mut s = String::new();
    for r in rows {
        for (figure, values) in [
            ("cpu_fixed_us", &r.cpu_fixed_rounds),
            ("cpu_peak_us", &r.cpu_peak_rounds),
            ("peak_rps", &r.peak_rounds),
            ("p50_us", &r.p50_rounds),
            ("p99_us", &r.p99_rounds),
        ] {
            s.push_str(r.name);
            s.push('\t');
            s.push_str(figure);
            for v in values {
                s.push_str(&format!("\t{v:.1}"));
            }
            s.push('\n');
        }
    }
    s
}

/// Writes the benchmark's results to `<dir>/results.md`.
fn save(dir: &Path, results: &str) -> Result<()> {
    let mut f = std::fs::File::create(dir.join("results.md"))?;
    f.write_all(results.as_bytes())?;
    eprintln!("saved to {}", dir.join("results.md").display());
    Ok(())
}

/// Runs the control-plane benchmark against the test bed (built release,
/// like the operator it measures) and prints its table.
pub fn control_plane(args: &[String]) -> Result<()> {
    on_test_bed("control-plane", "sluice-control-plane-bench", args)
}

/// Runs the scale benchmark (many Rollouts on one operator) against the
/// test bed and prints its report.
pub fn scale(args: &[String]) -> Result<()> {
    on_test_bed("scale", "sluice-scale-bench", args)
}

/// Installs the test bed, then builds and runs benchmark binary `bin` of
/// the test crate in release mode with `args`.
fn on_test_bed(what: &str, bin: &str, args: &[String]) -> Result<()> {
    run(
        "install the test bed (Kubernetes, etcd, Gateway API CRDs)",
        {
            let mut c = crate::test_bed()?;
            c.stdout(Stdio::null());
            c
        },
    )?;
    run(&format!("build and run the {what} benchmark (release)"), {
        let mut c = cargo();
        c.args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "sluice-tests",
            "--bin",
            bin,
            "--",
        ]);
        c.args(args);
        c
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contenders_take_turns_in_an_order_reversed_every_other_round() {
        assert_eq!(turn_order(3, 1), [0, 1, 2]);
        assert_eq!(turn_order(3, 2), [2, 1, 0]);
        assert_eq!(turn_order(3, 3), [0, 1, 2]);
        assert!(turn_order(0, 2).is_empty());
    }

    #[test]
    fn rounds_are_saved_one_figure_of_one_row_per_line() {
        let row = Row {
            name: "nginx",
            cpu_fixed_rounds: vec![70.25, 71.0],
            p99_rounds: vec![340.0, 352.0],
            ..Row::default()
        };
        let tsv = rounds_tsv(&[row]);
        let lines: Vec<&str> = tsv.lines().collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], "nginx\tcpu_fixed_us\t70.2\t71.0");
        assert_eq!(lines[1], "nginx\tcpu_peak_us");
        assert_eq!(lines[4], "nginx\tp99_us\t340.0\t352.0");
    }

    #[test]
    fn a_row_against_a_peer_is_one_line_and_its_verdicts() {
        let row = |name, cpu: f64, p99: f64| Row {
            name,
            cpu_fixed_rounds: vec![cpu; 5],
            cpu_peak_rounds: vec![cpu / 4.0; 5],
            peak_rounds: vec![40_000.0; 5],
            p99_rounds: vec![p99; 5],
            rss_conns_kib: 10_240,
            ..Row::default()
        };
        let lines = ratios(
            &row("sluice-proxy", 60.0, 330.0),
            &[row("nginx", 75.0, 340.0)],
        );
        assert_eq!(
            lines,
            "sluice-proxy against nginx: CPU/req at 2000 req/s 0.80x (rounds 0.80-0.80; 94 % interval 0.80-0.80), at peak 0.80x (rounds 0.80-0.80; 94 % interval 0.80-0.80); throughput 1.00x (rounds 1.00-1.00; 94 % interval 1.00-1.00); p99 at 2000 req/s -10 µs (rounds -10 to -10; 94 % interval -10 to -10); RSS with 1,000 conns 1.00x\n  targets against nginx: CPU/req ≤ 1.0x at 2000 req/s met, at peak met; added p99 at 2000 req/s ≤ nginx's met; RSS with 1,000 conns ≤ 1.0x met\n"
        );
    }

    #[test]
    fn a_row_not_measured_has_zero_medians_instead_of_panicking() {
        assert_eq!(Row::default().cpu_peak_us(), 0.0);
    }
}
