//! End-to-end: the test bed itself. CRDs install and print, a Deployment of
//! demo-app really runs and serves, and deletion leaves nothing behind.

mod chart;
mod main_support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use sluice_crds::Rollout;
use sluice_tests::Cluster;
use sluice_tests::control_plane::SERVICE_CIDR;
use sluice_tests::operator::demo_app_container;
use sluice_tests::wait::{deployment_available, poll, ready_endpoints};

fn main() -> ExitCode {
    main_support::run(&[
        ("crds_install_and_rollouts_print_their_columns", |c| {
            Box::pin(crds_install(c))
        }),
        ("invalid_rollout_is_rejected_naming_the_field", |c| {
            Box::pin(invalid_rollout(c))
        }),
        ("deployment_runs_serves_and_lists_endpoints", |c| {
            Box::pin(deployment_serves(c))
        }),
        (
            "deleting_a_deployment_removes_its_containers_and_processes",
            |c| Box::pin(deletion_cleans_up(c)),
        ),
        (
            "pods_get_init_containers_volumes_env_and_a_working_token",
            |c| Box::pin(pod_features(c)),
        ),
        (
            "crashed_containers_restart_and_host_network_pods_share_the_node_ip",
            |c| Box::pin(restarts_and_host_network(c)),
        ),
        (
            "helm_chart_installs_fails_over_upgrades_and_uninstalls",
            |c| Box::pin(chart::install_failover_upgrade_uninstall(c)),
        ),
    ])
}

const TIMEOUT: Duration = Duration::from_secs(60);
/// The client image: curl and a shell.
const CURL: &str = sluice_proto::images::CURL;

fn rollout_yaml(ns: &str, name: &str, set_weight: i32) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: Rollout
metadata:
  name: {name}
  namespace: {ns}
spec:
  replicas: 3
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: app
        image: sluice/demo-app:blue
  strategy:
    canary:
      steps:
      - setWeight: {set_weight}
      - pause: {{duration: 5s}}
      - pause: {{}}
"#
    )
}

/// Demo-app behind a Service, `replicas` pods with a readiness probe.
fn demo_app(ns: &str, name: &str, color: &str, replicas: i32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
{container}---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
spec:
  selector: {{app: {name}}}
  ports:
  - {{name: http, port: 8080, targetPort: http}}
"#,
        container = demo_app_container(color, 6)
    )
}

fn curl_pod(ns: &str, name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
spec:
  containers:
  - name: curl
    image: {CURL}
"#
    )
}

async fn crds_install(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    cluster.install_crds().await?;
    cluster.create_namespace("crds").await?;
    let api: Api<Rollout> = Api::namespaced(cluster.client(), "crds");
    let ro: Rollout = rollout_from_yaml(&rollout_yaml("crds", "web", 20))?;
    api.create(&PostParams::default(), &ro)
        .await
        .context("creating a Rollout with kube-rs")?;
    let back = api.get("web").await?;
    ensure!(
        back.spec.replicas == 3,
        "replicas read back as {}",
        back.spec.replicas
    );
    ensure!(back.spec.strategy.canary.steps.len() == 3);
    ensure!(back.spec.strategy.canary.steps[0].set_weight == Some(20));
    let analysis_default = serde_json_default_analysis()?;
    ensure!(analysis_default.interval == "5s" && analysis_default.builtin.min_requests == 20);

    let out = cluster.kubectl(&["get", "rollouts", "-n", "crds"], None)?;
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    ensure!(
        header == ["NAME", "DESIRED", "READY", "STEP", "WEIGHT", "PHASE", "AGE"],
        "kubectl printed:\n{out}"
    );
    ensure!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("web") && l.contains(" 3 ")),
        "kubectl printed:\n{out}"
    );
    // The short name works too.
    cluster.kubectl(&["get", "ro", "-n", "crds", "web"], None)?;
    Ok(())
}

fn rollout_from_yaml(yaml: &str) -> anyhow::Result<Rollout> {
    Ok(serde_yaml::from_str(yaml)?)
}

