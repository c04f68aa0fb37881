{{/*
Names, labels and small shared pieces. Every object is named <fullname>[-<component>]
and carries the standard app.kubernetes.io labels; selectors use only the stable subset.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "ucim.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: fullnameOverride, or <release>-<chart> (just <release> when it already
contains the chart name). Truncated to leave room for a "-<component>" suffix.
*/}}
{{- define "ucim.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "ucim.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. Call with (dict "ctx" $ "component" "gateway"); component may be empty. */}}
{{- define "ucim.labels" -}}
helm.sh/chart: {{ include "ucim.chart" .ctx }}
{{ include "ucim.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: ucim
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The labels selectors use; they never change over the life of a release. */}}
{{- define "ucim.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ucim.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* ServiceAccount names. */}}
{{- define "ucim.operator.serviceAccountName" -}}
{{- default (printf "%s-operator" (include "ucim.fullname" .)) .Values.operator.serviceAccount.name }}
{{- end }}
{{- define "ucim.gateway.serviceAccountName" -}}
{{- default (printf "%s-gateway" (include "ucim.fullname" .)) .Values.gateway.serviceAccount.name }}
{{- end }}
{{- define "ucim.bridge.serviceAccountName" -}}
{{- default (printf "%s-bridge" (include "ucim.fullname" .)) .Values.bridge.serviceAccount.name }}
{{- end }}

{{/* The gateway's URL as browsers reach it: gateway.publicUrl, else the Ingress's first host; empty when neither. */}}
{{- define "ucim.gatewayPublicUrl" -}}
{{- if .Values.gateway.publicUrl }}
{{- .Values.gateway.publicUrl | trimSuffix "/" }}
{{- else if .Values.gateway.ingress.enabled }}
{{- printf "https://%s" (first .Values.gateway.ingress.hosts).host }}
{{- end }}
{{- end }}

{{/* The bridge's token Secret. */}}
{{- define "ucim.bridge.tokenSecretName" -}}
{{- printf "%s-token" (include "ucim.bridge.serviceAccountName" .) }}
{{- end }}

{{/* The Secret with Core's public key, the refresh token and the ingress token. */}}
{{- define "ucim.secretName" -}}
{{- default (include "ucim.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* An image reference; call with (dict "image" .Values.gateway.image "ctx" $). */}}
{{- define "ucim.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Environment every component shares: logging, and the namespace of the resources. */}}
{{- define "ucim.commonEnv" -}}
- name: {{ .prefix }}LOG_LEVEL
  value: {{ .ctx.Values.log.level | quote }}
- name: {{ .prefix }}LOG_FORMAT
  value: {{ .ctx.Values.log.format | quote }}
- name: {{ .prefix }}NAMESPACE
  value: {{ .ctx.Release.Namespace | quote }}
- name: {{ .prefix }}PROVIDER_ID
  value: {{ .ctx.Values.provider.id | quote }}
{{- with .ctx.Values.provider.machineTypes }}
- name: {{ $.prefix }}MACHINE_TYPES
  value: {{ toJson . | quote }}
{{- end }}
{{- end }}

{{/* An env var read from the chart's Secret (or existingSecret); with "optional" true, a missing key leaves it unset. */}}
{{- define "ucim.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "ucim.secretName" .ctx }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}

{{/* The writable /tmp every pod mounts: the root filesystem is read-only. */}}
{{- define "ucim.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
{{- define "ucim.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
Fail early, with a readable message, on values that would install a broken release.
The schema checks shapes; this checks combinations.
*/}}
{{- define "ucim.validate" -}}
{{- if and (not .Values.existingSecret) (not .Values.core.publicKey) }}
{{- fail "core.publicKey is required (Core's public key; the gateway verifies Core's JWTs with it), or name a Secret in existingSecret" }}
{{- end }}
{{- if and .Values.bridgeScrapeConfig.enabled (not .Values.bridge.metricsTargets) }}
{{- fail "bridgeScrapeConfig.enabled needs bridge.metricsTargets (host:port of each frontend's bridge metrics)" }}
{{- end }}
{{- if and (not .Values.operator.serviceAccount.create) (not .Values.operator.serviceAccount.name) }}
{{- fail "operator.serviceAccount.name is required when operator.serviceAccount.create is false" }}
{{- end }}
{{- if and (not .Values.gateway.serviceAccount.create) (not .Values.gateway.serviceAccount.name) }}
{{- fail "gateway.serviceAccount.name is required when gateway.serviceAccount.create is false" }}
{{- end }}
{{- if and .Values.gateway.web.enabled (not .Values.gateway.web.domainSuffix) }}
{{- fail "gateway.web.enabled needs gateway.web.domainSuffix: the wildcard domain of the jobs' web interfaces, with its leading dot (e.g. .apps.example.org; DNS and a certificate for *.apps.example.org lead to the Ingress)" }}
{{- end }}
{{- if and .Values.gateway.web.enabled (not (include "ucim.gatewayPublicUrl" .)) }}
{{- fail "gateway.web.enabled needs gateway.publicUrl or gateway.ingress.enabled: the jobs' web interfaces are served with the scheme and port browsers reach the gateway with" }}
{{- end }}
{{- end }}
