"""Encoders and decoders: shapes for the paper's four geometries, gradients reaching every parameter, the
spatial encoder's raster order, clear errors, and a decoder that really learns real MNIST."""

from __future__ import annotations

import pytest
import torch

from npdraw_core.data import dynamic_binarize, to_unit
from npdraw_core.geometry import ModelShape
from npdraw_core.registry import default_registry
from npdraw_plugins.decoders import ConvDecoder, ConvDecoderConfig
from npdraw_plugins.encoders import (
    ConvEncoder,
    ConvEncoderConfig,
    SpatialConvEncoder,
    SpatialConvEncoderConfig,
)
from npdraw_plugins.output_distributions import (
    Bernoulli,
    BernoulliConfig,
    DiscretizedLogisticMixture,
    DiscretizedLogisticMixtureConfig,
)

# (channels, image_size, canvas_size, patch_size): MNIST/Omniglot, CIFAR-10, CelebA
GEOMETRIES = [(1, 28, 28, 5), (3, 32, 32, 4), (3, 64, 32, 4)]


def model_shape(channels: int, image: int, canvas: int, patch: int, bank: int = 20) -> ModelShape:
    return ModelShape(
        channels=channels, image_size=image, canvas_size=canvas, patch_size=patch, bank_size=bank
    )


