# The submit image: `mobiletag submit` / `upload` make a few calls to the KFP API, nothing else.
# The CronJob in manifests/ runs it; a few hundred MB instead of the multi-GB GPU image.
# The package goes in without its dependencies (TensorFlow & co.): the submit path imports only
# kfp and PyYAML (tests/unit/test_kfp_api.py runs it with them absent). Pins equal pyproject.toml.
# Build and push with `make images REGISTRY=...`; context: the repository root.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/mobiletag
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip install --no-cache-dir "kfp==2.17.3" "kfp-kubernetes==2.17.3" "pyyaml==6.0.3" \
    && python -m pip install --no-cache-dir --no-deps .

USER 1000:1000
ENTRYPOINT []
CMD ["mobiletag", "submit", "--help"]
