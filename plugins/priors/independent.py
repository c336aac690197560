"""A context-free prior: per-step tables of logits, p(z) = Π_t p(whether^t) p(what^t) p(where^t), like AIR's
independent prior. It ignores the canvas (`uses_frames = False`), so the sampler skips rendering.

It is the baseline that shows what the Transformer's context buys, and proves that a prior is swappable
with one line of config (`model.prior.type: independent`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from npdraw_core.config import check_finite
from npdraw_core.geometry import ModelShape
from npdraw_core.hookspecs import hookimpl
from npdraw_core.interfaces import Prior, StepLogits


@dataclass(kw_only=True)
class IndependentPriorConfig:
    initial_whether_logit: float = 0.0  # log-odds of drawing at every step before training

    def __post_init__(self) -> None:
        check_finite(self, "initial_whether_logit")


@dataclass
class StepCounter:
    batch_size: int
    position: int = 0


class IndependentPrior(Prior):
    uses_frames = False

    def __init__(self, config: IndependentPriorConfig, *, shape: ModelShape):
        super().__init__()
        steps = shape.num_steps
        self.whether_logits = nn.Parameter(torch.full((steps,), float(config.initial_whether_logit)))
        self.what_logits = nn.Parameter(torch.zeros(steps, shape.bank_size))
        self.where_logits = nn.Parameter(torch.zeros(steps, steps))

    def _logits(self, batch_size: int, positions: slice) -> StepLogits:
        return StepLogits(
            whether=self.whether_logits[positions].expand(batch_size, -1),
            what=self.what_logits[positions].expand(batch_size, -1, -1),
            where=self.where_logits[positions].expand(batch_size, -1, -1),
        )

    def forward(self, frames: Tensor) -> StepLogits:
        batch, length = frames.shape[:2]
        if length > len(self.whether_logits):
            raise ValueError(f"the prior has {len(self.whether_logits)} steps but got {length} frames")
        return self._logits(batch, slice(0, length))

    def start(self, batch_size: int, *, use_cache: bool = True) -> StepCounter:
        return StepCounter(batch_size)  # no context, so cached and uncached sampling are the same

    def step(self, frame: Tensor, state: StepCounter) -> tuple[StepLogits, StepCounter]:
        if state.position >= len(self.whether_logits):
            raise ValueError(
                f"the prior has {len(self.whether_logits)} steps; step() was called once too often"
            )
        logits = self._logits(state.batch_size, slice(state.position, state.position + 1))
        squeezed = StepLogits(logits.whether[:, 0], logits.what[:, 0], logits.where[:, 0])
        return squeezed, StepCounter(state.batch_size, state.position + 1)


@hookimpl
def npdraw_register_priors(register):
    register("independent", IndependentPrior, IndependentPriorConfig)
