"""The request body of POST /v1/samples.

Strict: an unknown field, a string where a number belongs, NaN or infinity are 422 errors naming the field,
never coerced (pydantic's lax mode would turn "yes" into true and 3.0 into 3). The cap on `num_samples` is
a setting, so the model is built per app by `sample_request_model(max_samples)`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

Format = Literal["png", "png_grid", "npz", "json"]
FORMATS: tuple[str, ...] = ("png", "png_grid", "npz", "json")
MAX_SEED = 2**62  # torch seeds are 64-bit; seed + i must stay in range and exact in JSON clients' int64
MAX_TEMPERATURE = 100.0


class SampleRequestBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, description="a served model's name; optional when one model is served")
    format: Format = Field(
        "png",
        description="png: one image; png_grid: a grid of all samples; npz: arrays; json: base64 PNGs and parts",
    )
    num_samples: int = Field(1, ge=1)
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="sample i uses seed + i; chosen at random (and returned) when absent"
    )
    temperature: float = Field(1.0, gt=0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=1, description="keep only the k most likely parts and cells")
    return_latents: bool = Field(False, description="add each sample's canvas and its parts, step by step")

    @field_validator("num_samples")
    @classmethod
    def _one_image_for_png(cls, num_samples: int, info: ValidationInfo) -> int:
        if info.data.get("format") == "png" and num_samples != 1:
            raise ValueError(
                f"format 'png' returns one image, but num_samples is {num_samples}; "
                "use 'png_grid', 'npz' or 'json' for several"
            )
        return num_samples


def sample_request_model(max_samples: int) -> type[SampleRequestBase]:
    """SampleRequest with `num_samples` capped at `max_samples` (the 422 message states the cap)."""
    return create_model(
        "SampleRequest",
        __base__=SampleRequestBase,
        num_samples=(int, Field(1, ge=1, le=max_samples, description=f"1 to {max_samples} images")),
    )


# -- the studio's requests: POST /v1/decode and POST /v1/encode --------------------------------------------------

MAX_IMAGE_CHARS = 24_000_000  # base64 of an image file of about 18 MB


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LatentsBody(Strict):
    """Hard latents, one entry per step t = 0..T-1 in each list (T: the model's num_steps). A step with
    `whether` false draws nothing: its exemplar and cell may be null."""

    whether: list[bool] = Field(description="does step t draw a part")
    exemplar: list[int | None] = Field(description="step t's part: an index into the bank (GET /v1/bank/MODEL.png)")
    cell: list[int | None] = Field(description="step t's cell, raster order (row · cells_per_side + column)")


class DecodeRequest(Strict):
    model: str | None = Field(None, description="a served model's name; optional when one model is served")
    latents: LatentsBody
    source: dict | None = Field(
        None, description="free-form provenance (the studio writes seed, temperature and edits); ignored"
    )


class EncodeRequest(Strict):
    model: str | None = Field(None, description="a served model's name; optional when one model is served")
    image: str = Field(
        max_length=MAX_IMAGE_CHARS,
        description="an image file (PNG, JPEG, ...) in base64, optionally as a data: URL; any size, grey or "
        "colour: it is converted to the model's channels and resized to its image size",
    )
    invert: bool = Field(False, description="invert grey levels first (dark strokes on a light background)")
