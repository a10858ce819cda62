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
{{- with .Values.sources }}
{{- $sources := list }}
{{- range . }}
{{- $source := dict "name" .name "topic_prefix" .topicPrefix "postgres" (dict "dsn_file" (printf "%s/sources/%s/dsn" (include "cache-reconciler.secretsDir" $) .name)) }}
{{- with .connector }}
{{- $_ := set $source "connector" . }}
{{- end }}
{{- $sources = append $sources $source }}
{{- end }}
{{- $_ := set $cfg "sources" $sources }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Refuse values that would render a broken deployment; the schema checks types, this
checks the relations between values. Included by the Deployment and the replay Job.
*/}}
{{- define "cache-reconciler.validate" -}}
{{- if and .Values.sources .Values.postgres.existingSecret }}
{{- fail "sources and postgres.existingSecret are both set: with sources each source's DSN comes from its own existingSecret; empty postgres.existingSecret." }}
{{- end }}
{{- $sourceNames := dict }}
{{- range .Values.sources }}
{{- if hasKey $sourceNames .name }}
{{- fail (printf "sources: the name %s is given more than once." .name) }}
{{- end }}
{{- $_ := set $sourceNames .name true }}
{{- end }}
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
{{- $registry := $kafka.schema_registry | default dict }}
{{- $avro := or (eq ($kafka.format | default "json") "avro") (has "avro" (values ($kafka.formats | default dict))) }}
{{- if and $avro (not $registry.url) }}
{{- fail "config.kafka.format or formats names avro topics: set config.kafka.schema_registry.url (the registry their writer schemas are read from)." }}
{{- end }}
{{- if and .Values.kafka.schemaRegistry.existingSecret (not $registry.url) }}
{{- fail "kafka.schemaRegistry.existingSecret is set but config.kafka.schema_registry.url is not: set the registry's url, or drop the secret." }}
{{- end }}
{{- if and .Values.kafka.schemaRegistry.usernameKey $registry.username }}
{{- fail "kafka.schemaRegistry.usernameKey and config.kafka.schema_registry.username are both set: take the user name from one of them." }}
{{- end }}
{{- if and (not (include "cache-reconciler.kafkaUsesTls" .)) (or .Values.kafka.tls.ca.existingSecret .Values.kafka.tls.clientCert.existingSecret) }}
{{- fail (printf "kafka.tls secrets are set but config.kafka.security.protocol is %s: use SSL or SASL_SSL, or drop them." $protocol) }}
{{- end }}
{{- end }}

{{- define "cache-reconciler.secretsDir" -}}/etc/cache-reconciler/secrets{{- end }}

{{/*
What each component talks to. worker and replay: Kafka and Valkey; audit: Valkey and
PostgreSQL (and the Pushgateway). Argument: the component's name. Prints YAML.
*/}}
{{- define "cache-reconciler.uses" -}}
kafka: {{ ne . "audit" }}
valkey: true
postgres: {{ eq . "audit" }}
{{- end }}

{{/*
The credentials a component gets, as files of its `secrets` volume, each named to the
reconciler by a `*_FILE` setting: [{env, path, secret, key}], under `files:`. Only what
the component uses: the worker and replay pods never get the PostgreSQL DSN, the audit
pods never get Kafka's credentials. Argument: (dict "root" $ "component" NAME).
*/}}
{{- define "cache-reconciler.secretFiles" -}}
{{- $root := .root }}
{{- $uses := include "cache-reconciler.uses" .component | fromYaml }}
{{- $files := list }}
{{- with $root.Values.kafka.sasl }}
{{- if and $uses.kafka .existingSecret (include "cache-reconciler.kafkaUsesSasl" $root) }}
{{- if .usernameKey }}
{{- $files = append $files (dict "env" "RECONCILER_KAFKA__SECURITY__SASL_USERNAME_FILE" "path" "kafka/sasl-username" "secret" .existingSecret "key" .usernameKey) }}
{{- end }}
{{- $files = append $files (dict "env" "RECONCILER_KAFKA__SECURITY__SASL_PASSWORD_FILE" "path" "kafka/sasl-password" "secret" .existingSecret "key" .passwordKey) }}
{{- end }}
{{- end }}
{{- with $root.Values.kafka.schemaRegistry }}
{{- if and $uses.kafka .existingSecret }}
{{- if .usernameKey }}
{{- $files = append $files (dict "env" "RECONCILER_KAFKA__SCHEMA_REGISTRY__USERNAME_FILE" "path" "kafka/schema-registry-username" "secret" .existingSecret "key" .usernameKey) }}
{{- end }}
{{- $files = append $files (dict "env" "RECONCILER_KAFKA__SCHEMA_REGISTRY__PASSWORD_FILE" "path" "kafka/schema-registry-password" "secret" .existingSecret "key" .passwordKey) }}
{{- end }}
{{- end }}
{{- range $auth := list (list .root.Values.valkey.auth "VALKEY" "valkey/") (list .root.Values.valkey.sentinelAuth "VALKEY__SENTINEL" "valkey/sentinel-") }}
{{- $values := index $auth 0 }}
{{- if and $uses.valkey $values.existingSecret }}
{{- if $values.usernameKey }}
{{- $files = append $files (dict "env" (printf "RECONCILER_%s__USERNAME_FILE" (index $auth 1)) "path" (printf "%susername" (index $auth 2)) "secret" $values.existingSecret "key" $values.usernameKey) }}
{{- end }}
{{- $files = append $files (dict "env" (printf "RECONCILER_%s__PASSWORD_FILE" (index $auth 1)) "path" (printf "%spassword" (index $auth 2)) "secret" $values.existingSecret "key" $values.passwordKey) }}
{{- end }}
{{- end }}
{{- with $root.Values.postgres }}
{{- if and $uses.postgres .existingSecret }}
{{- $files = append $files (dict "env" "RECONCILER_POSTGRES__DSN_FILE" "path" "postgres/dsn" "secret" .existingSecret "key" .dsnKey) }}
{{- end }}
{{- end }}
{{- if $uses.postgres }}
{{- range $root.Values.sources }}
{{- /* named by sources[].postgres.dsn_file in the config, not by a variable */}}
{{- $files = append $files (dict "env" "" "path" (printf "sources/%s/dsn" .name) "secret" .existingSecret "key" (.dsnKey | default "dsn")) }}
{{- end }}
{{- end }}
{{- toYaml (dict "files" $files) }}
{{- end }}

