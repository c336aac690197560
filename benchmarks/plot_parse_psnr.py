"""Plot parse PSNR against drawn parts per image for each parser, one panel per dataset, from the JSON lines
of `benchmarks/parse_psnr_sweep.py --sweep`, and print the same numbers as a Markdown table.

    .venv/bin/python benchmarks/plot_parse_psnr.py /tmp/parse_sweep.jsonl --out docs/parse_psnr_vs_parts.png
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

STYLE = {
    "heuristic": ("o-", "Algorithm 1 (heuristic), raster order"),
    "greedy": ("s-", "greedy, importance order"),
}


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("records", help="JSON lines of parse_psnr_sweep.py")
    options.add_argument("--out", default="docs/parse_psnr_vs_parts.png")
    args = options.parse_args()
    records = [
        json.loads(line) for line in Path(args.records).read_text().splitlines() if line.startswith("{")
    ]
    records = [r for r in records if "parser" in r]
    curves: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        curves[record["dataset"]][record["parser"]].append(record)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 4.0), squeeze=False)
    for axis, (dataset, parsers) in zip(axes[0], curves.items(), strict=True):
        for parser, points in parsers.items():
            points = sorted(points, key=lambda r: r["parts_per_image"])
            marker, label = STYLE.get(parser, (".-", parser))
            axis.plot(
                [r["parts_per_image"] for r in points], [r["psnr_mean"] for r in points], marker, label=label
            )
        first = next(iter(parsers.values()))[0]
        axis.set_title(
            f"{dataset} test ({first['images']:,} images), K={first['patch_size']}, M={first['bank_size']}"
        )
        axis.set_xlabel("drawn parts per image (mean)")
        axis.set_ylabel("parse PSNR, mean of per-image (dB)")
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right")
    figure.suptitle("Parse quality against parts drawn (a sweep of ε per parser)")
    figure.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}\n")

    print("| dataset | parser | ε | parts/image | PSNR mean / of mean MSE (dB) |")
    print("|---|---|---|---|---|")
    for dataset, parsers in curves.items():
        for parser, points in parsers.items():
            for r in sorted(points, key=lambda r: r["parts_per_image"]):
                print(
                    f"| {dataset} | {parser} | {r['parse_threshold']:g} | {r['parts_per_image']:.2f} | "
                    f"{r['psnr_mean']:.2f} / {r['psnr_of_mean_mse']:.2f} |"
                )


if __name__ == "__main__":
    main()
