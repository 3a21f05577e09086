{{/* The chart's name, at most 63 characters (a DNS label). */}}
{{- define "spend-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name alone when it already contains the chart's name. */}}
{{- define "spend-exporter.fullname" -}}
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

{{- define "spend-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spend-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "spend-exporter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "spend-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: spend-exporter
{{- end }}

{{- define "spend-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spend-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "spend-exporter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The container port: the number at the end of config.listen_address (":9877", "0.0.0.0:9877"). */}}
{{- define "spend-exporter.port" -}}
{{- $addr := toString (default ":9877" .Values.config.listen_address) }}
{{- $port := regexFind "[0-9]+$" $addr }}
{{- if not $port }}{{ fail (printf "config.listen_address %q: no port at its end" $addr) }}{{ end }}
{{- $port }}
{{- end }}

{{- define "spend-exporter.webConfigOn" -}}
{{- if .Values.webConfig }}true{{ end }}
{{- end }}

{{/* "true" when the web config turns TLS on. */}}
{{- define "spend-exporter.tls" -}}
{{- $tls := (.Values.webConfig).tls_server_config }}
{{- if and $tls $tls.cert_file }}true{{ end }}
{{- end }}

{{/* "true" when the server demands a client certificate, which the kubelet does not have. */}}
{{- define "spend-exporter.clientCertRequired" -}}
{{- $tls := (.Values.webConfig).tls_server_config }}
{{- if and $tls $tls.cert_file }}
{{- $type := default (ternary "RequireAndVerifyClientCert" "NoClientCert" (not (empty $tls.client_ca_file))) $tls.client_auth_type }}
{{- if has $type (list "RequireAnyClientCert" "RequireAndVerifyClientCert") }}true{{ end }}
{{- end }}
{{- end }}

{{/* The runbook base the shipped rules use: the text before '#' of the first runbook_url in spend-alerts.yml. */}}
{{- define "spend-exporter.shippedRunbookBase" -}}
{{- $m := regexFind "runbook_url:\\s*[^#\\s]+" (.Files.Get "files/rules/spend-alerts.yml") }}
{{- if not $m }}{{ fail "files/rules/spend-alerts.yml: no runbook_url found (is the symbolic link to prometheus/rules there?)" }}{{ end }}
{{- regexReplaceAll "^runbook_url:\\s*" $m "" }}
{{- end }}