{{/*
Environment of the reconciler container: the config path and where each credential's
file is; never a credential (a Kafka SASL user name given as plain text in
`kafka.sasl.username` aside: it is not secret). Argument: (dict "root" $ "component" NAME).
*/}}
{{- define "cache-reconciler.env" -}}
{{- $root := .root }}
{{- $uses := include "cache-reconciler.uses" .component | fromYaml }}
- name: RECONCILER_CONFIG
  value: {{ include "cache-reconciler.configPath" $root | quote }}
{{- with $root.Values.kafka.sasl }}
{{- if and $uses.kafka .existingSecret (not .usernameKey) (include "cache-reconciler.kafkaUsesSasl" $root) }}
- name: RECONCILER_KAFKA__SECURITY__SASL_USERNAME
  value: {{ .username | quote }}
{{- end }}
{{- end }}
{{- range (include "cache-reconciler.secretFiles" . | fromYaml).files }}
{{- if .env }}
- name: {{ .env }}
  value: {{ printf "%s/%s" (include "cache-reconciler.secretsDir" $root) .path | quote }}
{{- end }}
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volume mounts of the reconciler container. Argument: (dict "root" $ "component" NAME). */}}
{{- define "cache-reconciler.volumeMounts" -}}
{{- $root := .root }}
{{- $uses := include "cache-reconciler.uses" .component | fromYaml }}
- name: config
  mountPath: {{ include "cache-reconciler.configDir" $root }}
  readOnly: true
- name: shard-map
  mountPath: {{ include "cache-reconciler.shardMapDir" $root }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if (include "cache-reconciler.secretFiles" . | fromYaml).files }}
- name: secrets
  mountPath: {{ include "cache-reconciler.secretsDir" $root }}
  readOnly: true
{{- end }}
{{- if and $uses.kafka (or $root.Values.kafka.tls.ca.existingSecret $root.Values.kafka.tls.clientCert.existingSecret) }}
- name: kafka-tls
  mountPath: {{ include "cache-reconciler.kafkaTlsDir" $root }}
  readOnly: true
{{- end }}
{{- if or $root.Values.valkey.tls.ca.existingSecret $root.Values.valkey.tls.clientCert.existingSecret }}
- name: valkey-tls
  mountPath: {{ include "cache-reconciler.valkeyTlsDir" $root }}
  readOnly: true
{{- end }}
{{- with $root.Values.extraVolumeMounts }}
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

{{/* Volumes of the reconciler pods. Argument: (dict "root" $ "component" NAME). */}}
{{- define "cache-reconciler.volumes" -}}
{{- $root := .root }}
{{- $uses := include "cache-reconciler.uses" .component | fromYaml }}
- name: config
  configMap:
    name: {{ include "cache-reconciler.configMapName" $root }}
# The shard map is mounted as a whole directory, never with subPath: the kubelet
# updates a directory mount in place (atomically, through the ..data symlink), so the
# workers reload a new shard map without a restart. A subPath mount never updates.
- name: shard-map
  configMap:
    name: {{ include "cache-reconciler.shardMapConfigMapName" $root }}
    items:
      - key: {{ $root.Values.shardMap.fileName | quote }}
        path: {{ $root.Values.shardMap.fileName | quote }}
- name: tmp
  emptyDir:
    sizeLimit: {{ $root.Values.tmpSizeLimit }}
{{- with (include "cache-reconciler.secretFiles" . | fromYaml).files }}
# The credentials this component uses, one file each, readable by the pod's group only.
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      {{- range . }}
      - secret:
          name: {{ .secret | quote }}
          items:
            - key: {{ .key | quote }}
              path: {{ .path | quote }}
      {{- end }}
{{- end }}
{{- if and $uses.kafka (or $root.Values.kafka.tls.ca.existingSecret $root.Values.kafka.tls.clientCert.existingSecret) }}
{{ include "cache-reconciler.tlsVolume" (list "kafka-tls" $root.Values.kafka.tls) }}
{{- end }}
{{- if or $root.Values.valkey.tls.ca.existingSecret $root.Values.valkey.tls.clientCert.existingSecret }}
{{ include "cache-reconciler.tlsVolume" (list "valkey-tls" $root.Values.valkey.tls) }}
{{- end }}
{{- with $root.Values.extraVolumes }}
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
