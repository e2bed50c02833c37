# One image for the four functions (config/functions/*.yaml); each Knative Service picks its
# stage with FUNCTION_TARGET and FUNCTION_SOURCE, which functions-framework reads from the
# environment, as it reads FUNCTION_SIGNATURE_TYPE and PORT (set by Knative).
#   docker build -t REGISTRY/arbiter:TAG . && docker push REGISTRY/arbiter:TAG
#
# The base is pinned to an exact tag: python 3.11.15 on Debian bookworm, the tag that
# docker-library/python's 3.11/slim-bookworm/Dockerfile builds (PYTHON_VERSION 3.11.15).
# A tag can still be re-pushed; for a reproducible build, resolve it to its digest where
# you build and pin that too (docs/cluster.md):
#   docker buildx imagetools inspect python:3.11.15-slim-bookworm   # or: crane digest ...
#   FROM python:3.11.15-slim-bookworm@sha256:<digest>
FROM python:3.11.15-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY analytics ./analytics
COPY functions ./functions
# `pip install .` is the runtime only ([project].dependencies; the local run's, benchmarks'
# and tests' packages are extras), and packages only analytics and functions, the two
# directories copied. The `arbiter` command it declares needs cli/ and those extras, so its
# script goes. pip compiles the installed modules: each cold start reads bytecode.
RUN pip install . && rm -rf build ./*.egg-info /usr/local/bin/arbiter

# A fixed numeric uid, so the pods' runAsNonRoot can check it. The Knative Services run the
# image with a read-only root filesystem and an emptyDir on /tmp, the one place the server
# writes (gunicorn's worker heartbeat file); PYTHONDONTWRITEBYTECODE keeps Python from
# trying to write .pyc files next to the code.
RUN useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin arbiter
USER 65532:65532

ENV PORT=8080 \
    FUNCTION_SIGNATURE_TYPE=cloudevent
EXPOSE 8080

# FUNCTION_TARGET (start|iterate|assess|finish) and FUNCTION_SOURCE
# (functions/<stage>/main.py, relative to /app) come from the Knative Service.
CMD ["functions-framework"]
