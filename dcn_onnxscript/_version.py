"""The package version (read by pyproject.toml and ``python -m dcn_onnxscript --version``)."""

__version__ = "0.6.0"
