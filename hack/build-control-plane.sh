#!/usr/bin/env bash
# Build (or reuse from the cache) the local Kubernetes control plane used by the tests:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (Kubernetes 1.34.x),
#   etcd 3.6.x, kwok and helm 3.x — all from the Go module proxy, via the wrapper modules in
#   hack/tools/<tool>/ (go.mod + go.sum pin every version).
# With --node (or DISTTRAIN_NODE=1) it also builds what a real node needs (make node-binaries):
#   kubelet and kube-proxy (same Kubernetes module), a minimal CoreDNS (hack/tools/coredns: only
#   the plugins listed in its main.go, no `forward`), and the static `pause` program of the sandbox
#   image (gcc, from build/pause/linux/pause.c in the k8s.io/kubernetes module).
#
# Output: ${DISTTRAIN_CACHE:-$HOME/.cache/disttrain}/k8s-<kube version>/bin/
# A tool is rebuilt only when a binary is missing or its wrapper go.mod/go.sum (flags, main.go)
# changed.
# KUBEBUILDER_ASSETS (envtest convention): if it holds kube-apiserver and etcd, those two are used
# as they are and not built; everything else is still built here when missing.
#
# Env: DISTTRAIN_CACHE (cache root), GO (go binary), GO_BUILD_P (parallelism, default 2),
#      DISTTRAIN_PRINT_BIN_DIR=1 (only print the bin folder and exit), DISTTRAIN_NODE=1 (= --node),
#      CC (C compiler for pause, default gcc).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/hack/tools"

die() { echo "build-control-plane: error: $*" >&2; exit 1; }

NODE="${DISTTRAIN_NODE:-0}"
for arg in "$@"; do
  case "$arg" in
    --node) NODE=1 ;;
    -h | --help) echo "usage: $0 [--node]   (--node: also build kubelet, kube-proxy, coredns, pause)"; exit 0 ;;
    *) die "unknown argument '$arg' (usage: $0 [--node])" ;;
  esac
done

# Version of module $2 required by wrapper go.mod $1 (works for `require x v` and require blocks).
modver() {
  awk -v m="$2" '($1 == m && $2 ~ /^v/) {print $2; exit} ($1 == "require" && $2 == m) {print $3; exit}' "$1"
}

KUBE_VERSION="$(modver "$TOOLS/kubernetes/go.mod" k8s.io/kubernetes)"
ETCD_VERSION="$(modver "$TOOLS/etcd/go.mod" go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(modver "$TOOLS/kwok/go.mod" sigs.k8s.io/kwok)"
HELM_VERSION="$(modver "$TOOLS/helm/go.mod" helm.sh/helm/v3)"
HELM_CLIENT_GO="$(modver "$TOOLS/helm/go.mod" k8s.io/client-go)"
COREDNS_VERSION="$(modver "$TOOLS/coredns/go.mod" github.com/coredns/coredns)"
[[ -n "$KUBE_VERSION" && -n "$ETCD_VERSION" && -n "$KWOK_VERSION" && -n "$HELM_VERSION" && -n "$COREDNS_VERSION" ]] ||
  die "could not read the pinned versions from hack/tools/*/go.mod"

CACHE="${DISTTRAIN_CACHE:-$HOME/.cache/disttrain}"
OUT="$CACHE/k8s-${KUBE_VERSION#v}"
BIN="$OUT/bin"
if [[ "${DISTTRAIN_PRINT_BIN_DIR:-}" == 1 ]]; then echo "$BIN"; exit 0; fi

# Which binaries come from KUBEBUILDER_ASSETS.
from_assets=()
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  if [[ -x "$KUBEBUILDER_ASSETS/kube-apiserver" && -x "$KUBEBUILDER_ASSETS/etcd" ]]; then
    from_assets=(kube-apiserver etcd)
    echo "build-control-plane: using kube-apiserver and etcd from KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
  else
    echo "build-control-plane: KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks kube-apiserver or etcd; building them" >&2
  fi
fi
is_from_assets() { local b; for b in "${from_assets[@]}"; do [[ "$b" == "$1" ]] && return 0; done; return 1; }

