"""Runners of the stage table on one machine: ``inprocess`` (every stage in this process) and
``kfp_local`` (the compiled KFP pipeline through kfp.local, in subprocesses or docker containers).
The Kubeflow Pipelines server client is mobiletag.kfp_server."""
