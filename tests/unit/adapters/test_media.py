"""Media sniffing and checks: real files from Pillow, crafted headers for the rest."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, features

from app.adapters.media import MediaInfo, check_media, sniff_content_type
from app.core.config import Settings
from app.core.errors import FetchFailed


def image_bytes(fmt: str, size: tuple[int, int] = (8, 6), **save: object) -> bytes:
    out = io.BytesIO()
    mode = "RGBA" if fmt in ("PNG", "WEBP") else "RGB"
    Image.new(mode, size, (10, 200, 30)).save(out, format=fmt, **save)
    return out.getvalue()


def png_with_header(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose IHDR claims `width` x `height`."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


PILLOW_IMAGES = [
    ("PNG", "image/png"),
    ("JPEG", "image/jpeg"),
    ("GIF", "image/gif"),
    ("BMP", "image/bmp"),
    ("TIFF", "image/tiff"),
    pytest.param(
        "WEBP",
        "image/webp",
        marks=pytest.mark.skipif(not features.check("webp"), reason="no WebP in Pillow"),
    ),
    pytest.param(
        "AVIF",
        "image/avif",
        marks=pytest.mark.skipif(not features.check("avif"), reason="no AVIF in Pillow"),
    ),
]


@pytest.mark.parametrize(("fmt", "content_type"), PILLOW_IMAGES)
def test_real_images_are_sniffed_and_checked(tmp_path: Path, fmt: str, content_type: str) -> None:
    data = image_bytes(fmt)
    assert sniff_content_type(data[:4096]) == content_type
    # The extension is deliberately wrong: only the bytes count.
    path = write(tmp_path, "upload.txt", data)
    assert check_media(path, max_pixels=1000) == MediaInfo(content_type, len(data), 8, 6)


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x02\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\x00\x00\x00\x08free"


def ebml(doctype: bytes) -> bytes:
    element = b"\x42\x82" + bytes([0x80 | len(doctype)]) + doctype
    return b"\x1a\x45\xdf\xa3" + bytes([0x80 | len(element)]) + element


CRAFTED = [
    (ftyp(b"isom", b"isom", b"iso2", b"mp41"), "video/mp4"),
    (ftyp(b"mp42", b"mp42"), "video/mp4"),
    (ftyp(b"qt  ", b"qt  "), "video/quicktime"),
    (ftyp(b"M4A ", b"M4A ", b"mp42"), "audio/mp4"),
    (ftyp(b"mif1", b"mif1", b"avif"), "image/avif"),
    (ftyp(b"heic", b"mif1", b"heic"), "image/heic"),
    (ebml(b"webm"), "video/webm"),
    (ebml(b"matroska"), "video/x-matroska"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00", "audio/wav"),
    (b"RIFF\x24\x00\x00\x00AVI LIST", "video/x-msvideo"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00", "audio/mpeg"),
    (b"\xff\xfb\x90\x64" + b"\x00" * 100, "audio/mpeg"),
    (b"\xff\xf1\x50\x80\x02\x1f\xfc", "audio/aac"),
    (b"fLaC\x00\x00\x00\x22", "audio/flac"),
    (b"OggS\x00\x02" + b"\x00" * 22 + b"\x01\x1e\x01vorbis", "audio/ogg"),
    (b"OggS\x00\x02" + b"\x00" * 22 + b"\x01\x2a\x80theora", "video/ogg"),
]


@pytest.mark.parametrize(("head", "content_type"), CRAFTED, ids=[c for _, c in CRAFTED])
def test_crafted_headers_are_sniffed(head: bytes, content_type: str) -> None:
    assert sniff_content_type(head) == content_type


NOT_MEDIA = [
    b"",
    b"hello, world",
    b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    b"<!DOCTYPE html><html></html>",
    b"%PDF-1.7\n",
    b"PK\x03\x04zip",
    b"BMW is a car brand, not a bitmap",
    b"RIFF\x24\x00\x00\x00XXXX",
    b"\xff\xff\xff\xff",  # mpeg-looking sync with invalid fields
    ftyp(b"crx ", b"crx "),  # an unknown ISO-BMFF brand (Canon raw)
    bytes(range(256)),
]


@pytest.mark.parametrize("head", NOT_MEDIA)
def test_non_media_is_not_sniffed(head: bytes) -> None:
    assert sniff_content_type(head) is None


@pytest.mark.parametrize(
    ("head", "content_type"),
    [(ftyp(b"isom", b"isom"), "video/mp4"), (ebml(b"webm"), "video/webm"),
     (b"fLaC\x00\x00\x00\x22", "audio/flac")],
)  # fmt: skip
def test_audio_and_video_pass_without_dimensions(
    tmp_path: Path, head: bytes, content_type: str
) -> None:
    path = write(tmp_path, "clip", head + b"\x00" * 100)
    assert check_media(path, max_pixels=1) == MediaInfo(content_type, len(head) + 100, None, None)


def test_pixel_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    # Given a 100-byte PNG that claims 5000x5000 pixels
    path = write(tmp_path, "bomb.png", png_with_header(5000, 5000))
    assert path.stat().st_size < 200
    # Then it is refused before decoding
    with pytest.raises(FetchFailed, match="5000x5000 = 25000000 pixels, over the limit"):
        check_media(path, max_pixels=1_000_000)


def test_enormous_header_is_refused_as_a_bomb(tmp_path: Path) -> None:
    # Past Pillow's own global ceiling, Pillow refuses it while opening.
    path = write(tmp_path, "bomb.png", png_with_header(100_000, 100_000))
    with pytest.raises(FetchFailed, match=r"decompression bomb|over the limit"):
        check_media(path, max_pixels=40_000_000)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # no global side effect


def test_image_at_the_pixel_limit_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "ok.png", image_bytes("PNG", (10, 10)))
    assert check_media(path, max_pixels=100).width == 10
    with pytest.raises(FetchFailed, match="over the limit of 99"):
        check_media(path, max_pixels=99)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"just some text pretending to be a png\n" * 10, "not an image, video or audio"),
        (bytes(range(256)) * 4, "not an image, video or audio"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 50, "does not decode as image/png"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 200, "does not decode as image/jpeg"),
        (b"GIF89a" + b"\x01" * 5, "does not decode as image/gif"),
        (ftyp(b"heic", b"mif1", b"heic"), "image/heic files are not supported"),
    ],
    ids=["empty", "text", "garbage", "fake-png", "fake-jpeg", "fake-gif", "heic"],
)
def test_unusable_files_are_refused(tmp_path: Path, data: bytes, reason: str) -> None:
    with pytest.raises(FetchFailed, match=reason):
        check_media(write(tmp_path, "input.png", data), max_pixels=1_000_000)


def test_truncated_image_is_refused(tmp_path: Path) -> None:
    data = image_bytes("PNG", (64, 64))
    with pytest.raises(FetchFailed, match="does not decode as image/png"):
        check_media(write(tmp_path, "cut.png", data[: len(data) // 2]), max_pixels=10_000)


def test_too_many_frames_are_refused(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), (i * 20, 0, 0)) for i in range(12)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    path = write(tmp_path, "anim.gif", out.getvalue())
    assert (
        check_media(path, max_pixels=100, max_frames=12, max_total_pixels=10_000).content_type
        == "image/gif"
    )
    with pytest.raises(FetchFailed, match="more than 11 frames or pages"):
        check_media(path, max_pixels=100, max_frames=11, max_total_pixels=10_000)


# --- bombs: every frame and page counts -----------------------------------------------------


def crafted_gif(canvas: tuple[int, int], frames: int, extent: tuple[int, int] = (1, 1)) -> bytes:
    """A tiny GIF: a `canvas` logical screen and `frames` one-pixel-data frames.

    Each frame's descriptor claims `extent`; its LZW data is the classic single pixel, so
    the file stays a few bytes a frame whatever it claims.
    """
    head = b"GIF89a" + struct.pack("<HH", *canvas) + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    frame = (
        b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 10 ms
        + b"\x2c"
        + struct.pack("<HHHH", 0, 0, *extent)
        + b"\x00\x02\x02\x44\x01\x00"
    )
    return head + loop + frame * frames + b"\x3b"


def test_frame_bomb_gif_is_refused_with_the_default_settings(tmp_path: Path) -> None:
    """The issue's 1.4 KB GIF: 60 frames of 1000x1000 made ComfyUI grow by ~1 GB."""
    settings = Settings()
    data = crafted_gif((1000, 1000), 60)
    assert len(data) < 2000
    path = write(tmp_path, "bomb.gif", data)
    with pytest.raises(FetchFailed, match="60 frames or pages decode to 60000000 pixels"):
        check_media(
            path,
            max_pixels=settings.max_image_pixels,
            max_frames=settings.max_frames,
            max_total_pixels=settings.max_total_pixels,
        )


