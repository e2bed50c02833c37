# One image for the four functions (config/functions/*.yaml); each Knative Service picks its
# stage with FUNCTION_TARGET and FUNCTION_SOURCE, which functions-framework reads from the
# environment, as it reads FUNCTION_SIGNATURE_TYPE and PORT (set by Knative).
#   docker build -t REGISTRY/arbiter:TAG . && docker push REGISTRY/arbiter:TAG
FROM python:3.11-slim

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

# A fixed numeric uid, so the pods' runAsNonRoot can check it.
RUN useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin arbiter
USER 65532:65532

ENV PORT=8080 \
    FUNCTION_SIGNATURE_TYPE=cloudevent
EXPOSE 8080

# FUNCTION_TARGET (start|iterate|assess|finish) and FUNCTION_SOURCE
# (functions/<stage>/main.py, relative to /app) come from the Knative Service.
CMD ["functions-framework"]
