"""KFP v2 components, one file per pipeline stage. Each is a thin typed wrapper around
``mobiletag.stages.<stage>.run``."""
