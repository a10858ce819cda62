{{/*
Naming, labels and the pieces shared by the worker Deployment and the replay Job.
*/}}

{{/* Chart name, overridable. */}}
{{- define "cache-reconciler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, cut to 63 characters (the DNS label limit some names are
bound by). The release name is used as is when it already contains the chart name.
*/}}
{{- define "cache-reconciler.fullname" -}}
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
A name derived from the full name with a suffix, kept within 63 characters by cutting
the full name, never the suffix.
*/}}
{{- define "cache-reconciler.suffixedName" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $base := include "cache-reconciler.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "cache-reconciler.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "cache-reconciler.labels" -}}
helm.sh/chart: {{ include "cache-reconciler.chart" . }}
{{ include "cache-reconciler.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cache-reconciler
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels shared by every pod of the release. */}}
{{- define "cache-reconciler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cache-reconciler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of the worker pods only (not the replay Job's nor the test pod's), used
by the Deployment, the Service, the PDB and the topology spread constraints.
*/}}
{{- define "cache-reconciler.workerSelectorLabels" -}}
{{ include "cache-reconciler.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{/* Name of the ServiceAccount to use. */}}
{{- define "cache-reconciler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cache-reconciler.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: registry/repository:tag[@digest]. */}}
{{- define "cache-reconciler.image" -}}
{{- $repository := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repository = printf "%s/%s" .Values.image.registry .Values.image.repository }}
{{- end }}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" $repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/* Names of the ConfigMaps and the metrics Service. */}}
{{- define "cache-reconciler.configMapName" -}}
{{- include "cache-reconciler.suffixedName" (list . "config") }}
{{- end }}

{{- define "cache-reconciler.shardMapConfigMapName" -}}
{{- if .Values.shardMap.existingConfigMap }}
{{- .Values.shardMap.existingConfigMap }}
{{- else }}
{{- include "cache-reconciler.suffixedName" (list . "shard-map") }}
{{- end }}
{{- end }}

{{- define "cache-reconciler.metricsServiceName" -}}
{{- include "cache-reconciler.suffixedName" (list . "metrics") }}
{{- end }}

{{/*
A PromQL label selector for this release's series, for rules/*.yaml:
  reconciler_consumer_lag_messages{ {{ include "cache-reconciler.metricsSelector" . }} }
The namespace and service labels are the ones the Prometheus Operator adds.
*/}}
{{- define "cache-reconciler.metricsSelector" -}}
namespace="{{ .Release.Namespace }}", service="{{ include "cache-reconciler.metricsServiceName" . }}"
{{- end }}

{{/* Where things are mounted in the container. */}}
{{- define "cache-reconciler.configDir" -}}/etc/cache-reconciler/config{{- end }}
{{- define "cache-reconciler.configPath" -}}{{ include "cache-reconciler.configDir" . }}/reconciler.yaml{{- end }}
{{- define "cache-reconciler.shardMapDir" -}}/etc/cache-reconciler/shard-map{{- end }}
{{- define "cache-reconciler.kafkaTlsDir" -}}/etc/cache-reconciler/tls/kafka{{- end }}
{{- define "cache-reconciler.valkeyTlsDir" -}}/etc/cache-reconciler/tls/valkey{{- end }}

{{/* Is a protocol one of the SASL / TLS ones? Prints "true" or nothing. */}}
{{- define "cache-reconciler.kafkaUsesSasl" -}}
{{- if has (.Values.config.kafka.security.protocol | default "PLAINTEXT") (list "SASL_PLAINTEXT" "SASL_SSL") }}true{{- end }}
{{- end }}
{{- define "cache-reconciler.kafkaUsesTls" -}}
{{- if has (.Values.config.kafka.security.protocol | default "PLAINTEXT") (list "SSL" "SASL_SSL") }}true{{- end }}
{{- end }}

{{/*
The reconciler's config file (SPEC §4): `config`, then `extraConfig` merged over it,
then what the chart owns (the shard-map path, the metrics server, TLS file paths). Empty
optional fields are dropped, so that the reconciler's own defaults apply.
*/}}
{{- define "cache-reconciler.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $cfg = mustMergeOverwrite $cfg (deepCopy (.Values.extraConfig | default dict)) }}
{{- $kafka := get $cfg "kafka" | default dict }}
{{- range $key := list "topics" "topic_regex" }}
{{- if not (get $kafka $key) }}
{{- $_ := unset $kafka $key }}
{{- end }}
{{- end }}
{{- if not (get $kafka "client") }}
{{- $_ := unset $kafka "client" }}
{{- end }}
{{- $security := get $kafka "security" | default dict }}
{{- if not (get $security "sasl_mechanism") }}
{{- $_ := unset $security "sasl_mechanism" }}
{{- end }}
{{- $tls := .Values.kafka.tls }}
{{- if $tls.ca.existingSecret }}
{{- $_ := set $security "ssl_ca_file" (printf "%s/ca.crt" (include "cache-reconciler.kafkaTlsDir" .)) }}
{{- end }}
{{- if $tls.clientCert.existingSecret }}
{{- $_ := set $security "ssl_cert_file" (printf "%s/tls.crt" (include "cache-reconciler.kafkaTlsDir" .)) }}
{{- $_ := set $security "ssl_key_file" (printf "%s/tls.key" (include "cache-reconciler.kafkaTlsDir" .)) }}
{{- end }}
{{- $_ := set $kafka "security" $security }}
{{- $_ := set $cfg "kafka" $kafka }}
{{- $vtls := .Values.valkey.tls }}
{{- if or $vtls.ca.existingSecret $vtls.clientCert.existingSecret }}
{{- $valkey := get $cfg "valkey" | default dict }}
{{- $valkeyTls := get $valkey "tls" | default dict }}
{{- if $vtls.ca.existingSecret }}
{{- $_ := set $valkeyTls "ca_file" (printf "%s/ca.crt" (include "cache-reconciler.valkeyTlsDir" .)) }}
{{- end }}
{{- if $vtls.clientCert.existingSecret }}
{{- $_ := set $valkeyTls "cert_file" (printf "%s/tls.crt" (include "cache-reconciler.valkeyTlsDir" .)) }}
{{- $_ := set $valkeyTls "key_file" (printf "%s/tls.key" (include "cache-reconciler.valkeyTlsDir" .)) }}
{{- end }}
{{- $_ := set $valkey "tls" $valkeyTls }}
{{- $_ := set $cfg "valkey" $valkey }}
{{- end }}
{{- $_ := set $cfg "shard_map" (printf "%s/%s" (include "cache-reconciler.shardMapDir" .) .Values.shardMap.fileName) }}
{{- $metrics := get $cfg "metrics" | default dict }}
{{- $_ := set $metrics "host" .Values.metrics.bindAddress }}
{{- $_ := set $metrics "port" (int .Values.metrics.port) }}
{{- $_ := set $cfg "metrics" $metrics }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Refuse values that would render a broken deployment; the schema checks types, this
checks the relations between values. Included by the Deployment and the replay Job.
*/}}
{{- define "cache-reconciler.validate" -}}
{{- $partitions := int .Values.kafka.partitionCount }}
{{- $budget := float64 (.Values.config.shutdown_timeout_seconds | default 30) }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) $budget }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be greater than config.shutdown_timeout_seconds (%v), the worker's commit budget on SIGTERM: Kubernetes would kill it mid-commit. Raise terminationGracePeriodSeconds (e.g. to %v) or lower the budget." .Values.terminationGracePeriodSeconds .Values.config.shutdown_timeout_seconds (add (ceil $budget) 15)) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.maxReplicas) $partitions }}
{{- fail (printf "autoscaling.maxReplicas (%d) exceeds kafka.partitionCount (%d): consumers beyond the partition count hold no partition and sit idle. Lower maxReplicas, or add partitions and raise kafka.partitionCount." (int .Values.autoscaling.maxReplicas) $partitions) }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%d) is greater than autoscaling.maxReplicas (%d)." (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- else if gt (int .Values.replicaCount) $partitions }}
{{- fail (printf "replicaCount (%d) exceeds kafka.partitionCount (%d): consumers beyond the partition count hold no partition and sit idle. Lower replicaCount, or add partitions and raise kafka.partitionCount." (int .Values.replicaCount) $partitions) }}
{{- end }}
{{- $kafka := .Values.config.kafka }}
{{- if and $kafka.topics $kafka.topic_regex }}
{{- fail "config.kafka.topics and config.kafka.topic_regex are exclusive: set one of them." }}
{{- end }}
{{- if has $kafka.dead_letter_topic ($kafka.topics | default list) }}
{{- fail (printf "config.kafka.dead_letter_topic (%s) must not be one of config.kafka.topics." $kafka.dead_letter_topic) }}
{{- end }}
{{- $vtls := .Values.valkey.tls }}
{{- if and (or $vtls.ca.existingSecret $vtls.clientCert.existingSecret) (not .Values.shardMap.existingConfigMap) }}
{{- range $name, $shard := .Values.shardMap.content.shards }}
{{- /* a standalone URL, else the first Sentinel's (or seed's): the kinds forbid mixing */}}
{{- $url := $shard.url | default (first ($shard.sentinel | default ($shard.cluster | default (list "")))) }}
{{- if not (regexMatch "^(valkeys|rediss)://" (toString $url)) }}
{{- fail (printf "valkey.tls is set but shard %s is %s: TLS shards use valkeys:// URLs." $name $url) }}
{{- end }}
{{- end }}
{{- end }}
{{- $protocol := $kafka.security.protocol | default "PLAINTEXT" }}
{{- if include "cache-reconciler.kafkaUsesSasl" . }}
{{- if not .Values.kafka.sasl.existingSecret }}
{{- fail (printf "config.kafka.security.protocol is %s: set kafka.sasl.existingSecret (and passwordKey) to the Secret holding the SASL password." $protocol) }}
{{- end }}
{{- if not $kafka.security.sasl_mechanism }}
{{- fail (printf "config.kafka.security.protocol is %s: set config.kafka.security.sasl_mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)." $protocol) }}
{{- end }}
{{- if and (not .Values.kafka.sasl.usernameKey) (not .Values.kafka.sasl.username) }}
{{- fail "kafka.sasl: set usernameKey (the user name's key in existingSecret) or username." }}
{{- end }}
{{- else if .Values.kafka.sasl.existingSecret }}
{{- fail (printf "kafka.sasl.existingSecret is set but config.kafka.security.protocol is %s: use SASL_PLAINTEXT or SASL_SSL, or drop the secret." $protocol) }}
{{- end }}
{{- if and (not (include "cache-reconciler.kafkaUsesTls" .)) (or .Values.kafka.tls.ca.existingSecret .Values.kafka.tls.clientCert.existingSecret) }}
{{- fail (printf "kafka.tls secrets are set but config.kafka.security.protocol is %s: use SSL or SASL_SSL, or drop them." $protocol) }}
{{- end }}
{{- if .Values.networkPolicy.enabled }}
{{- range $target := list "kafka" "valkey" }}
{{- $egress := index $.Values.networkPolicy.egress $target }}
{{- if and (not $egress.cidrs) (not $egress.peers) }}
{{- fail (printf "networkPolicy.enabled: set networkPolicy.egress.%s.cidrs or .peers, or the workers cannot reach %s." $target $target) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Environment of the reconciler container: the config path, and every credential from an
existing Secret by secretKeyRef (never a literal value).
*/}}
{{- define "cache-reconciler.env" -}}
- name: RECONCILER_CONFIG
  value: {{ include "cache-reconciler.configPath" . | quote }}
{{- with .Values.kafka.sasl }}
{{- if and .existingSecret (include "cache-reconciler.kafkaUsesSasl" $) }}
{{- if .usernameKey }}
- name: RECONCILER_KAFKA__SECURITY__SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .usernameKey | quote }}
{{- else }}
- name: RECONCILER_KAFKA__SECURITY__SASL_USERNAME
  value: {{ .username | quote }}
{{- end }}
- name: RECONCILER_KAFKA__SECURITY__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .passwordKey | quote }}
{{- end }}
{{- end }}
{{- with .Values.valkey.auth }}
{{- if .existingSecret }}
{{- if .usernameKey }}
- name: RECONCILER_VALKEY__USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .usernameKey | quote }}
{{- end }}
- name: RECONCILER_VALKEY__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .passwordKey | quote }}
{{- end }}
{{- end }}
{{- with .Values.valkey.sentinelAuth }}
{{- if .existingSecret }}
{{- if .usernameKey }}
- name: RECONCILER_VALKEY__SENTINEL__USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .usernameKey | quote }}
{{- end }}
- name: RECONCILER_VALKEY__SENTINEL__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .passwordKey | quote }}
{{- end }}
{{- end }}
{{- with .Values.postgres }}
{{- if .existingSecret }}
- name: RECONCILER_POSTGRES__DSN
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .dsnKey | quote }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volume mounts of the reconciler container. */}}
{{- define "cache-reconciler.volumeMounts" -}}
- name: config
  mountPath: {{ include "cache-reconciler.configDir" . }}
  readOnly: true
