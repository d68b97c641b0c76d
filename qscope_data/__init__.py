"""qscope-data: SAE-feature data curation."""


def code_version() -> str:
    """The installed package's version: what manifests record and cache keys include (no heavy imports here, so
    every stage can call it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qscope-data")
    except PackageNotFoundError:
        return "unknown"
