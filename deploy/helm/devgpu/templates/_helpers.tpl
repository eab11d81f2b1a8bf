{{/* The release's full name, which every object is named after. */}}
{{- define "devgpu.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "devgpu.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "devgpu.labels" -}}
{{ include "devgpu.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* An image reference: repository, then @digest when given, else :tag. */}}
{{- define "devgpu.image" -}}
{{- $img := index . 0 -}}{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository ($img.tag | default $root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "devgpu.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "devgpu.fullname" .) -}}
{{- end -}}

{{/* Where session Pods run. */}}
{{- define "devgpu.sessionsNamespace" -}}
{{- .Values.backend.kube.namespace | default .Release.Namespace -}}
{{- end -}}

{{/* The Service's in-cluster DNS names. */}}
{{- define "devgpu.serviceDNSNames" -}}
{{- $n := include "devgpu.fullname" . -}}
{{- list $n (printf "%s.%s" $n .Release.Namespace) (printf "%s.%s.svc" $n .Release.Namespace) (printf "%s.%s.svc.cluster.local" $n .Release.Namespace) | toJson -}}
{{- end -}}

{{/* The URL session Pods link back to. */}}
{{- define "devgpu.linkURL" -}}
{{- if .Values.link.url -}}
{{- .Values.link.url -}}
{{- else if .Values.service.clusterIP -}}
{{- printf "https://%s:%v" .Values.service.clusterIP .Values.service.port -}}
{{- else -}}
{{- printf "https://%s.%s.svc:%v" (include "devgpu.fullname" .) .Release.Namespace .Values.service.port -}}
{{- end -}}
{{- end -}}

{{/* The name of the Secret with tls.crt, tls.key and ca.crt. */}}
{{- define "devgpu.tlsSecret" -}}
{{- .Values.tls.secretName | default (printf "%s-tls" (include "devgpu.fullname" .)) -}}
{{- end -}}

{{/* Fails the render, with the fix, on values that cannot work. */}}
{{- define "devgpu.validate" -}}
{{- if not .Values.store.url -}}
{{- fail "store.url is required: give the PostgreSQL URL all replicas share (--set store.url=postgres://USER:PASSWORD@HOST:5432/DB)" -}}
{{- end -}}
{{- if not (or (hasPrefix "postgres://" .Values.store.url) (hasPrefix "postgresql://" .Values.store.url)) -}}
{{- fail "store.url must be a postgres:// URL: SQLite serves one server only, and the chart runs several replicas" -}}
{{- end -}}
{{- $u := urlParse (include "devgpu.linkURL" .) -}}
{{- if ne $u.scheme "https" -}}
{{- fail "link.url must be an https:// URL (session agents link over TLS)" -}}
{{- end -}}
{{- $host := regexReplaceAll ":[0-9]+$" $u.host "" -}}
{{- if and (not (regexMatch "^[0-9.]+$" $host)) (not .Values.backend.kube.control_plane_cidrs) -}}
{{- fail (printf "link.url's host %s is a name, so the sessions' egress policy cannot tell its addresses: set backend.kube.control_plane_cidrs to the server Pods' CIDR, or service.clusterIP to a fixed address" $host) -}}
{{- end -}}
{{- if and .Values.agentKey (ne (len (b64dec .Values.agentKey)) 32) -}}
{{- fail "agentKey must be 32 bytes, base64-encoded (head -c32 /dev/urandom | base64)" -}}
{{- end -}}
{{- if and .Values.installationID (not (regexMatch "^[0-9a-f]{24}$" .Values.installationID)) -}}
{{- fail "installationID must be 24 lowercase hex digits, as in a server's data directory file \"installation\"" -}}
{{- end -}}
{{- /* The agent key, installation id and CA are kept across upgrades by
     looking up the release's Secrets. An upgrade rendered without cluster
     access (helm template --is-upgrade, --dry-run, a GitOps renderer) finds
     nothing and would make new ones, cutting off every running session. */ -}}
{{- if .Release.IsUpgrade -}}
{{- $missing := list -}}
{{- if not (lookup "v1" "Secret" .Release.Namespace (include "devgpu.fullname" .)).data -}}
{{- if not .Values.agentKey -}}{{- $missing = append $missing "agentKey" -}}{{- end -}}
{{- if not .Values.installationID -}}{{- $missing = append $missing "installationID" -}}{{- end -}}
{{- end -}}
{{- if and (not .Values.tls.secretName) (not (lookup "v1" "Secret" .Release.Namespace (include "devgpu.tlsSecret" .)).data) -}}
{{- $missing = append $missing "tls.secretName" -}}
{{- end -}}
{{- if $missing -}}
{{- fail (printf "this upgrade cannot read the release's Secrets (rendered without cluster access: helm template, --dry-run or a GitOps renderer) and would replace the agent key, installation id or CA, cutting off every running session: set %s to the installation's values" (join ", " $missing)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