- name: shard-map
  mountPath: {{ include "cache-reconciler.shardMapDir" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if or .Values.kafka.tls.ca.existingSecret .Values.kafka.tls.clientCert.existingSecret }}
- name: kafka-tls
  mountPath: {{ include "cache-reconciler.kafkaTlsDir" . }}
  readOnly: true
{{- end }}
{{- if or .Values.valkey.tls.ca.existingSecret .Values.valkey.tls.clientCert.existingSecret }}
- name: valkey-tls
  mountPath: {{ include "cache-reconciler.valkeyTlsDir" . }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
A projected volume of TLS material from one or two existing Secrets, under fixed file
names: ca.crt, tls.crt, tls.key.
*/}}
{{- define "cache-reconciler.tlsVolume" -}}
{{- $name := index . 0 }}
{{- $tls := index . 1 }}
- name: {{ $name }}
  projected:
    defaultMode: 0440
    sources:
      {{- if $tls.ca.existingSecret }}
      - secret:
          name: {{ $tls.ca.existingSecret | quote }}
          items:
            - key: {{ $tls.ca.key | quote }}
              path: ca.crt
      {{- end }}
      {{- if $tls.clientCert.existingSecret }}
      - secret:
          name: {{ $tls.clientCert.existingSecret | quote }}
          items:
            - key: {{ $tls.clientCert.certKey | quote }}
              path: tls.crt
            - key: {{ $tls.clientCert.keyKey | quote }}
              path: tls.key
      {{- end }}
{{- end }}

