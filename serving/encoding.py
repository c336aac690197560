"""Sample results → HTTP response bodies, one function per format.

npz uses the layout of `npdraw sample --format npz`: images (N, C, H, W) float32, canvases (N, C, S, S)
float32, whether (N, T) bool, what and where (N, T) int64, seeds (N,) int64, and metadata (a JSON string,
a 0-d unicode array, readable without pickle). Canvases and latents only with `return_latents`.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np

from npdraw_serving.backend import SampleJob, SampleResult
from npdraw_serving.catalog import ModelEntry
from npdraw_serving.images import grid, png_bytes, resize_nearest, side_by_side

MEDIA_TYPES = {"png": "image/png", "png_grid": "image/png", "npz": "application/x-npz", "json": "application/json"}


def encode(fmt: str, job: SampleJob, result: SampleResult, entry: ModelEntry, return_latents: bool) -> bytes:
    if fmt == "png":
        return png_bytes(_shown(result, entry, return_latents)[0])
    if fmt == "png_grid":
        return png_bytes(grid(_shown(result, entry, return_latents)))
    if fmt == "npz":
        return npz_bytes(job, result, return_latents)
    if fmt == "json":
        return json.dumps(json_body(job, result, entry, return_latents)).encode()
    raise ValueError(f"unknown format {fmt!r}")  # the request model only lets known formats through


def _shown(result: SampleResult, entry: ModelEntry, return_latents: bool) -> np.ndarray:
    """The images, each beside its canvas (enlarged to the image size) when latents were asked for."""
    if not return_latents:
        return result.images
    return side_by_side(result.images, resize_nearest(result.canvases, entry.image_size))


def npz_bytes(job: SampleJob, result: SampleResult, return_latents: bool) -> bytes:
    arrays: dict[str, np.ndarray] = {"images": result.images, "seeds": np.asarray(job.seeds, dtype=np.int64)}
    if return_latents:
        arrays.update(canvases=result.canvases, whether=result.whether, what=result.what, where=result.where)
    metadata = {"model": job.model, "temperature": job.temperature, "top_k": job.top_k, "seed": job.seed}
    arrays["metadata"] = np.array(json.dumps(metadata, sort_keys=True))
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def json_body(job: SampleJob, result: SampleResult, entry: ModelEntry, return_latents: bool) -> dict[str, Any]:
    samples = []
    for i, seed in enumerate(job.seeds):
        sample: dict[str, Any] = {"index": i, "seed": seed, "image_png": _b64(png_bytes(result.images[i]))}
        if return_latents:
            canvas = resize_nearest(result.canvases[i : i + 1], entry.image_size)[0]
            sample["canvas_png"] = _b64(png_bytes(canvas))
            sample["parts"] = parts(result, i, entry)
        samples.append(sample)
    return {
        "model": job.model,
        "seed": job.seed,
        "num_samples": job.num_samples,
        "temperature": job.temperature,
        "top_k": job.top_k,
        "image_shape": [entry.channels, entry.image_size, entry.image_size],
        "samples": samples,
    }


def parts(result: SampleResult, i: int, entry: ModelEntry) -> list[dict[str, Any]]:
    """Step by step: whether a part was drawn, which exemplar (an index into GET /v1/bank/MODEL.png) and
    which cell (raster index and [top, left, size] on the canvas). A skipped step draws nothing, so its
    exemplar and cell are null (they carry no probability mass)."""
    steps = []
    for step in range(result.whether.shape[1]):
        drawn = bool(result.whether[i, step])
        cell = int(result.where[i, step])
        steps.append(
            {
                "step": step,
                "whether": drawn,
                "exemplar": int(result.what[i, step]) if drawn else None,
                "cell": cell if drawn else None,
                "box": entry.cell_box(cell) if drawn else None,
            }
        )
    return steps


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
