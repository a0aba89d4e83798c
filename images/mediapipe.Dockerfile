# The mediapipe-package step's image: TFLite metadata for MediaPipe Tasks and MediaPipe's
# ImageClassifier. mediapipe==0.10.21 (the last release whose metadata writers work) needs
# protobuf < 5 while kfp 2.17 needs protobuf >= 6: it gets a virtual environment of its own,
# /opt/mediapipe, which mobiletag.export.mediapipe finds and runs mediapipe_tool.py with.
# The step itself runs in the system python: kfp, the package without its dependencies (no
# TensorFlow: the stage does not import it), numpy, Pillow, PyYAML, LiteRT (the bit-for-bit
# output check). Pins equal pyproject.toml. Build and push with `make images REGISTRY=...`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/mediapipe \
    && /opt/mediapipe/bin/pip install --no-cache-dir "mediapipe==0.10.21"

WORKDIR /opt/mobiletag
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip install --no-cache-dir "kfp==2.17.3" "pyyaml==6.0.3" "numpy>=1.26,<3" "pillow==12.0.0" \
        "ai-edge-litert==2.3.0" \
    && python -m pip install --no-cache-dir --no-deps .

USER 1000:1000
ENTRYPOINT []
CMD ["/opt/mediapipe/bin/python", "-c", "import mediapipe; print(mediapipe.__version__)"]
