"""The same search, unchanged, on a real two-node Ray cluster on this machine (a head and a worker node on
loopback): trials are scheduled on both nodes and the search finishes."""

from __future__ import annotations

from pathlib import Path

import pytest

from npdraw_core.config import load_config

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from npdraw_tune.experiment import Options, run_search, write_results  # noqa: E402
from npdraw_tune.search import load_search  # noqa: E402

pytestmark = pytest.mark.slow
TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
TRIAL_SIZE = [
    "data.train_fraction=0.03", "prior_training.max_train_images=300", "training.max_train_images=200",
    "training.epochs=2", "training.sample_grid_every=0", "evaluation.feature_extractors=[]",
]  # fmt: skip


@pytest.fixture(scope="module")
def two_nodes():
    if ray.is_initialized():
        ray.shutdown()
    # conftest keeps every node on loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_trials_run_on_both_nodes_of_a_two_node_cluster(two_nodes, tmp_path):
    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(nodes) == 2
    config = load_config(TINY, TRIAL_SIZE)
    spec = load_search({"space": {"training.reg_weight": [1, 50]}}, config)
    options = Options(storage=str(tmp_path), name="cluster", cpus_per_trial=1, address=two_nodes.address)
    results = run_search(config, spec, options)
    assert len(results) == 2 and not results.errors
    assert {result.metrics["node_id"] for result in results} == nodes  # one trial on each node
    assert write_results(results, spec, options, config.to_dict())["csv"].is_file()
