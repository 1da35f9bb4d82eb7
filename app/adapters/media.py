"""What a fetched file really is: magic-byte sniffing and image sanity checks.

The server's Content-Type and the URL's extension are claims; the first bytes are evidence.
Images are opened with Pillow restricted to the sniffed format, their header dimensions are
checked against `max_pixels` *before* any pixel is decoded (decompression bombs), and then
the first frame is decoded in full so a file that only starts like a PNG is refused here,
not in the middle of a render. Audio and video are identified by their container's magic
only; ComfyUI's loaders decode them.

Pillow's own global ceiling (`Image.MAX_IMAGE_PIXELS`, about 89 M pixels, fatal at twice
that) is left untouched, so this module changes no process-wide state; it is only a
backstop behind the per-call `max_pixels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, features

from app.core.errors import FetchFailed

__all__ = ["MAX_FRAMES", "SNIFF_BYTES", "MediaInfo", "check_media", "sniff_content_type"]

#: How many leading bytes `sniff_content_type` looks at.
SNIFF_BYTES = 4096
#: Animated images with more frames than this are refused (ComfyUI loads every frame).
MAX_FRAMES = 1000

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


def check_media(path: Path, *, max_pixels: int, max_frames: int = MAX_FRAMES) -> MediaInfo:
    """Identify `path` from its bytes and check it; raise FetchFailed if it is not usable."""
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
        plugin, reported = images[content_type]
        width, height = _check_image(path, content_type, plugin, reported, max_pixels, max_frames)
        return MediaInfo(content_type=content_type, size=size, width=width, height=height)
    if content_type in _AUDIO_VIDEO:
        return MediaInfo(content_type=content_type, size=size, width=None, height=None)
    raise FetchFailed(f"{content_type} files are not supported")


def _check_image(
    path: Path,
    content_type: str,
    plugin: str,
    reported: frozenset[str],
    max_pixels: int,
    max_frames: int,
) -> tuple[int, int]:
    """Check header dimensions against the limits, then decode the first frame."""
    try:
        # Only the sniffed format's plugin may claim the file: no format confusion.
        with Image.open(path, formats=[plugin]) as image:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise FetchFailed(f"the image claims impossible dimensions {width}x{height}")
            if width * height > max_pixels:
                raise FetchFailed(
                    f"the image is {width}x{height} = {width * height} pixels, "
                    f"over the limit of {max_pixels}"
                )
            if image.format not in reported:
                raise FetchFailed(f"the file does not decode as {content_type}")
            frames = int(getattr(image, "n_frames", 1))
            if frames > max_frames:
                raise FetchFailed(f"the image has {frames} frames, over the limit of {max_frames}")
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
