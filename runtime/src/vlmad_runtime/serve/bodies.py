"""Request bodies: read under byte caps and the shared body budget, then parsed into image bytes."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from vlmad_runtime.serve.limits import (
    ApiError,
    BodyHold,
    Limits,
    Part,
    check_file_part,
    decode_base64,
    media_type,
    parse_multipart,
)

HEATMAP_KINDS = ("overlay", "raw", "color")
HEATMAP_ALIASES = {"none": (), "": (), "both": ("overlay", "raw"), "all": HEATMAP_KINDS}
DETECT_FIELDS = ("image", "file")
REFERENCE_FIELDS = ("images", "image", "file")


def parse_heatmap(value: str) -> tuple[str, ...]:
    kinds: list[str] = []
    for item in (value or "").lower().split(","):
        item = item.strip()
        if item in HEATMAP_ALIASES:
            kinds.extend(HEATMAP_ALIASES[item])
        elif item in HEATMAP_KINDS:
            kinds.append(item)
        else:
            raise ApiError(
                400,
                "invalid_query",
                f"unknown heatmap kind {item!r}",
                "use heatmap=none|overlay|raw|color|both|all, or a comma-separated list",
            )
    return tuple(dict.fromkeys(kinds))


async def read_body(request: Request, limit: int, hold: BodyHold | None = None) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes (never buffered beyond it), and
    with 503 when ``hold`` cannot reserve its bytes in the service-wide body budget."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ApiError(400, "invalid_content_length", f"Content-Length {declared!r} is not a number") from None
        if n > limit:
            raise ApiError(
                413,
                "request_too_large",
                f"request body is {n} bytes; the limit is {limit} bytes",
                "send a smaller image (or fewer images per request)",
            )
        if hold is not None:
            hold.grow_to(n)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(
                    413,
                    "request_too_large",
                    f"request body exceeds the limit of {limit} bytes",
                    "send a smaller image (or fewer images per request)",
                )
            if hold is not None:
                hold.grow_to(size)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def json_body(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {err}") from None
    except RecursionError:  # '[' * 100000: the parser recurses once per nesting level
        raise ApiError(
            400, "invalid_json", "request body is JSON nested too deeply", 'send a flat object: {"image_b64": "..."}'
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", f"JSON body must be an object, got {type(data).__name__}")
    return data


def _unsupported_content_type(ctype: str, accepted: str) -> ApiError:
    if not ctype:
        return ApiError(415, "missing_content_type", "request has no Content-Type header", f"send {accepted}")
    return ApiError(415, "unsupported_media_type", f"Content-Type {ctype!r} is not accepted here", f"send {accepted}")


def _file_parts(parts: list[Part], fields: tuple[str, ...], field: str, hint: str) -> list[Part]:
    """The multipart parts named one of ``fields``; none is a 400 naming what was sent."""
    files = [p for p in parts if p.name in fields]
    if not files:
        got = ", ".join(repr(p.name) for p in parts) or "none"
        raise ApiError(400, "missing_field", f"multipart body has no {field!r} field (fields sent: {got})", hint)
    return files


def _json_image_field(
    body: bytes, allowed: set[str], field: str, unknown_hint: str, missing_hint: str
) -> tuple[dict[str, Any], str]:
    """The JSON object and the key holding the image data: ``field`` or its short alias (``field`` without
    ``_b64``); an unknown field or neither key is a 400."""
    data = json_body(body)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown JSON field(s): {', '.join(unknown)}", unknown_hint)
    alias = field.removesuffix("_b64")
    key = field if field in data else alias if alias in data else None
    if key is None:
        raise ApiError(400, "missing_field", f"JSON body has no {field!r} field", missing_hint)
    return data, key


def extract_detect_image(content_type: str, body: bytes, limits: Limits) -> tuple[bytes, str | None]:
    """The one image of a detect request (bytes, client file name)."""
    ctype = media_type(content_type)
    accepted = (
        "multipart/form-data with an 'image' file field, application/json {\"image_b64\": ...}, or a raw image/* body"
    )
    if ctype == "multipart/form-data":
        parts = parse_multipart(body, content_type, max_parts=16)
        hint = "send the image as form field 'image', e.g. curl -F image=@part.png"
        files = _file_parts(parts, DETECT_FIELDS, "image", hint)
        if len(files) > 1:
            raise ApiError(
                400,
                "too_many_images",
                f"got {len(files)} images; /v1/detect scores one image per request",
                "send one request per image (the server batches concurrent requests)",
            )
        check_file_part(files[0])
        return files[0].data, files[0].filename
    if ctype == "application/json":
        data, key = _json_image_field(
            body,
            {"image_b64", "image", "filename"},
            "image_b64",
            'send {"image_b64": "<base64>", "filename": optional}; references and heatmap are query parameters',
            'send {"image_b64": "<base64 of the image file>"}',
        )
        filename = data.get("filename")
        return decode_base64(data[key], key, limits), filename if isinstance(filename, str) else None
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return body, None
    raise _unsupported_content_type(ctype, accepted)


def extract_reference_images(content_type: str, body: bytes, limits: Limits) -> list[tuple[bytes, str | None]]:
    """The (encoded bytes, client file name) of each reference image of an upload, multipart or JSON."""
    ctype = media_type(content_type)
    n_max = limits.max_reference_images
    if ctype == "multipart/form-data":
        items = _multipart_references(body, content_type, n_max)
    elif ctype == "application/json":
        items = _json_references(body, limits)
    else:
        raise _unsupported_content_type(
            ctype,
            "multipart/form-data with one or more 'images' file fields, or application/json {\"images_b64\": [...]}",
        )
    if not items:
        raise ApiError(400, "no_images", "a reference set needs at least one image")
    if len(items) > n_max:
        raise ApiError(
            400,
            "too_many_images",
            f"got {len(items)} images; a reference set holds at most {n_max}",
            "K-shot references are a handful of normal images (typically 1-8)",
        )
    return items


def _multipart_references(body: bytes, content_type: str, n_max: int) -> list[tuple[bytes, str | None]]:
    parts: list[Part] = parse_multipart(body, content_type, max_parts=n_max + 8)
    hint = "send each normal image as a form field 'images', e.g. -F images=@good1.png -F images=@good2.png"
    files = _file_parts(parts, REFERENCE_FIELDS, "images", hint)
    for p in files:
        check_file_part(p)
    return [(p.data, p.filename) for p in files]


def _json_references(body: bytes, limits: Limits) -> list[tuple[bytes, str | None]]:
    n_max = limits.max_reference_images
    data, key = _json_image_field(
        body,
        {"images_b64", "images", "filenames"},
        "images_b64",
        'send {"images_b64": ["<base64>", ...]}',
        'send {"images_b64": ["<base64 of image 1>", ...]}',
    )
    values = data[key]
    if not isinstance(values, list):
        raise ApiError(400, "invalid_field", f"field {key!r} must be a list of base64 strings")
    if len(values) > n_max:
        raise ApiError(400, "too_many_images", f"got {len(values)} images; a reference set holds at most {n_max}")
    names = data.get("filenames") if isinstance(data.get("filenames"), list) else []
    return [
        (
            decode_base64(v, f"{key}[{i}]", limits),
            names[i] if i < len(names) and isinstance(names[i], str) else None,
        )
        for i, v in enumerate(values)
    ]
