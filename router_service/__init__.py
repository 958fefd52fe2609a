"""OpenAI-compatible LLM router front end (Flask)."""
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("triton-llm-router")
except _metadata.PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0.0.0"
