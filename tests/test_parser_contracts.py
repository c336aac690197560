"""Parser plugins: the contract checks over every registered parser (grey and colour banks, a grid with
padding), and each check catches the parser it is meant to catch."""

from __future__ import annotations

import pytest
import torch

from npdraw_core.contracts import PARSER_CHECKS, check_parser
from npdraw_core.geometry import ModelShape
from npdraw_core.registry import default_registry
from npdraw_plugins.parsers import HeuristicParser, HeuristicParserConfig

SHAPES = {
    "grey": ModelShape(channels=1, image_size=10, canvas_size=10, patch_size=4, bank_size=6),  # 3×3, pad 1/1
    "colour": ModelShape(channels=3, image_size=10, canvas_size=10, patch_size=4, bank_size=6),
    "mnist": ModelShape(channels=1, image_size=28, canvas_size=28, patch_size=5, bank_size=50),
}
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
GREY = SHAPES["grey"]


def registered_parsers():
    registry = default_registry()
    return [registry.get("parser", name) for name in registry.names("parser")]


def test_both_builtin_parsers_are_registered():
    assert {"heuristic", "greedy"} <= set(default_registry().names("parser"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", list(SHAPES), ids=str)
@pytest.mark.parametrize("check", list(PARSER_CHECKS), ids=str)
@pytest.mark.parametrize("component", registered_parsers(), ids=lambda c: c.name)
def test_registered_parser_meets_the_contract(component, check, shape, device):
    """Every registered parser, with its default config."""
    PARSER_CHECKS[check](component.factory, component.config_class(), SHAPES[shape], device)


# -- broken parsers, one per check: each check must catch its own kind of mistake -------------------------
class FloatFlags(HeuristicParser):  # the draw flag as float probabilities instead of 0/1 integers
    def parse_indices(self, images, bank):
        indices = super().parse_indices(images, bank)
        return {**indices, "whether": indices["whether"].float()}


class WorstPart(HeuristicParser):  # draws the farthest exemplar in every cell
    def parse_indices(self, images, bank):
        cells = self.grid.cells(images).flatten(2)
        what = torch.cdist(cells, bank.flatten(1)[None]).argmax(-1)
        where = torch.arange(self.grid.num_cells).expand_as(what)
        return {"what": what, "where": where, "whether": torch.ones_like(what, dtype=torch.uint8)}


class BatchRelative(HeuristicParser):  # draws where a cell is brighter than the batch's first image's mean
    def parse_indices(self, images, bank):
        indices = super().parse_indices(images, bank)
        energy = self.grid.cells(images).flatten(2).sum(-1)
        return {**indices, "whether": (energy > energy[0].mean()).to(torch.uint8)}


class OneBasedCells(HeuristicParser):  # cells numbered 1..T, as in the paper's notation
    def parse_indices(self, images, bank):
        indices = super().parse_indices(images, bank)
        return {**indices, "where": indices["where"] + 1}


class AlwaysDraws(HeuristicParser):  # draws every cell, blank or not
    def parse_indices(self, images, bank):
        indices = super().parse_indices(images, bank)
        return {**indices, "whether": torch.ones_like(indices["whether"])}


class Erratic(HeuristicParser):  # ε is read as a tolerance up to 0.3, then as a required gain
    def parse_indices(self, images, bank):
        threshold = self.config.parse_threshold
        flip = HeuristicParserConfig(parse_threshold=-threshold if threshold > 0.3 else threshold)
        return HeuristicParser(flip, shape=self.shape).parse_indices(images, bank)


@pytest.mark.parametrize(
    "parser, check, message",
    [
        (FloatFlags, "shapes", "expected an integer tensor"),
        (WorstPart, "render_psnr", "no better than a blank canvas"),
        (BatchRelative, "determinism", "must depend on its image only"),
        (OneBasedCells, "within_canvas", "where indices outside"),
        (AlwaysDraws, "blank_image", "expected none"),
        (Erratic, "threshold", "both ways"),
    ],
    ids=lambda value: value if isinstance(value, str) else getattr(value, "__name__", None),
)
def test_a_broken_parser_fails_its_check(parser, check, message):
    with pytest.raises(AssertionError, match=message):
        PARSER_CHECKS[check](parser, HeuristicParserConfig(), GREY)


def test_check_parser_runs_them_all_and_rejects_non_parsers():
    check_parser(HeuristicParser, HeuristicParserConfig(), GREY)
    with pytest.raises(AssertionError, match="not an npdraw_core.interfaces.Parser"):
        check_parser(lambda config, *, shape: object(), HeuristicParserConfig(), GREY)
