"""Image and video preprocessing against independent references written here (PIL + plain numpy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edgebind.errors import ConfigError, PreprocessError, StreamError
from edgebind.preprocess import image, video
from edgebind.preprocess._resize import (
    bilinear_matrix,
    center_crop_offsets,
    resize_bilinear,
    resize_size_short_side_scale,
    resize_size_torchvision,
)

skdata = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) provides the real test photos")

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)[:, None, None]
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)[:, None, None]
GREY_LEVEL = 1.0 / 255.0 / float(STD.min())  # one 8-bit step after normalisation (~0.0151)


def reference_image(rgb: np.ndarray) -> np.ndarray:
    """The documented image pipeline by hand: PIL RGB, Resize(224, bicubic), CenterCrop, /255, CLIP norm."""
    pil = Image.fromarray(rgb).convert("RGB")
    w, h = pil.size
    if w <= h:
        new_w, new_h = 224, int(224 * h / w)
    else:
        new_w, new_h = int(224 * w / h), 224
    pil = pil.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = int(round((new_h - 224) / 2.0)), int(round((new_w - 224) / 2.0))
    arr = np.asarray(pil)[top : top + 224, left : left + 224]
    x = arr.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    return (x - MEAN) / STD


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    coffee = skdata.coffee()
    return {
        "astronaut_square": skdata.astronaut(),
        "chelsea_landscape": skdata.chelsea(),
        "rocket_landscape": skdata.rocket(),
        "coffee_portrait": np.ascontiguousarray(coffee.transpose(1, 0, 2)),
        "chelsea_small_upscaled": skdata.chelsea()[100:190, 150:271],
        "odd_margin": skdata.rocket()[:224, :301],
    }


# ---------------------------------------------------------------------------------------------- image


@pytest.mark.parametrize(
    "name",
    [
        "astronaut_square",
        "chelsea_landscape",
        "rocket_landscape",
        "coffee_portrait",
        "chelsea_small_upscaled",
        "odd_margin",
    ],
)
def test_image_matches_reference_pipeline_on_real_photos(photos, name):
    rgb = photos[name]
    out = image.preprocess(rgb)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    # Measured: 0.0 on all six (same Pillow call, same sizes, same float32 arithmetic).
    assert np.abs(out - reference_image(rgb)).max() <= 1e-6


def test_resize_size_rules():
    # torchvision truncates 224 * long / short: 224 * 451 / 300 = 336.75 -> 336, not 337.
    assert resize_size_torchvision(300, 451, 224) == (224, 336)
    assert resize_size_torchvision(451, 300, 224) == (336, 224)
    # pytorchvideo computes floor(long / short * 224); 230 / 224 * 224 is 229.999... in float.
    assert resize_size_short_side_scale(224, 230, 224) == (224, 229)
    assert resize_size_short_side_scale(230, 224, 224) == (229, 224)
    assert resize_size_torchvision(224, 230, 224) == (224, 230)


def test_center_crop_rounds_half_to_even_like_torchvision():
    assert center_crop_offsets(224, 301, 224) == (0, 38)  # 38.5 -> 38
    assert center_crop_offsets(224, 303, 224) == (0, 40)  # 39.5 -> 40


def test_gray_image_is_replicated_to_rgb(photos):
    gray = skdata.camera()
    out = image.preprocess(gray)
    assert np.abs(out - reference_image(gray)).max() <= 1e-6  # reference: PIL "L" -> convert("RGB")
    np.testing.assert_array_equal(out, image.preprocess(gray[..., None]))
    np.testing.assert_array_equal(out, image.preprocess(np.repeat(gray[..., None], 3, axis=-1)))


def test_rgba_drops_alpha(photos):
    rgb = photos["chelsea_landscape"]
    alpha = np.random.default_rng(0).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)
    np.testing.assert_array_equal(image.preprocess(rgba), image.preprocess(rgb))


def test_float_input_in_unit_range_is_close_to_uint8(photos):
    rgb = photos["astronaut_square"]
    diff = np.abs(image.preprocess(rgb.astype(np.float32) / 255.0) - image.preprocess(rgb)).max()
    assert diff <= 1.05 * GREY_LEVEL  # measured 0.0147 (about one grey level)
    assert diff > 0  # really the float path, not a silent cast back to uint8


@pytest.mark.parametrize(
    "bad, needle",
    [
        (np.zeros((32, 32, 3), dtype=np.uint16), "uint8"),
        (np.zeros((32, 32, 3), dtype=bool), "dtype kind"),
        (np.zeros((32, 32, 2), dtype=np.uint8), "H x W x 3"),
        (np.zeros((2, 32, 32, 3), dtype=np.uint8), "2-D or 3-D"),
        (np.zeros((0, 32, 3), dtype=np.uint8), "empty"),
        (np.full((32, 32, 3), np.nan, dtype=np.float32), "NaN"),
        (np.full((32, 32, 3), 2.0, dtype=np.float32), "[0, 1]"),
        (None, "got None"),
    ],
)
def test_image_errors_name_the_problem(bad, needle):
    with pytest.raises(PreprocessError) as info:
        image.preprocess(bad)
    assert needle in str(info.value)


def test_preprocess_batch(photos):
    imgs = [photos["astronaut_square"], photos["coffee_portrait"], skdata.camera()]
    batch = image.preprocess_batch(imgs)
    assert batch.shape == (3, 3, 224, 224)
    for i, img in enumerate(imgs):
        np.testing.assert_array_equal(batch[i], image.preprocess(img))
    with pytest.raises(PreprocessError, match=r"images\[1\]"):
        image.preprocess_batch([imgs[0], np.zeros((5, 5, 2), np.uint8)])
    with pytest.raises(PreprocessError, match="non-empty"):
        image.preprocess_batch([])


def test_image_config_changes_output(photos):
    cfg = image.ImageConfig(size=256, crop_size=224)
    out = image.preprocess(photos["astronaut_square"], cfg)
    assert out.shape == (3, 224, 224)
    assert not np.allclose(out, image.preprocess(photos["astronaut_square"]))


# ---------------------------------------------------------------------------------------------- video


def test_clip_windows_for_short_exact_and_long_videos():
    assert video.clip_windows(1.5) == [(0.0, 2.0)] * 5
    assert video.clip_windows(2.0) == [(0.0, 2.0)] * 5
    assert video.clip_windows(10.0) == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0), (8.0, 10.0)]
    starts = [s for s, _ in video.clip_windows(7.0, clip_duration=2.0, clips=3)]
    assert starts == [0.0, 2.5, 5.0]
    with pytest.raises(PreprocessError, match="duration_s"):
        video.clip_windows(0.0)


def test_clip_frame_indices_are_first_and_last_frame_of_each_window():
    assert video.clip_frame_indices(300, 30.0).tolist() == [[0, 59], [60, 119], [120, 179], [180, 239], [240, 299]]
    assert video.clip_frame_indices(250, 25.0).tolist() == [[0, 49], [50, 99], [100, 149], [150, 199], [200, 249]]
    assert video.clip_frame_indices(45, 30.0).tolist() == [[0, 44]] * 5  # 1.5 s: the whole video, 5 times
    assert video.clip_frame_indices(60, 30.0).tolist() == [[0, 59]] * 5  # exactly 2 s
    four = video.clip_frame_indices(300, 30.0, video.VideoConfig(frames_per_clip=4))
    assert four[1].tolist() == [60, 79, 99, 119]  # linspace(60, 119, 4) truncated


def test_crop_offsets_landscape_portrait():
    assert video.crop_offsets(224, 398, 224, 3) == [(0, 0), (0, 87), (0, 174)]
    assert video.crop_offsets(398, 224, 224, 3) == [(0, 0), (87, 0), (174, 0)]
    assert video.crop_offsets(224, 299, 224, 1) == [(0, 38)]  # video centre uses ceil(37.5)


def _direct_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Per-pixel bilinear, align_corners=False, written straight from the definition."""
    in_h, in_w = x.shape
    out = np.empty((out_h, out_w))
    for i in range(out_h):
        sy = max((i + 0.5) * in_h / out_h - 0.5, 0.0)
        y0 = min(int(np.floor(sy)), in_h - 1)
        y1, fy = min(y0 + 1, in_h - 1), sy - y0
        for j in range(out_w):
            sx = max((j + 0.5) * in_w / out_w - 0.5, 0.0)
            x0 = min(int(np.floor(sx)), in_w - 1)
            x1, fx = min(x0 + 1, in_w - 1), sx - x0
            top = (1 - fx) * x[y0, x0] + fx * x[y0, x1]
            bottom = (1 - fx) * x[y1, x0] + fx * x[y1, x1]
            out[i, j] = (1 - fy) * top + fy * bottom
    return out


