import io

import numpy as np
import pytest
from PIL import Image

from sipl.data.imageio import decode_rgb, read_rgb, write_png_atomic
from sipl.errors import SiplError


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_rgb_png_roundtrip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    write_png_atomic(array, tmp_path / "x.png")
    decoded, notes = read_rgb(tmp_path / "x.png")
    assert np.array_equal(decoded, array) and notes == []
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file must be renamed away"


def test_grey_palette_and_rgba_are_converted_with_a_note():
    grey, notes = decode_rgb(_encode(Image.new("L", (5, 4), 100)), "g.png")
    assert grey.shape == (4, 5, 3) and (grey == 100).all() and "L converted to RGB" in notes[0]
    rgba = Image.new("RGBA", (3, 3), (10, 20, 30, 0))
    composited, notes = decode_rgb(_encode(rgba), "a.png")
    assert (composited == 255).all(), "fully transparent pixels composite to white"
    assert "transparency" in notes[0]
    palette, notes = decode_rgb(_encode(Image.new("RGB", (4, 4), (200, 0, 0)).convert("P", palette=Image.Palette.ADAPTIVE)), "p.png")
    assert palette[0, 0].tolist() == [200, 0, 0] and notes


def test_sixteen_bit_inputs_keep_their_range():
    import cv2

    deep = np.full((4, 4, 3), 65535, np.uint16)
    deep[..., 0] = 0
    ok, encoded = cv2.imencode(".png", deep)  # BGR order: channel 0 is blue
    image, notes = decode_rgb(encoded.tobytes(), "deep.png")
    assert image[0, 0].tolist() == [255, 255, 0] and "16-bit" in notes[0]
    grey16 = Image.fromarray(np.full((3, 3), 32768, np.uint16))
    image, notes = decode_rgb(_encode(grey16), "g16.png")
    assert image[0, 0].tolist() == [128, 128, 128] and "16-bit" in notes[0]


def test_exif_orientation_is_applied():
    array = np.zeros((2, 3, 3), np.uint8)
    array[0, 0] = 255  # top-left marker
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: display needs a 90° clockwise turn
    decoded, notes = decode_rgb(_encode(image, "JPEG", exif=exif, quality=100), "o.jpg")
    assert decoded.shape[:2] == (3, 2) and any("orientation 6" in n for n in notes)
    assert decoded[0, -1].mean() > 128, "the top-left marker moves to the top-right after a clockwise turn"


@pytest.mark.parametrize("payload, reason", [(b"", "empty"), (b"not an image at all", "not a readable image")])
def test_unreadable_bytes_name_the_file(payload, reason):
    with pytest.raises(SiplError, match=f"bad.png: {reason}"):
        decode_rgb(payload, "bad.png")


def test_truncated_png_is_rejected(tmp_path):
    data = _encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(SiplError, match="cut.png"):
        read_rgb(tmp_path / "cut.png")
