//! `sluice-operator` run beside the test bed's control plane, as a host
//! process listening on the node's bridge address so that pods (the
//! proxies) reach it. Tests kill and restart it to check that proxies fail
//! static and converge again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::control_plane::free_port;
use crate::process::ManagedProcess;
use crate::toolchain::workspace_bin_dir;
use crate::{Cluster, Error};

/// A running operator.
#[derive(Debug)]
pub struct Operator {
    process: ManagedProcess,
    /// Where proxies connect.
    pub grpc: SocketAddr,
    /// `/metrics`, `/debug/traffic`.
    pub metrics: SocketAddr,
    /// The sidecar injection webhook (HTTPS).
    pub webhook: SocketAddr,
    /// The dashboard, on loopback (no token needed there): port 20001 when
    /// it is free.
    pub dashboard: SocketAddr,
    kubeconfig: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
}

impl Operator {
    /// Starts the operator against `cluster` and waits for its metrics
    /// endpoint to answer.
    pub async fn start(cluster: &Cluster) -> Result<Operator, Error> {
        Operator::start_with(cluster, &[]).await
    }

    /// [`Operator::start`] with extra flags (e.g. `--cert-ttl=6s`), kept
    /// across restarts.
    pub async fn start_with(cluster: &Cluster, extra_flags: &[&str]) -> Result<Operator, Error> {
        let ip = cluster.node().address();
        let grpc = SocketAddr::from((ip, free_port(ip)?));
        let metrics = SocketAddr::from((ip, free_port(ip)?));
        let webhook = SocketAddr::from((ip, free_port(ip)?));
        let lo = std::net::Ipv4Addr::LOCALHOST;
        let dashboard = match std::net::TcpListener::bind((lo, 20001)) {
            Ok(_) => SocketAddr::from((lo, 20001)),
            Err(_) => SocketAddr::from((lo, free_port(lo)?)),
        };
        // Injected sidecars reach the operator where this harness runs it.
        let mut extra: Vec<String> = vec![
            format!("--webhook-listen={webhook}"),
            format!("--dashboard-listen={dashboard}"),
            format!("--webhook-names={ip}"),
            format!("--proxy-control-plane=https://{grpc}"),
            "--proxy-log=info,sluice_proxy::http_proxy=debug,sluice_proxy::tcp_proxy=debug,sluice_proxy::inbound=debug".into(),
        ];
        extra.extend(extra_flags.iter().map(|s| (*s).to_owned()));
        let log = cluster.dir().join("sluice-operator.log");
        let mut op = Operator {
            process: spawn(cluster.kubeconfig().to_owned(), grpc, metrics, &log, &extra)?,
            grpc,
            metrics,
            webhook,
            dashboard,
            kubeconfig: cluster.kubeconfig().to_owned(),
            log,
            extra,
        };
        op.wait_healthy().await?;
        Ok(op)
    }

    /// `https://ip:port` of the gRPC endpoint, as proxies take it.
    pub fn grpc_url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// Its process id, for reading its resource use from `/proc`.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Whether it has exited on its own.
    pub fn exited(&mut self) -> bool {
        self.process.exited().is_some()
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same addresses.
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.process.kill();
        self.process = spawn(
            self.kubeconfig.clone(),
            self.grpc,
            self.metrics,
            &self.log,
            &self.extra,
        )?;
        self.wait_healthy().await
    }

