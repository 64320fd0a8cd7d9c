"""Shared fixtures. ``tiny_bundle``: one imagebind_tiny export (all six towers, FP32/FP16/INT8) per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A random-init imagebind_tiny bundle with every tower in fp32, fp16 and int8 (~15 s, built once).

    Layout: ``<tmp>/export/imagebind_tiny`` (returned) and its calibration set in
    ``<tmp>/calibration/default`` (see ``tiny_calibration``). Treat both as read-only: copy the
    bundle before changing it.
    """
    pytest.importorskip("torch", reason="exporting the tiny bundle needs the export extra (torch)")
    pytest.importorskip("skimage", reason="scikit-image (dev extra) provides the default calibration photos")
    from edgebind.calibration import build_default_set
    from edgebind.export.pipeline import ExportConfig, run_export

    root = tmp_path_factory.mktemp("tiny_bundle")
    calibration = root / "calibration" / "default"
    build_default_set(calibration)
    out = root / "export" / "imagebind_tiny"
    run_export(ExportConfig(random_init=True, precisions=("fp32", "fp16", "int8"), out=str(out),
                            calibration=str(calibration), measure_latency=False), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_calibration(tiny_bundle: Path) -> Path:
    """The calibration set ``tiny_bundle`` was quantized with (its validation split is held out)."""
    return tiny_bundle.parent.parent / "calibration" / "default"


# -- runtime fakes (edgebind.runtime tests): a manifest-only bundle and engines without model files -------------

class FakeEngine:
    """Engine stand-in: a fixed random projection of the input to ``dim`` values (content-dependent and
    deterministic), optional ``delay`` seconds per run, and a log of the inputs' first values."""

    def __init__(self, modality: str, input_spec, dim: int = 16, delay: float = 0.0, seed: int = 0):
        import numpy as np

        self.modality, self.input_spec, self.dim, self.delay = modality, input_spec, dim, delay
        self.backend, self.precision, self.form = "fake", "fp32", "fp32"
        self._rng_seed = seed
        self._proj = None
        self.runs = 0
        self.closed = False
        self.np = np

    def run(self, batch):
        import time

        np = self.np
        if self.delay:
            time.sleep(self.delay)
        x = np.asarray(batch, dtype=np.float64).reshape(batch.shape[0], -1)
        if self._proj is None or self._proj.shape[0] != x.shape[1]:
            self._proj = np.random.default_rng(self._rng_seed).standard_normal((x.shape[1], self.dim))
        self.runs += 1
        return (x @ self._proj / np.sqrt(x.shape[1])).astype(np.float32)

    def warmup(self, iterations: int = 1) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="session")
def fake_runtime_bundle(tmp_path_factory) -> Path:
    """A manifest-only bundle (no model files) for runtime tests with injected engines: 16-d outputs, small
    preprocessing (32 x 32 images, a 1-s IMU window at 50 Hz), default audio (2 s window)."""
    from edgebind.bundle.manifest import CreatedBy, Manifest, TensorSpec, TowerRecord, save_manifest
    from edgebind.bundle.schema import RANDOM_INIT
    from edgebind.preprocess.audio import AudioConfig
    from edgebind.preprocess.depth import DepthConfig
    from edgebind.preprocess.image import ImageConfig
    from edgebind.preprocess.imu import ImuConfig
    from edgebind.preprocess.thermal import ThermalConfig

    def tower(name, shape, config):
        pre = {"module": type(config).__module__, "function": "preprocess", "config_class": type(config).__name__,
               "config": config.to_dict()}
        return TowerRecord(input=TensorSpec(name=name, shape=("batch", *shape), dtype="float32"),
                           output=TensorSpec(name="embedding", shape=("batch", 16), dtype="float32"),
                           logit_scale=10.0, preprocess=pre)

    towers = {
        "vision": tower("image", (3, 32, 32), ImageConfig(size=32, crop_size=32)),
        "depth": tower("depth", (1, 32, 32), DepthConfig(size=32, crop_size=32)),
        "thermal": tower("thermal", (1, 32, 32), ThermalConfig(size=32, crop_size=32)),
        "audio": tower("audio_melspec", (1, 128, 204), AudioConfig()),
        "imu": tower("imu", (6, 50), ImuConfig(target_rate=50.0, window_length=50)),
    }
    manifest = Manifest(model="fake_runtime", model_config={}, checkpoint_sha256=RANDOM_INIT, seed=0,
                        created_by=CreatedBy(edgebind="test"), towers=towers)
    out = tmp_path_factory.mktemp("fake_runtime_bundle")
    save_manifest(manifest, out)
    return out


@pytest.fixture
def fake_engines(fake_runtime_bundle):
    """``make(delay=0.0, **per_modality_delay) -> {modality: FakeEngine}`` for ``fake_runtime_bundle``."""
    from edgebind.bundle.manifest import load_manifest

    manifest = load_manifest(fake_runtime_bundle)

    def make(delay: float = 0.0, **delays: float):
        return {m: FakeEngine(m, t.input, dim=16, delay=delays.get(m, delay), seed=i)
                for i, (m, t) in enumerate(sorted(manifest.towers.items()))}

    return make
