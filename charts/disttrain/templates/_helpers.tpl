{{/* Names and labels shared by every template. */}}

{{- define "disttrain.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name alone when it already contains the chart's name. */}}
{{- define "disttrain.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "disttrain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "disttrain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "disttrain.labels" -}}
{{ include "disttrain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: disttrain
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "disttrain.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "disttrain.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "disttrain.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
Exactly what the operator does, and nothing more (tests/integration/test_packaging.py runs the
operator with these rules and records every request it makes):
  - disttrainjobs: Kopf lists and watches them (no annotations or finalizers: the operator has no
    Kopf create/update/delete handlers); the operator reads one when its status patch finds that
    another writer was first (409), and deletes it after ttlSecondsAfterFinished.
  - disttrainjobs/status: the operator merge-patches the status subresource.
  - disttrainjobs/finalizers (update): never called; the OwnerReferencesPermissionEnforcement admission
    plugin (OpenShift, hardened clusters) checks it before a child may set blockOwnerDeletion on its job.
  - pods: Kopf lists and watches the jobs' pods; the operator creates and deletes them, and reads
    one when a create says AlreadyExists (adopting its own pod after a restart).
  - services: the operator creates each job's headless Service, and reads it on AlreadyExists.
  - events: Kopf and the operator post core v1 Events on jobs.
  - networkpolicies: the operator creates each job's NetworkPolicy, and reads it on AlreadyExists.
Kopf would also like to list/watch namespaces and customresourcedefinitions, to notice new ones at
run time; it works without (logging a warning), so those cluster-wide reads are not granted.
*/}}
{{- define "disttrain.rules" -}}
- apiGroups: ["disttrain.io"]
  resources: ["disttrainjobs"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: ["disttrain.io"]
  resources: ["disttrainjobs/status"]
  verbs: ["patch"]
- apiGroups: ["disttrain.io"]
  resources: ["disttrainjobs/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create"]
{{- end -}}
