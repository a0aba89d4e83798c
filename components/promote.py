from components.base import component


@component()
def promote(output_uri: str, version: str, previous_version: str):
    """Moves <output_uri>/LATEST to the published version (runs only when the gate passed).

    Args:
        output_uri: Where models are published.
        version: The version publish wrote.
        previous_version: What LATEST pointed to when the gate was checked; if it moved since, nothing is overwritten.
    """
    from mobiletag.stages import publish as stage

    stage.promote(output_uri, version, previous_version)
