"""The benchmark runner: a YAML/pydantic config expanded into cells, run into a resumable folder."""

from mmrobust.bench.config import RunConfig, load_config
from mmrobust.bench.runner import run

__all__ = ["RunConfig", "load_config", "run"]
