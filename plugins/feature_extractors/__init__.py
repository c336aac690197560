"""Built-in feature extractors for Fréchet distances: `inception` (pytorch-fid's FID-Inception) and
`lenet` (FID-LeNet, a classifier trained on the dataset). A factory takes the component's config and an
`npdraw_core.interfaces.ExtractorContext` (device, dataset, where to keep trained weights)."""

from __future__ import annotations

from npdraw_core.hookspecs import hookimpl
from npdraw_core.interfaces import ExtractorContext
from npdraw_plugins.feature_extractors.inception import (
    InceptionConfig,
    InceptionExtractor,
    load_fid_inception,
)
from npdraw_plugins.feature_extractors.lenet import (
    LeNet,
    LeNetConfig,
    LeNetExtractor,
    accuracy,
    ensure_lenet,
    load_lenet,
    save_lenet,
    train_lenet,
)

__all__ = [
    "InceptionConfig", "InceptionExtractor", "LeNet", "LeNetConfig", "LeNetExtractor", "accuracy",
    "ensure_lenet", "load_fid_inception", "load_lenet", "save_lenet", "train_lenet",
]  # fmt: skip


def build_inception(config: InceptionConfig, *, context: ExtractorContext) -> InceptionExtractor:
    return InceptionExtractor(config, context=context)


def build_lenet(config: LeNetConfig, *, context: ExtractorContext) -> LeNetExtractor:
    return LeNetExtractor(config, context=context)


@hookimpl
def npdraw_register_feature_extractors(register):
    register("inception", build_inception, InceptionConfig)
    register("lenet", build_lenet, LeNetConfig)
