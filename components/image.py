"""The one place that names the component image. Its tag follows the package version.

Override the registry when compiling with MOBILETAG_REGISTRY (``make images`` and
``make compile`` pass REGISTRY through).
"""

import os
import re
from pathlib import Path

DEFAULT_REGISTRY = "us-docker.pkg.dev/my-project/mobiletag"


def package_version() -> str:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, flags=re.MULTILINE)
    if match is None:
        raise RuntimeError("pyproject.toml has no version")
    return match.group(1)


REGISTRY = os.environ.get("MOBILETAG_REGISTRY", DEFAULT_REGISTRY).rstrip("/")
VERSION = package_version()
IMAGE = f"{REGISTRY}/mobiletag:{VERSION}"
