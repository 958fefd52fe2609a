{{/*
Expand the name of the chart.
*/}}
{{- define "llm-router.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name (the router's objects use it as is).
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS
naming spec). If the release name contains the chart name it is used as the full name.
*/}}
{{- define "llm-router.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the Triton objects (Deployment, Service, ...).
*/}}
{{- define "llm-router.triton.fullname" -}}
{{- printf "%s-triton" (include "llm-router.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "llm-router.valkey.fullname" -}}
{{- printf "%s-valkey" (include "llm-router.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/*
The router's shared-store settings, checked: auth needs a master-key Secret (unless turned off)
and a store (router.store or this chart's Valkey).
*/}}
{{- define "llm-router.checkAuth" -}}
{{- $r := .Values.router }}
{{- $store := or $r.store.url $r.store.urlSecret.name .Values.valkey.enabled }}
{{- if and $r.auth.enabled (not $r.auth.masterKeySecret.name) }}
{{- fail "router.auth.masterKeySecret.name is required: create a Secret with the master key (kubectl create secret generic llm-router-master-key --from-literal=master-key=$(openssl rand -hex 32)) and name it here, or set router.auth.enabled=false to run without API keys (anyone who reaches the router may use it)" }}
{{- end }}
{{- if and $r.auth.enabled (not $store) }}
{{- fail "router.auth needs a store: set router.store.url (or urlSecret) or valkey.enabled=true" }}
{{- end }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "llm-router.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels. Call with (dict "ctx" $ "component" "router"|"triton"|"").
*/}}
{{- define "llm-router.labels" -}}
{{- $ctx := .ctx -}}
helm.sh/chart: {{ include "llm-router.chart" $ctx }}
{{ include "llm-router.selectorLabels" . }}
{{- if $ctx.Chart.AppVersion }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
app.kubernetes.io/part-of: {{ include "llm-router.name" $ctx }}
{{- with $ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels. Call with (dict "ctx" $ "component" "router"|"triton"|"").
*/}}
{{- define "llm-router.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-router.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/*
Create the name of the service account to use.
*/}}
{{- define "llm-router.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llm-router.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference. Call with (dict "image" .Values.x.image "ctx" $).
*/}}
{{- define "llm-router.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag | toString) }}
{{- end }}

{{/*
In-cluster URLs of this release's Triton Service.
*/}}
{{- define "llm-router.triton.host" -}}
{{- printf "%s.%s.svc" (include "llm-router.triton.fullname" .) .Release.Namespace }}
{{- end }}

{{/*
The router config as YAML: router.config with triton.http_url / triton.grpc_url defaulting to
this release's Triton Service. Also refuses configs that would need secret values in plain env.
*/}}
{{- define "llm-router.routerConfig" -}}
{{- $cfg := deepCopy (.Values.router.config | default dict) }}
{{- $triton := deepCopy (get $cfg "triton" | default dict) }}
{{- $host := include "llm-router.triton.host" . }}
{{- if not (get $triton "http_url") }}
{{- $_ := set $triton "http_url" (printf "http://%s:%d" $host (int .Values.triton.service.httpPort)) }}
{{- end }}
{{- if not (get $triton "grpc_url") }}
{{- $_ := set $triton "grpc_url" (printf "%s:%d" $host (int .Values.triton.service.grpcPort)) }}
{{- end }}
{{- $_ := set $cfg "triton" $triton }}
{{- toYaml $cfg }}
{{- end }}

{{/*
The env var names the router config's targets read API keys from.
*/}}
{{- define "llm-router.apiKeyEnvNames" -}}
{{- $names := list }}
{{- range (.Values.router.config.targets | default list) }}
{{- if and (kindIs "map" .) .api_key_env }}
{{- $names = append $names .api_key_env }}
{{- end }}
{{- end }}
{{- toJson ($names | uniq) }}
{{- end }}

{{/*
topologySpreadConstraints: items without a labelSelector get the component's selector labels.
Call with (dict "ctx" $ "component" "router" "constraints" list).
*/}}
{{- define "llm-router.topologySpread" -}}
{{- $ctx := .ctx }}
{{- $selector := include "llm-router.selectorLabels" (dict "ctx" $ctx "component" .component) | fromYaml }}
{{- $out := list }}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- toYaml $out }}
{{- end }}
