"""Embedding fidelity: how far a converted or accelerated model's embeddings are from a reference.

Numpy only, so the export stage, ``edgebind verify`` on a device and the benchmarks share one definition.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigError


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def compare_embeddings(ref: Any, test: Any, gallery: Any | None = None) -> dict[str, float]:
    """Fidelity of ``test`` embeddings [N, D] against reference embeddings ``ref`` [N, D] (row i ~ row i).

    Returns ``mean_cosine`` / ``min_cosine`` (row-wise cosine), ``max_abs_diff`` (raw values) and
    ``top1_agreement``: the fraction of rows whose nearest neighbour in the gallery (by cosine) is
    the same for the ref and the test query. The gallery defaults to the ref set itself, with each
    row's own entry left out, i.e. retrieval across the validation split; pass e.g. text embeddings
    as ``gallery`` [M, D] to measure cross-modal retrieval agreement instead. With a self-gallery of
    one row there is no neighbour, and ``top1_agreement`` is NaN.
    """
    ref = np.asarray(ref, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if ref.ndim != 2 or ref.shape != test.shape:
        raise ConfigError(f"compare_embeddings: ref and test must both be [N, D] with equal shapes, got {ref.shape} and {test.shape}")
    if ref.shape[0] == 0:
        raise ConfigError("compare_embeddings: ref and test are empty (N = 0)")
    if not (np.isfinite(ref).all() and np.isfinite(test).all()):
        raise ConfigError("compare_embeddings: ref or test contains NaN/inf (an FP16 overflow?)")
    ref_u, test_u = _unit_rows(ref), _unit_rows(test)
    cos = np.sum(ref_u * test_u, axis=1)
    if gallery is None:
        gal_u, exclude_self = ref_u, True
    else:
        gallery = np.asarray(gallery, dtype=np.float64)
        if gallery.ndim != 2 or gallery.shape[1] != ref.shape[1]:
            raise ConfigError(f"compare_embeddings: gallery must be [M, {ref.shape[1]}], got {gallery.shape}")
        gal_u, exclude_self = _unit_rows(gallery), False
    top1 = float("nan")
    if not (exclude_self and ref.shape[0] < 2):
        sim_ref = ref_u @ gal_u.T
        sim_test = test_u @ gal_u.T
        if exclude_self:
            np.fill_diagonal(sim_ref, -np.inf)
            np.fill_diagonal(sim_test, -np.inf)
        top1 = float(np.mean(np.argmax(sim_ref, axis=1) == np.argmax(sim_test, axis=1)))
    return {
        "mean_cosine": float(np.mean(cos)),
        "min_cosine": float(np.min(cos)),
        "max_abs_diff": float(np.max(np.abs(ref - test))),
        "top1_agreement": top1,
    }
