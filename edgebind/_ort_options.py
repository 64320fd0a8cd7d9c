"""ONNX Runtime ``SessionOptions`` shared by every session edgebind opens on the CPU.

Why spinning is off by default: after each run ORT's intra-op threads busy-wait for the next one
(``session.intra_op.allow_spinning``, on by default). Whenever another session runs next (the
runtime's towers, an FP32/INT8 comparison, a benchmark's interleaved configurations, or another
process on a 2-core board), those waiting threads take the cores it needs. Measured on the 2-core
CI VM (ORT 1.32, 257x1280x5120 MatMul): FP32 16.3 ms alone, 31.8 ms p50 when interleaved with an
INT8 session; with spinning off 16.7 ms interleaved. A single session on dedicated cores may gain a
little from spinning: ``spin_wait=True`` (``OrtConfig.spin_wait``) turns it back on.
"""

from __future__ import annotations

from typing import Any

GRAPH_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                "all": "ORT_ENABLE_ALL"}
SPIN_KEY = "session.intra_op.allow_spinning"


def session_options(ort: Any, *, threads: int | None = None, level: str = "all", spin_wait: bool = False,
                    log_severity_level: int = 3) -> Any:
    """``ort.SessionOptions`` with ``threads`` intra-op threads (None: ORT's default), one inter-op
    thread, graph optimisation ``level`` (a key of ``GRAPH_LEVELS``) and spin-waiting as asked."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_LEVELS[level])
    options.log_severity_level = log_severity_level
    options.add_session_config_entry(SPIN_KEY, "1" if spin_wait else "0")
    return options
