"""The one place that names the container images. Their tag changes with the code.

Tag: ``<package version>-<commit>``, the commit (12 hex digits) being the last one that changed
what goes into the image (IMAGE_INPUTS); with uncommitted changes there, ``-dirty-<hash>`` is
added, the hash taken over those changes, so every edit gives another tag (and another KFP
cache key). MOBILETAG_IMAGE_TAG overrides it; outside a git checkout it is the package version.

Registry: MOBILETAG_REGISTRY, which ``make`` sets from its REGISTRY (given, or remembered in
.mobiletag-registry by ``make images REGISTRY=...``), else a placeholder that ``make upload``
and ``make schedule`` refuse and ``make compile`` warns about.

``python components/image.py [image|submit-image|mediapipe-image|tag|registry|check]`` prints one of them;
``check`` exits with status 2 and says what to do while the registry is the placeholder.
"""

import hashlib
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REGISTRY = "us-docker.pkg.dev/my-project/mobiletag"  # placeholder: not a registry anyone owns
# What the Dockerfiles copy: a change elsewhere (tests, docs) does not change the images.
IMAGE_INPUTS = ("pyproject.toml", "README.md", "src", "configs", "components", "pipeline.py", "images")


def package_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, flags=re.MULTILINE)
    if match is None:
        raise RuntimeError("pyproject.toml has no version")
    return match.group(1)


def _git(*args: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, check=True, timeout=30, stdin=subprocess.DEVNULL
    ).stdout


def git_tag_suffix() -> Optional[str]:
    """``<commit>`` or ``<commit>-dirty-<hash>`` of the image inputs; None outside a git checkout."""
    if not (ROOT / ".git").exists():
        return None
    try:
        if Path(_git("rev-parse", "--show-toplevel").decode().strip()).resolve() != ROOT:
            return None
        commit = _git("log", "-1", "--format=%H", "--", *IMAGE_INPUTS).decode().strip()
        commit = commit or _git("rev-parse", "HEAD").decode().strip()  # a shallow clone
        changed = _git("status", "--porcelain", "--untracked-files=all", "--", *IMAGE_INPUTS)
        if not changed.strip():
            return commit[:12]
        digest = hashlib.sha256(_git("diff", "HEAD", "--binary", "--", *IMAGE_INPUTS))
        untracked = _git("ls-files", "--others", "--exclude-standard", "-z", "--", *IMAGE_INPUTS)
        for name in sorted(n for n in untracked.decode().split("\0") if n):
            digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
        return f"{commit[:12]}-dirty-{digest.hexdigest()[:8]}"
    except (OSError, subprocess.SubprocessError) as exc:
        detail = exc.stderr.decode(errors="replace").strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        warnings.warn(
            f"{ROOT} has a .git but git failed ({detail}); the image tag falls back to the package version, "
            "which does not change with the code: fix git or set MOBILETAG_IMAGE_TAG",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def image_tag() -> str:
    override = os.environ.get("MOBILETAG_IMAGE_TAG", "").strip()
    if override:
        return override
    suffix = git_tag_suffix()
    return f"{VERSION}-{suffix}" if suffix else VERSION


def registry() -> str:
    return (os.environ.get("MOBILETAG_REGISTRY", "").strip() or DEFAULT_REGISTRY).rstrip("/")


VERSION = package_version()
REGISTRY = registry()
TAG = image_tag()
IMAGE = f"{REGISTRY}/mobiletag:{TAG}"
SUBMIT_IMAGE = f"{REGISTRY}/mobiletag-submit:{TAG}"
# mediapipe-package: mediapipe==0.10.21 needs protobuf < 5, TensorFlow and kfp >= 6 (images/mediapipe.Dockerfile)
MEDIAPIPE_IMAGE = f"{REGISTRY}/mobiletag-mediapipe:{TAG}"


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "image"
    values = {
        "image": IMAGE,
        "submit-image": SUBMIT_IMAGE,
        "mediapipe-image": MEDIAPIPE_IMAGE,
        "tag": TAG,
        "registry": REGISTRY,
    }
    if what == "check":
        if REGISTRY == DEFAULT_REGISTRY:
            print(
                f"the image registry is the placeholder {DEFAULT_REGISTRY}: nodes could not pull {IMAGE}. "
                "Build and push the images once with `make images REGISTRY=<your registry>` (later make targets "
                "read it from .mobiletag-registry), or pass REGISTRY=<registry> of images you pushed",
                file=sys.stderr,
            )
            return 2
        return 0
    if what not in values:
        print(f"usage: python components/image.py [{'|'.join([*values, 'check'])}]", file=sys.stderr)
        return 2
    print(values[what])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
