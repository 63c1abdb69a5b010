{{/* Kept to what tests/deploy_helm.py renders offline: values, include, quote, default, toYaml, nindent, if/else/not. */}}
{{- define "studyhall.fullname" -}}
{{ .Release.Name }}-studyhall
{{- end }}

{{- define "studyhall.selectorLabels" -}}
app.kubernetes.io/name: studyhall
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "studyhall.labels" -}}
{{ include "studyhall.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: studyhall-{{ .Chart.Version }}
{{- end }}