def test_total_defaults_to_one_full_image(tmp_path: Path) -> None:
    path = write(tmp_path, "bomb.gif", crafted_gif((1000, 1000), 60))
    with pytest.raises(FetchFailed, match="over the limit of 40000000"):
        check_media(path, max_pixels=40_000_000)


def test_huge_canvas_with_many_frames_is_refused(tmp_path: Path) -> None:
    """The issue's 23 KB GIF: a 6000x6000 canvas and 1,000 frames (OOM-killed ComfyUI)."""
    path = write(tmp_path, "canvas.gif", crafted_gif((6000, 6000), 1000))
    with pytest.raises(FetchFailed, match="more than 300 frames or pages"):
        check_media(path, max_pixels=40_000_000, max_frames=300, max_total_pixels=10**12)
    with pytest.raises(FetchFailed, match="decode to"):
        check_media(path, max_pixels=40_000_000, max_frames=1000, max_total_pixels=40_000_000)


def test_gif_frame_reaching_past_the_canvas_is_measured_at_its_extent(tmp_path: Path) -> None:
    """Pillow grows the canvas to a frame that reaches past it, so that frame is the size."""
    path = write(tmp_path, "grow.gif", crafted_gif((1, 1), 2, extent=(9000, 9000)))
    with pytest.raises(FetchFailed, match="9000x9000 = 81000000 pixels"):
        check_media(path, max_pixels=40_000_000)


