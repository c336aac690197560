"""The npdraw plugin hooks (pluggy). One collect-style hook per kind of component.

Every hook receives a `register(name, factory, config_class)` callable; call it once per component the
plugin provides. `config_class` is a dataclass whose fields are the keys a YAML config may set for the
component (validated strictly); `factory(config, **context)` builds the component. No hook is
`firstresult`, so the order in which pluggy calls plugins never matters. A plugin module implements the
hooks it needs with `@hookimpl` and is declared under the `npdraw` entry-point group:

    [project.entry-points.npdraw]
    my_prior = "my_package.my_prior"
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "npdraw"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def npdraw_register_datasets(register):
    """Register datasets. factory(config) → `npdraw_core.interfaces.Dataset`."""


@hookspec
def npdraw_register_part_banks(register):
    """Register part-bank engines. factory(config) → `npdraw_core.interfaces.MedoidEngine`: picks the
    bank's exemplars among sampled patches."""


@hookspec
def npdraw_register_parsers(register):
    """Register parsers. factory(config, *, shape) → a subclass of `npdraw_core.interfaces.Parser`: images
    → hard latents."""


@hookspec
def npdraw_register_priors(register):
    """Register priors. factory(config, *, shape) → `npdraw_core.interfaces.Prior` (an nn.Module) for the
    `npdraw_core.geometry.ModelShape` it is given."""


@hookspec
def npdraw_register_encoders(register):
    """Register encoders. factory(config, *, shape) → `npdraw_core.interfaces.Encoder` (an nn.Module)."""


@hookspec
def npdraw_register_decoders(register):
    """Register decoders. factory(config, *, shape, out_channels) → `npdraw_core.interfaces.Decoder`:
    canvas (B, C, canvas_size, canvas_size) → parameters (B, out_channels, image_size, image_size)."""


@hookspec
def npdraw_register_output_distributions(register):
    """Register output distributions p(x|z). factory(config, *, channels) →
    `npdraw_core.interfaces.OutputDistribution`."""


@hookspec
def npdraw_register_feature_extractors(register):
    """Register feature extractors for Fréchet distances. factory(config, *, context) → a subclass of
    `npdraw_core.interfaces.FeatureExtractor`; `context` is an `npdraw_core.interfaces.ExtractorContext`
    (device, dataset, where to keep trained weights)."""


@hookspec
def npdraw_register_commands(subparsers):
    """Add sub-commands to the `npdraw` CLI. `subparsers` is argparse's sub-parser action: call
    `subparsers.add_parser(name, help=...)` and `set_defaults(handler=fn)`; `fn(args)` runs the command.

    The CLI calls this hook only on modules named under the `npdraw.commands` entry-point group (not the
    `npdraw` group, whose plugins import torch), and imports them for `npdraw --help` too: keep their
    imports light and import heavy things inside `fn`.

        [project.entry-points."npdraw.commands"]
        serve = "my_package.cli"
    """
