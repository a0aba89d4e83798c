"""Fixtures shared by the unit tests."""

from __future__ import annotations

import threading

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