fn serde_json_default_analysis() -> anyhow::Result<sluice_crds::rollout::AnalysisSpec> {
    Ok(serde_json::from_str("{}")?)
}

async fn invalid_rollout(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    cluster.install_crds().await?;
    cluster.create_namespace("invalid").await?;
    let err = match cluster.apply(&rollout_yaml("invalid", "bad", 150)) {
        Ok(out) => bail!("a setWeight of 150 was accepted: {out}"),
        Err(e) => e.to_string(),
    };
    ensure!(
        err.contains("spec.strategy.canary.steps[0].setWeight")
            && err.contains("between 0 and 100"),
        "the error does not name the field: {err}"
    );
    let mismatched =
        rollout_yaml("invalid", "sel", 10).replace("labels: {app: sel}", "labels: {app: other}");
    let err = match cluster.apply(&mismatched) {
        Ok(out) => bail!("a selector that does not match the template was accepted: {out}"),
        Err(e) => e.to_string(),
    };
    ensure!(
        err.contains("spec.selector") && err.contains("must match"),
        "unclear error: {err}"
    );
    // A pause so long it would overflow the controller's arithmetic.
    let forever = rollout_yaml("invalid", "long", 10).replace("5s", "99999999999999999999h");
    refused(
        &cluster,
        &forever,
        "spec.strategy.canary.steps[1].pause.duration",
        "at most 6 digits",
    )?;
    let same = rollout_yaml("invalid", "same", 10).replace(
        "    canary:\n",
        "    canary:\n      stableService: web\n      canaryService: web\n",
    );
    refused(
        &cluster,
        &same,
        "spec.strategy.canary.canaryService",
        "another Service",
    )?;
    // A strategy is canary or blue-green, never both; blue-green's two
    // Services differ.
    let both = rollout_yaml("invalid", "both", 10).replace(
        "  strategy:\n",
        "  strategy:\n    blueGreen: {activeService: web}\n",
    );
    refused(
        &cluster,
        &both,
        "spec.strategy",
        "exactly one of canary, blueGreen",
    )?;
    let blue_green = |services: &str| {
        let yaml = rollout_yaml("invalid", "bg", 10);
        let at = yaml.find("  strategy:\n").unwrap_or(yaml.len());
        format!("{}  strategy:\n    blueGreen: {services}\n", &yaml[..at])
    };
    refused(
        &cluster,
        &blue_green("{activeService: web, previewService: web}"),
        "spec.strategy.blueGreen.previewService",
        "another Service than activeService",
    )?;
    cluster.apply(&blue_green(
        "{activeService: web, previewService: web-preview}",
    ))?;
    // A header route needs traffic routing, and one kind of value match.
    let header_route = |value: &str| {
        rollout_yaml("invalid", "hdr", 10).replace(
            "      - pause: {}\n",
            &format!(
                "      - pause: {{}}\n      - setHeaderRoute: {{name: testers, match: [{{headerName: x-canary, headerValue: {value}}}]}}\n"
            ),
        )
    };
    refused(
        &cluster,
        &header_route("{exact: \"yes\"}"),
        "spec.strategy.canary.trafficRouting",
        "setHeaderRoute and setMirrorRoute steps need trafficRouting",
    )?;
    refused(
        &cluster,
        &header_route("{exact: a, prefix: b}"),
        "spec.strategy.canary.steps[3].setHeaderRoute.match[0].headerValue",
        "exactly one of exact, prefix, regex",
    )?;
    // AuthorizationPolicy fields the proxies parse.
    let policy = |rules: &str| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: invalid}}\nspec:\n  action: DENY\n  rules: {rules}\n"
        )
    };
    refused(
        &cluster,
        &policy(r#"[{from: [{source: {ipBlocks: ["10.0.0.0/33"]}}]}]"#),
        "spec.rules[0].from[0].source.ipBlocks",
        "CIDR",
    )?;
    refused(
        &cluster,
        &policy(r#"[{to: [{operation: {ports: ["0"]}}]}]"#),
        "spec.rules[0].to[0].operation.ports",
        "1 to 65535",
    )?;
    refused(
        &cluster,
        &policy(r#"[{when: [{key: source.ip, values: ["not-an-ip"]}]}]"#),
        "spec.rules[0].when[0]",
        "source.ip values",
    )?;
    refused(
        &cluster,
        &policy(r#"[{when: [{key: request.bogus, values: ["x"]}]}]"#),
        "spec.rules[0].when[0].key",
        "should match",
    )?;
    // And a good one is admitted.
    cluster.apply(&policy(
        r#"[{from: [{source: {ipBlocks: ["10.0.0.0/8", "10.1.2.3"]}}], to: [{operation: {ports: ["8080"]}}], when: [{key: destination.port, values: ["8080"]}]}]"#,
    ))?;
    Ok(())
}

/// Fails unless the apiserver refuses `yaml` with an error naming `field`
/// and saying `why`.
fn refused(cluster: &Cluster, yaml: &str, field: &str, why: &str) -> anyhow::Result<()> {
    let err = match cluster.apply(yaml) {
        Ok(out) => bail!("admitted, though {field} is invalid: {out}"),
        Err(e) => e.to_string(),
    };
    ensure!(
        err.contains(field) && err.contains(why),
        "the error does not name {field} ({why}): {err}"
    );
    Ok(())
}

async fn deployment_serves(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "serve";
    cluster.create_namespace(ns).await?;
    cluster.apply(&demo_app(ns, "blue", "blue", 2))?;
    cluster.apply(&curl_pod(ns, "curl"))?;
    let client = cluster.client();
    deployment_available(&client, ns, "blue", TIMEOUT).await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods.list(&ListParams::default().labels("app=blue")).await?;
    let mut pod_ips: Vec<String> = list
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    pod_ips.sort();
    ensure!(pod_ips.len() == 2, "expected 2 pod IPs, got {pod_ips:?}");
    ensure!(
        pod_ips[0] != pod_ips[1],
        "pods share an address: {pod_ips:?}"
    );

    let endpoints = poll(
        "EndpointSlice lists both pods",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let ips = ready_endpoints(&client, ns, "blue").await?;
            Ok((ips == pod_ips).then_some(ips))
        },
    )
    .await?;
    ensure!(endpoints == pod_ips);

    let http = sluice_tests::operator::http();
    for ip in &pod_ips {
        let body = http
            .get(format!("http://{ip}:8080/"))
            .send()
            .await?
            .text()
            .await?;
        ensure!(
            body.trim() == "blue",
            "GET from the host to {ip} answered {body:?}"
        );
    }

    poll(
        "curl pod running",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let p = pods.get("curl").await?;
            Ok(p.status.and_then(|s| s.phase).filter(|p| p == "Running"))
        },
    )
    .await?;
    for ip in &pod_ips {
        let url = format!("http://{ip}:8080/color");
        let out = cluster
            .exec_in_pod(ns, "curl", &["curl", "-sS", "--max-time", "5", &url])
            .await?;
        ensure!(
            out.code == 0,
            "curl in the pod failed ({}): {}",
            out.code,
            out.stderr
        );
        ensure!(
            out.stdout.trim() == "blue",
            "curl from the pod to {ip} answered {:?}",
            out.stdout
        );
    }
    // Service networking: the Service's names resolve in the pod and its
    // ClusterIP leads to an endpoint, as kube-proxy and DNS make it.
    for host in ["blue", "blue.serve", "blue.serve.svc.cluster.local"] {
        let url = format!("http://{host}:8080/color");
        let out = poll(
            &format!("{url} from the pod"),
            TIMEOUT,
            Duration::from_millis(200),
            || async {
                let out = cluster
                    .exec_in_pod(ns, "curl", &["curl", "-sS", "--max-time", "5", &url])
                    .await?;
                Ok((out.code == 0).then_some(out))
            },
        )
        .await?;
        ensure!(
            out.stdout.trim() == "blue",
            "curl from the pod to {url} answered {:?}",
            out.stdout
        );
    }
    service_range_from_the_host(&cluster, ns).await?;
    // A NodePort answers on the node's address, from the host and from pods.
    cluster.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: blue-node, namespace: serve}\nspec:\n  type: NodePort\n  selector: {app: blue}\n  ports: [{name: http, port: 8080, targetPort: http, nodePort: 30080}]\n",
    )?;
    let url = format!("http://{}:30080/color", cluster.node().address());
    host_gets_blue("the NodePort from the host", &url).await?;
    let out = cluster
        .exec_in_pod(ns, "curl", &["curl", "-sS", "--max-time", "5", &url])
        .await?;
    ensure!(
        out.stdout.trim() == "blue",
        "{url} from the pod: {:?} {:?}",
        out.stdout,
        out.stderr
    );
    Ok(())
}

