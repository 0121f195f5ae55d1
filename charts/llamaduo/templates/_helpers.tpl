{{/* Name of the chart, overridable. */}}
{{- define "llamaduo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, trimmed to a DNS label. */}}
{{- define "llamaduo.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "llamaduo.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "llamaduo.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "llamaduo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llamaduo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "llamaduo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "llamaduo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "llamaduo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "llamaduo.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name the existing ServiceAccount the operator runs as (otherwise its RBAC would be granted to the namespace's default ServiceAccount, which every pod there uses)" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The stages' image: trainerImage, else the trainer at the chart's appVersion. */}}
{{- define "llamaduo.trainerImage" -}}
{{- .Values.trainerImage | default (printf "ghcr.io/llamaduo/llamaduo-trainer:%s" .Chart.AppVersion) -}}
{{- end -}}

{{/* Value combinations that would install something broken. */}}
{{- define "llamaduo.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without it every replica would act on every migration (duplicate Jobs, conflicting status writes)" -}}
{{- end -}}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "string" .Values.podDisruptionBudget.minAvailable)) (ge (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicaCount)) -}}
{{- fail (printf "podDisruptionBudget.minAvailable (%v) must be below replicaCount (%v): otherwise the budget blocks every node drain; raise replicaCount or lower minAvailable" .Values.podDisruptionBudget.minAvailable .Values.replicaCount) -}}
{{- end -}}
{{- end -}}

{{/* The watched namespaces: watchNamespaces plus the older single watchNamespace, without
repeats; empty watches all namespaces. */}}
{{- define "llamaduo.watchNamespaces" -}}
{{- $ns := .Values.watchNamespaces | default list -}}
{{- if .Values.watchNamespace -}}
{{- $ns = append $ns .Values.watchNamespace -}}
{{- end -}}
{{- $ns | uniq | join "," -}}
{{- end -}}
