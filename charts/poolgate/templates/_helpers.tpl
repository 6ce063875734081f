{{/* Names: <release>-poolgate, or <release> when the release name already says poolgate. */}}
{{- define "poolgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "poolgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "poolgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every object; callers add app.kubernetes.io/component. */}}
{{- define "poolgate.labels" -}}
helm.sh/chart: {{ include "poolgate.chart" . }}
app.kubernetes.io/name: {{ include "poolgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: poolgate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "poolgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "poolgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Component names, used for object names and the component label. */}}
{{- define "poolgate.control.fullname" -}}
{{- printf "%s-control" (include "poolgate.fullname" .) }}
{{- end }}

{{- define "poolgate.gateway.fullname" -}}
{{- printf "%s-gateway" (include "poolgate.fullname" .) }}
{{- end }}

{{- define "poolgate.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "poolgate.fullname" .) }}
{{- end }}

{{- define "poolgate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "poolgate.control.serviceAccountName" -}}
{{- if .Values.serviceAccount.control.create }}
{{- default (include "poolgate.control.fullname" .) .Values.serviceAccount.control.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.control.name }}
{{- end }}
{{- end }}

{{- define "poolgate.gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.gateway.create }}
{{- default (include "poolgate.gateway.fullname" .) .Values.serviceAccount.gateway.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.gateway.name }}
{{- end }}
{{- end }}

{{- define "poolgate.leaseName" -}}
{{- default (printf "%s-leader" (include "poolgate.control.fullname" .)) .Values.control.leaderElection.leaseName }}
{{- end }}

{{/* Secrets: the chart's generated Secret unless an existing one is named. */}}
{{- define "poolgate.encryptionKey.secretName" -}}
{{- default (printf "%s-encryption-key" (include "poolgate.fullname" .)) .Values.secrets.encryptionKey.existingSecret }}
{{- end }}

{{- define "poolgate.adminToken.secretName" -}}
{{- default (printf "%s-admin-token" (include "poolgate.fullname" .)) .Values.secrets.adminToken.existingSecret }}
{{- end }}

{{- define "poolgate.nodeToken.secretName" -}}
{{- default (printf "%s-node-token" (include "poolgate.fullname" .)) .Values.secrets.nodeToken.existingSecret }}
{{- end }}

{{/* The Secret and key holding POOLGATE_DATABASE_URL. */}}
{{- define "poolgate.database.secretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- include "poolgate.postgresql.fullname" . }}
{{- end }}
{{- end }}

{{- define "poolgate.database.secretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.key }}
{{- else }}
{{- print "url" }}
{{- end }}
{{- end }}

{{/* Fails the render on contradictory settings, with a message that says what to change. */}}
{{- define "poolgate.validate" -}}
{{- if and .Values.database.existingSecret .Values.postgresql.enabled }}
{{- fail "set either database.existingSecret (your PostgreSQL) or postgresql.enabled=true (the bundled try-out database), not both" }}
{{- end }}
{{- if not (or .Values.database.existingSecret .Values.postgresql.enabled) }}
{{- fail "poolgate needs PostgreSQL: set database.existingSecret (a Secret holding a postgres:// URL under database.key) or postgresql.enabled=true" }}
{{- end }}
{{- $prev := -1 }}
{{- range .Values.routingPolicy.cooldown_429_secs }}
{{- if lt (int .) $prev }}
{{- fail "routingPolicy.cooldown_429_secs: steps must not decrease" }}
{{- end }}
{{- $prev = int . }}
{{- end }}
{{- $as := .Values.gateway.autoscaling }}
{{- if and $as.enabled (not (or $as.targetCPUUtilizationPercentage $as.targetMemoryUtilizationPercentage)) }}
{{- fail "gateway.autoscaling needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- if and .Values.gateway.autoscaling.enabled (lt (int .Values.gateway.autoscaling.maxReplicas) (int .Values.gateway.autoscaling.minReplicas)) }}
{{- fail "gateway.autoscaling.maxReplicas must be at least gateway.autoscaling.minReplicas" }}
{{- end }}
{{- end }}

{{/* Pod and container hardening shared by every poolgate container. */}}
{{- define "poolgate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "poolgate.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* A soft or hard anti-affinity across nodes, unless the user gave an affinity. */}}
{{- define "poolgate.affinity" -}}
{{- $component := .component }}
{{- $values := .values }}
{{- $ctx := .ctx }}
{{- if $values.affinity }}
{{- toYaml $values.affinity }}
{{- else if eq $values.podAntiAffinity "soft" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "poolgate.selectorLabels" $ctx | nindent 12 }}
            app.kubernetes.io/component: {{ $component }}
{{- else if eq $values.podAntiAffinity "hard" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "poolgate.selectorLabels" $ctx | nindent 10 }}
          app.kubernetes.io/component: {{ $component }}
{{- end }}
{{- end }}

{{/* Topology spread constraints; a constraint without a labelSelector gets this component's. */}}
{{- define "poolgate.topologySpread" -}}
{{- $component := .component }}
{{- $ctx := .ctx }}
{{- range .values.topologySpreadConstraints }}
- {{ toYaml (omit . "labelSelector") | indent 2 | trim }}
  labelSelector:
  {{- if .labelSelector }}
    {{- toYaml .labelSelector | nindent 4 }}
  {{- else }}
    matchLabels:
      {{- include "poolgate.selectorLabels" $ctx | nindent 6 }}
      app.kubernetes.io/component: {{ $component }}
  {{- end }}
{{- end }}
{{- end }}

{{/* The budget of a PodDisruptionBudget: exactly one of maxUnavailable / minAvailable. */}}
{{- define "poolgate.pdbBudget" -}}
{{- $max := .pdb.maxUnavailable }}
{{- $min := .pdb.minAvailable }}
{{- if and (not (kindIs "invalid" $max)) (not (kindIs "invalid" $min)) }}
{{- fail (printf "%s: set minAvailable or maxUnavailable, not both" .where) }}
{{- else if not (kindIs "invalid" $max) }}
maxUnavailable: {{ $max }}
{{- else if not (kindIs "invalid" $min) }}
minAvailable: {{ $min }}
{{- else }}
{{- fail (printf "%s: set minAvailable or maxUnavailable" .where) }}
{{- end }}
{{- end }}

{{/* NetworkPolicy egress when restricted: DNS, this release's own pods, and the configured extras. */}}
{{- define "poolgate.restrictedEgress" -}}
- to:
    - namespaceSelector: {}
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
- to:
    - podSelector:
        matchLabels:
          {{- include "poolgate.selectorLabels" . | nindent 10 }}
{{- with .Values.networkPolicy.egress.extra }}
{{ toYaml . }}
{{- end }}
{{- end }}
