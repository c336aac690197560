"""Entry points that build the service from settings.

* `build(args)`: the Serve application builder, for `serve run npdraw_serving.app:build models=a=PATH`
  and for config files (configs/serve.yaml: `import_path: npdraw_serving.app:build`, `args:` = the
  `ServeOptions`). On the command line `models` may be a comma-separated list of `name=path` or paths.
* `local_app(options)`: the same HTTP API in this process, without Ray (tests, `npdraw serve --no-ray`),
  with a prometheus_client /metrics endpoint.
"""

from __future__ import annotations

from typing import Any

from npdraw_serving.options import ServeOptions, parse_model_specs


def serve_options(args: dict[str, Any] | ServeOptions) -> ServeOptions:
    if isinstance(args, ServeOptions):
        return args
    args = dict(args)
    if isinstance(args.get("models"), str):  # `serve run ... models=a=runs/a,b=runs/b`
        args["models"] = parse_model_specs([spec for spec in args["models"].split(",") if spec])
    return ServeOptions.model_validate(args)


def build(args: dict[str, Any] | ServeOptions):
    """The Serve application (one Sampler deployment serving the HTTP API) for `args`."""
    import ray

    from npdraw_serving.deployments import application

    options = serve_options(args)
    num_gpus = options.sampler.num_gpus
    if num_gpus is None:  # ask the cluster, never assume: a GPU request on a CPU cluster waits forever
        num_gpus = 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    return application(options, num_gpus=num_gpus)


def local_app(args: dict[str, Any] | ServeOptions):
    """(FastAPI app, prometheus registry) serving `args` in this process, without Ray."""
    import asyncio

    from npdraw_serving.api import create_app
    from npdraw_serving.backend import LocalSampler, ModelPool
    from npdraw_serving.catalog import ModelCatalog
    from npdraw_serving.metrics import Metrics, PrometheusFactory

    options = serve_options(args)
    catalog = ModelCatalog.read(options.models)
    factory = PrometheusFactory()
    metrics = Metrics(factory)
    sampler = options.sampler
    pool = ModelPool(catalog, capacity=sampler.max_models_per_replica, device=options.device, metrics=metrics)

    async def get_model(name: str):
        return await asyncio.to_thread(pool.get, name)

    backend = LocalSampler(get_model, catalog, options, metrics, max_queued=sampler.max_queued_requests)
    app = create_app(catalog, backend, options, metrics, prometheus_registry=factory.registry)
    return app, factory.registry
