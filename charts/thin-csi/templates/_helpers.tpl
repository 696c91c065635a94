{{/* The driver name the binaries are built with. */}}
{{- define "thin-csi.driver" -}}thin.csi.io{{- end -}}

{{- define "thin-csi.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "thin-csi.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "thin-csi.image" -}}{{ .repository }}:{{ .tag }}{{- end -}}

{{- define "thin-csi.controllerAccount" -}}{{ include "thin-csi.fullname" . }}-controller{{- end -}}
{{- define "thin-csi.nodeAccount" -}}{{ include "thin-csi.fullname" . }}-node{{- end -}}

{{/* KUBERNETES_SERVICE_HOST/PORT for clusters without a Service proxy (values.kubernetesAPI). */}}
{{- define "thin-csi.apiEnv" -}}
{{- if .Values.kubernetesAPI.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.kubernetesAPI.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.kubernetesAPI.port | default "443" | quote }}
{{- end }}
{{- end -}}