/// From the host, Service `blue`'s cluster IP leads to an endpoint, and an
/// address of the Service range that no Service holds stays on the node's
/// bridge: it never leaves by the machine's default route, where something
/// else could answer (and a client keep that connection).
async fn service_range_from_the_host(cluster: &Cluster, ns: &str) -> anyhow::Result<()> {
    let blue_ip = cluster.cluster_ip(ns, "blue").await?;
    let url = format!("http://{blue_ip}:8080/color");
    host_gets_blue("Service blue's cluster IP from the host", &url).await?;

    let taken: BTreeSet<String> = Api::<Service>::all(cluster.client())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|s| s.spec?.cluster_ip)
        .collect();
    let unused = last_addresses(SERVICE_CIDR)?
        .map(|ip| ip.to_string())
        .find(|ip| !taken.contains(ip))
        .context("no unused address at the end of the Service range")?;
    let route = sluice_tests::process::run("ip", &["route", "get", &unused])?;
    let node = cluster.node().address().to_string();
    ensure!(
        route.split_whitespace().skip_while(|w| *w != "src").nth(1) == Some(node.as_str()),
        "the host routes {unused} off the node's bridge ({node}): {route}"
    );
    let port = 80;
    let connect = tokio::net::TcpStream::connect((unused.as_str(), port));
    if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(3), connect).await {
        bail!(
            "{unused}:{port}, which no Service holds, took a connection (from {:?})",
            stream.peer_addr()
        );
    }
    Ok(())
}

