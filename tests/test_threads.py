"""The CLI's CPU settings: the thread count it picks and the freed memory it keeps (npdraw_core.threads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from npdraw_core.config import load_config
from npdraw_core.threads import chosen_threads, default_threads, nll_workers_within


def test_thread_choice(monkeypatch):
    assert default_threads(2) == 1 and default_threads(4) == 1 and default_threads(16) == 8
    monkeypatch.setenv("NPDRAW_THREADS", "3")
    assert chosen_threads() == 3 and chosen_threads(2) == 2
    monkeypatch.setenv("NPDRAW_THREADS", "zero")
    with pytest.raises(ValueError, match="NPDRAW_THREADS"):
        chosen_threads()


def test_a_trial_scores_the_nll_within_its_cpus():
    """Tune trials and experiment points start from a plain config: the NLL's worker processes default to
    the trial's CPUs, a value the config sets is kept, and the given config is left as it was."""
    base = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text())
    assert load_config(nll_workers_within(base, 3)).evaluation.nll_workers == 3
    assert load_config(base).evaluation.nll_workers is None  # unchanged
    assert load_config(nll_workers_within(base, 0)).evaluation.nll_workers == 1
    chosen = {**base, "evaluation": {**base.get("evaluation", {}), "nll_workers": 2}}
    assert load_config(nll_workers_within(chosen, 3)).evaluation.nll_workers == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_retained_freed_memory_stops_the_page_faults_of_training_steps():
    """Prior pre-training steps (demo sizes, batch 64) fault fresh pages in almost every step under glibc's
    defaults; after `retain_freed_memory` they reuse freed memory. Each way in a fresh process (the
    setting is process-wide). Compared on the median step: now and then a step grows the heap either way
    (fragmentation), so sums over a few steps varied from run to run (one retained run faulted 2,385 pages
    in three steps, against 8,297 for the defaults)."""

    def faults(retain: bool) -> tuple[str, int]:
        script = f"""
import resource, torch
from npdraw_core import distributions
from npdraw_core.contracts import build_prior, contract_bank, random_latents
from npdraw_core.geometry import ModelShape
from npdraw_core.threads import retain_freed_memory
from npdraw_plugins.priors.transformer import TransformerPrior, TransformerPriorConfig
torch.set_num_threads(1)
took = retain_freed_memory() if {retain} else None
shape = ModelShape(1, 28, 28, 5, 50)
prior, bank = build_prior(TransformerPrior, TransformerPriorConfig(), shape).train(), contract_bank(shape)
latents = random_latents(shape, 64, seed=0)
def step():
    prior.zero_grad(set_to_none=True)
    logits = prior.logits_from_latents(latents, bank, shape.grid)
    (-distributions.log_prob(logits, latents)).mean().backward()
for _ in range(3):  # the first steps fault their pages in either way
    step()
counts = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(took, sorted(counts)[4])  # the median step
"""
        output = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
        took, count = output.split()
        return took, int(count)

    (_, default), (took, retained) = faults(False), faults(True)
    assert took == "True" and retained < default / 4, (default, retained)
