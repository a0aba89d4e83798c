"""KFP v2 components, one file per pipeline stage. Each is a thin typed wrapper around
``mobiletag.stages.<stage>.run``, made a component by ``base.component``, which also adds the
descriptions several components share to its docstring's Args (what the Kubeflow UI shows)."""
