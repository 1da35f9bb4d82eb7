"""What a fetched file really is: magic-byte sniffing and image sanity checks.

The server's Content-Type and the URL's extension are claims; the first bytes are evidence.
Images are opened with Pillow restricted to the sniffed format, and every frame's or page's
dimensions are read *before* any pixel is decoded (decompression bombs): each one must fit
`max_pixels`, there may be at most `max_frames` of them, and together they may decode to at
most `max_total_pixels` (ComfyUI's loaders decode every frame of a GIF, APNG or WebP and
every page of a TIFF into memory). GIF frames are counted by walking the file's blocks, so
a frame that reaches past the logical screen is measured at the size Pillow would grow the
canvas to; TIFF pages and MPO pictures are visited with `seek`, which reads their headers
only. Then the first frame is decoded in full so a file that only starts like a PNG is
refused here, not in the middle of a render. Audio and video are identified by their
container's magic only; ComfyUI's loaders decode them.

Pillow's own global ceiling (`Image.MAX_IMAGE_PIXELS`, about 89 M pixels, fatal at twice
that) is left untouched, so this module changes no process-wide state; it is only a
backstop behind the per-call `max_pixels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, features

from app.core.errors import FetchFailed

__all__ = [
    "MAX_FRAMES",
    "SNIFF_BYTES",
    "MediaInfo",
    "accepted_content_type",
    "check_media",
    "is_accepted_type",
    "sniff_content_type",
]

#: How many leading bytes `sniff_content_type` looks at.
SNIFF_BYTES = 4096
#: Animated images with more frames than this are refused (ComfyUI loads every frame).
MAX_FRAMES = 1000
#: Formats whose frames or pages may each have their own size: visited one by one.
_PAGED = frozenset({"TIFF", "MPO"})

# Pillow plugin allowed for each sniffed image type, and the formats it may report
# (a phone's JPEG often opens as MPO, JPEG's multi-picture extension).
_IMAGE_FORMATS: dict[str, tuple[str, frozenset[str]]] = {
    "image/png": ("PNG", frozenset({"PNG"})),
    "image/jpeg": ("JPEG", frozenset({"JPEG", "MPO"})),
    "image/gif": ("GIF", frozenset({"GIF"})),
    "image/webp": ("WEBP", frozenset({"WEBP"})),
    "image/bmp": ("BMP", frozenset({"BMP"})),
    "image/tiff": ("TIFF", frozenset({"TIFF"})),
    "image/avif": ("AVIF", frozenset({"AVIF"})),
}
_AUDIO_VIDEO = frozenset(
    {
        "video/mp4",
        "video/quicktime",
        "video/webm",
        "video/x-matroska",
        "video/x-msvideo",
        "video/ogg",
        "audio/mp4",
        "audio/wav",
        "audio/mpeg",
        "audio/aac",
        "audio/flac",
        "audio/ogg",
    }
)
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_FTYP_BRANDS: dict[bytes, str] = {
    b"qt  ": "video/quicktime",
    b"M4A ": "audio/mp4",
    b"M4B ": "audio/mp4",
    b"avif": "image/avif",
    b"avis": "image/avif",
    **{brand: "image/heic" for brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis")},
    **{
        brand: "video/mp4"
        for brand in (
            b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso8", b"iso9",
            b"mp41", b"mp42", b"mp71", b"avc1", b"dash", b"M4V ", b"M4VH", b"M4VP",
            b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"mmp4", b"MSNV", b"f4v ",
        )
    },
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """A checked media file; width and height are None for audio and video."""

    content_type: str
    size: int
    width: int | None
    height: int | None


def sniff_content_type(head: bytes) -> str | None:
    """The media type the first bytes of a file prove, or None if they prove none we know."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and len(head) >= 12:
        riff = {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}
        return riff.get(head[8:12])
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if head[:2] == b"BM" and len(head) >= 18:
        if int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
            return "image/bmp"
        return None
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _sniff_ftyp(head)
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return _sniff_ebml(head)
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"OggS"):
        return "video/ogg" if b"\x80theora" in head[:SNIFF_BYTES] else "audio/ogg"
    if head.startswith(b"ID3"):
        return "audio/mpeg"
    return _sniff_mpeg_audio(head)


