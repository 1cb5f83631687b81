//! Resource metrics: metrics-server (built from its Go module) in
//! `kube-system` behind the `v1beta1.metrics.k8s.io` APIService, reading
//! the kubelet's `/metrics/resource` with the cluster CA, so that `kubectl
//! top` and HorizontalPodAutoscalers work as on any cluster. Installed on
//! demand ([`crate::Cluster::install_metrics_server`]).

/// The port metrics-server serves on in its pod (unprivileged).
const PORT: u16 = 10250;

/// The manifest of metrics-server running `image`.
pub fn manifest(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: metrics-server, namespace: kube-system}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "system:metrics-server"}}
rules:
- apiGroups: [""]
  resources: [nodes/metrics]
  verbs: [get]
- apiGroups: [""]
  resources: [pods, nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "system:metrics-server"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:metrics-server"}}
subjects: [{{kind: ServiceAccount, name: metrics-server, namespace: kube-system}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "metrics-server:system:auth-delegator"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator"}}
subjects: [{{kind: ServiceAccount, name: metrics-server, namespace: kube-system}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: "metrics-server-auth-reader", namespace: kube-system}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: extension-apiserver-authentication-reader}}
subjects: [{{kind: ServiceAccount, name: metrics-server, namespace: kube-system}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: "system:aggregated-metrics-reader"
  labels:
    rbac.authorization.k8s.io/aggregate-to-view: "true"
    rbac.authorization.k8s.io/aggregate-to-edit: "true"
    rbac.authorization.k8s.io/aggregate-to-admin: "true"
rules:
- apiGroups: [metrics.k8s.io]
  resources: [pods, nodes]
  verbs: [get, list, watch]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: metrics-server, namespace: kube-system, labels: {{k8s-app: metrics-server}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{k8s-app: metrics-server}}}}
  template:
    metadata: {{labels: {{k8s-app: metrics-server}}}}
    spec:
      serviceAccountName: metrics-server
      priorityClassName: system-cluster-critical
      terminationGracePeriodSeconds: 1
      containers:
      - name: metrics-server
        image: {image}
        args:
        - --secure-port={PORT}
        - --cert-dir=/tmp
        - --kubelet-preferred-address-types=InternalIP
        - --kubelet-use-node-status-port
        - --kubelet-certificate-authority=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt
        - --metric-resolution=10s
        - --kubelet-request-timeout=5s
        ports: [{{name: https, containerPort: {PORT}}}]
        readinessProbe:
          httpGet: {{path: /readyz, port: https, scheme: HTTPS}}
          periodSeconds: 2
        securityContext:
          runAsNonRoot: true
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {{drop: [ALL]}}
        volumeMounts: [{{name: tmp, mountPath: /tmp}}]
      volumes: [{{name: tmp, emptyDir: {{}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: metrics-server, namespace: kube-system, labels: {{k8s-app: metrics-server}}}}
spec:
  selector: {{k8s-app: metrics-server}}
  ports: [{{name: https, port: 443, targetPort: https}}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {{name: v1beta1.metrics.k8s.io}}
spec:
  service: {{name: metrics-server, namespace: kube-system}}
  group: metrics.k8s.io
  version: v1beta1
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
"#
    )
}
