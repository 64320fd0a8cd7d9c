"""Accuracy-aware INT8: quantize, measure against FP32, return the most sensitive nodes to float, repeat."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

from onnxruntime.quantization import CalibrationDataReader
from tqdm.auto import tqdm

from ..errors import CalibrationError
from ._onnxfile import check_source, file_record, promote, staging_dir
from .config import QuantConfig
from .fidelity import compare_embeddings, run_onnx
from .int8 import preprocessed, quantize_qdq
from .reader import model_input_names, normalize_feeds
from .sensitivity import rank_nodes

logger = logging.getLogger(__name__)

ReaderFactory = Union[Callable[[], Union[CalibrationDataReader, Iterable[Any]]], Sequence[Any]]


def passes(fidelity: dict[str, float], config: QuantConfig) -> bool:
    """True when the fidelity meets ``config.min_mean_cosine`` (and ``min_min_cosine`` when set)."""
    if fidelity["mean_cosine"] < config.min_mean_cosine:
        return False
    return config.min_min_cosine is None or fidelity["min_cosine"] >= config.min_min_cosine


def _better(a: dict[str, float], b: dict[str, float]) -> bool:
    return (a["mean_cosine"], a["min_cosine"]) > (b["mean_cosine"], b["min_cosine"])


def _make_reader(factory: ReaderFactory) -> Union[CalibrationDataReader, Iterable[Any]]:
    # A fresh reader per round: ORT's calibrators consume readers, and user readers may not rewind.
    return factory() if callable(factory) else factory


def quantize_with_fallback(src: str | os.PathLike[str], dst: str | os.PathLike[str], calib_reader_factory: ReaderFactory,
                           val_feeds: Sequence[Any], config: QuantConfig | None = None, *, threads: int = 2,
                           progress: bool = True,
                           calibration_cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """INT8 Q/DQ that keeps the embedding within the config's cosine thresholds of the FP32 model.

    ``calib_reader_factory``: a callable returning a fresh ``CalibrationDataReader`` (or arrays /
    feed dicts) per round, or simply a sequence of arrays / feed dicts. ``val_feeds``: held-out
    inputs on which FP32 and INT8 embeddings are compared (``compare_embeddings``).

    Round 0 quantizes with ``config.nodes_to_exclude``. While the thresholds are missed, nodes are
    ranked once by local SQNR (``sensitivity.rank_nodes`` on up to ``config.sensitivity_samples``
    calibration feeds) and round r returns the next ``first_k * growth**(r-1)`` worst nodes to
    float, up to ``config.max_rounds`` rounds. Calibration runs once; later rounds reuse its ranges
    (kept at ``calibration_cache`` when given, an ORT calibration-cache JSON). ``dst`` receives the first passing attempt, or the
    best one with ``passed: false`` (the caller decides whether to fail). Node names refer to the
    graph that was quantized (after ``quant_pre_process`` when ``config.preprocess``).
    """
    config = config or QuantConfig()
    src = check_source(src)
    dst = Path(dst)
    t_start = time.perf_counter()
    with preprocessed(src, config.preprocess) as model_in, staging_dir(dst) as work:
        round_config = config.replace(preprocess=False)
        cache = Path(calibration_cache) if calibration_cache is not None else work / "calibration.json"
        val = normalize_feeds(val_feeds, model_input_names(model_in), what="val_feeds")
        reference = run_onnx(model_in, val, threads)
        excluded: list[str] = list(config.nodes_to_exclude)
        rounds: list[dict[str, Any]] = []
        ranking: list[dict[str, Any]] | None = None
        best: tuple[dict[str, float], Path, dict[str, Any]] | None = None
        bar = tqdm(total=config.max_rounds + 1, desc=f"INT8 fallback {src.name}", unit="round",
                   disable=None if progress else True)
        try:
            for round_index in range(config.max_rounds + 1):
                added: list[str] = []
                if round_index > 0:
                    if ranking is None:
                        ranking = _rank(model_in, best[1], calib_reader_factory, config, threads)  # type: ignore[index]
                    k = int(math.ceil(config.first_k * config.growth ** (round_index - 1)))
                    added = [e["node"] for e in ranking if e["node"] not in excluded][:k]
                    if not added:
                        logger.info("INT8 fallback: no quantized node left to return to float")
                        break
                    excluded += added
                t0 = time.perf_counter()
                candidate = work / f"round{round_index}" / dst.name
                reader = None if cache.is_file() else _make_reader(calib_reader_factory)
                record = quantize_qdq(model_in, candidate, reader, round_config, nodes_to_exclude=excluded,
                                      calibration_cache=cache)
                fidelity = compare_embeddings(reference, run_onnx(candidate, val, threads))
                ok = passes(fidelity, config)
                rounds.append({"round": round_index, "nodes_returned_to_float": added, "nodes_excluded": len(excluded),
                               "nodes_quantized": len(record["nodes_quantized"]), "fidelity": fidelity, "passed": ok,
                               "seconds": round(time.perf_counter() - t0, 3)})
                logger.info("INT8 fallback round %d: mean cos %.5f, min cos %.5f, %d nodes float%s", round_index,
                            fidelity["mean_cosine"], fidelity["min_cosine"], len(excluded), " (passed)" if ok else "")
                bar.update(1)
                bar.set_postfix(mean_cos=f"{fidelity['mean_cosine']:.4f}", float_nodes=len(excluded))
                if best is None or ok or _better(fidelity, best[0]):
                    best = (fidelity, candidate, record)
                if ok:
                    break
        finally:
            bar.close()
        assert best is not None  # round 0 always runs
        fidelity, candidate, record = best
        promote(candidate, dst)

    passed = passes(fidelity, config)
    if not passed:
        logger.warning("INT8 fallback: %s misses the threshold after %d rounds (best mean cos %.5f < %.5f)",
                       src, len(rounds), fidelity["mean_cosine"], config.min_mean_cosine)
    record = dict(record)
    record.update({
        "artifact": file_record(dst),
        "fidelity": fidelity,
        "passed": passed,
        "fallback": {
            "thresholds": {"min_mean_cosine": config.min_mean_cosine, "min_min_cosine": config.min_min_cosine},
            "rounds": rounds,
            "nodes_returned_to_float": [n for n in record["nodes_excluded"] if n not in set(config.nodes_to_exclude)
                                        and n not in set(record.get("activation_matmuls_kept_float", []))],
            "sensitivity_top": (ranking or [])[:20],
            "validation_samples": int(reference.shape[0]),
            "seconds": round(time.perf_counter() - t_start, 3),
        },
    })
    return record


def _rank(model_in: Path, qdq_path: Path, factory: ReaderFactory, config: QuantConfig, threads: int) -> list[dict[str, Any]]:
    reader = _make_reader(factory)
    feeds: list[Any] = []
    if isinstance(reader, CalibrationDataReader):
        while len(feeds) < config.sensitivity_samples:
            item = reader.get_next()
            if item is None:
                break
            feeds.append(item)
    else:
        for item in reader:
            if len(feeds) >= config.sensitivity_samples:
                break
            feeds.append(item)
    if not feeds:
        raise CalibrationError("quantize_with_fallback: the calibration reader gave no data for the sensitivity analysis")
    return rank_nodes(model_in, qdq_path, feeds, config.op_types, threads)