    /// Its log file.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> Result<String, Error> {
        let url = format!("http://{}/metrics", self.metrics);
        Ok(http().get(&url).send().await?.text().await?)
    }

    /// The sum of the `/metrics` series of `name` whose labels contain
    /// `labels` (0 when there is none yet).
    pub async fn counter(&self, name: &str, labels: &str) -> Result<f64, Error> {
        Ok(sum_of(&self.metrics_text().await?, name, labels))
    }

    /// One sample of `/metrics` (first series of that name), if present.
    pub async fn metric(&self, name: &str) -> Result<Option<f64>, Error> {
        let text = self.metrics_text().await?;
        Ok(series(&text, name).next().map(|(_, v)| v))
    }

    async fn wait_healthy(&mut self) -> Result<(), Error> {
        let url = format!("http://{}/healthz", self.metrics);
        let process = &mut self.process;
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = process.exited() {
                return Err(process.failure(format!("exited with {status}")));
            }
            if let Ok(r) = http().get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(process.failure("not healthy within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn spawn(
    kubeconfig: PathBuf,
    grpc: SocketAddr,
    metrics: SocketAddr,
    log: &std::path::Path,
    extra: &[String],
) -> Result<ManagedProcess, Error> {
    let bin = workspace_bin_dir()?.join("sluice-operator");
    let kubeconfig = kubeconfig.display().to_string();
    let mut args = vec![
        format!("--grpc-listen={grpc}"),
        format!("--metrics-listen={metrics}"),
        "--keepalive-seconds=2".into(),
        format!("--namespace={GATEWAY_NS}"),
    ];
    args.extend(extra.iter().cloned());
    ManagedProcess::spawn_with_env(
        "sluice-operator",
        &bin,
        &args,
        &[
            ("KUBECONFIG", &kubeconfig),
            ("RUST_LOG", "info,sluice_operator=debug"),
        ],
        log,
    )
}

/// Where the gateway proxy runs.
pub const GATEWAY_NS: &str = "sluice-system";
/// The proxies' admin port (`/ready`, `/config`, `/metrics`).
pub const ADMIN_PORT: u16 = sluice_proto::probes::ADMIN_PORT;

/// The mesh on a test-bed cluster until the Helm chart installs it: the
/// Gateway API and Sluice CRDs, the operator as a host process, GatewayClass
/// `sluice`, and one gateway proxy Deployment in [`GATEWAY_NS`]. Returns the
/// operator and the gateway pod's address.
pub async fn start_mesh(cluster: &Cluster) -> Result<(Operator, String), Error> {
    start_mesh_with(cluster, &[]).await
}

/// [`start_mesh`] with extra operator flags.
pub async fn start_mesh_with(
    cluster: &Cluster,
    operator_flags: &[&str],
) -> Result<(Operator, String), Error> {
    cluster.install_gateway_api().await?;
    // The Rollout controller starts only when its CRD is served.
    cluster.install_crds().await?;
    // The operator keeps its CA Secret there.
    cluster.create_namespace(GATEWAY_NS).await?;
    let operator = Operator::start_with(cluster, operator_flags).await?;
    install_injector(cluster, &operator).await?;
    cluster.apply(&format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: sluice}}
spec: {{controllerName: sluice.dev/gateway-controller}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: sluice-gateway, namespace: {GATEWAY_NS}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: sluice-gateway, namespace: {GATEWAY_NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: sluice-gateway}}}}
  template:
    metadata:
      labels: {{app: sluice-gateway}}
      annotations: {{prometheus.io/scrape: "true", prometheus.io/port: "{ADMIN_PORT}", prometheus.io/path: /metrics}}
    spec:
      serviceAccountName: sluice-gateway
      # Listeners on 80 and 443 without root or a capability, as the chart does.
      securityContext: {{sysctls: [{{name: net.ipv4.ip_unprivileged_port_start, value: "0"}}]}}
      containers:
      - name: proxy
        image: {proxy}
        args: [gateway, --workers, "1"]
{proxy_env}
{volumes}
"#,
        proxy = sluice_proto::images::PROXY,
        proxy_env = proxy_env(&operator.grpc_url(), 8),
        volumes = proxy_volumes(6),
    ))?;
    let client = cluster.client();
    crate::wait::deployment_available(
        &client,
        GATEWAY_NS,
        "sluice-gateway",
        Duration::from_secs(60),
    )
    .await?;
    let gateway_ip = crate::wait::pods_by_label(&client, GATEWAY_NS, "app=sluice-gateway")
        .await?
        .into_iter()
        .find_map(|p| p.status?.pod_ip)
        .ok_or_else(|| Error::Check("the gateway pod has no IP".into()))?;
    Ok((operator, gateway_ip))
}

/// The NodePort of the sandbox's dashboard.
pub const DASHBOARD_NODE_PORT: u16 = 32001;

/// The service account the chart creates for dashboard users: reads and
/// promote/abort in every namespace.
pub const DASHBOARD_ACCOUNT: &str = "sluice-dashboard";

