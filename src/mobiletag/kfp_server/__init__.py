"""The Kubeflow Pipelines server: ``client`` (upload, submit, recurring runs, credentials, run
parameters) and ``watch`` (follow a submitted run, stop it when a GPU step stays Pending)."""
