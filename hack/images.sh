#!/usr/bin/env bash
# Build disttrain's container images on a machine that has Docker but no container registry, and
# load them into a node's containerd.
#
#   hack/images.sh build [base|operator|trainer|pause]...   # default: all four
#   hack/images.sh build-gpu     # the trainer-gpu target (needs TF_GPU_IMAGE already in Docker)
#   hack/images.sh load SOCKET   # copy the images into the containerd at SOCKET (namespace k8s.io)
#   hack/images.sh sizes         # size and ID of each image
#   hack/images.sh dockerd       # only start dockerd (when `docker info` fails)
#
# No image can be pulled here, so the Dockerfile's base (python:3.11.13-slim-bookworm) is replaced by
# a stand-in built from Debian packages with mmdebstrap: bookworm's python3 (3.11) with venv and pip,
# a `python` command, and this machine's extra CA certificates, so that `pip install` inside
# `docker build` trusts the TLS-intercepting proxy in front of PyPI. Users with a registry set
# PYTHON_IMAGE (e.g. PYTHON_IMAGE=python:3.11.13-slim-bookworm) and the stand-in is not built.
#
# The node's sandbox ("pause") image cannot be pulled either: when a static pause binary has been
# built (PAUSE_BIN, by the control-plane build), it is packaged FROM scratch as registry.k8s.io/pause.
#
# Settings (environment):
#   DISTTRAIN_CACHE=~/.cache/disttrain   dockerd's log and pidfile go to $DISTTRAIN_CACHE/docker/
#   PYTHON_IMAGE   (unset: build and use STANDIN_IMAGE=disttrain/python-standin:3.11-bookworm)
#   OPERATOR_IMAGE=disttrain/operator:0.1.0  TRAINER_IMAGE=disttrain/trainer:0.1.0
#   TRAINER_GPU_IMAGE=disttrain/trainer:0.1.0-gpu  TF_GPU_IMAGE=tensorflow/tensorflow:2.21.0-gpu
#   PAUSE_IMAGE=registry.k8s.io/pause:3.10.1  PAUSE_BIN=$DISTTRAIN_CACHE/k8s-1.34.12/bin/pause
#   DEBIAN_SUITE=bookworm  DEBIAN_MIRROR (unset: mmdebstrap's default, deb.debian.org + security)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${DISTTRAIN_CACHE:-$HOME/.cache/disttrain}
STATE=$CACHE/docker
STANDIN_IMAGE=${STANDIN_IMAGE:-disttrain/python-standin:3.11-bookworm}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-disttrain/operator:0.1.0}
TRAINER_IMAGE=${TRAINER_IMAGE:-disttrain/trainer:0.1.0}
TRAINER_GPU_IMAGE=${TRAINER_GPU_IMAGE:-disttrain/trainer:0.1.0-gpu}
TF_GPU_IMAGE=${TF_GPU_IMAGE:-tensorflow/tensorflow:2.21.0-gpu}
PAUSE_IMAGE=${PAUSE_IMAGE:-registry.k8s.io/pause:3.10.1}
PAUSE_BIN=${PAUSE_BIN:-$CACHE/k8s-1.34.12/bin/pause}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-}
HOST_CA_DIR=${HOST_CA_DIR:-/usr/local/share/ca-certificates}

# The legacy builder: BuildKit needs the buildx plugin (absent here) and would fetch the
# `# syntax=` frontend image from a registry.
export DOCKER_BUILDKIT=0

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'images: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit "${1:-1}"
}

# need TOOL HINT
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is not on PATH ($2)"; }