/// Waits until a GET of `url` from the host answers, then checks that it
/// answered blue.
async fn host_gets_blue(what: &str, url: &str) -> anyhow::Result<()> {
    let http = sluice_tests::operator::http();
    let body = poll(what, TIMEOUT, Duration::from_millis(200), || async {
        Ok(match http.get(url).send().await {
            Ok(r) => Some(r.text().await?),
            Err(_) => None,
        })
    })
    .await?;
    ensure!(body.trim() == "blue", "{url} from the host: {body:?}");
    Ok(())
}

/// The last 254 host addresses of `cidr`, highest first.
fn last_addresses(cidr: &str) -> anyhow::Result<impl Iterator<Item = Ipv4Addr>> {
    let (network, len) = cidr
        .split_once('/')
        .with_context(|| format!("{cidr} is not a CIDR"))?;
    let network: Ipv4Addr = network.parse()?;
    let len: u32 = len.parse()?;
    let broadcast = u32::from(network) | u32::MAX.checked_shr(len).unwrap_or(0);
    Ok((1..=254).map(move |i| Ipv4Addr::from(broadcast - i)))
}

/// The containerd tasks of the node: container id → process id.
fn node_tasks(cluster: &Cluster) -> anyhow::Result<std::collections::BTreeMap<String, u32>> {
    let out = cluster.node().ctr(&["tasks", "ls"])?;
    Ok(out
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_owned(), f.next()?.parse().ok()?))
        })
        .collect())
}