{{/* Volumes of the worker and replay pods. */}}
{{- define "cache-reconciler.volumes" -}}
- name: config
  configMap:
    name: {{ include "cache-reconciler.configMapName" . }}
# The shard map is mounted as a whole directory, never with subPath: the kubelet
# updates a directory mount in place (atomically, through the ..data symlink), so the
# workers reload a new shard map without a restart. A subPath mount never updates.
- name: shard-map
  configMap:
    name: {{ include "cache-reconciler.shardMapConfigMapName" . }}
    items:
      - key: {{ .Values.shardMap.fileName | quote }}
        path: {{ .Values.shardMap.fileName | quote }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if or .Values.kafka.tls.ca.existingSecret .Values.kafka.tls.clientCert.existingSecret }}
{{ include "cache-reconciler.tlsVolume" (list "kafka-tls" .Values.kafka.tls) }}
{{- end }}
{{- if or .Values.valkey.tls.ca.existingSecret .Values.valkey.tls.clientCert.existingSecret }}
{{ include "cache-reconciler.tlsVolume" (list "valkey-tls" .Values.valkey.tls) }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod-level scheduling and identity fields shared by the worker and the replay Job. */}}
{{- define "cache-reconciler.podCommon" -}}
serviceAccountName: {{ include "cache-reconciler.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automount }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
"true" when a value is given: not null and not the empty string (0 and false count as
given). For optional numeric values whose default is null.
*/}}
{{- define "cache-reconciler.isSet" -}}
{{- if not (or (kindIs "invalid" .) (and (kindIs "string" .) (eq . ""))) }}true{{- end }}
{{- end }}
