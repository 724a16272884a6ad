{{/* The labels of every object; the argument is the component. */}}
{{- define "palisade.labels" -}}
app.kubernetes.io/component: {{ . }}
app.kubernetes.io/name: palisade
app.kubernetes.io/part-of: palisade
{{- end }}

{{/* The labels that select the controller's pods. */}}
{{- define "palisade.selectorLabels" -}}
app.kubernetes.io/component: controller
app.kubernetes.io/name: palisade
{{- end }}

{{/* The image every part runs from. */}}
{{- define "palisade.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The webhooks' client configuration; the argument is (list $ path caBundle). */}}
{{- define "palisade.clientConfig" -}}
{{- $root := index . 0 -}}
service:
  name: palisade
  namespace: {{ $root.Release.Namespace }}
  path: {{ index . 1 }}
  port: 443
{{- if index . 2 }}
caBundle: {{ index . 2 }}
{{- end }}
{{- end }}
