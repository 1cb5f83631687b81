//! `sluice-bench`: the load tools of `cargo xtask bench`.
//!
//! - `rate`: an open-loop HTTP/1.1 load at a fixed rate. Latency is measured
//!   from when each request was *due*, not when it was sent, so a stalled
//!   proxy cannot hide its stall (no coordinated omission); a thread of its
//!   own paces the requests with the kernel's high-resolution sleep. Prints
//!   one JSON line with the percentiles.
//! - `hold`: opens N keep-alive connections, makes one request on each, and
//!   holds them open until stdin closes, so that a proxy's memory with many
//!   connections can be read.
//! - `certs`: writes a mesh root and two workload certificates (`client`,
//!   `server`) for the mTLS rows, as the operator's CA would issue them,
//!   and a gateway certificate for `app.test` for the TLS rows.
//!
//! `rate` and `hold` speak TLS (HTTP/1.1 by ALPN, the name `--host`)
//! when given `--tls-roots`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};

#[derive(Parser)]
#[command(about = "Load tools for Sluice's benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fixed-rate open-loop load; prints JSON percentiles.
    Rate {
        #[command(flatten)]
        target: TargetArgs,
        /// Requests per second.
        #[arg(long, default_value_t = 2000)]
        rps: u32,
        /// Seconds of load (after a 1 s warm-up that is not measured).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Keep-alive connections the load is spread over.
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// Hold N idle keep-alive connections until stdin closes.
    Hold {
        #[command(flatten)]
        target: TargetArgs,
        /// How many connections.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
    /// Write `roots.pem`, `client.{crt,key}` and `server.{crt,key}` (trust
    /// domain `bench.local`, namespace `bench`) and `gateway.{crt,key}`
    /// (`app.test`) to DIR.
    Certs {
        /// Output directory.
        dir: PathBuf,
    },
}

/// Where `rate` and `hold` connect.
#[derive(clap::Args)]
struct TargetArgs {
    /// Target address.
    #[arg(long)]
    addr: SocketAddr,
    /// Host header, and the TLS server name.
    #[arg(long, default_value = "app.test")]
    host: String,
    /// Speak TLS, trusting the roots in this PEM file.
    #[arg(long)]
    tls_roots: Option<PathBuf>,
}

/// A target ready to connect to.
struct Target {
    addr: SocketAddr,
    host: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Target {
    fn new(args: TargetArgs) -> Result<Target> {
        let tls = match &args.tls_roots {
            Some(roots) => Some((
                connector(roots)?,
                ServerName::try_from(args.host.clone())
                    .with_context(|| format!("{:?} as a TLS server name", args.host))?,
            )),
            None => None,
        };
        Ok(Target {
            addr: args.addr,
            host: args.host,
            tls,
        })
    }
}

/// A TLS client trusting the roots in `path`, offering HTTP/1.1 alone (as
/// `wrk` does) so that every row is measured over the same protocol.
fn connector(path: &Path) -> Result<TlsConnector> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
    {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A root, two leaves `spiffe://bench.local/ns/bench/sa/<name>` (`client`,
/// `server`) and the gateway's leaf for `app.test`.
fn certs(dir: &Path) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };
    std::fs::create_dir_all(dir)?;
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut root = CertificateParams::default();
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let root_cert = root.self_signed(&root_key)?;
    std::fs::write(dir.join("roots.pem"), root_cert.pem())?;
    let issuer = Issuer::new(root, root_key);
    // Signs `p` for a new key and writes `<name>.crt` and `<name>.key`.
    let leaf = |name: &str, p: CertificateParams| -> Result<()> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = p.signed_by(&key, &issuer)?;
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
        Ok(())
    };
    for name in ["client", "server"] {
        let mut p = CertificateParams::default();
        let id = format!("spiffe://bench.local/ns/bench/sa/{name}");
        p.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        leaf(name, p)?;
    }
    let mut p = CertificateParams::new(vec!["app.test".to_owned()])?;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf("gateway", p)
}

async fn connect(target: &Target) -> Result<http1::SendRequest<Empty<Bytes>>> {
    let addr = target.addr;
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let Some((tls, name)) = &target.tls else {
        return http1_over(stream).await;
    };
    let stream = tls
        .connect(name.clone(), stream)
        .await
        .with_context(|| format!("TLS handshake with {addr}"))?;
    http1_over(stream).await
}

/// An HTTP/1.1 client on `io`, its connection driven by a task of its own.
async fn http1_over<S>(io: S) -> Result<http1::SendRequest<Empty<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn get(sender: &mut http1::SendRequest<Empty<Bytes>>, host: &str) -> Result<()> {
    sender.ready().await?;
    let req = Request::get("/").header("host", host).body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    let ok = resp.status().is_success();
    resp.into_body().collect().await?;
    if !ok {
        bail!("non-2xx response");
    }
    Ok(())
}

/// 1,000 connections need more descriptors than the usual soft limit.
pub fn raise_fd_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

async fn rate(target: Target, rps: u32, seconds: u64, connections: usize) -> Result<()> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rps.max(1)));
    let warmup = u64::from(rps);
    let total = warmup + u64::from(rps) * seconds;
    let (result_tx, mut result_rx) = mpsc::unbounded_channel::<(bool, u64, bool)>();
    let mut queues = Vec::new();
    for _ in 0..connections {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, bool)>();
        queues.push(tx);
        let mut sender = connect(&target).await?;
        let (host, results) = (target.host.clone(), result_tx.clone());
        tokio::spawn(async move {
            while let Some((due, measured)) = rx.recv().await {
                let ok = get(&mut sender, &host).await.is_ok();
                let us = due.elapsed().as_micros() as u64;
                let _ = results.send((ok, us, measured));
            }
        });
    }
    drop(result_tx);
    let start = Instant::now();
    // Paced by a thread of its own: the kernel's high-resolution sleep
    // wakes within tens of microseconds of the due time, where tokio's
    // millisecond timer would send two requests together up to 1 ms late
    // and bury the proxies' differences under its own lateness.
    std::thread::spawn(move || {
        for i in 0..total {
            let due = start + interval * (i as u32);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let _ = queues[(i as usize) % connections].send((due, i >= warmup));
        }
    });
    let mut lat = Vec::with_capacity(total as usize);
    let mut errors = 0u64;
    // Every request answered, warm-up included: what a proxy's CPU time
    // over the whole run is divided by.
    let mut answered = 0u64;
    while let Some((ok, us, measured)) = result_rx.recv().await {
        answered += u64::from(ok);
        if !measured {
            continue;
        }
        if ok {
            lat.push(us);
        } else {
            errors += 1;
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let elapsed = start.elapsed().as_secs_f64() - 1.0;
    println!(
        "{{\"requests\":{},\"answered\":{answered},\"errors\":{errors},\"achieved_rps\":{:.0},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{}}}",
        lat.len(),
        lat.len() as f64 / elapsed.max(0.001),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        lat.last().copied().unwrap_or(0)
    );
    Ok(())
}

async fn hold(target: Target, connections: usize) -> Result<()> {
    raise_fd_limit();
    let mut held = Vec::with_capacity(connections);
    for i in 0..connections {
        let mut s = connect(&target)
            .await
            .with_context(|| format!("connection {i}"))?;
        get(&mut s, &target.host)
            .await
            .with_context(|| format!("request on connection {i}"))?;
        held.push(s);
    }
    println!("ready {}", held.len());
    // Hold until the parent closes our stdin.
    let mut buf = [0u8; 64];
    let mut stdin = tokio::io::stdin();
    while stdin.read(&mut buf).await.unwrap_or(0) > 0 {}
    drop(held);
    Ok(())
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match Cli::parse().cmd {
        Cmd::Rate {
            target,
            rps,
            seconds,
            connections,
        } => rt.block_on(rate(Target::new(target)?, rps, seconds, connections.max(1))),
        Cmd::Hold {
            target,
            connections,
        } => rt.block_on(hold(Target::new(target)?, connections)),
        Cmd::Certs { dir } => certs(&dir),
    }
}