/// The container ids of a pod (app containers and its sandbox's), from
/// its status.
fn container_ids(pod: &Pod) -> Vec<String> {
    pod.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| c.container_id.as_deref())
        .filter_map(|id| id.strip_prefix("containerd://"))
        .map(str::to_owned)
        .collect()
}

/// The kubelet's container GC period, a constant in the kubelet (not configurable).
const KUBELET_CONTAINER_GC_PERIOD: Duration = Duration::from_secs(60);

async fn deletion_cleans_up(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "delete";
    cluster.create_namespace(ns).await?;
    cluster.apply(&demo_app(ns, "doomed", "red", 2))?;
    let client = cluster.client();
    deployment_available(&client, ns, "doomed", TIMEOUT).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels("app=doomed"))
        .await?
        .items;
    ensure!(list.len() == 2, "expected 2 pods, got {}", list.len());
    let ids: Vec<String> = list.iter().flat_map(container_ids).collect();
    ensure!(ids.len() == 2, "expected 2 containers, got {ids:?}");
    let tasks = node_tasks(&cluster)?;
    let pids: BTreeSet<u32> = ids
        .iter()
        .map(|id| {
            tasks
                .get(id)
                .copied()
                .with_context(|| format!("no task {id}"))
        })
        .collect::<anyhow::Result<_>>()?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments
        .delete("doomed", &DeleteParams::foreground())
        .await?;
    poll(
        "pods of the deleted deployment gone",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let left = pods
                .list(&ListParams::default().labels("app=doomed"))
                .await?
                .items
                .len();
            Ok((left == 0).then_some(()))
        },
    )
    .await?;
    poll(
        "processes of the deleted pods gone",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let tasks = node_tasks(&cluster)?;
            let live = ids.iter().any(|id| tasks.contains_key(id))
                || pids
                    .iter()
                    .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            Ok((!live).then_some(()))
        },
    )
    .await?;
    // The kubelet keeps a pod's last dead container while it still sees the pod, and
    // its container GC, which removes the rest once the pod is gone, runs once a minute.
    poll(
        "containers of the deleted pods removed",
        KUBELET_CONTAINER_GC_PERIOD + Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let containers = cluster.node().ctr(&["containers", "ls", "-q"])?;
            let left = ids.iter().any(|id| containers.contains(id.as_str()));
            Ok((!left).then_some(()))
        },
    )
    .await?;
    Ok(())
}

async fn running(pods: &Api<Pod>, name: &str) -> anyhow::Result<Pod> {
    Ok(poll(
        &format!("pod {name} Running"),
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let p = pods.get(name).await?;
            let phase = p.status.as_ref().and_then(|s| s.phase.clone());
            Ok((phase.as_deref() == Some("Running")).then_some(p))
        },
    )
    .await?)
}

async fn pod_features(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "features";
    cluster.create_namespace(ns).await?;
    cluster.apply(&format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: cfg, namespace: {ns}}}
data: {{greeting: hello}}
---
apiVersion: v1
kind: Pod
metadata: {{name: features, namespace: {ns}}}
spec:
  initContainers:
  - name: init
    image: {CURL}
    command: [sh, -c, "echo init-ran > /srv/sluice-test-work/marker"]
    volumeMounts: [{{name: work, mountPath: /srv/sluice-test-work}}]
  containers:
  - name: main
    image: {CURL}
    env:
    - name: GREETING
      valueFrom: {{configMapKeyRef: {{name: cfg, key: greeting}}}}
    - name: POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
    - name: MESSAGE
      value: "$(GREETING) from $(POD_IP)"
    volumeMounts:
    - {{name: work, mountPath: /srv/sluice-test-work}}
    - {{name: cfg, mountPath: /etc/sluice-test-cfg, readOnly: true}}
  volumes:
  - {{name: work, emptyDir: {{}}}}
  - {{name: cfg, configMap: {{name: cfg}}}}
