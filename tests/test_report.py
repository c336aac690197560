"""`npdraw report` on two small real runs (the first 1,100 MNIST training images and 200 test images as an
npz, seconds-scale networks; the second run differs in λ and shares the first one's bank, parses and prior)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from npdraw_core.checkpoint import read_metrics
from npdraw_core.cli import main
from npdraw_core.report import ReportError, flatten, write_report


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_dataset) -> list[Path]:
    folder = tmp_path_factory.mktemp("report_runs")
    train, test = mnist_dataset.load("train"), mnist_dataset.load("test")
    np.savez(
        folder / "mnist_small.npz", images=train.images[:1100].numpy(), labels=train.labels[:1100].numpy(),
        test_images=test.images[:200].numpy(), test_labels=test.labels[:200].numpy(),
    )  # fmt: skip
    config = yaml.safe_load(Path("configs/tiny.yaml").read_text())
    config.update(name="small", output_dir=str(folder / "runs"))
    config["data"] = {"type": "npz", "path": str(folder / "mnist_small.npz"), "binary": True, "valid_size": 100}
    config["model"]["part_bank"].update(bank_size=10, num_patches=300)
    config["prior_training"].update(epochs=2, max_train_images=300)
    config["training"].update(epochs=2, max_train_images=100)
    config["evaluation"].update(nll_samples=2, nll_images=40, fid_samples=60, fid_floor=False)
    path = folder / "small.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 0
    assert main(["run", str(path), "--set", "name=small-lambda0", "--set", "training.reg_weight=0"]) == 0
    return [folder / "runs" / "small", folder / "runs" / "small-lambda0"]


def test_report_of_two_runs(runs, tmp_path, capsys):
    out = tmp_path / "pages" / "report.md"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    page = out.read_text()
    # configs side by side, the key that differs first and in bold
    assert "| key | small | small-lambda0 |" in page
    config_section = page[page.index("## Configs"):]
    assert config_section.index("**training.reg_weight**") < config_section.index("model.patch_size")
    assert "| **training.reg_weight** | 50 | 0 |" in page
    # final metrics are the runs' own records
    def cells(label: str) -> list[str]:
        row = next(line for line in page.splitlines() if line.startswith(f"| {label} |"))
        return [cell.strip() for cell in row.strip("|").split("|")][1:]

    for run, column in zip(runs, (0, 1), strict=True):
        evaluation = [r for r in read_metrics(run / "metrics.jsonl") if r["stage"] == "eval"][-1]
        assert cells("test nll_nats")[column] == f"{evaluation['nll_nats']:.4g}"
    # the second run took its parses from the cache (no parse records of its own): their stored PSNR
    first = read_metrics(runs[0] / "metrics.jsonl")
    assert not [r for r in read_metrics(runs[1] / "metrics.jsonl") if r["stage"] == "parse"]
    psnr = [r for r in first if r["stage"] == "parse" and r["split"] == "test"][-1]["psnr_mean"]
    assert cells("parse PSNR test (dB)") == [f"{psnr:.4g}"] * 2
    # every image and link on the page points at a file that exists, relative to the page
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert {"comparison.png", "curves_small.png", "curves_small-lambda0.png", "parses_small.png"} <= {
        Path(image).name for image in images
    }
    assert any(Path(image).name.startswith("samples_small_epoch_001") for image in images)
    for image in images:
        with Image.open(out.parent / image) as picture:
            assert picture.width > 100
    links = re.findall(r"(?<!!)\[[^\]]*\]\(([^)]+)\)", page)
    assert "model.pt" in {Path(link).name for link in links}
    for link in links:
        assert (out.parent / link).exists(), link
    assert (out.parent / "report_files" / "curves_small.png").is_file()


def test_report_errors_name_the_problem(tmp_path, runs):
    with pytest.raises(ReportError, match="no config.yaml"):
        write_report([tmp_path], tmp_path / "r.md")
    with pytest.raises(ReportError, match="ending in .md"):
        write_report([runs[0]], tmp_path / "r.html")


def test_flatten_nested_config():
    assert flatten({"model": {"part_bank": {"bank_size": 50}, "patch_size": 5}, "seed": 0}) == {
        "model.part_bank.bank_size": 50, "model.patch_size": 5, "seed": 0,
    }  # fmt: skip
