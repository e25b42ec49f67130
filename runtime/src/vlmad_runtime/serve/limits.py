"""What the service accepts, and how it says no.

Everything a request can get wrong ends as an :class:`ApiError`: an HTTP status, a stable machine-readable
``code``, a message saying what was wrong and a hint saying what to do. Uploads are read into memory under a byte
cap (never spooled to disk), multipart bodies are parsed here with python-multipart, and images are decoded with a
header-first pixel check so that decompression bombs are refused before any pixel is allocated.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from vlmad_runtime.errors import ImageLoadError

#: reference-set names: also the file name on disk, so nothing but these characters ever reaches a path
SET_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

MiB = 1024 * 1024

#: PIL format names accepted by default (what industrial cameras and export tools write)
DEFAULT_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")


@dataclass(frozen=True)
class Limits:
    """Per-service limits (CLI: ``--max-upload-mb``, ``--max-megapixels``, ``--request-timeout``...)."""

    #: bytes of one encoded image (multipart file part, raw body, or decoded base64)
    max_upload_bytes: int = 20 * MiB
    #: decoded width * height of one image; larger is refused as a possible decompression bomb
    max_pixels: int = 40_000_000
    #: PIL format names (``Image.format``) accepted
    allowed_formats: tuple[str, ...] = DEFAULT_FORMATS
    #: seconds from the start of reading a request body to the response (detect and reference uploads)
    request_timeout_s: float = 30.0
    #: images in one reference set
    max_reference_images: int = 32
    #: decoded pixels of all images of one reference-set upload together (checked from each header before decoding)
    max_reference_pixels: int = 64_000_000
    #: longest side a reference image is stored at (downscaled on upload; the models see at most 518 px)
    reference_max_side: int = 2048
    #: bytes of one reference-set upload request (all images together)
    max_reference_request_bytes: int = 128 * MiB
    #: reference sets kept on disk
    max_reference_sets: int = 256
    #: requests waiting for the model worker; beyond this /v1/detect answers 503 (retry later)
    max_queue: int = 512
    #: images decoded at the same time (each decode holds the full-resolution image in memory)
    max_concurrent_decodes: int = 4
    #: bytes of request bodies held at once by all requests together (beyond: 503, retry later)
    max_body_bytes_in_flight: int = 256 * MiB
    #: longest side of a server-rendered overlay PNG (the original image is downscaled to it)
    overlay_max_side: int = 1024

    @property
    def max_detect_request_bytes(self) -> int:
        """Body cap of /v1/detect: one image, base64 inflation (4/3) and form/JSON overhead."""
        return self.max_upload_bytes * 4 // 3 + 64 * 1024

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["allowed_formats"] = list(self.allowed_formats)
        return out


@dataclass
class ApiError(Exception):
    """A 4xx/5xx answer: ``{"error": {"code", "message", "hint"}, "request_id"}``."""

    status: int
    code: str
    message: str
    hint: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.hint:
            err["hint"] = self.hint
        return {"error": err, "request_id": request_id}


def validate_set_name(name: str) -> str:
    """A reference-set name, checked strictly (it becomes a file name under the data dir)."""
    if not isinstance(name, str) or not SET_NAME_RE.fullmatch(name):
        shown = name if isinstance(name, str) and len(name) <= 80 else f"{str(name)[:80]}..."
        raise ApiError(
            400,
            "invalid_reference_set_name",
            f"invalid reference set name {shown!r}",
            "use 1-64 characters from A-Z, a-z, 0-9, '_' and '-'",
        )
    return name


# ---------------------------------------------------------------------------------------------- images
def decode_image(data: bytes, limits: Limits, label: str = "image") -> tuple[Image.Image, str]:
    """Encoded bytes -> (8-bit RGB PIL image in display orientation, PIL format name), the way
    :func:`vlmad_runtime.images.load_image` reads files (same 16-bit, alpha, EXIF and truncation rules), with the
    service's byte, pixel and format limits.
    """
    from vlmad_runtime.images import decode_to_rgb  # the file loader's conversion rules, shared on purpose

    _check_size(data, limits, label)
    im = _open_image(data, limits, label)
    with im:
        fmt = _check_header(im, limits, label)
        try:
            return decode_to_rgb(im, label), fmt
        except ImageLoadError as err:
            raise ApiError(
                400,
                "invalid_image",
                f"{label} cannot be decoded: {err.reason}",
                "the file may be truncated or corrupt; re-export or re-send it",
            ) from None
        except Exception as err:  # belt and braces: no decoder failure becomes a 500
            raise ApiError(
                400, "invalid_image", f"{label} cannot be decoded: {err or type(err).__name__}", "re-export the image"
            ) from None


def _check_size(data: bytes, limits: Limits, label: str) -> None:
    """Empty and over-long uploads are refused before any decoder sees them."""
    if not data:
        raise ApiError(400, "empty_image", f"{label} is empty (0 bytes)", "send the bytes of a PNG/JPEG image")
    if len(data) > limits.max_upload_bytes:
        raise ApiError(
            413,
            "image_too_large",
            f"{label} is {len(data)} bytes; the limit is {limits.max_upload_bytes} bytes",
            "downscale or re-compress the image",
        )


def _open_image(data: bytes, limits: Limits, label: str) -> Image.Image:
    """PIL's lazy open (header only); every failure becomes a 4xx with what to do."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ApiError(
            400,
            "invalid_image",
            f"{label} is not a recognisable image (unknown format or corrupt header)",
            f"send one of: {', '.join(limits.allowed_formats)}",
        ) from None
    except Image.DecompressionBombError as err:
        raise ApiError(
            413,
            "too_many_pixels",
            f"{label} refused as a possible decompression bomb ({err})",
            f"images may have at most {limits.max_pixels} pixels",
        ) from None
    except Exception as err:  # PIL raises many types on hostile headers
        raise ApiError(
            400, "invalid_image", f"{label} cannot be opened: {err or type(err).__name__}", "re-export the image"
        ) from None


