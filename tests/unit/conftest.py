"""Fixtures shared by the unit tests."""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture
def gcs(tmp_path, monkeypatch):
    """A running storage emulator on loopback with one bucket; STORAGE_EMULATOR_HOST points the client at it."""
    import mobiletag.storage as storage

    from .test_gcs import Emulator

    emulator = Emulator(tmp_path / "gcs-data")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.host)
    monkeypatch.setattr(storage, "_local", threading.local())  # fresh clients for this emulator
    yield emulator
    emulator.stop()


BENCH = Path(__file__).parents[2] / "bench"


@contextlib.contextmanager
def bench_modules(*names: str) -> Iterator[dict[str, ModuleType]]:
    """bench/'s modules ``names``, imported as the bench scripts import each other (bench/ on
    sys.path); afterwards bench/ leaves sys.path and every bench module it loaded sys.modules."""
    sys.path.insert(0, str(BENCH))
    before = set(sys.modules)
    try:
        yield {name: importlib.import_module(name) for name in names}
    finally:
        sys.path.remove(str(BENCH))
        for name in set(sys.modules) - before:
            if getattr(sys.modules[name], "__file__", None) and str(BENCH) in str(sys.modules[name].__file__):
                sys.modules.pop(name, None)
