"""The on-device runtime: sensor sources, replay and recording (``edgebind.runtime.sources``,
``edgebind.runtime.recording``) and the embedding pipeline. Never imports torch."""

# The embedding pipeline (windows -> scheduling -> engines -> fusion -> recognition -> results).
from .fusion import FusionConfig, FusionResult, fuse
from .metrics import LatencyStats, RuntimeMetrics, format_latency_table
from .pipeline import DEFAULT_RATES_HZ, Result, RunOptions, Runtime, RuntimeConfig, run_runtime
from .recognition import Event, HysteresisConfig, HysteresisTracker, Recognizer
from .scheduler import EmbeddingUpdate, Lane
from .windows import WindowConfig, WindowInput, make_window

__all__ = [
    "DEFAULT_RATES_HZ", "EmbeddingUpdate", "Event", "FusionConfig", "FusionResult", "HysteresisConfig",
    "HysteresisTracker", "Lane", "LatencyStats", "Recognizer", "Result", "RunOptions", "Runtime", "RuntimeConfig",
    "RuntimeMetrics", "WindowConfig", "WindowInput", "format_latency_table", "fuse", "make_window", "run_runtime",
]
