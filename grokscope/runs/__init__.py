"""The run layer: frozen configs, presets, the model built from a config, the
self-describing run directory, the grokking summary of its metrics, and HF imports.

- :mod:`.config`: :class:`RunConfig` (task + :class:`ModelConfig` + :class:`TrainConfig`);
- :mod:`.presets`: :func:`preset` (named configs);
- :mod:`.model`: :func:`build_model` (config -> TransformerBridge), safetensors I/O;
- :mod:`.run`: :class:`Run` (config.json, data, metrics.jsonl, every checkpoint by step);
- :mod:`.grokking`: :func:`summarize_metrics` (when train saturates, when test rises);
- :mod:`.hf_import`: :func:`import_hf` (a Hugging Face checkpoint series as a run).
"""

from grokscope.runs.config import ModelConfig, RunConfig, TrainConfig
from grokscope.runs.grokking import summarize_metrics
from grokscope.runs.model import build_model
from grokscope.runs.presets import preset
from grokscope.runs.run import Run, RunError

__all__ = ["RunConfig", "ModelConfig", "TrainConfig", "preset", "build_model", "Run", "RunError",
           "summarize_metrics"]
