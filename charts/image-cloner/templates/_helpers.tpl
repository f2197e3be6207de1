{{/*
Checks of values that would render a controller that cannot start or an
object the API server refuses; each fails the render with what to change.
*/}}
{{- define "image-cloner.validate" -}}
{{- if not (has .Values.copyBackend (list "docker" "skopeo")) -}}
{{- fail (printf "copyBackend must be docker or skopeo, got %v" .Values.copyBackend) -}}
{{- end -}}
{{- range $key := list "copyBackend" "dockerHost" "dockerConfig" "controllerNamespace" -}}
{{- if hasKey $.Values.config $key -}}
{{- fail (printf "config.%s is set by the chart; use the top-level copyBackend value, the others follow from it (docs/helm.md)" $key) -}}
{{- end -}}
{{- end -}}
{{- if not .Values.config.target -}}
{{- fail "config.target is required: the owned registry, e.g. registry.example.com/mirror" -}}
{{- end -}}
{{- if not (int .Values.config.metricsPort) -}}
{{- fail "config.metricsPort must be a port: the readiness and liveness probes use it" -}}
{{- end -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.config.leaderElection.enabled) -}}
{{- fail "replicas > 1 needs config.leaderElection.enabled: true (two leaders would fight over every workload)" -}}
{{- end -}}
{{- if and .Values.dockerConfig.existingSecret .Values.dockerConfig.existingConfigMap -}}
{{- fail "set at most one of dockerConfig.existingSecret and dockerConfig.existingConfigMap" -}}
{{- end -}}
{{- if and (not .Values.dockerConfig.existingSecret) (not .Values.dockerConfig.existingConfigMap) (not .Values.dockerConfig.json) -}}
{{- fail "dockerConfig: set json, existingSecret or existingConfigMap" -}}
{{- end -}}
{{- if hasKey (.Values.config.pullSecret | default dict) "dockerConfig" -}}
{{- fail "config.pullSecret.dockerConfig is set by the chart; use the top-level pullDockerConfig value (docs/helm.md)" -}}
{{- end -}}
{{- $pull := .Values.pullDockerConfig -}}
{{- if gt (len (compact (list $pull.existingSecret $pull.existingConfigMap $pull.json))) 1 -}}
{{- fail "set at most one of pullDockerConfig.existingSecret, pullDockerConfig.existingConfigMap and pullDockerConfig.json" -}}
{{- end -}}
{{- end -}}

{{/* Whether read-only pull credentials are mounted (pullDockerConfig): "true" or "". */}}
{{- define "image-cloner.pullDockerConfig" -}}
{{- $pull := .Values.pullDockerConfig -}}
{{- if or $pull.existingSecret $pull.existingConfigMap $pull.json }}true{{ end -}}
{{- end -}}

{{/* The controller image: repository:tag, the tag defaulting to appVersion. */}}
{{- define "image-cloner.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) -}}
{{- end -}}

{{/* Whether the docker-in-docker sidecar is rendered. */}}
{{- define "image-cloner.dind" -}}
{{- if eq .Values.copyBackend "docker" }}true{{ end -}}
{{- end -}}

{{/*
The proxy environment of the controller and of the dind sidecar (proxy.*):
HTTPS_PROXY, HTTP_PROXY and NO_PROXY, each also in lowercase (libcurl reads
only http_proxy; Python and Go read either), when httpsProxy or httpProxy is
set; nothing otherwise. An empty value renders the name alone, which is the
empty string: the API server drops `value: ""`, and `kubectl apply` would then
report a change on every run (as DOCKER_TLS_CERTDIR in the Deployment).
*/}}
{{- define "image-cloner.proxyEnv" -}}
{{- $proxy := .Values.proxy | default dict -}}
{{- if or $proxy.httpsProxy $proxy.httpProxy -}}
{{- range $pair := list (list "HTTPS_PROXY" $proxy.httpsProxy) (list "HTTP_PROXY" $proxy.httpProxy) (list "NO_PROXY" $proxy.noProxy) }}
{{- $value := index $pair 1 | default "" | toString }}
{{- range $name := list (index $pair 0) (index $pair 0 | lower) }}
- name: {{ $name }}
{{- with $value }}
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
{{- end -}}