human() { numfmt --to=si --suffix=B --format='%.1f' "$1"; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# ------------------------------------------------------------------------------ dockerd

dockerd_up() {
  command -v docker >/dev/null 2>&1 || die "docker is not on PATH (apt-get install docker.io)"
  docker info >/dev/null 2>&1 && return 0
  command -v dockerd >/dev/null 2>&1 || die "docker info fails and dockerd is not on PATH (apt-get install docker.io)"
  [ "$(id -u)" = 0 ] || die "docker info fails and starting dockerd needs root"
  mkdir -p "$STATE"
  local pid=""
  [ -s "$STATE/dockerd.pid" ] && pid=$(cat "$STATE/dockerd.pid")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    log "dockerd (pid $pid) is running but not answering yet; waiting"
  else
    log "starting dockerd (log: $STATE/dockerd.log)"
    # setsid: the daemon outlives this script (and a Ctrl-C of `make e2e`).
    setsid dockerd --pidfile "$STATE/dockerd.pid" >>"$STATE/dockerd.log" 2>&1 </dev/null &
    pid=$!
  fi
  local waited=0
  until docker info >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$STATE/dockerd.log" >&2 || true
      die "dockerd exited; see $STATE/dockerd.log"
    fi
    [ "$waited" -lt 60 ] || die "dockerd did not answer within 60s; see $STATE/dockerd.log"
    sleep 1
    waited=$((waited + 1))
  done
  log "dockerd is up (pid $pid, storage driver $(docker info --format '{{.Driver}}'))"
}

# ------------------------------------------------------------------------------ builds

# Run a build step with its output in a log file; print the time taken and, on failure, the log's end.
BUILD_REPORT=()
timed() {
  local image=$1 name=$2
  shift 2
  local logfile=$STATE/logs/build-$name.log start=$SECONDS
  mkdir -p "$STATE/logs"
  log "building $image (log: $logfile)"
  if ! "$@" >"$logfile" 2>&1; then
    tail -n 40 "$logfile" >&2
    die "building $image failed after $((SECONDS - start))s; full log: $logfile"
  fi
  local seconds=$((SECONDS - start)) size
  size=$(human "$(docker image inspect --format '{{.Size}}' "$image")")
  log "built $image in ${seconds}s ($size)"
  BUILD_REPORT+=("$(printf '%-45s %8s %6ss' "$image" "$size" "$seconds")")
}

python_image() {
  if [ -n "${PYTHON_IMAGE:-}" ]; then
    printf '%s\n' "$PYTHON_IMAGE"
  else
    printf '%s\n' "$STANDIN_IMAGE"
  fi
}

# The stand-in's root file system as a tarball. python3-venv brings ensurepip's pip wheel (the
# Dockerfile creates a venv); passwd brings useradd/groupadd. The host's extra CAs (those
# update-ca-certificates adds to the system bundle) are trusted inside, so pip can reach PyPI through
# a TLS-intercepting proxy. Documentation is left out, as in the slim images.
standin_rootfs() {
  local tarball=$1 hooks=() mirror=()
  # shellcheck disable=SC2016 # the hooks' $1 is the chroot, expanded by mmdebstrap's shell
  hooks+=(--customize-hook='chroot "$1" ln -sf /usr/bin/python3 /usr/local/bin/python')
  if [ -d "$HOST_CA_DIR" ] && [ -n "$(ls -A "$HOST_CA_DIR")" ]; then
    hooks+=(--customize-hook="copy-in $HOST_CA_DIR /usr/local/share")
  fi
  # shellcheck disable=SC2016
  hooks+=(--customize-hook='chroot "$1" update-ca-certificates' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*')
  [ -z "$DEBIAN_MIRROR" ] || mirror=("$DEBIAN_MIRROR")
  mmdebstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,passwd \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "${hooks[@]}" "$DEBIAN_SUITE" "$tarball" "${mirror[@]}"
}

# The stand-in image mirrors the python image's config: PATH (the Dockerfile's ENV PATH=...:$PATH
# needs it; `docker import` sets none), LANG, CMD. Called where errexit does not apply: every step
# is checked.
standin_image() {
  local image=$1 tarball=$2
  standin_rootfs "$tarball" || { rm -f "$tarball"; return 1; }
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'LABEL org.opencontainers.image.description="disttrain stand-in for python:3.11-slim-bookworm (Debian python3, mmdebstrap)"' \
    --change 'CMD ["python3"]' \
    "$tarball" "$image" || { rm -f "$tarball"; return 1; }
  rm -f "$tarball"
}

BASE_READY=""
build_base() {
  [ -z "$BASE_READY" ] || return 0
  BASE_READY=1
  if [ -n "${PYTHON_IMAGE:-}" ]; then
    image_exists "$PYTHON_IMAGE" || log "PYTHON_IMAGE=$PYTHON_IMAGE is not in Docker; docker build will pull it"
    return 0
  fi
  if image_exists "$STANDIN_IMAGE"; then
    log "reusing $STANDIN_IMAGE (docker rmi it to rebuild)"
    return 0
  fi
  need mmdebstrap "apt-get install mmdebstrap"
  [ "$(id -u)" = 0 ] || die "building the stand-in base with mmdebstrap needs root"
  mkdir -p "$STATE"
  timed "$STANDIN_IMAGE" python-standin standin_image "$STANDIN_IMAGE" "$STATE/python-standin.tar"
}

build_target() {
  local target=$1 image=$2
  timed "$image" "$target" \
    docker build --target "$target" --build-arg "PYTHON_IMAGE=$(python_image)" -t "$image" "$ROOT"
}

build_pause() {
  if [ ! -x "$PAUSE_BIN" ]; then
    log "no pause binary at $PAUSE_BIN: $PAUSE_IMAGE not built (make node-binaries builds it)"
    return 0
  fi
  if command -v file >/dev/null 2>&1 && ! file -bL "$PAUSE_BIN" | grep -Eq 'static(ally|-pie) linked'; then
    die "$PAUSE_BIN is not statically linked (the pause image is FROM scratch)"
  fi
  local context
  context=$(mktemp -d)
  cp "$PAUSE_BIN" "$context/pause"
  timed "$PAUSE_IMAGE" pause docker build -t "$PAUSE_IMAGE" -f - "$context" <"$ROOT/hack/pause.Dockerfile"
  rm -rf "$context"
}

build() {
  local targets=("$@") t
  [ "${#targets[@]}" -gt 0 ] || targets=(base operator trainer pause)
  for t in "${targets[@]}"; do
    case $t in base | operator | trainer | pause) ;; *) die "unknown build target $t (base, operator, trainer, pause)" ;; esac
  done
  dockerd_up
  for t in "${targets[@]}"; do
    case $t in
      base) build_base ;;
      operator) build_base && build_target operator "$OPERATOR_IMAGE" ;;
      trainer) build_base && build_target trainer "$TRAINER_IMAGE" ;;
      pause) build_pause ;;
    esac
  done
  if [ "${#BUILD_REPORT[@]}" -gt 0 ]; then
    printf '%-45s %8s %7s\n' IMAGE SIZE BUILD
    printf '%s\n' "${BUILD_REPORT[@]}"
  fi
}