def test_tiff_whose_second_page_is_huge_is_refused(tmp_path: Path) -> None:
    out = io.BytesIO()
    small = Image.new("1", (100, 100))
    huge = Image.new("1", (3000, 3000))
    small.save(out, format="TIFF", save_all=True, append_images=[huge], compression="packbits")
    path = write(tmp_path, "pages.tif", out.getvalue())
    with pytest.raises(FetchFailed, match="frame or page 2 is 3000x3000 = 9000000 pixels"):
        check_media(path, max_pixels=4_000_000, max_total_pixels=10**9)


def test_tiff_pages_are_summed(tmp_path: Path) -> None:
    out = io.BytesIO()
    pages = [Image.new("1", (1000, 1000)) for _ in range(5)]
    pages[0].save(out, format="TIFF", save_all=True, append_images=pages[1:])
    path = write(tmp_path, "pages.tif", out.getvalue())
    assert check_media(path, max_pixels=1_000_000, max_total_pixels=5_000_000).width == 1000
    with pytest.raises(FetchFailed, match="5 frames or pages decode to 5000000 pixels"):
        check_media(path, max_pixels=1_000_000, max_total_pixels=4_999_999)
    with pytest.raises(FetchFailed, match="more than 4 frames"):
        check_media(path, max_pixels=1_000_000, max_frames=4, max_total_pixels=10**9)


def animation(fmt: str, size: tuple[int, int], frames: int) -> bytes:
    out = io.BytesIO()
    images = [Image.new("RGB", size, (i * 7 % 256, 0, 0)) for i in range(frames)]
    images[0].save(out, format=fmt, save_all=True, append_images=images[1:], duration=10)
    return out.getvalue()


ANIMATED = [
    ("PNG", "anim.png"),
    ("GIF", "anim.gif"),
    pytest.param(
        "WEBP",
        "anim.webp",
        marks=pytest.mark.skipif(not features.check("webp"), reason="no WebP in Pillow"),
    ),
]


@pytest.mark.parametrize(("fmt", "name"), ANIMATED)
def test_animated_inputs_are_limited_over_all_frames(tmp_path: Path, fmt: str, name: str) -> None:
    path = write(tmp_path, name, animation(fmt, (200, 100), 20))
    assert check_media(path, max_pixels=20_000, max_total_pixels=400_000).width == 200
    with pytest.raises(FetchFailed, match="20 frames or pages decode to 400000 pixels"):
        check_media(path, max_pixels=20_000, max_total_pixels=399_999)
    with pytest.raises(FetchFailed, match="more than 19 frames"):
        check_media(path, max_pixels=20_000, max_frames=19, max_total_pixels=10**9)


def test_single_frame_and_small_animations_pass_the_defaults(tmp_path: Path) -> None:
    settings = Settings()
    limits = {
        "max_pixels": settings.max_image_pixels,
        "max_frames": settings.max_frames,
        "max_total_pixels": settings.max_total_pixels,
    }
    still = write(tmp_path, "still.png", image_bytes("PNG", (4000, 3000)))
    assert check_media(still, **limits).width == 4000
    small = write(tmp_path, "small.gif", animation("GIF", (320, 240), 48))
    assert check_media(small, **limits).content_type == "image/gif"
