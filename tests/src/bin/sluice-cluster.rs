//! `sluice-cluster`: runs the test bed's cluster (control plane + node
//! agent) in the foreground until SIGTERM or Ctrl-C, for the local sandbox.
//!
//! ```text
//! sluice-cluster up --state-dir ~/.cache/sluice/demo
//! ```
//!
//! With the cluster it installs the Gateway API CRDs and Sluice with its
//! Helm chart (`helm install sluice charts/sluice`, one operator replica,
//! the dashboard on a NodePort behind a fresh token). Once
//! ready it writes `kubeconfig`, `node-address`, `dashboard-url` and `ready`
//! into the state directory; `cargo xtask demo` starts it in the background
//! and waits for `ready`.
//!
//! The node agent has no kubelet API, so `kubectl exec` cannot reach its
//! pods; `sluice-cluster exec` stands in for it (through `exec.sock` in the
//! state directory):
//!
//! ```text
//! sluice-cluster exec --state-dir ~/.cache/sluice/demo handson curl-allow -- curl -s http://...
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_tests::Cluster;

#[derive(Parser)]
#[command(
    version,
    about = "A local Kubernetes cluster whose pods run as local processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the cluster and serve until SIGTERM/SIGINT.
    Up {
        /// Where the cluster keeps its state, logs and kubeconfig.
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Run a command in a pod of the running cluster (as `kubectl exec`),
    /// print its output and exit with its code.
    Exec {
        /// The running cluster's state directory.
        #[arg(long)]
        state_dir: PathBuf,
        /// The pod's namespace.
        namespace: String,
        /// The pod.
        pod: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
}

/// One exec request on `exec.sock`, as a JSON line.
#[derive(serde::Serialize, serde::Deserialize)]
struct ExecRequest {
    namespace: String,
    pod: String,
    argv: Vec<String>,
}

/// Its answer, as a JSON line.
#[derive(serde::Serialize, serde::Deserialize)]
struct ExecReply {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Serves exec requests for as long as the cluster runs.
async fn serve_exec(cluster: std::sync::Arc<Cluster>, socket: PathBuf) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match serde_json::from_str::<ExecRequest>(&line) {
                Ok(req) => {
                    let argv: Vec<&str> = req.argv.iter().map(String::as_str).collect();
                    match cluster.exec_in_pod(&req.namespace, &req.pod, &argv).await {
                        Ok(out) => ExecReply {
                            code: out.code,
                            stdout: out.stdout,
                            stderr: out.stderr,
                        },
                        Err(e) => ExecReply {
                            code: 126,
                            stdout: String::new(),
                            stderr: format!("exec: {e}\n"),
                        },
                    }
                }
                Err(e) => ExecReply {
                    code: 2,
                    stdout: String::new(),
                    stderr: format!("bad request: {e}\n"),
                },
            };
            let mut out = serde_json::to_string(&reply).unwrap_or_default();
            out.push('\n');
            let _ = write.write_all(out.as_bytes()).await;
        });
    }
}

/// The client side of `exec`.
fn exec(state_dir: &std::path::Path, request: ExecRequest) -> anyhow::Result<i32> {
    use std::io::{BufRead, Write};
    let socket = state_dir.join("exec.sock");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket)
        .with_context(|| format!("is the cluster running? connecting to {}", socket.display()))?;
    let mut line = serde_json::to_string(&request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    std::io::BufReader::new(stream).read_line(&mut answer)?;
    let reply: ExecReply = serde_json::from_str(&answer).context("the cluster's exec answer")?;
    print!("{}", reply.stdout);
    eprint!("{}", reply.stderr);
    Ok(reply.code)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let state_dir = match Cli::parse().command {
        Cmd::Up { state_dir } => state_dir,
        Cmd::Exec {
            state_dir,
            namespace,
            pod,
            argv,
        } => {
            let code = exec(
                &state_dir,
                ExecRequest {
                    namespace,
                    pod,
                    argv,
                },
            )?;
            std::process::exit(code);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let ready = state_dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let cluster_dir = state_dir.join("cluster");
        let _ = std::fs::remove_dir_all(&cluster_dir);
        let cluster = std::sync::Arc::new(Cluster::start_in(&cluster_dir).await?);
        std::fs::copy(cluster.kubeconfig(), state_dir.join("kubeconfig"))
            .context("writing kubeconfig")?;
        tracing::info!("helm install sluice charts/sluice -n sluice-system");
        let token = dashboard_token()?;
        sluice_tests::operator::helm_install_mesh(&cluster, &token).await?;
        let node = cluster.node().address();
        std::fs::write(
            state_dir.join("dashboard-url"),
            format!(
                "http://{node}:{}/?namespace=handson&token={token}\n",
                sluice_tests::operator::DASHBOARD_NODE_PORT
            ),
        )
        .context("writing dashboard-url")?;
        std::fs::write(state_dir.join("node-address"), node.to_string())
            .context("writing node-address")?;
        let exec_server = {
            let (c, socket) = (cluster.clone(), state_dir.join("exec.sock"));
            tokio::spawn(async move {
                if let Err(e) = serve_exec(c, socket).await {
                    tracing::warn!("exec socket: {e}");
                }
            })
        };
        std::fs::write(&ready, format!("{}\n", std::process::id())).context("writing ready")?;
        tracing::info!(kubeconfig = %state_dir.join("kubeconfig").display(), "cluster ready");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping the cluster");
        let _ = std::fs::remove_file(&ready);
        let _ = std::fs::remove_file(state_dir.join("exec.sock"));
        // The server holds the cluster: stop it so that the cluster's
        // cleanup runs on drop.
        exec_server.abort();
        let _ = exec_server.await;
        drop(cluster);
        Ok(())
    })
}

/// A fresh dashboard token: 16 random bytes, hex.
fn dashboard_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
