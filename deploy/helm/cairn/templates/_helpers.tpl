{{/* Names. fullname stays short: model names (up to 20 characters) are appended to it, and KubeRay appends
"-head-svc" to RayCluster names, all within the 63 characters of a DNS label. */}}
{{- define "cairn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 30 | trimSuffix "-" -}}
{{- end -}}

{{- define "cairn.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 30 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* dict "root" $ "component" "router" */}}
{{- define "cairn.componentName" -}}
{{- printf "%s-%s" (include "cairn.fullname" .root) .component -}}
{{- end -}}

{{/* dict "root" $ "model" $m */}}
{{- define "cairn.schedulerName" -}}
{{- printf "%s-scheduler-%s" (include "cairn.fullname" .root) .model.name -}}
{{- end -}}

{{- define "cairn.rayClusterName" -}}
{{- printf "%s-%s" (include "cairn.fullname" .root) .model.name -}}
{{- end -}}

{{/* KubeRay names the head Service of a RayCluster "<cluster>-head-svc". */}}
{{- define "cairn.rayHeadService" -}}
{{- printf "%s-head-svc" (include "cairn.rayClusterName" .) -}}
{{- end -}}

{{- define "cairn.servedName" -}}
{{- default .name .servedName -}}
{{- end -}}

{{/* Labels. dict "root" $ "component" "router" ["deployment" "llama"] */}}
{{- define "cairn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cairn.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .deployment }}
cairn.dev/deployment: {{ . }}
{{- end }}
{{- end -}}

{{- define "cairn.labels" -}}
{{ include "cairn.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: cairn
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Images. */}}
{{- define "cairn.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The image of a pod on an accelerator: dict "root" $ "accelerator" "nvidia"; the CPU image when the
accelerator names none. */}}
{{- define "cairn.imageFor" -}}
{{- $image := (index .root.Values.accelerators .accelerator).image | default dict -}}
{{- if $image.repository -}}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag) -}}
{{- else -}}
{{- include "cairn.image" .root -}}
{{- end -}}
{{- end -}}

{{- define "cairn.pullPolicyFor" -}}
{{- $image := (index .root.Values.accelerators .accelerator).image | default dict -}}
{{- if and $image.repository $image.pullPolicy -}}
{{- $image.pullPolicy -}}
{{- else -}}
{{- .root.Values.image.pullPolicy -}}
{{- end -}}
{{- end -}}

{{/* Empty without pull secrets; callers: with (include ...) then nindent. */}}
{{- define "cairn.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Addresses other pods reach services at. */}}
{{- define "cairn.registryAddress" -}}
{{- printf "%s:%d" (include "cairn.componentName" (dict "root" . "component" "registry")) (int .Values.registry.grpcPort) -}}
{{- end -}}

{{- define "cairn.tokenizerAddress" -}}
{{- printf "%s:%d" (include "cairn.componentName" (dict "root" . "component" "tokenizer")) (int .Values.tokenizer.grpcPort) -}}
{{- end -}}

{{- define "cairn.postgresqlName" -}}
{{- include "cairn.componentName" (dict "root" . "component" "postgresql") -}}
{{- end -}}

{{/* The Secret and key holding the metadata database URL (bundled or external). */}}
{{- define "cairn.databaseSecret" -}}
{{- if .Values.postgresql.enabled -}}
{{- printf "%s-database" (include "cairn.fullname" .) -}}
{{- else -}}
{{- required "externalDatabase.existingSecret is required when postgresql.enabled is false" .Values.externalDatabase.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "cairn.databaseKey" -}}
{{- if .Values.postgresql.enabled -}}url{{- else -}}{{ .Values.externalDatabase.urlKey }}{{- end -}}
{{- end -}}

{{/* An env entry reading the database URL: dict "root" $ "name" "CAIRN_REGISTRY_DATABASE_URL" */}}
{{- define "cairn.databaseUrlEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "cairn.databaseSecret" .root }}
      key: {{ include "cairn.databaseKey" .root }}
{{- end -}}

{{/* Service accounts. */}}
{{- define "cairn.serviceAccountName" -}}
{{- include "cairn.fullname" . -}}
{{- end -}}

{{- define "cairn.schedulerServiceAccountName" -}}
{{- include "cairn.componentName" (dict "root" . "component" "scheduler") -}}
{{- end -}}

{{- define "cairn.jobsServiceAccountName" -}}
{{- include "cairn.componentName" (dict "root" . "component" "jobs") -}}
{{- end -}}

{{/* dict "base" map "over" map -> YAML of base with over merged in: maps key by key, everything else
replaced, and false or 0 in `over` override too. */}}
{{- define "cairn.merge" -}}
{{- $out := deepCopy .base -}}
{{- range $key, $value := .over -}}
{{- if and (kindIs "map" $value) (kindIs "map" (get $out $key)) -}}
{{- $_ := set $out $key (include "cairn.merge" (dict "base" (get $out $key) "over" $value) | fromYaml) -}}
{{- else -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The model deployments as a YAML list, each entry merged over modelDefaults. */}}
{{- define "cairn.models" -}}
{{- $models := list -}}
{{- range .Values.models -}}
{{- $models = append $models (include "cairn.merge" (dict "base" $.Values.modelDefaults "over" .) | fromYaml) -}}
{{- end -}}
{{- toYaml $models -}}
{{- end -}}

{{/* The scheduler settings of one model: the shared `scheduler` values, overridden by models[].scheduler. */}}
{{- define "cairn.schedulerSpec" -}}
{{- include "cairn.merge" (dict "base" .root.Values.scheduler "over" (default dict .model.scheduler)) -}}
{{- end -}}

{{/* A model's worker placement: its own nodeSelector/tolerations, else its accelerator's. */}}
{{- define "cairn.workerNodeSelector" -}}
{{- $accel := index .root.Values.accelerators .model.accelerator -}}
{{- toYaml (default $accel.nodeSelector .model.workers.nodeSelector) -}}
{{- end -}}

{{- define "cairn.workerTolerations" -}}
{{- $accel := index .root.Values.accelerators .model.accelerator -}}
{{- toYaml (default $accel.tolerations .model.workers.tolerations) -}}
{{- end -}}

{{/*
One cairn service's Deployment. dict with:
  root, component, name, service (env prefix and command: `cairn <service> serve`), spec (its values:
  resources, nodeSelector, tolerations, affinity, podAnnotations, extraEnv, config, startupFailureThreshold,
  replicas, autoscaling), grpcPort, metricsPort, healthService (the gRPC service readiness asks for),
  strategy, serviceAccount, automountToken, and optional deployment (model name), env, ports, volumes,
  volumeMounts (rendered YAML lists).
*/}}
{{- define "cairn.deployment" -}}
{{- $root := .root -}}
{{- $spec := .spec -}}
{{- $prefix := printf "CAIRN_%s_" (upper .service) -}}
{{- $labelArgs := dict "root" $root "component" .component "deployment" .deployment -}}
{{- $autoscaled := and $spec.autoscaling $spec.autoscaling.enabled -}}
{{- $annotations := deepCopy (default dict $spec.podAnnotations) -}}
{{- if $spec.config -}}
{{- $_ := set $annotations "checksum/config" (toYaml $spec.config | sha256sum) -}}
{{- end -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "cairn.labels" $labelArgs | nindent 4 }}
spec:
  {{- if not $autoscaled }}
  replicas: {{ hasKey $spec "replicas" | ternary $spec.replicas 1 }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: {{ .strategy }}
  selector:
    matchLabels:
      {{- include "cairn.selectorLabels" $labelArgs | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "cairn.labels" $labelArgs | nindent 8 }}
      {{- with $annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      # Service links would inject CAIRN_<SERVICE>_PORT=tcp://... and collide with cairn's config variables.
      enableServiceLinks: false
      serviceAccountName: {{ .serviceAccount }}
      automountServiceAccountToken: {{ .automountToken }}
      terminationGracePeriodSeconds: {{ add $root.Values.shutdownGraceSeconds $root.Values.preStopSleepSeconds 10 }}
      {{- with (include "cairn.imagePullSecrets" $root) }}
      {{- . | nindent 6 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .component }}
          image: {{ include "cairn.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["cairn", {{ .service | quote }}, "serve"]
          env:
            - name: {{ $prefix }}HOST
              value: 0.0.0.0
            - name: {{ $prefix }}PORT
              value: {{ .grpcPort | quote }}
            - name: {{ $prefix }}METRICS_PORT
              value: {{ .metricsPort | quote }}
            - name: {{ $prefix }}LOG_FORMAT
              value: json
            - name: {{ $prefix }}LOG_LEVEL
              value: {{ $root.Values.logLevel | quote }}
            - name: {{ $prefix }}SHUTDOWN_GRACE_S
              value: {{ $root.Values.shutdownGraceSeconds | quote }}
            {{- if $spec.config }}
            - name: {{ $prefix }}CONFIG
              value: /etc/cairn/config.yaml
            {{- end }}
            - name: CAIRN_HOME
              value: /var/lib/cairn
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $spec.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: grpc
              containerPort: {{ .grpcPort }}
              protocol: TCP
            - name: metrics
              containerPort: {{ .metricsPort }}
              protocol: TCP
            {{- with .ports }}
            {{- . | nindent 12 }}
            {{- end }}
          startupProbe:
            grpc:
              port: {{ .grpcPort }}
            periodSeconds: 5
            failureThreshold: {{ $spec.startupFailureThreshold }}
          readinessProbe:
            grpc:
              port: {{ .grpcPort }}
              service: {{ .healthService }}
            periodSeconds: 5
            failureThreshold: 2
          livenessProbe:
            grpc:
              port: {{ .grpcPort }}
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 6
          lifecycle:
            preStop:
              exec:
                command: ["sleep", {{ $root.Values.preStopSleepSeconds | quote }}]
          resources:
            {{- toYaml $spec.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: home
              mountPath: /var/lib/cairn
            {{- if $spec.config }}
            - name: config
              mountPath: /etc/cairn
              readOnly: true
            {{- end }}
            {{- with .volumeMounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: {}
        - name: home
          emptyDir: {}
        {{- if $spec.config }}
        - name: config
          configMap:
            name: {{ .name }}-config
        {{- end }}
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
      {{- with $spec.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $spec.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $spec.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/* The ClusterIP Service in front of a cairn Deployment: dict root, component, name, grpcPort, metricsPort,
optional deployment, ports (rendered YAML list), serviceSpec (type, annotations). */}}
{{- define "cairn.service" -}}
{{- $labelArgs := dict "root" .root "component" .component "deployment" .deployment -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "cairn.labels" $labelArgs | nindent 4 }}
  {{- with (and .serviceSpec .serviceSpec.annotations) }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ (and .serviceSpec .serviceSpec.type) | default "ClusterIP" }}
  selector:
    {{- include "cairn.selectorLabels" $labelArgs | nindent 4 }}
  ports:
    - name: grpc
      port: {{ .grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: kubernetes.io/h2c
    - name: metrics
      port: {{ .metricsPort }}
      targetPort: metrics
      protocol: TCP
    {{- with .ports }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* The optional config file of a service (its `config` values, as the service's YAML config). */}}
{{- define "cairn.configMap" -}}
{{- if .spec.config }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .name }}-config
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "cairn.labels" (dict "root" .root "component" .component "deployment" .deployment) | nindent 4 }}
data:
  config.yaml: |
    {{- toYaml .spec.config | nindent 4 }}
{{- end }}
{{- end -}}