# tool -> binaries it provides (binary name = last element of the package path, except etcd and
# coredns). kube-node (kubelet, kube-proxy) is built from the kubernetes wrapper module but with its
# own `go build` and stamp, so the control-plane build is the same with or without --node.
declare -A BINS=(
  [kubernetes]="kube-apiserver kube-controller-manager kube-scheduler kubectl"
  [etcd]="etcd"
  [kwok]="kwok"
  [helm]="helm"
  [kube-node]="kubelet kube-proxy"
  [coredns]="coredns"
  [pause]="pause"
)
# tool -> wrapper module folder under hack/tools (pause: the module its C source comes from).
declare -A MODDIR=(
  [kubernetes]=kubernetes [etcd]=etcd [kwok]=kwok [helm]=helm
  [kube-node]=kubernetes [coredns]=coredns [pause]=kubernetes
)
declare -A PKGS=(
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
  [kubectl]=k8s.io/kubernetes/cmd/kubectl
  [etcd]=go.etcd.io/etcd/server/v3
  [kwok]=sigs.k8s.io/kwok/cmd/kwok
  [helm]=helm.sh/helm/v3/cmd/helm
  [kubelet]=k8s.io/kubernetes/cmd/kubelet
  [kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
  [coredns]=.
)

ldflags_for() {
  local kv="$KUBE_VERSION" major minor rest
  major="${kv#v}"; major="${major%%.*}"; rest="${kv#v*.}"; minor="${rest%%.*}"
  case "$1" in
    kubernetes | kube-node)
      local f="-s -w" p
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        f+=" -X $p.gitVersion=$kv -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
        f+=" -X $p.buildDate=1970-01-01T00:00:00Z"
      done
      echo "$f" ;;
    etcd) echo "-s -w" ;;
    kwok) echo "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${kv#v}" ;;
    helm)
      # Same stamping as helm's Makefile: capabilities default to the client-go it was built with.
      local cg="${HELM_CLIENT_GO#v}" hmaj hmin
      hmaj=$(( ${cg%%.*} + 1 )); hmin="${cg#*.}"; hmin="${hmin%%.*}"
      echo "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
        "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$hmaj -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$hmin" \
        "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$hmaj -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$hmin" ;;
    # coremain.GitCommit is the commit field of `coredns -version`; mark the plugin-subset build.
    coredns) echo "-s -w -X github.com/coredns/coredns/coremain.GitCommit=disttrain-minimal" ;;
  esac
}

# pause: upstream build/pause/Makefile's CFLAGS (VERSION=v$(TAG) is added at build time), then strip.
PAUSE_CFLAGS=(-Os -Wall -Werror -static)

stamp_for() {  # changes whenever the wrapper module or the flags change
  local d="$TOOLS/${MODDIR[$1]}"
  case "$1" in
    pause) { echo "$KUBE_VERSION"; echo "${PAUSE_CFLAGS[*]} strip"; } | sha256sum | cut -c1-16 ;;
    coredns) { cat "$d/go.mod" "$d/go.sum" "$d/main.go"; ldflags_for "$1"; echo "cgo=0 trimpath"; } | sha256sum | cut -c1-16 ;;
    *) { cat "$d/go.mod" "$d/go.sum"; ldflags_for "$1"; echo "cgo=0 trimpath"; } | sha256sum | cut -c1-16 ;;
  esac
}

tools=(etcd kubernetes kwok helm)
[[ "$NODE" == 1 ]] && tools+=(kube-node coredns pause)

# Decide what needs building.
todo=()
for tool in "${tools[@]}"; do
  need=0
  for b in ${BINS[$tool]}; do
    is_from_assets "$b" && continue
    [[ -x "$BIN/$b" ]] || need=1
  done
  if [[ $need == 0 ]]; then
    # All wanted binaries are present; rebuild only when the pinned module changed.
    if [[ -f "$BIN/.stamp-$tool" && "$(cat "$BIN/.stamp-$tool")" != "$(stamp_for "$tool")" ]]; then need=1; fi
  fi
  [[ $need == 1 ]] && todo+=("$tool")
done

