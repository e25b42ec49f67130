"""The documented shapes of requests and answers (OpenAPI); the routes build their JSON directly."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code, e.g. invalid_image, unknown_reference_set.")
    message: str = Field(description="What was wrong.")
    hint: str | None = Field(None, description="What to do about it.")


class ErrorResponse(BaseModel):
    error: ErrorBody
    request_id: str | None = None


class RawMap(BaseModel):
    shape: list[int] = Field(description="[H, W] at the model input resolution.")
    dtype: Literal["float32"] = "float32"
    byte_order: Literal["little"] = "little"
    data_b64: str = Field(description="base64 of the row-major float32 array.")


class Heatmap(BaseModel):
    min: float
    max: float
    size: list[int] = Field(description="[W, H] of the anomaly map (model input resolution).")
    overlay_png_b64: str | None = Field(None, description="PNG: colour map blended over the image (alpha).")
    overlay_size: list[int] | None = Field(None, description="[W, H] of the overlay PNG (original size, capped).")
    alpha: float | None = None
    color_png_b64: str | None = Field(
        None,
        description="PNG: the colour map alone at model resolution "
        "(on the fixed scale below, jet), for client-side "
        "blending.",
    )
    raw: RawMap | None = None
    scale: dict[str, Any] | None = Field(None, description="lo, hi (colour bar ends), source, pixel_threshold.")
    mask_png_b64: str | None = Field(
        None, description="?mask=true: PNG, defect mask (map >= pixel threshold), white = defect, at model resolution."
    )
    contour_png_b64: str | None = Field(None, description="?mask=true: PNG (RGBA), the mask's outline.")
    defect_area: float | None = Field(None, description="?mask=true: share of pixels in the defect mask.")


class ImageMeta(BaseModel):
    width: int
    height: int
    format: str | None = None
    filename: str | None = None


class DetectResponse(BaseModel):
    score: float = Field(description="Image anomaly score, higher = more anomalous.")
    decision: Literal["anomalous", "normal"] | None = Field(
        None, description="score >= threshold -> anomalous; null when no threshold is configured (--deploy)."
    )
    threshold: float | None = None
    class_name: str
    method: str
    model: str
    weights_id: str
    shots: int
    references: str | None = None
    reference_version: str | None = None
    random_weights: bool
    warning: str | None = Field(None, description="Set when scores cannot be trusted (random weights).")
    calibrated: bool | None = Field(
        None, description="The deploy file was calibrated for this detector and reference set (null without --deploy)."
    )
    decision_note: str | None = Field(None, description="Why there is no decision, or that it is not calibrated.")
    image: ImageMeta
    timing_ms: dict[str, float] = Field(description="read, decode, queue, inference (whole batch), postprocess, total.")
    batch_size: int = Field(description="Images in the model forward this request was part of.")
    heatmap: Heatmap | None = None
    request_id: str | None = None


class ReferenceSetResponse(BaseModel):
    name: str
    version: str
    created: str
    count: int
    bytes: int
    images: list[dict[str, Any]]
    memory_cached: bool = Field(False, description="The detector memory for this version is computed.")
    shots: int | None = None
    fit_ms: float | None = None


class ReferenceSetList(BaseModel):
    sets: list[ReferenceSetResponse]


ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 409, 413, 415, 422, 503, 504)}

_IMAGE_SCHEMA = {"type": "string", "format": "binary"}
DETECT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["image"], "properties": {"image": _IMAGE_SCHEMA}}
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["image_b64"],
                    "properties": {
                        "image_b64": {"type": "string", "description": "base64 image file bytes (or a data: URL)"},
                        "filename": {"type": "string"},
                    },
                }
            },
            "image/png": {"schema": _IMAGE_SCHEMA},
            "image/jpeg": {"schema": _IMAGE_SCHEMA},
        },
    }
}
REFERENCE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {"images": {"type": "array", "items": _IMAGE_SCHEMA}},
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["images_b64"],
                    "properties": {"images_b64": {"type": "array", "items": {"type": "string"}}},
                }
            },
        },
    }
}