/// A token of [`DASHBOARD_ACCOUNT`], to sign in to the dashboard from
/// outside loopback, valid for `lifetime`.
pub async fn dashboard_token(cluster: &Cluster, lifetime: Duration) -> Result<String, Error> {
    crate::mesh_client::token_request(cluster, GATEWAY_NS, DASHBOARD_ACCOUNT, None, lifetime).await
}

/// The values the sandbox installs the chart with: one operator replica,
/// the dashboard on [`DASHBOARD_NODE_PORT`] (sign in with
/// [`dashboard_token`]).
pub fn sandbox_values() -> Vec<String> {
    [
        "operator.replicas=1".to_owned(),
        format!("dashboard.nodePort={DASHBOARD_NODE_PORT}"),
    ]
    .into_iter()
    .flat_map(|v| ["--set".to_owned(), v])
    .collect()
}

/// `helm install sluice charts/sluice` into [`GATEWAY_NS`] with
/// [`sandbox_values`], waiting until the operator and the gateway are
/// ready.
pub async fn helm_install_mesh(cluster: &Cluster) -> Result<(), Error> {
    cluster.install_gateway_api().await?;
    let chart = crate::toolchain::workspace_root()
        .join("charts/sluice")
        .display()
        .to_string();
    let mut args: Vec<String> = [
        "install",
        "sluice",
        &chart,
        "-n",
        GATEWAY_NS,
        "--create-namespace",
        "--wait",
        "--timeout",
        "180s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(sandbox_values());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster.helm(&args)?;
    Ok(())
}

/// The webhook configurations (injection, template validation), as the
/// chart declares them but pointing at the operator's host address; the
/// operator fills in their `caBundle`, which this waits for.
async fn install_injector(cluster: &Cluster, operator: &Operator) -> Result<(), Error> {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    cluster.apply(&format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: sluice-injector}}
webhooks:
- name: inject.sluice.dev
  admissionReviewVersions: [v1]
  sideEffects: NoneOnDryRun
  failurePolicy: Fail
  reinvocationPolicy: IfNeeded
  timeoutSeconds: 10
  clientConfig: {{url: "https://{addr}/inject"}}
  rules: [{{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}}]
  namespaceSelector:
    matchExpressions:
    - {{key: sluice.dev/inject, operator: In, values: [enabled]}}
    - {{key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system, {GATEWAY_NS}]}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: sluice-validator}}
webhooks:
- name: templates.validate.sluice.dev
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Ignore
  timeoutSeconds: 5
  clientConfig: {{url: "https://{addr}/validate"}}
  rules: [{{operations: [CREATE, UPDATE], apiGroups: [sluice.dev], apiVersions: [v1alpha1], resources: [analysistemplates, clusteranalysistemplates]}}]
"#,
        addr = operator.webhook
    ))?;
    let injector: kube::Api<MutatingWebhookConfiguration> = kube::Api::all(cluster.client());
    let validator: kube::Api<ValidatingWebhookConfiguration> = kube::Api::all(cluster.client());
    let has = |b: &Option<k8s_openapi::ByteString>| b.as_ref().is_some_and(|b| !b.0.is_empty());
    // The operator watches the configurations and sets the bundles.
    crate::wait::poll(
        "the operator sets the webhooks' caBundle",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let i = injector.get("sluice-injector").await?;
            let v = validator.get("sluice-validator").await?;
            let set = i
                .webhooks
                .iter()
                .flatten()
                .all(|w| has(&w.client_config.ca_bundle))
                && v.webhooks
                    .iter()
                    .flatten()
                    .all(|w| has(&w.client_config.ca_bundle));
            Ok(set.then_some(()))
        },
    )
    .await
}

/// The env, bootstrap mount and readiness probe of a proxy container in
/// managed mode (as the chart and the injector set them), indented by
/// `indent` spaces; its pod needs [`proxy_volumes`].
pub fn proxy_env(url: &str, indent: usize) -> String {
    let yaml = format!(
        r#"env:
- {{name: SLUICE_CONTROL_PLANE, value: "{url}"}}
- {{name: SLUICE_CONTROL_PLANE_IDENTITY, value: "{identity}"}}
- {{name: RUST_LOG, value: "info,sluice_proxy::http_proxy=debug"}}
- name: POD_NAME
  valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
- name: POD_NAMESPACE
  valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}
- name: SERVICE_ACCOUNT
  valueFrom: {{fieldRef: {{fieldPath: spec.serviceAccountName}}}}
volumeMounts: [{{name: sluice-token, mountPath: {dir}, readOnly: true}}]
readinessProbe:
  httpGet: {{path: /ready, port: {ADMIN_PORT}}}
  periodSeconds: 1"#,
        identity = operator_identity(),
        dir = sluice_proto::bootstrap::SECRETS_DIR,
    );
    indented(&yaml, indent)
}