def seeded(build, *args, **kwargs):
    """Build a network with seeded initial weights without touching the caller's global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build(*args, **kwargs)


def small_encoders(shape: ModelShape) -> list:
    return [
        ConvEncoder(ConvEncoderConfig(channels=16, hidden_size=32, head_hidden_size=32), shape=shape),
        SpatialConvEncoder(SpatialConvEncoderConfig(channels=16, head_hidden_size=16), shape=shape),
    ]


def images_for(shape: ModelShape, batch: int = 3) -> torch.Tensor:
    size = (batch, shape.channels, shape.image_size, shape.image_size)
    return torch.rand(size, generator=torch.Generator().manual_seed(1))


def assert_every_parameter_learns(module: torch.nn.Module) -> None:
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, (
            f"{name}: {parameter.grad}"
        )


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "C{}-H{}-S{}-K{}".format(*g))
def test_encoders_give_step_logits_and_gradients(geometry):
    shape = model_shape(*geometry)
    steps = shape.num_steps
    for encoder in seeded(small_encoders, shape):
        logits = encoder(images_for(shape))
        assert logits.whether.shape == (3, steps)
        assert logits.what.shape == (3, steps, shape.bank_size)
        assert logits.where.shape == (3, steps, steps)
        weights = torch.randn(
            3, steps, steps + shape.bank_size + 1, generator=torch.Generator().manual_seed(2)
        )
        stacked = torch.cat([logits.where, logits.what, logits.whether[..., None]], dim=-1)
        (stacked * weights).sum().backward()
        assert_every_parameter_learns(encoder)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "C{}-H{}-S{}-K{}".format(*g))
def test_decoder_maps_canvas_to_image_sized_parameters(geometry):
    shape = model_shape(*geometry)
    outputs = [
        Bernoulli(BernoulliConfig(), channels=shape.channels),
        DiscretizedLogisticMixture(
            DiscretizedLogisticMixtureConfig(num_components=2), channels=shape.channels
        ),
    ]
    for output in outputs:
        config = ConvDecoderConfig(channels=16)
        decoder = seeded(ConvDecoder, config, shape=shape, out_channels=output.num_params())
        canvas = torch.rand(
            3,
            shape.channels,
            shape.canvas_size,
            shape.canvas_size,
            generator=torch.Generator().manual_seed(3),
        )
        params = decoder(canvas)
        assert params.shape == (3, output.num_params(), shape.image_size, shape.image_size)
        images = torch.randint(0, 256, (3, shape.channels, shape.image_size, shape.image_size)) / 255
        output.log_prob(params, images).sum().backward()
        assert_every_parameter_learns(decoder)


@pytest.mark.parametrize("canvas", [4, 5, 7, 30, 31])
def test_decoder_returns_odd_canvas_sizes_exactly(canvas):
    decoder = ConvDecoder(
        ConvDecoderConfig(channels=8), shape=model_shape(1, canvas, canvas, 2), out_channels=1
    )
    assert decoder(torch.rand(2, 1, canvas, canvas)).shape == (2, 1, canvas, canvas)


def test_spatial_encoder_reads_step_t_at_cell_t():
    """Without residual blocks the receptive field of a grid position is a few cells wide, so changing the
    pixels of the last cell (bottom right, raster order) moves the last step's logits and not the first's."""
    shape = model_shape(3, 32, 32, 4)
    config = SpatialConvEncoderConfig(channels=8, blocks_per_scale=0, final_blocks=0, head_hidden_size=8)
    encoder = seeded(SpatialConvEncoder, config, shape=shape).eval()
    images = images_for(shape, batch=1)
    changed = images.clone()
    changed[..., 28:, 28:] = 1 - changed[..., 28:, 28:]
    before, after = encoder(images), encoder(changed)
    assert torch.equal(before.what[:, 0], after.what[:, 0]) and torch.equal(
        before.where[:, 0], after.where[:, 0]
    )
    assert not torch.allclose(before.what[:, -1], after.what[:, -1])


def test_spatial_encoder_pools_to_grids_that_do_not_halve_evenly():
    shape = model_shape(1, 28, 28, 5)  # 28 → 14 → 7, pooled to the 6×6 grid
    assert SpatialConvEncoder(SpatialConvEncoderConfig(channels=8), shape=shape)(
        torch.rand(2, 1, 28, 28)
    ).what.shape == (2, 36, 20)


def test_errors_say_what_to_fix():
    shape = model_shape(3, 64, 32, 4)
    with pytest.raises(ValueError, match="full-size"):
        ConvEncoder(ConvEncoderConfig(channels=8), shape=shape)(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="powers of two"):
        ConvDecoder(ConvDecoderConfig(), shape=model_shape(3, 48, 32, 4), out_channels=3)
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        ConvDecoder(ConvDecoderConfig(channels=8), shape=shape, out_channels=3)(torch.rand(2, 1, 32, 32))



@pytest.mark.parametrize(
    ("make_config", "expected"),
    [
        (lambda: ConvEncoderConfig(channels=0), "channels must be at least 1, got 0"),
        (lambda: ConvEncoderConfig(num_downsamplings=0), "num_downsamplings must be at least 1, got 0"),
        (lambda: SpatialConvEncoderConfig(blocks_per_scale=-1), "blocks_per_scale must be at least 0, got -1"),
        (lambda: ConvDecoderConfig(channels=-3), "channels must be at least 1, got -3"),
        (lambda: ConvDecoderConfig(num_residual_blocks=-1), "num_residual_blocks must be at least 0, got -1"),
        (lambda: DiscretizedLogisticMixtureConfig(num_bins=1), "num_bins must be at least 2, got 1"),
    ],
)
def test_network_configs_check_their_values(make_config, expected):
    """The config is the one place a value is checked; loading a run config prefixes the key path."""
    with pytest.raises(ValueError, match=f"^{expected}$"):
        make_config()


def test_encoder_and_decoder_share_the_layers_module():
    import inspect

    import npdraw_plugins.decoders as decoders
    import npdraw_plugins.encoders as encoders
    from npdraw_plugins import layers

    assert "npdraw_plugins.encoders" not in inspect.getsource(decoders)
    assert encoders.ResidualBlock is decoders.ResidualBlock is layers.ResidualBlock
    assert encoders.conv_bn_relu is decoders.conv_bn_relu is layers.conv_bn_relu
    block = layers.ResidualBlock(4)
    features = torch.rand(2, 4, 5, 5)
    assert block(features).shape == features.shape and bool((block(features) >= 0).all())


def test_networks_are_registered():
    registry = default_registry()
    shape = model_shape(1, 28, 28, 5)
    assert isinstance(
        registry.get("encoder", "conv").build(ConvEncoderConfig(channels=8), shape=shape), ConvEncoder
    )
    spatial = registry.get("encoder", "conv_spatial").build(SpatialConvEncoderConfig(channels=8), shape=shape)
    assert isinstance(spatial, SpatialConvEncoder)
    decoder = registry.get("decoder", "conv").build(
        ConvDecoderConfig(channels=8), shape=shape, out_channels=1
    )
    assert isinstance(decoder, ConvDecoder)


def test_decoder_learns_real_mnist(mnist_dataset):
    """50 Adam steps on 16 real digits (canvas = the grey image, targets dynamically binarised afresh each
    step) must cut the Bernoulli NLL, measured in eval mode on a fixed binarisation, to under a quarter."""
    images = to_unit(mnist_dataset.load("train").images[:16])
    shape = model_shape(1, 28, 28, 5)
    output = Bernoulli(BernoulliConfig(), channels=1)
    config = ConvDecoderConfig(channels=16, num_residual_blocks=0)
    decoder = seeded(ConvDecoder, config, shape=shape, out_channels=1)
    generator = torch.Generator().manual_seed(0)
    fixed_targets = dynamic_binarize(images, generator)

    def nll() -> float:
        decoder.eval()
        with torch.no_grad():
            value = -output.log_prob(decoder(images), fixed_targets).mean().item()
        decoder.train()
        return value

    before = nll()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    for _ in range(50):
        loss = -output.log_prob(decoder(images), dynamic_binarize(images, generator)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = nll()
    print(f"Bernoulli NLL before {before:.1f}, after {after:.1f} nats")
    assert after < 0.25 * before, (before, after)
    assert after < 120, (
        after
    )  # nats per digit (measured: 532 → 62); 28·28·ln 2 ≈ 543 is a coin flip per pixel
