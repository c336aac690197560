"""`lenet`: FID-LeNet, the features of a small CNN classifier trained by npdraw on the dataset's own
training split — the usual offline Fréchet distance for digits and characters, cheap enough for CI and
per-epoch use. Features are the penultimate layer before its ReLU (no dead dimensions, so covariances
stay full rank). On binary datasets the classifier is trained on dynamically binarised images, since
FID compares Bernoulli samples there.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from npdraw_core.checkpoint import load_checkpoint, save_checkpoint
from npdraw_core.data import dynamic_binarize, minibatch_indices, to_unit
from npdraw_core.digests import state_dict_digest
from npdraw_core.interfaces import ExtractorContext, FeatureExtractor
from npdraw_core.run import resolve_device

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class LeNetConfig:
    checkpoint: str | None = None  # None: <output_dir>/extractors/lenet-<dataset>-<hash>.pt, shared by runs
    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3
    feature_size: int = 128
    seed: int = 0
    max_train_images: int | None = None  # train on the first N training images only (quick runs, tests)
    device: str | None = None  # None: the run's device


class LeNet(nn.Module):
    """Two strided 3×3 conv layers (faster than conv + max-pool on CPUs, as accurate on digits), a
    `feature_size` layer, then the class logits."""

    def __init__(self, *, channels: int, image_size: int, num_classes: int, feature_size: int = 128):
        super().__init__()
        self.architecture = dict(
            channels=channels, image_size=image_size, num_classes=num_classes, feature_size=feature_size
        )
        reduced = (image_size + 3) // 4  # two stride-2 convs with padding 1: 28 → 14 → 7, 32 → 16 → 8
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * reduced**2, feature_size),
        )  # fmt: skip
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_size, num_classes))

    def features(self, images: Tensor) -> Tensor:
        return self.body(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.body(images))


def _initialise(model: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialisation, drawn from `generator` so training is reproducible."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(module.weight[0].numel())
            nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def _inputs(images: Tensor, binary: bool, generator: torch.Generator | None, device: torch.device) -> Tensor:
    batch = to_unit(images) if images.dtype == torch.uint8 else images.float()
    if binary:
        batch = dynamic_binarize(batch, generator)
    return batch.to(device)


def train_lenet(
    train_images: Tensor,
    train_labels: Tensor,
    *,
    binary: bool,
    epochs: int = 2,
    batch_size: int = 128,
    lr: float = 1e-3,
    feature_size: int = 128,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> LeNet:
    """Train a LeNet classifier on images (N, C, H, W) (uint8, or floats in [0, 1]) and int labels (N,).
    Binary datasets see a fresh Bernoulli draw of every image each time it is read."""
    device = torch.device(device)
    num_classes = int(train_labels.max()) + 1
    model = LeNet(
        channels=train_images.shape[1],
        image_size=train_images.shape[-1],
        num_classes=num_classes,
        feature_size=feature_size,
    )
    _initialise(model, generator)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(train_images) / batch_size)
    with tqdm(total=steps, desc="train FID-LeNet", disable=not progress) as bar:
        for _ in range(epochs):
            for index in minibatch_indices(len(train_images), batch_size, generator=generator):
                logits = model(_inputs(train_images[index], binary, generator, device))
                loss = F.cross_entropy(logits, train_labels[index].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                bar.update()
    return model.eval()


@torch.inference_mode()
def accuracy(
    model: LeNet,
    images: Tensor,
    labels: Tensor,
    *,
    binary: bool,
    generator: torch.Generator | None = None,
    batch_size: int = 1000,
) -> float:
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(_inputs(images[start : start + batch_size], binary, generator, device))
        correct += int((logits.argmax(1).cpu() == labels[start : start + batch_size]).sum())
    return correct / len(images)


def save_lenet(model: LeNet, path: str | Path, **metadata) -> str:
    """Atomic, weights-only checkpoint; returns the digest of the weights (the extractor's fingerprint)."""
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    digest = state_dict_digest(state)
    payload = {
        "state_dict": state,
        "architecture": model.architecture,
        "weights_digest": digest,
        "torch": str(torch.__version__),
    }
    save_checkpoint({**payload, **metadata}, path)
    return digest


def load_lenet(path: str | Path, device: torch.device | str = "cpu") -> tuple[LeNet, dict]:
    payload = load_checkpoint(path)
    model = LeNet(**payload["architecture"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload


def lenet_checkpoint_path(context: ExtractorContext | None, config: LeNetConfig) -> Path:
    if config.checkpoint is not None:
        return Path(config.checkpoint).expanduser()
    if context is None:
        raise ValueError(
            "the lenet extractor needs a context (for its dataset) or an explicit checkpoint path in its config"
        )
    return context.cache_dir / f"lenet-{context.dataset_key}.pt"


def ensure_lenet(
    context: ExtractorContext, config: LeNetConfig | None = None, *, force: bool = False, progress: bool = True
) -> tuple[Path, dict | None]:
    """The FID-LeNet checkpoint for the context's dataset, trained on its train split first when missing
    (or when `force`), and a record of that training (None when the checkpoint was already there)."""
    config = config or LeNetConfig()
    path = lenet_checkpoint_path(context, config)
    if path.is_file() and not force:
        return path, None
    dataset = context.dataset
    train, valid = dataset.load("train"), dataset.load("valid")
    if train.labels is None or valid.labels is None:
        raise ValueError(
            f"FID-LeNet trains a classifier, but dataset {context.dataset_key!r} has no labels; "
            "use the inception feature extractor for it (evaluation.feature_extractors: [inception])"
        )
    if config.max_train_images is not None:
        train = train.subset(torch.arange(min(config.max_train_images, len(train))))
    device = resolve_device(config.device) if config.device else context.device
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    model = train_lenet(
        train.images, train.labels, binary=dataset.binary, epochs=config.epochs, batch_size=config.batch_size,
        lr=config.lr, feature_size=config.feature_size, generator=generator, device=device, progress=progress,
    )  # fmt: skip
    valid_accuracy = accuracy(model, valid.images, valid.labels, binary=dataset.binary, generator=generator)
    save_lenet(
        model, path, binary=dataset.binary, valid_accuracy=valid_accuracy, dataset=context.dataset_key,
        config=asdict(config),
    )  # fmt: skip
    logger.info("[extractor] FID-LeNet validation accuracy %.4f; wrote %s", valid_accuracy, path)
    record = dict(
        valid_accuracy=valid_accuracy, train_images=len(train), seconds=round(time.perf_counter() - started, 1),
        checkpoint=str(path),
    )  # fmt: skip
    return path, record


class LeNetExtractor(FeatureExtractor):
    name = "lenet"
    trainable = True

    def __init__(self, config: LeNetConfig, *, context: ExtractorContext | None = None):
        self.config = config
        self.context = context
        self.path = lenet_checkpoint_path(context, config)
        self.device = resolve_device(config.device or (str(context.device) if context is not None else "auto"))
        self.model: LeNet | None = None
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        self.model, payload = load_lenet(self.path, self.device)
        self.fingerprint = payload["weights_digest"]
        self.valid_accuracy = payload.get("valid_accuracy")

    def prepare(self, *, force: bool = False) -> dict | None:
        """Train the classifier on the context's dataset if its checkpoint is missing (or `force`), then load it."""
        if self.model is not None and not force:
            return None
        if self.context is None:
            raise FileNotFoundError(
                f"no FID-LeNet checkpoint at {str(self.path)!r}, and no dataset to train one on: build the "
                "extractor with a context (npdraw_core.fid.build_feature_extractor does)"
            )
        _, record = ensure_lenet(self.context, self.config, force=force)
        self._load()
        return record

    @torch.inference_mode()
    def features(self, images: Tensor) -> Tensor:
        """images (B, C, H, W) in [0, 1] → penultimate-layer features (B, feature_size) on the CPU."""
        if self.model is None:
            raise FileNotFoundError(
                f"no FID-LeNet checkpoint at {str(self.path)!r}; train it with `npdraw train-extractor CONFIG` "
                "(the pipeline's evaluation trains it automatically when missing)"
            )
        channels, size = self.model.architecture["channels"], self.model.architecture["image_size"]
        if images.dim() != 4 or tuple(images.shape[1:]) != (channels, size, size):
            raise ValueError(
                f"FID-LeNet at {str(self.path)!r} was trained on images of shape {(channels, size, size)}, "
                f"got {tuple(images.shape[1:])}"
            )
        return self.model.features(images.to(self.device, torch.float32)).cpu()
