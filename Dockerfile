# syntax=docker/dockerfile:1
#
# disttrain images, one build target each:
#
#   docker build --target operator    -t disttrain/operator:0.1.0 .        # Kopf operator, no TensorFlow
#   docker build --target trainer     -t disttrain/trainer:0.1.0 .         # TensorFlow CPU trainer
#   docker build --target trainer-gpu -t disttrain/trainer:0.1.0-gpu .     # TensorFlow GPU trainer
#       (--build-arg TF_GPU_IMAGE=tensorflow/tensorflow:<version>-gpu picks another CUDA base)
#
# The operator and the trainer share nothing but TF_CONFIG and the trainer's command line, so
# their images keep their dependency sets apart. Every final image runs as the numeric non-root
# user 10001 (so `runAsNonRoot: true` can be verified by the kubelet) and carries no compiler,
# no pip cache and no source tree: packages are built into a virtual environment in a builder
# stage and only that environment is copied over.
#
# Versions are pinned here (and checked against operator/pyproject.toml by
# tests/unit/test_packaging_static.py); bump them together with the venv the tests run in.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG TF_GPU_IMAGE=tensorflow/tensorflow:2.21.0-gpu

# ---------------------------------------------------------------------------- operator
FROM ${PYTHON_IMAGE} AS operator-build
ARG KOPF_VERSION=1.45.2
ARG KUBERNETES_VERSION=37.0.2
ARG PYDANTIC_VERSION=2.14.4
ARG PYYAML_VERSION=6.0.4
ARG PROMETHEUS_CLIENT_VERSION=0.26.0
ARG ORJSON_VERSION=3.13.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# Third-party dependencies first, in a layer of their own (it depends on the pins above only), so
# that editing operator/src reinstalls just the operator package; `pip check` then fails the build
# if operator/pyproject.toml declares a dependency that is not pinned here.
RUN python -m venv /opt/disttrain \
 && /opt/disttrain/bin/pip install --no-compile \
        "kopf==${KOPF_VERSION}" \
        "kubernetes==${KUBERNETES_VERSION}" \
        "pydantic==${PYDANTIC_VERSION}" \
        "PyYAML==${PYYAML_VERSION}" \
        "prometheus-client==${PROMETHEUS_CLIENT_VERSION}" \
        "orjson==${ORJSON_VERSION}"
COPY operator/ /src/operator/
RUN /opt/disttrain/bin/pip install --no-compile --no-deps /src/operator \
 && /opt/disttrain/bin/pip check \
 && /opt/disttrain/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="disttrain-operator" \
      org.opencontainers.image.description="Kopf operator for DistTrainJob (distributed TensorFlow training)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/disttrain/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --gid 10001 disttrain \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin disttrain
COPY --from=operator-build /opt/disttrain /opt/disttrain
USER 10001:10001
# Kopf's liveness endpoint (/healthz) and the Prometheus metrics; the Helm chart probes the first
# and exposes both as a Service.
EXPOSE 8080 9090
ENTRYPOINT ["disttrain", "operator"]
CMD ["--all-namespaces", "--liveness", "http://0.0.0.0:8080/healthz"]

# ---------------------------------------------------------------------------- trainer (CPU)
FROM ${PYTHON_IMAGE} AS trainer-build
ARG NUMPY_VERSION=2.4.6
ARG TENSORBOARD_VERSION=2.21.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# Third-party dependencies first, from trainer/pyproject.toml alone: the pinned runtime dependencies
# and the [cpu] extra as the pyproject declares it (tensorflow-cpu, ~600 MB installed). Editing
# trainer/src then reuses this layer and reinstalls only the trainer package; `pip check` fails
# the build if the pyproject declares a dependency that is not pinned here.
COPY trainer/pyproject.toml /src/trainer/pyproject.toml
RUN python -m venv /opt/disttrain \
 && python -c 'import tomllib; print(*tomllib.load(open("/src/trainer/pyproject.toml", "rb"))["project"]["optional-dependencies"]["cpu"], sep="\n")' > /tmp/cpu-extra.txt \
 && /opt/disttrain/bin/pip install --no-compile \
        "numpy==${NUMPY_VERSION}" \
        "tensorboard==${TENSORBOARD_VERSION}" \
        --requirement /tmp/cpu-extra.txt \
 && rm /tmp/cpu-extra.txt
COPY trainer/src/ /src/trainer/src/
RUN /opt/disttrain/bin/pip install --no-compile --no-deps /src/trainer \
 && /opt/disttrain/bin/pip check \
 && /opt/disttrain/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE} AS trainer
LABEL org.opencontainers.image.title="disttrain-trainer" \
      org.opencontainers.image.description="MNIST trainer for disttrain (TensorFlow CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
# HOME holds the MNIST download cache (~/.cache/disttrain); the working folder holds
# ./disttrain-output unless --output-dir (or a shared volume) says otherwise.
ENV PATH=/opt/disttrain/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/trainer \
    TF_CPP_MIN_LOG_LEVEL=1
RUN groupadd --gid 10001 trainer \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/trainer --shell /usr/sbin/nologin trainer
COPY --from=trainer-build /opt/disttrain /opt/disttrain
WORKDIR /home/trainer
USER 10001:10001
# The TensorFlow gRPC port (spec.port, 2222 by default).
EXPOSE 2222
ENTRYPOINT ["disttrain-trainer"]

# ---------------------------------------------------------------------------- trainer (GPU)
# TensorFlow, CUDA and cuDNN come from the base image; only the trainer package (and numpy, if
# the base lacks it) is added, so the [cpu] extra is deliberately not installed.
FROM ${TF_GPU_IMAGE} AS trainer-gpu
LABEL org.opencontainers.image.title="disttrain-trainer-gpu" \
      org.opencontainers.image.description="MNIST trainer for disttrain (TensorFlow GPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/trainer \
    TF_CPP_MIN_LOG_LEVEL=1
COPY trainer/ /tmp/trainer/
RUN python3 -m pip install --no-compile /tmp/trainer \
 && rm -rf /tmp/trainer \
 && groupadd --gid 10001 trainer \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/trainer --shell /usr/sbin/nologin trainer
WORKDIR /home/trainer
USER 10001:10001
EXPOSE 2222
ENTRYPOINT ["disttrain-trainer"]