def _sniff_ftyp(head: bytes) -> str | None:
    """ISO base media (mp4, mov, heic, avif): the major brand, then the compatible ones."""
    box_end = min(int.from_bytes(head[0:4], "big"), len(head), SNIFF_BYTES)
    major = head[8:12]
    compatible = [head[i : i + 4] for i in range(16, box_end - 3, 4)]
    if b"avif" in (major, *compatible):
        return "image/avif"
    for brand in (major, *compatible):
        if brand in _FTYP_BRANDS:
            return _FTYP_BRANDS[brand]
    return None


def _sniff_ebml(head: bytes) -> str:
    """Matroska or WebM: told apart by the EBML DocType element (id 0x4282)."""
    at = head.find(b"\x42\x82", 4, 64)
    if at != -1 and head[at + 3 : at + 7] == b"webm":
        return "video/webm"
    return "video/x-matroska"


def _sniff_mpeg_audio(head: bytes) -> str | None:
    """A bare MPEG audio frame (mp3) or an ADTS frame (aac), checked beyond the sync bits."""
    if len(head) < 3 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    version = (head[1] >> 3) & 0x3
    layer = (head[1] >> 1) & 0x3
    if layer == 0:
        # ADTS: 12 sync bits, then layer 00; sampling index 13-15 is invalid.
        if head[1] & 0xF0 == 0xF0 and (head[2] >> 2) & 0xF < 13:
            return "audio/aac"
        return None
    bitrate_index = head[2] >> 4
    sample_rate_index = (head[2] >> 2) & 0x3
    if version == 1 or bitrate_index == 0xF or sample_rate_index == 0x3:
        return None
    return "audio/mpeg"


def _supported_images() -> dict[str, tuple[str, frozenset[str]]]:
    """Image types this Pillow build can decode (AVIF needs Pillow's optional codec)."""
    if features.check("avif"):
        return _IMAGE_FORMATS
    return {k: v for k, v in _IMAGE_FORMATS.items() if k != "image/avif"}


def accepted_content_type(head: bytes) -> str | None:
    """The type the first bytes prove, if it is one `check_media` can accept; else None.

    For uploads, which are refused at once (415) rather than when a job fetches them.
    """
    content_type = sniff_content_type(head)
    if content_type in _supported_images() or content_type in _AUDIO_VIDEO:
        return content_type
    return None


def is_accepted_type(content_type: str) -> bool:
    """Whether a declared type (a presigned PUT's) is one `check_media` can accept."""
    return content_type in _supported_images() or content_type in _AUDIO_VIDEO


def check_media(
    path: Path,
    *,
    max_pixels: int,
    max_frames: int = MAX_FRAMES,
    max_total_pixels: int | None = None,
) -> MediaInfo:
    """Identify `path` from its bytes and check it; raise FetchFailed if it is not usable.

    `max_pixels` bounds each frame or page, `max_frames` their number and
    `max_total_pixels` their sum (None: `max_pixels`, one full-size image's worth).
    """
    size = path.stat().st_size
    if size == 0:
        raise FetchFailed("the downloaded file is empty")
    with path.open("rb") as file:
        head = file.read(SNIFF_BYTES)
    content_type = sniff_content_type(head)
    if content_type is None:
        raise FetchFailed("the file is not an image, video or audio type this service accepts")
    images = _supported_images()
    if content_type in images:
        limits = _Limits(
            max_pixels=max_pixels,
            max_frames=max_frames,
            max_total_pixels=max_pixels if max_total_pixels is None else max_total_pixels,
        )
        plugin, reported = images[content_type]
        width, height = _check_image(path, content_type, plugin, reported, limits)
        return MediaInfo(content_type=content_type, size=size, width=width, height=height)
    if content_type in _AUDIO_VIDEO:
        return MediaInfo(content_type=content_type, size=size, width=None, height=None)
    raise FetchFailed(f"{content_type} files are not supported")


@dataclass(frozen=True, slots=True)
class _Limits:
    max_pixels: int
    max_frames: int
    max_total_pixels: int