"#
    ))?;
    let pods: Api<Pod> = Api::namespaced(cluster.client(), ns);
    let pod = running(&pods, "features").await?;
    let ip = pod.status.and_then(|s| s.pod_ip).context("no pod IP")?;
    let sh = |script: &str| {
        let cluster = cluster.clone();
        let script = script.to_owned();
        async move {
            let out = cluster
                .exec_in_pod(ns, "features", &["sh", "-c", &script])
                .await?;
            ensure!(
                out.code == 0,
                "`{script}` exited {}: {}",
                out.code,
                out.stderr
            );
            anyhow::Ok(out.stdout.trim().to_owned())
        }
    };
    ensure!(
        sh("cat /srv/sluice-test-work/marker").await? == "init-ran",
        "the init container's file is missing"
    );
    ensure!(sh("cat /etc/sluice-test-cfg/greeting").await? == "hello");
    ensure!(sh("echo $GREETING $POD_IP").await? == format!("hello {ip}"));
    ensure!(
        sh("echo $MESSAGE").await? == format!("hello from {ip}"),
        "$(VAR) was not expanded"
    );
    // The configMap volume is read-only, as requested.
    let out = cluster
        .exec_in_pod(
            ns,
            "features",
            &["sh", "-c", "echo x > /etc/sluice-test-cfg/new"],
        )
        .await?;
    ensure!(out.code != 0, "a readOnly volume was writable");
    // The projected service-account token authenticates in-cluster calls.
    let version = sh(
        "curl -sS --max-time 5 --cacert /var/run/secrets/kubernetes.io/serviceaccount/ca.crt \
         -H \"Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)\" \
         https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/apis/authentication.k8s.io/v1/selfsubjectreviews \
         -X POST -H 'Content-Type: application/json' \
         -d '{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"SelfSubjectReview\"}'",
    )
    .await?;
    ensure!(
        version.contains("system:serviceaccount:features:default"),
        "the token did not authenticate as the pod's service account: {version}"
    );
    // ConfigMap changes reach the volume, as with the kubelet.
    cluster.apply(&format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg, namespace: {ns}}}\ndata: {{greeting: bonjour}}\n"))?;
    poll(
        "configMap volume updated",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let v = sh("cat /etc/sluice-test-cfg/greeting")
                .await
                .map_err(|e| sluice_tests::Error::Setup(e.to_string()))?;
            Ok((v == "bonjour").then_some(()))
        },
    )
    .await?;
    Ok(())
}

async fn restarts_and_host_network(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let ns = "restarts";
    cluster.create_namespace(ns).await?;
    cluster.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: crasher, namespace: {ns}}}
spec:
  containers:
  - {{name: main, image: {CURL}, command: [sh, -c, "exit 3"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: once, namespace: {ns}}}
spec:
  restartPolicy: Never
  containers:
  - {{name: main, image: {CURL}, command: [sh, -c, "exit 0"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: host, namespace: {ns}}}
spec:
  hostNetwork: true
  containers:
  - {{name: main, image: {CURL}}}
"#
    ))?;
    let pods: Api<Pod> = Api::namespaced(cluster.client(), ns);
    poll(
        "crasher restarted twice",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let p = pods.get("crasher").await?;
            let st = p
                .status
                .and_then(|s| s.container_statuses)
                .and_then(|c| c.into_iter().next());
            let restarted = st.as_ref().is_some_and(|s| s.restart_count >= 2);
            let last_exit = st
                .and_then(|s| s.last_state)
                .and_then(|l| l.terminated)
                .map(|t| t.exit_code);
            Ok((restarted && last_exit == Some(3)).then_some(()))
        },
    )
    .await?;
    poll(
        "a Never pod that exits 0 Succeeded",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let p = pods.get("once").await?;
            Ok(p.status
                .and_then(|s| s.phase)
                .filter(|ph| ph == "Succeeded")
                .map(|_| ()))
        },
    )
    .await?;
    let host = running(&pods, "host").await?;
    let ip = host.status.and_then(|s| s.pod_ip).unwrap_or_default();
    ensure!(
        ip == cluster.node().address().to_string(),
        "hostNetwork pod has IP {ip}"
    );
    Ok(())
}
