import io

import numpy as np
import pytest
from PIL import Image

from headstart.core.errors import BadImageError
from headstart.data.images import Preprocessor, decode_image, is_image_name

LITE0 = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("L", "PNG"),
        ("CMYK", "JPEG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("1", "BMP"),
        ("RGB", "WEBP"),
        ("RGB", "TIFF"),
        ("P", "GIF"),
    ],
)
def test_every_mode_becomes_rgb(mode, fmt):
    img = Image.new("RGB", (30, 20), (10, 120, 240)).convert(mode)
    out = decode_image(encode(img, fmt))
    assert out.mode == "RGB" and out.size == (30, 20)


def test_transparent_pixels_become_white_not_black():
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    out = decode_image(encode(img, "PNG"))
    assert np.asarray(out).min() == 255


def test_16_bit_is_scaled_not_clipped():
    arr = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I")
    out = np.asarray(decode_image(encode(img, "PNG")))
    assert out.max() > 200 and out.min() < 10 and len(np.unique(out)) > 10


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"this is a text file, not a jpeg" * 10, "not an image"),
    ],
)
def test_bad_bytes_give_reasons(data, reason):
    with pytest.raises(BadImageError, match=reason):
        decode_image(data)


def test_truncated_jpeg_is_reported():
    data = encode(Image.effect_noise((200, 200), 50).convert("RGB"), "JPEG")
    with pytest.raises(BadImageError, match="truncated|damaged"):
        decode_image(data[: len(data) // 2])


def test_extensions_are_case_insensitive():
    assert is_image_name("a/B.JPG") and is_image_name("x.TiFf") and not is_image_name("notes.txt")


def test_fast_resize_crop_matches_timm_transform():
    from timm.data import create_transform

    rng = np.random.default_rng(0)
    pre = Preprocessor(LITE0)
    ref = create_transform(**LITE0, is_training=False)
    for size in [(500, 375), (320, 240), (240, 500), (1000, 1001)]:
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8).repeat(1, 0))
        ours = pre(img).astype(np.float32) / 255.0
        theirs = ref(img).numpy().transpose(1, 2, 0) * 0.5 + 0.5
        assert ours.shape == (224, 224, 3)
        assert np.abs(ours - theirs).mean() < 0.01
