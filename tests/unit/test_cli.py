from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run_cli(*args, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mobiletag", *args], capture_output=True, text=True, env=full_env, timeout=300
    )


def test_sample_data_then_validate(tmp_path):
    out = tmp_path / "data"
    result = run_cli("sample-data", "--out-dir", str(out), "--images", "40", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert (out / "train_labels.csv").is_file()
    result = run_cli("validate", "--data-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert "6 classes" in result.stdout and "valid" in result.stdout
    result = run_cli("validate", "--json", env={"DATA_DIR": str(out)})  # the environment default
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["splits"]["train"]["num_images"] > 0


def test_data_error_is_one_clear_message_and_exit_2(tmp_path):
    out = tmp_path / "data"
    assert run_cli("sample-data", "--out-dir", str(out), "--images", "30").returncode == 0
    with open(out / "val_labels.csv", "a", encoding="utf-8") as fh:
        fh.write("../../etc/passwd,circle\n")
    result = run_cli("validate", "--data-dir", str(out))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "val_labels.csv line" in result.stderr and "would escape images/" in result.stderr


def test_config_error_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: {alpha: 2}\n")
    out = tmp_path / "data"
    assert run_cli("sample-data", "--out-dir", str(out), "--images", "30").returncode == 0
    result = run_cli("validate", "--data-dir", str(out), "--config", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{bad}: config key 'student.alpha' is 2" in result.stderr


def test_dataset_config_yaml_is_applied(tmp_path):
    out = tmp_path / "data"
    assert run_cli("sample-data", "--out-dir", str(out), "--images", "30").returncode == 0
    (out / "config.yaml").write_text("num_classes: 4\n")
    result = run_cli("validate", "--data-dir", str(out))
    assert result.returncode == 2
    assert "config.yaml: config key 'num_classes' is 4 but the data has 6 classes" in result.stderr


def test_pin_version_without_cron_is_refused(capsys):
    from mobiletag.cli import main

    args = ["submit", "--pin-version", "--host", "http://127.0.0.1:9", "--data-uri", "gs://b/x", "--token", "t"]
    assert main(args) == 2
    assert "--pin-version applies to --cron" in capsys.readouterr().err


def test_server_commands_document_their_credentials():
    for command in ("submit", "upload"):
        result = run_cli(command, "--help")
        assert result.returncode == 0, result.stderr
        for flag in ("--token", "--token-file", "--cookies", "MOBILETAG_KFP_TOKEN", "KF_PIPELINES_SA_TOKEN_PATH"):
            assert flag in result.stdout, (command, flag)


def test_train_failure_shows_the_stage_the_end_of_the_log_and_its_path(tmp_path):
    data = tmp_path / "data"
    assert run_cli("sample-data", "--out-dir", str(data), "--images", "30").returncode == 0
    first = (data / "val_labels.csv").read_text().splitlines()[1].split(",")[0]
    (data / "images" / first).write_bytes(b"not a jpeg")  # found only when prepare_dataset decodes
    out = tmp_path / "out"
    result = run_cli("train", "--runner", "inprocess", "--data-dir", str(data), "--out-dir", str(out))
    log = tmp_path / "out.log"
    assert result.returncode == 2
    assert result.stdout.splitlines()[0].endswith(f": {log}")
    assert result.stdout.splitlines()[1].endswith(" stage prepare_dataset started")
    assert len(result.stdout.splitlines()) == 2  # nothing else of the run on the console
    assert f"--- full log: {log} ---" in result.stderr and "Traceback" not in result.stderr
    assert "stage prepare_dataset failed" in result.stderr and "not an image PIL can read" in result.stderr
    assert "=== stage prepare_dataset ===" in log.read_text()
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--data_dir", "--out_dir"])
def test_underscore_flags_are_refused(flag, capsys):
    from mobiletag.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "--data-dir", "d", flag, "x"])
    assert exc.value.code == 2
    assert f"unrecognized arguments: {flag} x" in capsys.readouterr().err
