"""The studio's side of the API: POST /v1/decode and POST /v1/encode, and the page itself (serving/studio/).

Checks that need the model (a step count, a bank size, a grid) happen here, after the model is resolved,
and fail like schema errors: 422 naming the field, e.g. `latents.exemplar.3`. Uploaded images of any size
and mode are turned into what the model expects: its channels (grey or RGB; transparency over black) and
its image size (centre square crop, then area averaging down or bilinear up).
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from npdraw_serving.backend import DecodeJob, EncodeJob, SampleResult
from npdraw_serving.catalog import ModelEntry
from npdraw_serving.encoding import parts
from npdraw_serving.images import png_bytes
from npdraw_serving.schemas import DecodeRequest, EncodeRequest

STATIC_DIR = Path(__file__).resolve().parent / "studio"
MAX_IMAGE_SIDE = 4096


class InvalidInput(ValueError):
    """A request that passed the schema but not the model's own limits: 422 naming `field`."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def decode_job(request: DecodeRequest, entry: ModelEntry) -> DecodeJob:
    latents, steps = request.latents, entry.num_steps
    for name in ("whether", "exemplar", "cell"):
        length = len(getattr(latents, name))
        if length != steps:
            raise InvalidInput(
                f"latents.{name}",
                f"has {length} entries; model {entry.name!r} draws {steps} steps (num_steps), one entry per step",
            )
    num_cells = entry.cells_per_side**2
    what, where = np.zeros(steps, np.int64), np.zeros(steps, np.int64)
    for step, drawn in enumerate(latents.whether):
        for name, values, size, out in (
            ("exemplar", latents.exemplar, entry.bank_size, what),
            ("cell", latents.cell, num_cells, where),
        ):
            value = values[step]
            if value is None:
                if drawn:
                    raise InvalidInput(f"latents.{name}.{step}", f"step {step} draws a part (whether is true): give its {name}")
                continue
            if not 0 <= value < size:
                raise InvalidInput(
                    f"latents.{name}.{step}",
                    f"{name} {value} is out of range: model {entry.name!r} has {size} "
                    f"{'exemplars in its bank' if name == 'exemplar' else 'cells'} (0..{size - 1})",
                )
            out[step] = value
    whether = np.asarray(latents.whether, dtype=bool)
    return DecodeJob(entry.name, whether[None], what[None], where[None])


def encode_job(request: EncodeRequest, entry: ModelEntry) -> EncodeJob:
    image = model_input(read_image(request.image), entry, invert=request.invert)
    return EncodeJob(entry.name, image[None])


def read_image(text: str) -> Image.Image:
    """base64 (or a data: URL) → a PIL image, loaded; InvalidInput('image', why) when it cannot be read."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise InvalidInput("image", "a data: URL must be base64-encoded (data:image/png;base64,...)")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("image", "is not valid base64; send the file's bytes base64-encoded") from None
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if max(width, height) > MAX_IMAGE_SIDE:
            raise InvalidInput("image", f"is {width}×{height}; send at most {MAX_IMAGE_SIDE} pixels a side")
        image.load()
    except InvalidInput:
        raise
    except UnidentifiedImageError:
        raise InvalidInput("image", f"is not an image file ({len(data)} bytes); send a PNG, JPEG, ...") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidInput("image", f"cannot be read as an image (damaged or truncated?): {error}") from None
    if width < 1 or height < 1:
        raise InvalidInput("image", "is empty (0 pixels)")
    return image


def model_input(image: Image.Image, entry: ModelEntry, *, invert: bool = False) -> np.ndarray:
    """A PIL image → (C, H, W) float32 in [0, 1]: the model's channels and image size."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image.alpha_composite(rgba)
    image = image.convert("L" if entry.channels == 1 else "RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    size = entry.image_size
    resample = Image.Resampling.BOX if side > size else Image.Resampling.BILINEAR
    pixels = np.asarray(image.resize((size, size), resample), dtype=np.float32) / 255.0
    if invert:
        pixels = 1.0 - pixels
    return pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)


def body(entry: ModelEntry, result: SampleResult, **extra: Any) -> dict[str, Any]:
    """The JSON of /v1/decode and /v1/encode: the image, the canvas (at canvas size), the latents in the
    form /v1/decode takes, and each step's part with its box."""
    drawn = result.whether[0]
    return {
        "model": entry.name,
        "image_shape": [entry.channels, entry.image_size, entry.image_size],
        "canvas_size": entry.canvas_size,
        "image_png": _b64(png_bytes(result.images[0])),
        "canvas_png": _b64(png_bytes(result.canvases[0])),
        "latents": {
            "whether": drawn.tolist(),
            "exemplar": [int(e) if d else None for e, d in zip(result.what[0], drawn, strict=True)],
            "cell": [int(c) if d else None for c, d in zip(result.where[0], drawn, strict=True)],
        },
        "parts": parts(result, 0, entry),
        **extra,
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
