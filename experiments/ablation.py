"""`npdraw experiment ablation`: the paper's Table 2 axes, each varied alone around a centre setting:

    patch size K ∈ {5, 6, 8}                    at M = 50
    bank size M ∈ {10, 50, 200}                 at K = 5
    λ (training.reg_weight) ∈ {0, 1, 50, 100}   at K = 5, M = 50

The centre (K = 5, M = 50, and the λ of the K and M axes) is the config's own setting, so the paper's
design is a config with K = 5, M = 50, λ = 50 (configs/omniglot.yaml); the values of each axis can be
changed (`--patch-sizes` etc.). Points that are the same config (the centre is on every axis) run once.
The table has the paper's columns: parse PSNR (test, dB), FID (LeNet), test NLL (nats), and the VAE's
reconstruction and KL (nats per image, validation split, at the epoch whose weights the model keeps);
RESULTS.csv, RESULTS.md, and below the table whether each of the paper's trends holds at this budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from npdraw_experiments.sweep import Point

PATCH_SIZES = (5, 6, 8)
BANK_SIZES = (10, 50, 200)
REG_WEIGHTS = (0.0, 1.0, 50.0, 100.0)


@dataclass(frozen=True)
class Axes:
    """The centre setting (K, M, λ) and the values each axis takes around it."""

    patch_size: int = 5
    bank_size: int = 50
    reg_weight: float = 50.0
    patch_sizes: tuple[int, ...] = PATCH_SIZES
    bank_sizes: tuple[int, ...] = BANK_SIZES
    reg_weights: tuple[float, ...] = REG_WEIGHTS

    def axes(self) -> list[tuple[str, list[tuple[int, int, float]]]]:
        """The three axes as (axis name, [(K, M, λ), ...])."""
        k, m, weight = self.patch_size, self.bank_size, self.reg_weight
        return [
            (f"patch size K (M = {m})", [(size, m, weight) for size in self.patch_sizes]),
            (f"bank size M (K = {k})", [(k, size, weight) for size in self.bank_sizes]),
            (f"λ (K = {k}, M = {m})", [(k, m, value) for value in self.reg_weights]),
        ]


COLUMNS = {  # row key → (header with the better direction, format)
    "parse_psnr": ("PSNR (dB) ↑", "{:.2f}"),
    "fid_lenet": ("FID ↓", "{:.2f}"),
    "nll_nats": ("NLL (nats) ↓", "{:.2f}"),
    "reconstruction": ("reconstruction ↓", "{:.2f}"),
    "kl": ("KL", "{:.2f}"),
}


def setting_name(patch_size: int, bank_size: int, reg_weight: float) -> str:
    return f"K{patch_size}-M{bank_size}-lambda{reg_weight:g}"


def ablation_points(axes: Axes) -> list[Point]:
    settings = dict.fromkeys(setting for _, axis in axes.axes() for setting in axis)
    return [
        Point(
            name=setting_name(k, m, weight),
            overrides=(f"model.patch_size={k}", f"model.part_bank.bank_size={m}", f"training.reg_weight={weight}"),
            values={"patch_size": k, "bank_size": m, "reg_weight": weight},
        )
        for k, m, weight in settings
    ]


def write_ablation_results(rows: list[dict], stem: str | Path, *, axes: Axes, title: str, budget: str) -> dict[str, Path]:
    """STEM.csv (every row) and STEM.md (the paper's layout, the budget, the trends)."""
    import pandas as pd

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {"csv": stem.with_suffix(".csv"), "md": stem.with_suffix(".md")}
    table = pd.DataFrame(rows)
    table.to_csv(paths["csv"], index=False)
    by_setting = {setting_name(r["patch_size"], r["bank_size"], r["reg_weight"]): r for r in rows}
    lines = [f"# {title}", "", budget, ""]
    header = ["axis", "K", "M", "λ", *[h for h, _ in COLUMNS.values()]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for axis, settings in axes.axes():
        for k, m, weight in settings:
            row = by_setting.get(setting_name(k, m, weight), {})
            cells = [axis, str(k), str(m), f"{weight:g}"]
            cells += [fmt.format(row[key]) if row.get(key) is not None else "–" for key, (_, fmt) in COLUMNS.items()]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## The paper's trends at this budget", ""]
    lines += [f"- {line}" for line in trends(by_setting, axes)]
    paths["md"].write_text("\n".join(lines) + "\n")
    return paths


def trends(by_setting: dict[str, dict], axes: Axes) -> list[str]:
    """Whether each trend of the paper's Table 2 holds in these rows, with the numbers."""
    k, m, weight = axes.patch_size, axes.bank_size, axes.reg_weight

    def values(settings, key):
        return [by_setting.get(setting_name(*setting), {}).get(key) for setting in settings]

    def verdict(holds: bool) -> str:
        return "holds" if holds else "does not hold"

    lines = []
    bank_sizes = sorted(axes.bank_sizes)
    psnr = values([(k, size, weight) for size in bank_sizes], "parse_psnr")
    if len(psnr) > 1 and None not in psnr:
        holds = all(a < b for a, b in zip(psnr, psnr[1:], strict=False))
        lines.append(f"PSNR rises with M ({' → '.join(f'{v:.2f}' for v in psnr)} dB for M = "
                     f"{', '.join(map(str, bank_sizes))}): {verdict(holds)}")  # fmt: skip
    patch_sizes = sorted(axes.patch_sizes)
    psnr = values([(size, m, weight) for size in patch_sizes], "parse_psnr")
    if len(psnr) > 1 and None not in psnr:
        holds = all(a > b for a, b in zip(psnr, psnr[1:], strict=False))
        lines.append(f"PSNR falls with K ({' → '.join(f'{v:.2f}' for v in psnr)} dB for K = "
                     f"{', '.join(map(str, patch_sizes))}): {verdict(holds)}")  # fmt: skip
    weights = sorted(axes.reg_weights)
    fids = values([(k, m, value) for value in weights], "fid_lenet")
    if 0.0 in weights and any(value >= 1 for value in weights) and None not in fids:
        zero = fids[weights.index(0.0)]
        others = [fid for value, fid in zip(weights, fids, strict=True) if value >= 1]
        shown = ", ".join(f"λ={value:g}: {fid:.2f}" for value, fid in zip(weights, fids, strict=True))
        lines.append(f"λ = 0 gives a worse FID than every λ ≥ 1 ({shown}): {verdict(all(zero > o for o in others))}")
    return lines
