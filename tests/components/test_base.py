"""components/base.py: the descriptions KFP reads, each shared sentence written once."""

import importlib
import inspect
import sys

import pytest
import yaml
from kfp import compiler, dsl
from kfp.dsl.python_component import PythonComponent

from ..conftest import REPO

sys.path.insert(0, str(REPO))

from components.base import SHARED, STUDENT_METRICS, component, documented


def all_components() -> dict[str, PythonComponent]:
    found = {}
    for path in sorted((REPO / "components").glob("*.py")):
        module = importlib.import_module(f"components.{path.stem}")
        found.update({c.name: c for c in vars(module).values() if isinstance(c, PythonComponent)})
    return found


def test_component_docstring_is_what_kfp_reads():
    @component("python:3.11", model="The model.")
    def toy(dataset: dsl.Input[dsl.Dataset], config_json: str, model: dsl.Output[dsl.Model]) -> int:
        """Does one thing.

        Args:
            dataset: The test split.

        Returns:
            The count.
        """
        return 1

    assert inspect.getdoc(toy.python_func) == (
        "Does one thing.\n\nArgs:\n"
        "    dataset: The test split.\n"
        f"    config_json: {SHARED['config_json']}\n"
        "    model: The model.\n\nReturns:\n    The count."
    )
    spec = toy.component_spec
    assert spec.description == "Does one thing."
    assert spec.inputs["dataset"].description == "The test split."
    assert spec.inputs["config_json"].description == SHARED["config_json"]
    assert spec.implementation.container.image == "python:3.11"


def test_compiled_components_carry_the_shared_sentences(tmp_path):
    from components.train_student_baseline import train_student_baseline
    from components.train_teacher import train_teacher

    def compiled(component) -> dict:
        path = tmp_path / f"{component.name}.yaml"
        compiler.Compiler().compile(component, str(path))
        return yaml.safe_load(path.read_text())["root"]

    teacher = compiled(train_teacher)
    parameters = teacher["inputDefinitions"]["parameters"]
    assert parameters["config_json"]["description"] == (
        "This stage's config sections (from resolve_config); a training step's also has its step block: backup_uri "
        "(backups in <backup_uri>/<run id>/<task>/, run id: the pod's pipeline/runid label) and the GPUs it gets "
        "(above 0 it fails at once when TensorFlow sees no GPU)."
    )
    assert teacher["inputDefinitions"]["artifacts"]["dataset"]["description"] == SHARED["dataset"]
    baseline = compiled(train_student_baseline)
    assert baseline["inputDefinitions"]["parameters"]["config_json"]["description"] == (
        "The train_student stage's config sections and step (from resolve_config); alpha is set to 1 here."
    )
    # KFP takes no output's description from Args: the docstring holds it for the reader
    assert f"    metrics: {STUDENT_METRICS}" in train_student_baseline.python_func.__doc__.splitlines()


def test_every_parameter_is_described_and_the_embedded_source_runs_without_the_decorator():
    components = all_components()
    assert len(components) == 14
    for name, c in components.items():
        spec = c.component_spec
        parameters = list(inspect.signature(c.python_func).parameters)
        entries = [
            line.split(":")[0].strip() for line in inspect.getdoc(c.python_func).split("Args:\n")[1].splitlines()
        ]
        assert entries[: len(parameters)] == parameters, name
        assert all(s.description for s in (spec.inputs or {}).values()), name
        # KFP embeds the source from `def` on: the decorator, and so components.base, stays behind
        source = spec.implementation.container.command[-1]
        assert "components.base" not in source and "@component" not in source, name
        namespace: dict = {}
        exec(compile(source, f"{name}.py", "exec"), namespace)
        func = namespace[c.python_func.__name__]
        assert list(inspect.signature(func).parameters) == parameters, name
        assert "install" not in " ".join(spec.implementation.container.command[:-1]), name


def test_documented_refuses_a_missing_a_double_or_a_stray_description():
    def stage(dataset: str, gpus: int, epochs: int):
        """Trains.

        Args:
            epochs: Epochs.
        """

    def undescribed(dataset: str, epochs: int):
        """Trains."""

    with pytest.raises(TypeError, match=r"component undescribed: .* no description for \['epochs'\]: describe"):
        documented()(undescribed)
    with pytest.raises(TypeError, match=r"describes \['gpu'\], which are not among its parameters"):
        documented(gpu="GPUs.")(stage)
    with pytest.raises(TypeError, match=r"\['epochs'\] described twice"):
        documented(epochs="Epochs.")(stage)
    stage.__doc__ = f"Trains.\n\nArgs:\n    epochs: Epochs.\n    dataset: {SHARED['dataset']}"
    with pytest.raises(TypeError, match=r"\['dataset'\] described twice: drop the docstring's entry"):
        documented()(stage)


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")  # the image is ours
def test_embedded_source_runs_through_the_kfp_executor_where_components_cannot_be_imported(tmp_path, monkeypatch):
    from components.promote import promote
    from kfp import local
    from kfp.local.config import LocalExecutionConfig

    monkeypatch.setenv("PYTHONPATH", str(REPO / "src"))  # the subprocess: mobiletag, no components package
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "published"
    out.mkdir()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    try:
        promote(output_uri=str(out), version="20260101T000000Z-run", previous_version="")
    finally:
        LocalExecutionConfig.instance = None
    assert (out / "LATEST").read_text() == "20260101T000000Z-run\n"