build_gpu() {
  dockerd_up
  image_exists "$TF_GPU_IMAGE" || die "the trainer-gpu target is FROM $TF_GPU_IMAGE (CUDA, ~3 GB), which is \
not in Docker and cannot be pulled here (no registry). On a machine with a registry: \
docker build --target trainer-gpu -t $TRAINER_GPU_IMAGE . ; or docker load that image first."
  timed "$TRAINER_GPU_IMAGE" trainer-gpu \
    docker build --target trainer-gpu --build-arg "TF_GPU_IMAGE=$TF_GPU_IMAGE" -t "$TRAINER_GPU_IMAGE" "$ROOT"
  printf '%s\n' "${BUILD_REPORT[@]}"
}

sizes() {
  dockerd_up
  local image
  printf '%-45s %8s  %s\n' IMAGE SIZE ID
  for image in "$(python_image)" "$OPERATOR_IMAGE" "$TRAINER_IMAGE" "$TRAINER_GPU_IMAGE" "$PAUSE_IMAGE"; do
    if image_exists "$image"; then
      printf '%-45s %8s  %s\n' "$image" "$(human "$(docker image inspect --format '{{.Size}}' "$image")")" \
        "$(docker image inspect --format '{{.Id}}' "$image")"
    else
      printf '%-45s %8s\n' "$image" '-'
    fi
  done
}

# ------------------------------------------------------------------------------ load into containerd

# The name containerd gives an image `docker save` wrote: Docker Hub names get docker.io[/library].
full_name() {
  local name=$1 first=${1%%/*}
  if [ "$name" = "$first" ]; then
    name=docker.io/library/$name
  elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
    name=docker.io/$name
  fi
  printf '%s\n' "$name"
}

# The image ID (config digest) of an image in the node's containerd; empty when it has none.
node_image_id() {
  local socket=$1 ref digest
  ref=$(full_name "$2")
  digest=$(ctr -a "$socket" -n k8s.io images ls "name==$ref" 2>/dev/null | awk 'NR == 2 { print $3 }')
  [ -n "$digest" ] || return 0
  ctr -a "$socket" -n k8s.io content get "$digest" 2>/dev/null \
    | python3 -c 'import json, sys; print(json.load(sys.stdin).get("config", {}).get("digest", ""))' 2>/dev/null || true
}

load() {
  [ "$#" -eq 1 ] || usage
  local socket=$1 image id todo=() images=("$OPERATOR_IMAGE" "$TRAINER_IMAGE")
  [ -S "$socket" ] || die "$socket is not a socket (is the node's containerd running?)"
  need ctr "it ships with the containerd package"
  dockerd_up
  for image in "${images[@]}"; do
    image_exists "$image" || die "$image is not in Docker: run hack/images.sh build first"
  done
  if image_exists "$PAUSE_IMAGE"; then
    images+=("$PAUSE_IMAGE")
  else
    log "$PAUSE_IMAGE is not in Docker: the node must find its sandbox image elsewhere"
  fi
  for image in "${images[@]}"; do
    id=$(docker image inspect --format '{{.Id}}' "$image")
    if [ "$(node_image_id "$socket" "$image")" = "$id" ]; then
      log "the node already has $image (${id:7:12})"
    else
      todo+=("$image")
    fi
  done
  [ "${#todo[@]}" -gt 0 ] || return 0
  local start=$SECONDS
  log "loading ${todo[*]} into $socket"
  docker save "${todo[@]}" | ctr -a "$socket" -n k8s.io images import -
  log "loaded in $((SECONDS - start))s"
}

main() {
  local command=${1:-}
  [ "$#" -eq 0 ] || shift
  case $command in
    build) build "$@" ;;
    build-gpu) build_gpu ;;
    load) load "$@" ;;
    sizes) sizes ;;
    dockerd) dockerd_up ;;
    -h | --help | help) usage 0 ;;
    *) usage ;;
  esac
}

# Sourcing the script (tests) defines the functions without running anything.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
