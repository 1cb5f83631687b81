//! Cluster DNS: CoreDNS (built from its Go module) as a Deployment in
//! `kube-system` behind the `kube-dns` Service, answering for
//! `cluster.local` only, so that no query leaves the machine.

use super::kubelet::CLUSTER_DNS;

/// The port CoreDNS listens on in its pod: unprivileged, so that it runs
/// as non-root without capabilities; the Service maps 53 to it.
const PORT: u16 = 1053;

/// The manifest of CoreDNS running `image`.
pub fn manifest(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: coredns, namespace: kube-system}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "system:coredns"}}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "system:coredns"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}}
subjects: [{{kind: ServiceAccount, name: coredns, namespace: kube-system}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: coredns, namespace: kube-system}}
data:
  Corefile: |
    .:{PORT} {{
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {{
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }}
        cache 30
        reload
        loadbalance
    }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: coredns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{k8s-app: kube-dns}}}}
  template:
    metadata: {{labels: {{k8s-app: kube-dns}}}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      terminationGracePeriodSeconds: 1
      containers:
      - name: coredns
        image: {image}
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {{name: dns, containerPort: {PORT}, protocol: UDP}}
        - {{name: dns-tcp, containerPort: {PORT}, protocol: TCP}}
        readinessProbe:
          httpGet: {{path: /ready, port: 8181}}
          periodSeconds: 1
        livenessProbe:
          httpGet: {{path: /health, port: 8080}}
          periodSeconds: 10
        securityContext:
          runAsNonRoot: true
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {{drop: [ALL]}}
        resources:
          requests: {{cpu: 10m, memory: 32Mi}}
          limits: {{memory: 128Mi}}
        volumeMounts: [{{name: config, mountPath: /etc/coredns, readOnly: true}}]
      volumes:
      - name: config
        configMap: {{name: coredns}}
---
apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  selector: {{k8s-app: kube-dns}}
  clusterIP: {CLUSTER_DNS}
  ports:
  - {{name: dns, port: 53, targetPort: {PORT}, protocol: UDP}}
  - {{name: dns-tcp, port: 53, targetPort: {PORT}, protocol: TCP}}
"#
    )
}
