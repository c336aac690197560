"""Networks from a config: the one place the prior and the NPDraw model are instantiated, in any process
(a CLI run, a Tune trial, a Serve replica), from the config and the model shape alone.

Initial weights depend only on the config's seed: nn.Module initialisers take no generator, so they run
under a forked, seeded global RNG on the CPU (every device starts from the same weights) and the caller's
global random state is left untouched.
"""

from __future__ import annotations

import torch

from npdraw_core.config import RunConfig
from npdraw_core.geometry import Grid, ModelShape
from npdraw_core.interfaces import Prior
from npdraw_core.model import NPDraw
from npdraw_core.registry import Registry


def prior_from_config(config: RunConfig, shape: ModelShape, registry: Registry) -> Prior:
    """The untrained prior of `config`, on the CPU."""
    chosen = config.model.prior
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed * 1000 + 29)
        return registry.get("prior", chosen.type).build(chosen.config, shape=shape)


def model_from_config(config: RunConfig, shape: ModelShape, bank: torch.Tensor, prior: Prior, registry: Registry) -> NPDraw:
    """The untrained NPDraw of `config` around a bank (M, C, K, K) and a (trained) prior, on the CPU."""
    model = config.model
    output = registry.get("output_distribution", model.output.type).build(model.output.config, channels=shape.channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        encoder = registry.get("encoder", model.encoder.type).build(model.encoder.config, shape=shape)
        decoder = registry.get("decoder", model.decoder.type).build(
            model.decoder.config, shape=shape, out_channels=output.num_params()
        )
    grid = Grid(shape.canvas_size, shape.patch_size)
    return NPDraw(bank=bank.cpu(), grid=grid, prior=prior.cpu(), encoder=encoder, decoder=decoder, output=output)
