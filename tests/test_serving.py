"""The sampling service's HTTP API without Ray: the FastAPI app of npdraw_serving.api through TestClient,
on two tiny models trained once per session (real MNIST images, seconds of training).

Covers every format, every 422 case, 404 for unknown models, seeds (sample i of a request is the same
bytes as seed + i alone), metrics, settings and the CLI's argument handling. The Ray Serve deployment is
tested in test_serving_ray.py.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from npdraw_serving.app import local_app, serve_options  # noqa: E402
from npdraw_serving.options import ServeOptions, parse_model_specs  # noqa: E402

MNIST_RAW = Path(__file__).resolve().parents[1] / "data" / "mnist" / "MNIST" / "raw"
MAX_SAMPLES = 8


def _mnist_npz(path: Path, count: int) -> Path:
    """The first `count` bundled MNIST training images as an npz dataset, plus 100 test images: the
    full MNIST test split would cost the parse stage half a minute for nothing here."""
    with gzip.open(MNIST_RAW / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    np.savez(path, images=images[:count], test_images=images[count : count + 100])
    return path


def train_tiny_models(root: Path) -> dict[str, Path]:
    """Two tiny models: "a" (Transformer prior) and "b" (independent prior, sharing a's bank and parses
    through the stage cache), so they sample different images. Resumable: a second call reuses them."""
    import torch

    from npdraw_core.pipeline import run_pipeline
    from npdraw_core.run import Run

    root.mkdir(parents=True, exist_ok=True)
    data = root / "mnist_small.npz"
    if not data.exists():
        _mnist_npz(data, 700)
    common = [
        f"output_dir={root}", "data={type: npz, path: " + str(data) + ", binary: true, valid_size: 100}",
        "training.epochs=1", "training.max_train_images=200", "prior_training.max_train_images=300",
        "model.part_bank.num_patches=300", "evaluation.feature_extractors=[]",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        paths = {}
        for name, extra in (("a", []), ("b", ["model.prior={type: independent}"])):
            run = Run.from_file("configs/tiny.yaml", [f"name={name}", *common, *extra], device="cpu")
            if not run.path("model.pt").exists():
                run_pipeline(run, ["train"])
            paths[name] = run.path("model.pt")
    finally:
        torch.set_num_threads(threads)
    return paths


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    return train_tiny_models(tmp_path_factory.getbasetemp() / "serving_models")


@pytest.fixture(scope="module")
def client(tiny_models):
    app, _ = local_app({"models": {k: str(v) for k, v in tiny_models.items()}, "max_samples": MAX_SAMPLES})
    with TestClient(app, raise_server_exceptions=False) as test_client:  # a 500 must show as a 500
        yield test_client


@pytest.fixture(scope="module")
def single(tiny_models):
    app, _ = local_app({"models": {"a": str(tiny_models["a"])}, "max_samples": MAX_SAMPLES})
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def post(client, **body):
    return client.post("/v1/samples", json=body)


def npz(response) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


# -- formats -----------------------------------------------------------------------------------------------


def test_png_is_one_image_and_reports_its_seed(client):
    response = post(client, model="a", seed=7)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")
    assert response.headers["x-npdraw-seed"] == "7"
    assert response.headers["x-npdraw-model"] == "a"


def test_png_grid_holds_every_sample(client):
    from PIL import Image

    response = post(client, model="a", seed=1, num_samples=3, format="png_grid")
    assert response.status_code == 200
    width, height = Image.open(io.BytesIO(response.content)).size
    assert (width, height) == (2 + 3 * 30, 2 + 30)  # 28-pixel images, 2-pixel padding, one row of three
    with_canvases = post(client, model="a", seed=1, num_samples=3, format="png_grid", return_latents=True)
    assert Image.open(io.BytesIO(with_canvases.content)).size == (2 + 3 * 58, 2 + 30)  # image beside canvas


def test_npz_uses_the_sample_command_layout(client):
    plain = npz(post(client, model="a", seed=5, num_samples=4, format="npz"))
    assert set(plain) == {"images", "seeds", "metadata"}
    assert plain["images"].shape == (4, 1, 28, 28) and plain["images"].dtype == np.float32
    assert plain["seeds"].tolist() == [5, 6, 7, 8]
    assert json.loads(str(plain["metadata"]))["model"] == "a"
    full = npz(post(client, model="a", seed=5, num_samples=4, format="npz", return_latents=True))
    assert full["canvases"].shape == (4, 1, 28, 28)
    assert full["whether"].dtype == bool and full["what"].dtype == np.int64 and full["where"].shape == (4, 36)
    np.testing.assert_array_equal(full["images"], plain["images"])


def test_json_explains_each_sample(client):
    response = post(client, model="a", seed=11, num_samples=2, format="json", return_latents=True)
    assert response.status_code == 200
    body = response.json()
    assert (body["model"], body["seed"], body["num_samples"], body["image_shape"]) == ("a", 11, 2, [1, 28, 28])
    first = body["samples"][0]
    assert first["seed"] == 11 and body["samples"][1]["seed"] == 12
    assert base64.b64decode(first["image_png"]).startswith(b"\x89PNG")
    assert base64.b64decode(first["canvas_png"]).startswith(b"\x89PNG")
    parts = first["parts"]
    assert [p["step"] for p in parts] == list(range(36))
    latents = npz(post(client, model="a", seed=11, num_samples=1, format="npz", return_latents=True))
    assert [p["whether"] for p in parts] == latents["whether"][0].tolist()
    drawn = [p for p in parts if p["whether"]]
    assert drawn, "a trained model draws some parts"
    for part in drawn:
        assert 0 <= part["exemplar"] < 20 and 0 <= part["cell"] < 36 and part["box"][2] == 5
    assert all(p["exemplar"] is None and p["cell"] is None for p in parts if not p["whether"])
    assert "parts" not in post(client, model="a", seed=11, format="json").json()["samples"][0]


# -- seeds ---------------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_alone_and_inside_a_larger_request(client):
    alone = post(client, model="a", seed=40 + 3).content
    assert post(client, model="a", seed=43).content == alone  # repeatable
    batch = post(client, model="a", seed=40, num_samples=6, format="json").json()["samples"]
    assert base64.b64decode(batch[3]["image_png"]) == alone  # sample i of a request = seed + i alone
    arrays_alone = npz(post(client, model="a", seed=43, format="npz"))["images"][0]
    arrays_batch = npz(post(client, model="a", seed=40, num_samples=6, format="npz"))["images"][3]
    np.testing.assert_array_equal(arrays_alone, arrays_batch)  # bit-identical, not just the same PNG


def test_a_missing_seed_is_chosen_and_returned(client):
    response = post(client, model="a")
    seed = int(response.headers["x-npdraw-seed"])
    assert post(client, model="a", seed=seed).content == response.content


def test_models_differ_and_the_model_may_be_omitted_when_one_is_served(client, single):
    assert post(client, model="a", seed=3, format="npz").content != post(client, model="b", seed=3, format="npz").content
    assert single.post("/v1/samples", json={"seed": 3}).content == post(client, model="a", seed=3).content


# -- client mistakes: 422, 404, never 500 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "a", "unknown": 1}, "unknown"),
        ({"model": "a", "num_samples": 0, "format": "json"}, "num_samples"),
        ({"model": "a", "num_samples": MAX_SAMPLES + 1, "format": "json"}, "num_samples"),
        ({"model": "a", "num_samples": 10**9, "format": "npz"}, "num_samples"),
        ({"model": "a", "num_samples": 2}, "num_samples"),  # png is one image
        ({"model": "a", "temperature": 0}, "temperature"),
        ({"model": "a", "temperature": -1.5}, "temperature"),
        ({"model": "a", "temperature": 1e9}, "temperature"),
        ({"model": "a", "top_k": 0}, "top_k"),
        ({"model": "a", "format": "gif"}, "format"),
        ({"model": "a", "num_samples": "3"}, "num_samples"),
        ({"model": "a", "num_samples": 2.0, "format": "json"}, "num_samples"),
        ({"model": "a", "temperature": "hot"}, "temperature"),
        ({"model": "a", "seed": -1}, "seed"),
        ({"model": "a", "seed": 2**80}, "seed"),
        ({"model": "a", "seed": "7"}, "seed"),
        ({"model": "a", "return_latents": "yes"}, "return_latents"),
        ({"model": 5}, "model"),
        ({}, "model"),  # two models served: name one
    ],
)
def test_invalid_requests_get_422_naming_the_field(client, body, field):
    response = post(client, **body)
    assert response.status_code == 422, response.text
    assert field in [d["field"] for d in response.json()["detail"]]
    assert field in response.json()["message"]


@pytest.mark.parametrize(
    "raw",
    [b'{"model": "a", "temperature": NaN}', b'{"model": "a", "temperature": Infinity}', b"[1, 2]", b"{oops", b"", b"null"],
)
def test_malformed_bodies_get_422(client, raw):
    response = client.post("/v1/samples", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["message"]


def test_unknown_model_is_404_and_names_the_served_ones(client):
    response = post(client, model="nope")
    assert response.status_code == 404
    assert "a, b" in response.json()["detail"]
    assert client.get("/v1/bank/nope.png").status_code == 404


def test_extreme_but_valid_options_sample(client):
    for body in ({"temperature": 1e-30}, {"temperature": 100.0}, {"top_k": 10**6}, {"top_k": 1}, {"seed": 2**62}):
        response = post(client, model="a", format="npz", **body)
        assert response.status_code == 200, (body, response.text)
        assert np.isfinite(npz(response)["images"]).all()


# -- the other routes ------------------------------------------------------------------------------------------


def test_models_health_and_bank(client, tiny_models):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == {"a", "b"}
    a = models["a"]
    assert (a["dataset"], a["image_shape"], a["bank_size"], a["num_steps"]) == ("npz", [1, 28, 28], 20, 36)
    assert "valid_neg_elbo" in a["metrics"] and a["epoch"] == 0
    health = client.get("/v1/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    bank = client.get("/v1/bank/a.png")
    assert bank.status_code == 200 and bank.content.startswith(b"\x89PNG")


def test_metrics_count_images_requests_batches_and_loads(client):
    post(client, model="a", seed=1, num_samples=3, format="json")
    post(client, model="a", temperature=0)
    response = client.get("/metrics", follow_redirects=False)  # what `curl localhost:8000/metrics` sees
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'npdraw_images_generated_total{format="json",model="a"}' in text
    assert 'npdraw_requests_total{route="/v1/samples",status="422"}' in text
    assert "npdraw_request_latency_seconds_bucket" in text
    assert "npdraw_batch_images_count" in text
    assert 'npdraw_model_load_seconds_count{model="a"}' in text


def test_an_unhealthy_sampler_answers_503():
    from npdraw_serving.api import create_app
    from npdraw_serving.catalog import ModelCatalog

    class Broken:
        async def sample(self, job):
            raise AssertionError("not called")

        async def health(self):
            raise RuntimeError("the model sampled non-finite pixels")

    app = create_app(ModelCatalog({}), Broken(), ServeOptions(models={"x": "unused"}))
    response = TestClient(app).get("/v1/health")
    assert response.status_code == 503 and "non-finite" in response.json()["detail"]


def test_overload_is_429_with_retry_after():
    from npdraw_serving.api import create_app
    from npdraw_serving.backend import Overloaded
    from npdraw_serving.catalog import ModelCatalog, ModelEntry

    class Full:
        async def sample(self, job):
            raise Overloaded("queue full", 2.5)

        async def health(self):
            return {}

    entry = ModelEntry("m", Path("m.pt"), "mnist", 1, 28, 28, 5, 20, 36, 6, 1, 0, {}, np.zeros((20, 1, 5, 5)))
    app = create_app(ModelCatalog({"m": entry}), Full(), ServeOptions(models={"m": "m.pt"}))
    response = TestClient(app).post("/v1/samples", json={})
    assert response.status_code == 429 and response.headers["retry-after"] == "3"


# -- settings and the command line -----------------------------------------------------------------------------


def test_settings_are_strict_and_teach():
    with pytest.raises(ValueError, match="max_batch_images"):
        ServeOptions(models={"a": "x"}, max_samples=128)
    with pytest.raises(ValueError, match="extra"):
        ServeOptions(models={"a": "x"}, sampler={"max_replica": 3})
    with pytest.raises(ValueError, match="at least one model"):
        ServeOptions(models={})
    with pytest.raises(ValueError, match="one deployment.*remove the `ingress` section"):  # an older config file
        ServeOptions.model_validate({"models": {"a": "x"}, "ingress": {"num_cpus": 0.1}})
    assert ServeOptions(models={"a": "x"}, sampler={"num_replicas": 2}).sampler.autoscaling_config is None
    assert serve_options({"models": "a=x.pt,b=runs/b"}).models == {"a": "x.pt", "b": "runs/b"}


def test_model_specs_are_named_after_their_run_directory():
    assert parse_model_specs(["runs/tiny", "m=other/model.pt", "runs/big/model.pt"]) == {
        "tiny": "runs/tiny", "m": "other/model.pt", "big": "runs/big/model.pt"
    }
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_model_specs(["x/tiny", "y/tiny"])
    with pytest.raises(ValueError, match="letters"):
        parse_model_specs(["bad name=x.pt"])


def test_serve_config_file_is_a_valid_serve_deploy_config():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    path = Path(__file__).resolve().parents[1] / "configs" / "serve.yaml"
    config = yaml.safe_load(path.read_text())
    schema = ServeDeploySchema.model_validate(config)
    assert schema.http_options.host == "127.0.0.1"
    [app] = config["applications"]
    assert app["import_path"] == "npdraw_serving.app:build"
    options = ServeOptions.model_validate(app["args"])  # every setting is one the service knows
    assert options.sampler.autoscaling_config["max_replicas"] >= 2


def test_cli_registers_serve_and_rejects_bad_settings(capsys):
    from npdraw_core.cli import main

    assert main(["serve", "--no-ray"]) == 2
    assert "at least one model" in capsys.readouterr().err
    assert main(["serve", "--no-ray", "--max-samples", "1000", "x=nowhere.pt"]) == 2
    assert "max_batch_images" in capsys.readouterr().err