@pytest.mark.parametrize("shape, out_shape", [((7, 9), (5, 13)), ((20, 11), (31, 4)), ((6, 6), (6, 6))])
def test_bilinear_resize_matches_direct_formula(shape, out_shape):
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    direct = _direct_bilinear(x.astype(np.float64), *out_shape)
    fast = resize_bilinear(x, *out_shape)
    dense = bilinear_matrix(shape[0], out_shape[0]) @ x @ bilinear_matrix(shape[1], out_shape[1]).T
    assert np.abs(fast - direct).max() < 1e-6  # measured ~1e-7 (float32 weights)
    assert np.abs(dense - direct).max() < 1e-6
    assert np.allclose(bilinear_matrix(shape[0], out_shape[0]).sum(axis=1), 1.0)


def test_bilinear_resize_matches_torch_interpolate():
    torch = pytest.importorskip("torch", reason="torch (export extra) is the reference for ShortSideScale")
    x = np.random.default_rng(2).random((3, 270, 480), dtype=np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None], size=(224, 398), mode="bilinear", align_corners=False, antialias=False
    )[0].numpy()
    assert np.abs(resize_bilinear(x, 224, 398) - ref).max() < 1e-6  # measured 1.8e-7


def _constant_frames(n: int, h: int, w: int) -> np.ndarray:
    """Frame k is filled with the value k (mod 256): the output reveals which frames were sampled."""
    return np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, h, w, 3)).copy()


