# LLM Compass — CPU image. GPU: docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
# Optional Layer 1 weights at build time (needs network): --build-arg FETCH_MODELS=nvidia | routellm | all.
FROM python:3.11-slim AS base

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG FETCH_MODELS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    COMPASS_HOME=/data \
    COMPASS_HOST=0.0.0.0 \
    HF_HOME=/models \
    COMPASS_ONNX_CACHE=/models/onnx \
    LITELLM_LOCAL_MODEL_COST_MAP=True

RUN useradd --create-home --uid 10001 compass \
 && mkdir -p /data /models /app && chown compass:compass /data /models /app

WORKDIR /app
# torch first, pinned, from the CPU (or the chosen CUDA) index: an unpinned torch pulls a multi-GB build.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md requirements.lock ./
COPY compass ./compass
COPY layers ./layers
COPY ops ./ops
COPY data/classifier ./data/classifier
# Every other dependency at the version the test suite ran on (torch is already the chosen build).
RUN grep -v '^torch==' requirements.lock > /tmp/constraints.txt && pip install --constraint /tmp/constraints.txt . && case "${FETCH_MODELS}" in \
      "") ;; \
      nvidia) compass download-models --no-routellm ;; \
      routellm) compass download-models --no-nvidia ;; \
      all) compass download-models ;; \
      *) echo "FETCH_MODELS must be nvidia, routellm or all" >&2; exit 1 ;; \
    esac

USER compass
# Export the MiniLM for onnxruntime now (checked against torch), so containers start without it.
RUN python -c "from layers.embedding import Embedder; e = Embedder(); e.load(); print('MiniLM runtime:', e.runtime)"
VOLUME ["/data"]
EXPOSE 8402
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8402/health', timeout=2).status == 200 else 1)"
# Binding 0.0.0.0 needs API keys (compass keys create), or --allow-public-without-keys for a trusted network.
CMD ["compass", "serve", "--host", "0.0.0.0", "--port", "8402"]