node_msg=""
[[ "$NODE" == 1 ]] && node_msg=", node: kubelet kube-proxy coredns $COREDNS_VERSION pause"
if [[ ${#todo[@]} == 0 ]]; then
  echo "build-control-plane: up to date in $BIN (kubernetes $KUBE_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION, helm $HELM_VERSION$node_msg)"
  exit 0
fi

# Find Go.
GO="${GO:-}"
if [[ -z "$GO" ]]; then
  if command -v go >/dev/null 2>&1; then GO="$(command -v go)"
  elif [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
  fi
fi
[[ -n "$GO" && -x "$GO" ]] ||
  die "Go not found (needs Go >= 1.26 on PATH or at /usr/local/go/bin/go) to build ${todo[*]}; or set KUBEBUILDER_ASSETS to a folder with prebuilt kube-apiserver and etcd (e.g. from setup-envtest)"

CC="${CC:-gcc}"
for tool in "${todo[@]}"; do
  if [[ "$tool" == pause ]]; then
    command -v "$CC" >/dev/null 2>&1 ||
      die "C compiler '$CC' not found, needed to build the static pause binary (install gcc and a static libc, e.g. apt-get install -y gcc libc6-dev; or set CC)"
  fi
done

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
mkdir -p "$BIN" "$OUT/logs"
P="${GO_BUILD_P:-2}"
echo "build-control-plane: building ${todo[*]} into $BIN with $("$GO" version | awk '{print $3}') (-p $P)"
t_all=$SECONDS
for tool in "${todo[@]}"; do
  log="$OUT/logs/build-$tool.log"
  : > "$log"
  dir="$TOOLS/${MODDIR[$tool]}"
  if [[ "$tool" == pause ]]; then
    # The C source ships in the k8s.io/kubernetes module (not in its build list: download it alone).
    if ! (cd "$dir" && "$GO" mod download k8s.io/kubernetes) >>"$log" 2>&1; then
      die "cannot download k8s.io/kubernetes $KUBE_VERSION (pause source) from GOPROXY=$("$GO" env GOPROXY) (see $log); fix network/GOPROXY"
    fi
    src="$(cd "$dir" && "$GO" list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause"
    tag="$(awk '$1 == "TAG" && $2 == "?=" {print $3; exit}' "$src/Makefile" 2>/dev/null || true)"
    [[ -f "$src/linux/pause.c" && -n "$tag" ]] || die "no build/pause/linux/pause.c or TAG in build/pause/Makefile under $src"
    tmp="$(mktemp -d "$OUT/.build-$tool.XXXXXX")"
    t0=$SECONDS
    if ! { "$CC" "${PAUSE_CFLAGS[@]}" "-DVERSION=v$tag" -o "$tmp/pause" "$src/linux/pause.c" &&
           { ! command -v strip >/dev/null 2>&1 || strip "$tmp/pause"; }; } >>"$log" 2>&1; then
      rm -rf "$tmp"
      die "$CC failed to build the static pause binary (needs a static libc, e.g. libc6-dev); last lines of $log: $(tail -n 3 "$log" | tr '\n' ' ')"
    fi
    mv -f "$tmp/pause" "$BIN/pause"
    rm -rf "$tmp"
    stamp_for pause > "$BIN/.stamp-pause"
    echo "build-control-plane: built pause (v$tag) in $((SECONDS - t0))s"
    continue
  fi
  # Fetch modules first, so a missing proxy gives its own message.
  if ! (cd "$dir" && "$GO" mod download) >>"$log" 2>&1; then
    die "cannot download the Go modules for $tool from GOPROXY=$("$GO" env GOPROXY) (see $log); fix network/GOPROXY, or set KUBEBUILDER_ASSETS to prebuilt kube-apiserver and etcd"
  fi
  bins=() pkgs=()
  for b in ${BINS[$tool]}; do
    is_from_assets "$b" && continue
    bins+=("$b"); pkgs+=("${PKGS[$b]}")
  done
  tmp="$(mktemp -d "$OUT/.build-$tool.XXXXXX")"
  t0=$SECONDS
  if [[ ${#pkgs[@]} == 1 ]]; then target=("-o" "$tmp/${bins[0]}"); else target=("-o" "$tmp/"); fi
  if ! (cd "$dir" && "$GO" build -p "$P" -trimpath -ldflags "$(ldflags_for "$tool")" "${target[@]}" "${pkgs[@]}") >>"$log" 2>&1; then
    rm -rf "$tmp"
    die "go build failed for $tool (${pkgs[*]}); last lines of $log: $(tail -n 3 "$log" | tr '\n' ' ')"
  fi
  for b in "${bins[@]}"; do mv -f "$tmp/$b" "$BIN/$b"; done
  rm -rf "$tmp"
  stamp_for "$tool" > "$BIN/.stamp-$tool"
  echo "build-control-plane: built ${bins[*]} in $((SECONDS - t0))s"
done
{
  echo "kubernetes=$KUBE_VERSION"; echo "etcd=$ETCD_VERSION"; echo "kwok=$KWOK_VERSION"; echo "helm=$HELM_VERSION"
  if [[ -f "$BIN/.stamp-coredns" ]]; then echo "coredns=$COREDNS_VERSION"; fi
} > "$OUT/versions.txt"
echo "build-control-plane: done in $((SECONDS - t_all))s -> $BIN"