/// The SPIFFE ID of the operator the harness runs (its namespace is
/// [`GATEWAY_NS`], its service account the chart's).
pub fn operator_identity() -> String {
    sluice_proto::config::spiffe_id(
        "cluster.local",
        GATEWAY_NS,
        sluice_proto::bootstrap::OPERATOR_SERVICE_ACCOUNT,
    )
}

/// The `volumes:` of a pod with a managed proxy: its token and the mesh
/// roots, as the injector adds them; indented by `indent` spaces.
pub fn proxy_volumes(indent: usize) -> String {
    use sluice_proto::bootstrap::{
        ROOT_CERT_CONFIGMAP, ROOT_CERT_KEY, ROOT_CERT_PATH, TOKEN_AUDIENCE, TOKEN_PATH,
    };
    let yaml = format!(
        r#"volumes:
- name: sluice-token
  projected:
    sources:
    - serviceAccountToken: {{audience: {TOKEN_AUDIENCE}, path: {TOKEN_PATH}, expirationSeconds: 3600}}
    - configMap: {{name: {ROOT_CERT_CONFIGMAP}, items: [{{key: {ROOT_CERT_KEY}, path: {ROOT_CERT_PATH}}}]}}"#
    );
    indented(&yaml, indent)
}

/// The hands-on app's container (`sluice/demo-app:<color>`, port `http`
/// 8080, readiness on `/healthz`), as a list item indented by `indent`.
pub fn demo_app_container(color: &str, indent: usize) -> String {
    let yaml = format!(
        r#"- name: app
  image: sluice/demo-app:{color}
  ports: [{{name: http, containerPort: 8080}}]
  readinessProbe:
    httpGet: {{path: /healthz, port: http}}
    periodSeconds: 1"#
    );
    indented(&yaml, indent)
}

/// `yaml` with every line indented by `indent` spaces.
fn indented(yaml: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    yaml.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// The sum of the series of a proxy's counter `name` whose labels contain
/// `labels` (all series when empty), from its admin `/metrics`.
pub async fn proxy_counter(ip: &str, name: &str, labels: &str) -> Result<f64, Error> {
    let text = http()
        .get(format!("http://{ip}:{ADMIN_PORT}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(sum_of(&text, name, labels))
}

/// Requests counted so far by a client's sidecar (outbound) and by the
/// servers' sidecars (inbound on `port`), to compare before and after a
/// run that must go through both proxies.
pub async fn sidecar_requests(
    client_ip: &str,
    server_ips: &[String],
    port: u16,
) -> Result<(f64, f64), Error> {
    let outbound =
        proxy_counter(client_ip, "sluice_requests_total", "listener=\"outbound\"").await?;
    let label = format!("listener=\"inbound|{port}\"");
    let mut inbound = 0.0;
    for ip in server_ips {
        inbound += proxy_counter(ip, "sluice_requests_total", &label).await?;
    }
    Ok((outbound, inbound))
}

/// The sum of the series of `name` in Prometheus text whose labels contain
/// `labels` (0 when there is none).
fn sum_of(text: &str, name: &str, labels: &str) -> f64 {
    series(text, name)
        .filter(|(line, _)| line.contains(labels))
        .map(|(_, v)| v)
        // From +0.0: `sum` of no floats is -0.0, which prints as "-0".
        .fold(0.0, |total, v| total + v)
}

/// The series of metric `name` in Prometheus text: each line and its value.
fn series<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines()
        .filter(move |l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| Some((l, l.rsplit(' ').next()?.parse::<f64>().ok()?)))
}

/// An HTTP client for test traffic: no proxy from the environment, short
/// timeouts, one connection pool.
pub fn http() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .connect_timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default()
        })
        .clone()
}
