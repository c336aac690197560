"""`npdraw serve`: the sampling service, on Ray Serve or (`--no-ray`) in one uvicorn process.

Contributed to the CLI through the `npdraw_register_commands` hook (entry-point group `npdraw.commands`).
The CLI imports this module to build its parser, so it imports neither torch nor ray at the top.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from npdraw_core.hookspecs import hookimpl

logger = logging.getLogger(__name__)

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


@hookimpl
def npdraw_register_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve samples of trained models over HTTP (Ray Serve, or --no-ray)",
        description="Serve samples of trained models over HTTP: POST /v1/samples, GET /v1/models, "
        "GET /v1/health, GET /v1/bank/MODEL.png, POST /v1/decode and /v1/encode, and the studio page at /. Settings come from --config (a Serve config file such as "
        "configs/serve.yaml: its first application's args, and its http_options), then these options.",
    )
    parser.add_argument(
        "models", nargs="*", metavar="MODEL",
        help="a model.pt or a run directory, optionally NAME=PATH (default name: the run directory's); "
        "replaces the config file's models",
    )
    parser.add_argument("--config", default=None, help="a Serve config file, e.g. configs/serve.yaml")
    parser.add_argument("--host", default=None, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=None, help=f"HTTP port (default {DEFAULT_PORT})")
    parser.add_argument("--max-samples", type=int, default=None, help="most images per request (default 64)")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default auto)")
    parser.add_argument("--no-batching", action="store_true", help="one model call per request (comparison)")
    parser.add_argument(
        "--no-ray", action="store_true",
        help="run the same API in this process with uvicorn (no batching, no autoscaling), with a "
        "prometheus_client /metrics endpoint",
    )
    parser.add_argument(
        "--metrics-export-port", type=int, default=None,
        help="Ray's Prometheus metrics port for a new local cluster (default: Ray picks one and says where)",
    )
    parser.set_defaults(handler=serve_command)


def serve_command(args) -> int:
    options, host, port = settings_from_args(args)
    if args.no_ray:
        return _serve_local(options, host, port)
    return _serve_ray(options, host, port, args.metrics_export_port)


def settings_from_args(args) -> tuple[Any, str, int]:
    """(ServeOptions, host, port) from --config, then the command line; every model path made absolute
    (replicas may run in another directory)."""
    from npdraw_serving.options import ServeOptions, parse_model_specs

    app_args: dict[str, Any] = {}
    http: dict[str, Any] = {}
    if args.config:
        app_args, http = read_serve_config(args.config)
    if args.models:
        app_args["models"] = parse_model_specs(args.models)
    if not app_args.get("models"):
        raise ValueError("name at least one model: npdraw serve runs/tiny (or NAME=PATH, or --config FILE)")
    app_args["models"] = {name: str(Path(path).resolve()) for name, path in app_args["models"].items()}
    if args.max_samples is not None:
        app_args["max_samples"] = args.max_samples
    if args.device is not None:
        app_args["device"] = args.device
    if args.no_batching:
        app_args.setdefault("batching", {})["enabled"] = False
    try:
        options = ServeOptions.model_validate(app_args)
    except Exception as error:  # pydantic's message names each bad key; the CLI shows ValueErrors plainly
        raise ValueError(f"invalid serve settings: {error}") from error
    host = args.host or http.get("host") or DEFAULT_HOST
    port = args.port or http.get("port") or DEFAULT_PORT
    return options, host, int(port)


def read_serve_config(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Serve config file's first application's `args` and its `http_options`."""
    import yaml

    config = yaml.safe_load(Path(path).read_text()) or {}
    applications = config.get("applications") or []
    if not applications:
        raise ValueError(f"{path}: no 'applications' list; see configs/serve.yaml for the layout")
    return dict(applications[0].get("args") or {}), dict(config.get("http_options") or {})


def _serve_local(options, host: str, port: int) -> int:
    import uvicorn

    from npdraw_serving.app import local_app

    app, _ = local_app(options)
    logger.info("npdraw serve (no Ray): studio at http://%s:%d/, API at /v1/models, metrics at /metrics", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0


def _serve_ray(options, host: str, port: int, metrics_export_port: int | None) -> int:
    if host in ("127.0.0.1", "localhost"):  # Ray otherwise swaps 127.0.0.1 for the machine's network address
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray import serve

    from npdraw_serving.app import build
    from npdraw_serving.deployments import APP_NAME

    init: dict[str, Any] = {"_metrics_export_port": metrics_export_port} if metrics_export_port else {}
    if host in ("127.0.0.1", "localhost"):
        init["_node_ip_address"] = "127.0.0.1"  # a local cluster that listens on loopback only
    ray.init(**init)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build(options), name=APP_NAME, route_prefix="/")
        metrics_port = next((node.get("MetricsExportPort") for node in ray.nodes() if node.get("Alive")), None)
        logger.info(
            "npdraw serve: studio at http://%s:%d/, API at /v1/models; Prometheus metrics at http://127.0.0.1:%s/metrics (Ctrl-C stops)",
            host, port, metrics_port,
        )
        while True:  # the application lives as long as this driver
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        serve.shutdown()
        ray.shutdown()
