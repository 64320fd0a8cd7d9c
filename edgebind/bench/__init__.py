"""Benchmarks: latency, attainable matmul rate, FLOPs, fidelity and end-to-end stream measurements.

Importable measurement code behind ``edgebind bench`` and the scripts in ``benchmarks/`` (which only
parse arguments and write ``benchmarks/results/``):

- :mod:`.latency` (``run_latency``): every tower x backend x precision x batch, interleaved, one worker
  process per configuration (:mod:`.worker`, :mod:`.runners`, :mod:`.timing`);
- :mod:`.peak` (``measure_peak``): FP32 / dynamic-INT8 single-MatMul rate through ONNX Runtime;
- :mod:`.flops` (``count_flops``): MatMul/Gemm/Conv FLOPs from the ONNX graph, by kind and precision;
- :mod:`.profile`: where an ORT session's time goes, per operator; :mod:`.targets`: the issue-6 targets;
- :mod:`.fidelity` / :mod:`.minilm`: FP16/INT8 fidelity tables and the real-weights MiniLM check;
- :mod:`.stream` (``run_stream``): the runtime on a recording replayed in real time;
- :mod:`.environment`, :mod:`.memory`, :mod:`.report`, :mod:`.plots`, :mod:`.suite` (``run_bench``).

Importing this package loads nothing heavy; torch is imported only by the PyTorch baseline's worker.
"""

from __future__ import annotations
