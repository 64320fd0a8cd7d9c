"""Peak resident memory of a process, and the peak memory of a whole ``edgebind export``.

The peak is a process-lifetime maximum, so every figure comes from a process of its own: the
latency workers (``edgebind.bench.worker``) report theirs, and ``export_peak_rss`` runs the export
in a fresh child (``python -m edgebind.bench.memory SPEC``) that writes its figures to a file.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .._io import atomic_write_json
from ..errors import EdgebindError

logger = logging.getLogger(__name__)


PROC_STATUS = Path("/proc/self/status")


def maxrss_mib() -> float:
    """Peak resident set size of this process in MiB.

    Linux: ``VmHWM`` from ``/proc/self/status``, the high-water mark of this process image. Not
    ``getrusage().ru_maxrss``: the kernel carries the parent's RSS at fork time into a child's
    ``ru_maxrss`` across ``exec`` (a worker started by a 385 MiB parent reported 385 MiB for a 1 MiB
    model). Elsewhere ``ru_maxrss`` (KiB on Linux-likes, bytes on macOS).
    """
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / 2**20 if sys.platform == "darwin" else value / 1024


def _run_child(cmd: list[str], result: Path, what: str, timeout: float) -> dict[str, Any]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EdgebindError(f"{what} ran over {timeout:g} s") from None
    if proc.returncode != 0 or not result.is_file():
        raise EdgebindError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return json.loads(result.read_text())


def export_peak_rss(argv: Sequence[str], *, timeout: float = 4 * 3600.0) -> dict[str, Any]:
    """Peak RSS (MiB) of ``edgebind export ARGV`` run in a child; also its exit code and wall time."""
    what = f"edgebind export {' '.join(argv)}"
    with tempfile.TemporaryDirectory(prefix="edgebind-mem-") as tmp:
        result = Path(tmp) / "result.json"
        spec = {"export_argv": list(argv), "result": os.fspath(result)}
        out = _run_child([sys.executable, "-m", "edgebind.bench.memory", json.dumps(spec)], result, what, timeout)
    if out["rc"] != 0:
        raise EdgebindError(f"{what} exited {out['rc']}")
    return out


def _export_child(spec: dict[str, Any]) -> dict[str, Any]:
    import time

    from ..cli.main import main as cli_main

    start = time.perf_counter()
    rc = cli_main(["-q", "export", *spec["export_argv"]])
    return {"rc": rc, "peak_mib": maxrss_mib(), "seconds": time.perf_counter() - start}


def main(argv: Sequence[str] | None = None) -> int:
    """Child entry point: ``python -m edgebind.bench.memory SPEC_JSON``; writes the figures to ``spec["result"]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: python -m edgebind.bench.memory SPEC_JSON (written by edgebind.bench.memory)")
    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(args[0])
    atomic_write_json(spec["result"], _export_child(spec))
    return 0


if __name__ == "__main__":  # pragma: no cover - the child entry point
    sys.exit(main())
