{{/* The images, with the chart's appVersion as the default tag. */}}
{{- define "sluice.tag" -}}{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "sluice.operatorImage" -}}{{ .Values.image.operator }}:{{ include "sluice.tag" . }}{{- end -}}
{{- define "sluice.proxyImage" -}}{{ .Values.image.proxy }}:{{ include "sluice.tag" . }}{{- end -}}

{{/* Where proxies reach the control plane. */}}
{{- define "sluice.controlPlane" -}}
{{- .Values.mesh.controlPlaneAddress | default (printf "https://sluice-operator.%s.svc:15010" .Release.Namespace) -}}
{{- end -}}

{{/* The SPIFFE ID the operator presents to proxies. */}}
{{- define "sluice.operatorIdentity" -}}
spiffe://{{ .Values.mesh.trustDomain }}/ns/{{ .Release.Namespace }}/sa/sluice-operator
{{- end -}}

{{- define "sluice.labels" -}}
app.kubernetes.io/part-of: sluice
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