def _check_header(im: Image.Image, limits: Limits, label: str) -> str:
    """The format and size the header claims, against the limits (before any pixel is decoded); the format."""
    fmt = (im.format or "").upper()
    # MPO (phones, stereo cameras) is a JPEG with more frames after it; the file loader reads its first frame
    jpeg_family = fmt == "MPO" and "JPEG" in limits.allowed_formats
    if fmt not in limits.allowed_formats and not jpeg_family:
        raise ApiError(
            415,
            "unsupported_image_format",
            f"{label} is a {fmt or 'unknown'} image; accepted formats: {', '.join(limits.allowed_formats)}",
            "convert the image to PNG or JPEG",
        )
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ApiError(400, "invalid_image", f"{label} has an empty size {w}x{h}")
    if w * h > limits.max_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"{label} is {w}x{h} = {w * h} pixels; the limit is {limits.max_pixels} (possible decompression bomb)",
            "downscale the image before sending it",
        )
    return fmt


def decode_base64(value: Any, field_name: str, limits: Limits) -> bytes:
    """A base64 string (optionally a ``data:image/...;base64,`` URL) -> bytes, under the upload byte cap."""
    if not isinstance(value, str):
        raise ApiError(
            400, "invalid_field", f"field {field_name!r} must be a base64 string, got {type(value).__name__}"
        )
    if value.startswith("data:"):
        head, sep, value = value.partition(",")
        if not sep or ";base64" not in head:
            raise ApiError(400, "invalid_base64", f"field {field_name!r} is a data URL without ';base64,'")
    if len(value) > limits.max_upload_bytes * 4 // 3 + 8:
        raise ApiError(
            413,
            "image_too_large",
            f"field {field_name!r} decodes to more than {limits.max_upload_bytes} bytes",
            "downscale or re-compress the image",
        )
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400,
            "invalid_base64",
            f"field {field_name!r} is not valid base64",
            "encode the image file bytes with standard base64 (RFC 4648)",
        ) from None