def _check_image(
    path: Path, content_type: str, plugin: str, reported: frozenset[str], limits: _Limits
) -> tuple[int, int]:
    """Check every frame's header dimensions against the limits, then decode the first."""
    try:
        # Only the sniffed format's plugin may claim the file: no format confusion.
        with Image.open(path, formats=[plugin]) as image:
            width, height = image.size
            _check_frame_size(width, height, limits.max_pixels, "the image")
            if image.format not in reported:
                raise FetchFailed(f"the file does not decode as {content_type}")
            _check_frames(path, image, limits)
            image.seek(0)
            image.load()
    except FetchFailed:
        raise
    except Image.DecompressionBombError as exc:
        raise FetchFailed(
            "the image's dimensions are too large (a possible decompression bomb)"
        ) from exc
    except Exception as exc:  # Pillow raises many types on malformed input
        raise FetchFailed(f"the file does not decode as {content_type}") from exc
    return width, height


def _check_frame_size(width: int, height: int, max_pixels: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise FetchFailed(f"{what} claims impossible dimensions {width}x{height}")
    if width * height > max_pixels:
        raise FetchFailed(
            f"{what} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )


def _check_frames(path: Path, image: Image.Image, limits: _Limits) -> None:
    """Every frame's or page's size, their count and their sum, read from headers only."""
    sizes = _frame_sizes(path, image, limits.max_frames)
    if len(sizes) > limits.max_frames:
        raise FetchFailed(
            f"the image has more than {limits.max_frames} frames or pages "
            f"(the limit is {limits.max_frames})"
        )
    total = 0
    for index, (width, height) in enumerate(sizes):
        _check_frame_size(width, height, limits.max_pixels, f"frame or page {index + 1}")
        total += width * height
    if total > limits.max_total_pixels:
        raise FetchFailed(
            f"the image's {len(sizes)} frames or pages decode to {total} pixels in all, "
            f"over the limit of {limits.max_total_pixels}"
        )


def _frame_sizes(path: Path, image: Image.Image, max_frames: int) -> list[tuple[int, int]]:
    """The decoded size of each frame, up to `max_frames + 1` of them (then stop counting)."""
    if image.format == "GIF":
        return _gif_frame_sizes(path, max_frames + 1)
    if image.format in _PAGED:
        sizes: list[tuple[int, int]] = []
        for index in range(max_frames + 1):
            try:
                image.seek(index)
            except EOFError:
                break
            sizes.append(image.size)
        return sizes
    # PNG (APNG), WebP, AVIF: every frame has the canvas size; the count is the header's.
    frames = int(getattr(image, "n_frames", 1))
    return [image.size] * min(frames, max_frames + 1)


def _gif_frame_sizes(path: Path, cap: int) -> list[tuple[int, int]]:
    """Walk a GIF's blocks: each image descriptor's extent, grown to at least the canvas.

    Pillow (and so ComfyUI) grows the canvas when a frame reaches past it, and every frame
    is decoded at the canvas size, so a frame costs max(canvas, its own extent).
    """
    data = path.read_bytes()
    if len(data) < 13:
        raise FetchFailed("the file does not decode as image/gif")
    width = int.from_bytes(data[6:8], "little")
    height = int.from_bytes(data[8:10], "little")
    at = 13
    if data[10] & 0x80:
        at += 3 << ((data[10] & 0x07) + 1)
    sizes: list[tuple[int, int]] = []
    while at < len(data) and len(sizes) < cap:
        block = data[at]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            at = _skip_sub_blocks(data, at + 2)
        elif block == 0x2C:  # image descriptor
            if at + 10 > len(data):
                break
            left, top, w, h = (
                int.from_bytes(data[at + i : at + i + 2], "little") for i in (1, 3, 5, 7)
            )
            width, height = max(width, left + w), max(height, top + h)
            sizes.append((width, height))
            flags = data[at + 9]
            at += 10
            if flags & 0x80:
                at += 3 << ((flags & 0x07) + 1)
            at = _skip_sub_blocks(data, at + 1)  # LZW minimum code size, then the data
        else:
            break  # not a GIF block: Pillow stops here too
    return sizes


def _skip_sub_blocks(data: bytes, at: int) -> int:
    """The offset just past a chain of GIF data sub-blocks starting at `at`."""
    while at < len(data):
        length = data[at]
        at += 1 + length
        if length == 0:
            break
    return at
