"""One configuration (tower, backend, batch) in a process of its own, driven one run at a time.

Why processes: thread pools of different runtimes in one process fight over the cores between
runs (measured on a 2-core VM: a tiny PyTorch tower took 1.0 ms alone and 8.4 ms median when
interleaved with an ONNX Runtime session in the same process, both spin-waiting), and
``ru_maxrss`` is a per-process maximum, so memory figures of configurations sharing a process
mix. Each worker opens its backend, then waits on a pipe; the parent sends "run" to the workers
in turn (round-robin, ``edgebind.bench.timing.interleave``), so only one runs at a time and the
others' threads are parked. A worker times its own run (``perf_counter`` around ``run``), so
messaging is not counted, and reports its peak RSS (``resource.getrusage``) at the end:

- ``baseline_mib``: interpreter + the backend's libraries, before the model is opened;
- ``after_load_mib``: after opening; ``peak_mib``: after the runs; ``model_mib`` = peak - baseline.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

from ..errors import EngineError

logger = logging.getLogger(__name__)

# PyTorch's OpenMP pool with libgomp's default wait policy stalls when its process idles between runs
# (as every worker does while the others run): tiny depth tower 350 ms p50 interleaved vs 1.9 ms alone on a
# busy 2-core VM; with PASSIVE 1.7 ms interleaved. Set for torch workers unless the caller set it.
TORCH_OMP_WAIT_POLICY = "PASSIVE"
_READY_TIMEOUT_S = 3600.0  # opening an imagebind_huge vision tower (torch build or ORT session) takes minutes


def _import_backend(kind: str) -> None:
    if kind == "torch":
        import torch  # noqa: F401

        from ..models import imagebind  # noqa: F401
    else:
        import onnxruntime  # noqa: F401

        from ..engines import ort_engine  # noqa: F401


def _send(out: IO[str], tag: str, payload: Any) -> None:
    out.write(json.dumps([tag, payload]) + "\n")
    out.flush()


def _serve(commands: IO[str], out: IO[str], spec: dict[str, Any]) -> None:
    import numpy as np

    from ..bundle.manifest import load_manifest
    from .memory import maxrss_mib
    from .runners import backend_spec, make_input, open_runner

    _import_backend(backend_spec(spec["backend"]).kind)
    baseline = maxrss_mib()
    manifest = load_manifest(spec["bundle"])
    started = time.perf_counter()
    runner = open_runner(spec["backend"], spec["bundle"], manifest, spec["modality"], threads=spec["threads"],
                         engines_root=spec.get("engines_root"))
    load_seconds = time.perf_counter() - started
    tower = manifest.tower(spec["modality"])
    data = make_input(tower.input, spec["batch"], seed=spec.get("seed", 0),
                      vocab_size=int(manifest.model_config.get("text_vocab_size", 49408)))
    result = np.asarray(runner.run(data))
    if result.shape != (spec["batch"], tower.output.shape[-1]) or not np.isfinite(result).all():
        raise EngineError(f"{spec['backend']} returned {result.shape} (finite: {bool(np.isfinite(result).all())}); "
                          f"expected finite [{spec['batch']}, {tower.output.shape[-1]}]")
    _send(out, "ready", {**runner.info, "load_seconds": load_seconds, "baseline_mib": baseline,
                         "after_load_mib": maxrss_mib()})
    for line in commands:
        command = line.strip()
        if command == "run":
            t0 = time.perf_counter()
            runner.run(data)
            _send(out, "ok", time.perf_counter() - t0)
        elif command == "stats":
            peak = maxrss_mib()
            _send(out, "stats", {"baseline_mib": baseline, "peak_mib": peak, "model_mib": peak - baseline})
        elif command == "close":
            runner.close()
            _send(out, "closed", None)
            return


def main(argv: list[str] | None = None) -> int:
    """``python -m edgebind.bench.worker SPEC_JSON``: commands on stdin, JSON-line answers on stdout."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m edgebind.bench.worker SPEC_JSON (started by edgebind.bench.worker.Worker)")
    # Answers go to the original stdout; anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING)
    try:
        _serve(sys.stdin, out, json.loads(args[0]))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which records it
        _send(out, "error", f"{type(exc).__name__}: {exc}")
        return 1
    return 0


class Worker:
    """A started configuration process. ``run()`` returns the seconds one run took in the worker."""

    def __init__(self, spec: dict[str, Any], *, ready_timeout: float = _READY_TIMEOUT_S) -> None:
        self.spec = spec
        self.name = f"{spec['modality']}/{spec['backend']}/b{spec['batch']}"
        # stderr goes to a file: a pipe nobody reads would block a chatty worker once it fills.
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        env = dict(os.environ)
        if spec["backend"].startswith("torch") and "OMP_WAIT_POLICY" not in env:
            env["OMP_WAIT_POLICY"] = TORCH_OMP_WAIT_POLICY
        self._process = subprocess.Popen(
            [sys.executable, "-m", "edgebind.bench.worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1, env=env)
        self.info = self._expect("ready", ready_timeout)
        if spec["backend"].startswith("torch"):
            self.info["omp_wait_policy"] = env["OMP_WAIT_POLICY"]

    def _expect(self, tag: str, timeout: float | None = None) -> Any:
        stdout = self._process.stdout
        assert stdout is not None
        if timeout is not None:
            ready, _, _ = select.select([stdout], [], [], timeout)
            if not ready:
                self.kill()
                raise EngineError(f"{self.name}: no answer from the worker in {timeout:g} s")
        line = stdout.readline()
        if not line:
            self.kill()
            raise EngineError(f"{self.name}: the worker exited (code {self._process.returncode}): "
                              f"{self._stderr_tail()}")
        got, payload = json.loads(line)
        if got == "error":
            self.kill()
            raise EngineError(f"{self.name}: {payload}")
        if got != tag:
            raise EngineError(f"{self.name}: expected {tag!r} from the worker, got {got!r}")
        return payload

    def _command(self, command: str) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(command + "\n")
            stdin.flush()
        except (BrokenPipeError, OSError):
            self.kill()
            raise EngineError(f"{self.name}: the worker is gone: {self._stderr_tail()}") from None

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read()[-600:].strip()
        except (OSError, ValueError):
            return ""

    def run(self) -> float:
        self._command("run")
        return float(self._expect("ok"))

    def finish(self) -> dict[str, Any]:
        """Peak-memory figures, then close the worker."""
        try:
            self._command("stats")
            stats = self._expect("stats", 60)
            self._command("close")
            self._expect("closed", 60)
        finally:
            self.kill()
        return {**stats, "after_load_mib": self.info.get("after_load_mib")}

    def kill(self) -> None:
        """Stop the worker (it exits by itself after ``close``; otherwise it is terminated)."""
        if self._process.poll() is None:
            try:
                if self._process.stdin is not None:
                    self._process.stdin.close()
                self._process.wait(timeout=5)
            except (subprocess.TimeoutExpired, OSError):
                self._process.terminate()
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()


if __name__ == "__main__":  # pragma: no cover - the worker entry point
    sys.exit(main())