# ---------------------------------------------------------------------------------------------- request bodies
class BodyBudget:
    """Bytes of request bodies the service holds at once, all requests together (event-loop use only).

    Per-request caps alone let N concurrent uploads hold N times the cap (30 x 20 MiB raised RSS by ~1 GB); here
    each request reserves its declared ``Content-Length`` (or each chunk as it arrives) and is refused with 503
    when the total would pass ``limit``. A lone request always fits: the limit is at least the largest body cap.
    """

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.used = 0

    def hold(self) -> BodyHold:
        return BodyHold(self)


class BodyHold:
    """One request's share of a :class:`BodyBudget`; ``release()`` (idempotent) gives it back."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.bytes = 0

    def grow_to(self, n: int) -> None:
        extra = n - self.bytes
        if extra <= 0:
            return
        b = self.budget
        if b.used + extra > b.limit and b.used > 0:
            raise ApiError(
                503,
                "busy",
                f"the server is already receiving {b.used} bytes of other uploads (limit {b.limit})",
                "retry in a moment",
                headers={"Retry-After": "1"},
            )
        b.used += extra
        self.bytes = n

    def release(self) -> None:
        self.budget.used -= self.bytes
        self.bytes = 0


@dataclass
class Part:
    """One multipart part: form field or file."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


class _PartCollector:
    """python-multipart's callbacks, collecting the parts of one body in memory (at most ``max_parts``)."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        self.parts: list[Part] = []
        self.headers: dict[str, str] = {}
        self.field, self.value = b"", b""
        self.data: list[bytes] = []
        self.ended = False

    def callbacks(self) -> dict[str, Any]:
        names = ("part_begin", "part_data", "part_end", "header_field", "header_value", "header_end", "end")
        return {f"on_{n}": getattr(self, f"on_{n}") for n in names}

    def on_part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise ApiError(400, "too_many_parts", f"multipart body has more than {self.max_parts} parts")
        self.headers, self.data = {}, []

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.field.lower().decode("latin-1")] = self.value.decode("latin-1")
        self.field, self.value = b"", b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.data.append(data[start:end])

    def on_part_end(self) -> None:
        from python_multipart.multipart import parse_options_header

        disposition = self.headers.get("content-disposition")
        if disposition is None:
            raise ApiError(400, "invalid_multipart", "a multipart part has no Content-Disposition header")
        _, opts = parse_options_header(disposition)
        filename = opts.get(b"filename")
        self.parts.append(
            Part(
                name=opts.get(b"name", b"").decode("utf-8", "replace"),
                filename=None if filename is None else filename.decode("utf-8", "replace"),
                content_type=self.headers.get("content-type"),
                data=b"".join(self.data),
            )
        )

    def on_end(self) -> None:
        self.ended = True


def parse_multipart(body: bytes, content_type: str, max_parts: int) -> list[Part]:
    """Parse a complete multipart/form-data body held in memory (nothing is written to disk)."""
    from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(
            400,
            "invalid_multipart",
            "multipart/form-data body without a boundary parameter",
            "let your HTTP client build the multipart body (e.g. curl -F image=@file.png)",
        )
    collector = _PartCollector(max_parts)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except MultipartParseError as err:
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {err}") from None
    except Exception as err:  # the parser's own errors are not all MultipartParseError
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {err or type(err).__name__}") from None
    if not collector.ended:
        raise ApiError(400, "invalid_multipart", "multipart body is truncated (no closing boundary)")
    return collector.parts


def check_file_part(part: Part) -> None:
    """A file part must say it is an image (or generic bytes)."""
    mt = media_type(part.content_type)
    if mt and not (mt.startswith("image/") or mt == "application/octet-stream"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"part {part.name!r} has content type {mt!r}; expected image/* or application/octet-stream",
        )