def _decode_frame_value(chw: np.ndarray) -> np.ndarray:
    """Undo the CLIP normalisation of a channel-first array and return 8-bit values."""
    shape = (3,) + (1,) * (chw.ndim - 1)
    return np.rint((chw * STD.reshape(shape) + MEAN.reshape(shape)) * 255.0)


def test_preprocess_frames_shape_and_sampled_frames():
    frames = _constant_frames(300, 120, 160)  # 10 s at 30 fps, upscaled to 224 x 298
    out = video.preprocess_frames(frames, fps=30.0)
    assert out.shape == (15, 3, 2, 224, 224) and out.dtype == np.float32
    expected = [[0, 59], [60, 119], [120, 179], [180, 239], [240, 299 % 256]]
    for clip in range(5):
        for crop in range(3):
            for t in range(2):
                values = _decode_frame_value(out[clip * 3 + crop, :, t])
                assert np.all(values == expected[clip][t]), (clip, crop, t)


@pytest.mark.parametrize("portrait", [False, True])
def test_three_crops_cover_left_centre_right(portrait):
    h, w = (448, 224) if portrait else (224, 448)  # exact 2:1, so no resize happens
    ramp = np.linspace(0.0, 1.0, 448, dtype=np.float32)
    frame = np.broadcast_to(ramp[:, None] if portrait else ramp[None, :], (h, w))
    frames = np.repeat(np.stack([frame] * 3, axis=-1)[None], 4, axis=0)
    out = video.preprocess_frames(frames, fps=2.0)
    assert out.shape == (15, 3, 2, 224, 224)
    first = (out[:3, 0, 0] * STD[0] + MEAN[0]) * 447.0  # ramp position of each crop
    assert np.allclose(first[:, 0, 0], [0, 112, 224], atol=1e-3)  # top-left pixel of each crop
    along = first[0, :, 0] if portrait else first[0, 0, :]
    assert along[-1] - along[0] == pytest.approx(223, abs=1e-3)  # the ramp runs along the long side


