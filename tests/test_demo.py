"""The offline demo (`make demo`): every modality embedded from real packaged data, deterministic, JSON output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgebind.cli.main import main
from edgebind.demo import run_demo


@pytest.fixture(scope="module")
def demo_result():
    return run_demo("imagebind_tiny", labels=("a dog", "a car engine", "a person walking"), max_per_modality=2)


def test_demo_embeds_every_sensor_modality(demo_result):
    modalities = {it.modality for it in demo_result.items}
    assert modalities == {"vision", "depth", "thermal", "imu", "audio"}
    for it in demo_result.items:
        assert np.isfinite(it.embedding).all()
        assert abs(np.linalg.norm(it.embedding) - 1) < 1e-5, it.name
        probs = [p for _, p in it.top_labels]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    kinds = {it.modality: it.provenance["kind"] for it in demo_result.items}
    assert kinds["thermal"] == "synthetic", "thermal samples must be labelled synthetic"
    assert kinds["vision"] == "real" and kinds["imu"] == "real" and kinds["depth"] == "real"


def test_demo_is_deterministic_and_inputs_differ(demo_result):
    again = run_demo("imagebind_tiny", labels=("a dog", "a car engine", "a person walking"), max_per_modality=2)
    for a, b in zip(demo_result.items, again.items):
        np.testing.assert_array_equal(a.embedding, b.embedding)
    vision = [it.embedding for it in demo_result.items if it.modality == "vision"]
    assert not np.allclose(vision[0], vision[1]), "different photos must give different embeddings"


def test_demo_cli_json(capsys):
    assert main(["demo", "--json", "--labels", "a dog", "a cat", "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "imagebind_tiny" and out["weights"].startswith("random-init")
    assert all(len(item["top_labels"]) == 2 for item in out["items"])
    assert {item["modality"] for item in out["items"]} >= {"vision", "audio", "imu"}
