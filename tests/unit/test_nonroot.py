"""A stage runs as the image runs it: a non-root uid, a read-only working directory, a HOME it
cannot write, no network; the ImageNet teacher weights come from a read-only baked directory.

It passes when the stage succeeds and writes nothing outside its output directory and TMPDIR.
Needs root (to switch to uid 1000), as CI's container has.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import tf_keras as keras

from tests.conftest import REPO, TINY

UID = GID = 1000
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to run as uid 1000"),
]

# Runs as uid 1000. No IP connection succeeds: a download attempt fails the stage.
DRIVER = textwrap.dedent(
    """
    import json, logging, os, site, socket, sys

    spec = json.loads(sys.argv[1])
    for directory in spec["site_dirs"]:
        site.addsitedir(directory)
    _connect = socket.socket.connect

    def offline(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"offline test: no network (connect to {address!r})")
        return _connect(self, address)

    socket.socket.connect = offline
    socket.socket.connect_ex = offline

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    from mobiletag.config import load_config
    from mobiletag.stages import train_teacher

    config = load_config(spec["fast_yaml"], spec["overrides"])
    result = train_teacher.run(config, spec["dataset_dir"], spec["model_dir"])
    print("RESULT " + json.dumps({"metrics": result.metrics, "files": result.files}))
    """
)

PROBE = "import os, tensorflow, tf_keras, mobiletag; print(os.getuid())"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _as_user(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, user=UID, group=GID, extra_groups=[], capture_output=True, text=True, **kwargs)


def _interpreter(env: dict[str, str], cwd: Path) -> tuple[list[str], list[str]]:
    """A Python that uid 1000 can run with this environment's packages: (command, site dirs to add).

    This interpreter when uid 1000 can reach it; else the system Python of the same version
    started with -S and given the environment's site-packages (e.g. a venv whose base Python
    lives under root's 0700 home).
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [([sys.executable], [])]
    system = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    if system:
        candidates.append(([system, "-S"], [p for p in site.getsitepackages() if Path(p).is_dir()]))
    tried = []
    for command, site_dirs in candidates:
        probe = f"import site\nfor d in {site_dirs!r}: site.addsitedir(d)\n{PROBE}"
        try:
            result = _as_user([*command, "-c", probe], env=env, cwd=cwd, timeout=300)
        except OSError as exc:
            tried.append(f"{command[0]}: {exc}")
            continue
        if result.returncode == 0 and result.stdout.strip().endswith(str(UID)):
            return command, site_dirs
        tried.append(f"{command[0]}: {result.stderr.strip().splitlines()[-1:] or result.returncode}")
    pytest.skip(f"no Python that uid {UID} can run with these packages: {'; '.join(tried)}")


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under root: relative path -> (mode, size, mtime_ns)."""
    entries = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        entries[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return entries


def _reachable(st: os.stat_result) -> bool:
    """Whether uid 1000 (group 1000) can enter a directory with this stat."""
    if st.st_uid == UID:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == GID:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _owned_by_user(roots: list[Path], skip: list[Path]) -> set[str]:
    """Entries owned by uid 1000 under the world-writable roots, in directories uid 1000 can reach."""
    found: set[str] = set()
    stack = [r for r in roots if r.is_dir()]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            if any(path == s or s in path.parents for s in skip):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_uid == UID:
                found.add(entry.path)
            if stat.S_ISDIR(st.st_mode) and _reachable(st):
                stack.append(path)
    return found


@pytest.fixture
def sandbox():
    """A world-readable directory outside pytest's 0700 temporary tree."""
    base = Path(tempfile.mkdtemp(prefix="mobiletag-nonroot-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _copy_readable(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_train_teacher_as_uid_1000_read_only_cwd_unwritable_home_offline(tfrecord_dir, sandbox):
    from tests.unit.test_teacher import write_b3_weights

    keras.mixed_precision.set_global_policy("float32")
    inputs, cwd, home, cache = (sandbox / name for name in ("inputs", "cwd", "home", "cache"))
    out, tmp = sandbox / "out", sandbox / "tmp"
    _copy_readable(tfrecord_dir, inputs / "dataset")
    shutil.copy(REPO / "configs" / "fast.yaml", inputs / "fast.yaml")
    (inputs / "driver.py").write_text(DRIVER)
    for path in (inputs / "fast.yaml", inputs / "driver.py"):
        path.chmod(0o644)
    # the image's baked ImageNet teacher weights: root-owned, read-only for the stage's user
    cache.mkdir(mode=0o755)
    write_b3_weights(cache / "efficientnetb3_notop.h5").chmod(0o644)
    for path in (cwd, home):
        path.mkdir()
        (path / "existing.txt").write_text("not to be touched\n")
        path.chmod(0o555)  # read-only (and root's: uid 1000 could not write it anyway)
    for path in (out, tmp):
        path.mkdir()
        os.chown(path, UID, GID)

    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "MOBILETAG_CACHE_DIR": str(cache),
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "LANG": "C.UTF-8",
        # a second guard besides the driver's socket block: any proxy-aware download fails fast
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    command, site_dirs = _interpreter(env, cwd)
    overrides = _merge(TINY, {"teacher": {"weights": "imagenet", "fine_tune_epochs": 0}})  # phase A is enough here
    spec = {
        "site_dirs": site_dirs,
        "fast_yaml": str(inputs / "fast.yaml"),
        "overrides": overrides,
        "dataset_dir": str(inputs / "dataset"),
        "model_dir": str(out / "teacher"),
    }
    watched = {name: _snapshot(sandbox / name) for name in ("inputs", "cwd", "home", "cache")}
    world_writable = [Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")]
    owned_before = _owned_by_user(world_writable, skip=[out, tmp])

    result = _as_user([*command, str(inputs / "driver.py"), json.dumps(spec)], env=env, cwd=cwd, timeout=1500)

    assert result.returncode == 0, f"stage failed as uid {UID}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    stage = json.loads(line[len("RESULT ") :])
    checkpoint = Path(stage["files"]["checkpoint"])
    assert checkpoint.parent == out / "teacher" and checkpoint.stat().st_size > 1_000_000
    assert checkpoint.stat().st_uid == UID
    assert stage["metrics"]["epochs_phase_a"] == 1
    baked = cache / "efficientnetb3_notop.h5"
    assert f"teacher backbone weights loaded from {baked} (imagenet)" in result.stderr
    assert "Downloading data from" not in result.stdout + result.stderr
    assert "offline test: no network" not in result.stdout + result.stderr
    # nothing written outside the output directory and TMPDIR
    for name, before in watched.items():
        assert _snapshot(sandbox / name) == before, f"{name} changed"
    assert sorted(p.name for p in sandbox.iterdir()) == ["cache", "cwd", "home", "inputs", "out", "tmp"]
    new = _owned_by_user(world_writable, skip=[out, tmp]) - owned_before
    assert not new, f"written outside the output directory and TMPDIR: {sorted(new)}"