def test_video_errors():
    with pytest.raises(PreprocessError, match="frames"):
        video.preprocess_frames(np.zeros((10, 32, 32, 2), np.uint8), fps=30.0)
    with pytest.raises(PreprocessError, match="fps"):
        video.preprocess_frames(np.zeros((10, 32, 32, 3), np.uint8), fps=0)
    with pytest.raises(ConfigError, match="num_crops"):
        video.VideoConfig(num_crops=2)


def test_streaming_clip_last_two_frames():
    frames = _constant_frames(5, 100, 140)
    stream = video.StreamingClip()
    with pytest.raises(StreamError, match="no frame"):
        stream.clip()
    stream.push(frames[0])
    one = stream.clip()
    assert one.shape == (3, 2, 224, 224) and not stream.ready
    assert np.all(_decode_frame_value(one) == 0)
    for k in range(1, 5):
        stream.push(frames[k])
    clip = stream.clip()
    assert stream.ready and len(stream) == 2
    assert np.all(_decode_frame_value(clip[:, 0]) == 3) and np.all(_decode_frame_value(clip[:, 1]) == 4)


def test_streaming_clip_span_matches_reference_window_and_centre_crop():
    stream = video.StreamingClip(span_s=2.0)
    frames = _constant_frames(90, 120, 200)
    for k in range(90):
        stream.push(frames[k], t_s=k / 30.0)
    clip = stream.clip()
    # Newest frame 89 at 2.967 s; the 2-s window ending there starts with frame 30 (60 frames, as in a file).
    assert np.all(_decode_frame_value(clip[:, 0]) == 30) and np.all(_decode_frame_value(clip[:, 1]) == 89)
    assert len(stream) == 60
    offline = video.preprocess_frames(frames[30:90], fps=30.0)  # 2-s file -> every clip is (0, 59)
    np.testing.assert_allclose(clip, offline[1], atol=1e-6)  # index 1 = clip 0, centre crop
    with pytest.raises(PreprocessError, match="increase"):
        stream.push(frames[0], t_s=1.0)
    with pytest.raises(PreprocessError, match="t_s"):
        video.StreamingClip(span_s=2.0).push(frames[0])


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "config",
    [
        image.ImageConfig(),
        image.ImageConfig(size=256, crop_size=224, resample="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        video.VideoConfig(),
        video.VideoConfig(clips=3, frames_per_clip=4, num_crops=1, clip_duration=1.5),
    ],
)
def test_config_round_trip(config):
    again = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    with pytest.raises(ConfigError, match="unknown field"):
        type(config).from_dict({**config.to_dict(), "interpolation": "nearest"})


@pytest.mark.parametrize(
    "cls, bad, needle",
    [
        (image.ImageConfig, {"size": 200, "crop_size": 224}, "crop_size"),
        (image.ImageConfig, {"std": [0.2, 0.0, 0.2]}, "std"),
        (image.ImageConfig, {"resample": "lanczos"}, "resample"),
        (video.VideoConfig, {"clips": 0}, "clips"),
        (video.VideoConfig, {"mean": [0.5, 0.5]}, "mean"),
    ],
)
def test_config_rejects_invalid_values(cls, bad, needle):
    with pytest.raises(ConfigError, match=needle):
        cls.from_dict(bad)
