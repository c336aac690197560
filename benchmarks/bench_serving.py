"""Load generator for the sampling service on a local Ray Serve app (loopback only). Prints ONE JSON line.

    python benchmarks/bench_serving.py --model runs/tiny/model.pt
    python benchmarks/bench_serving.py --model runs/tiny/model.pt --duration 5 --skip-autoscaling

1. Batching on vs off, one sampler replica: closed-loop clients (each sends a 1-image PNG request, waits,
   sends the next) at each concurrency for `--duration` seconds, at most `--max-requests` requests per
   level; in-flight requests are then awaited. Reports images/s and p50/p99 latency of completed requests,
   and how many responses came from model calls of each size (the X-Npdraw-Batch-Images header).
2. Autoscaling (1 → 2 replicas and back): `--scale-load` seconds of load at the highest concurrency, then
   `--scale-idle` seconds idle; the replica count is sampled every second (time series in the JSON, and
   a PNG with --plot).
Bounded: every phase has a time limit and a request cap; the server binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import threading
import time

APP = "npdraw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def closed_loop(url: str, concurrency: int, duration: float, max_requests: int) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    batches: dict[int, int] = {}  # images in the model call that answered a request → responses
    issued = 0
    stop_at = time.perf_counter() + duration

    async def client(worker: int, http: httpx.AsyncClient) -> None:
        nonlocal issued
        while time.perf_counter() < stop_at and issued < max_requests:
            issued += 1
            body = {"seed": worker * 100_000 + issued, "format": "png"}
            start = time.perf_counter()
            response = await http.post(f"{url}/v1/samples", json=body)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                latencies.append(time.perf_counter() - start)
                batch = int(response.headers.get("x-npdraw-batch-images", 0))
                batches[batch] = batches.get(batch, 0) + 1

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await asyncio.gather(*(client(w, http) for w in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(elapsed, 2),
        "images_per_s": round(len(latencies) / elapsed, 2),
        "p50_s": _round(percentile(latencies, 0.5)),
        "p99_s": _round(percentile(latencies, 0.99)),
        # e.g. {"27": 378, "5": 70}: closed-loop clients return in waves, and each wave's first few requests
        # may start a small batch before the rest arrive
        "responses_by_batch_images": {str(k): v for k, v in sorted(batches.items())},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def deploy(model: str, port: int, *, batching: bool, sampler: dict, batch_wait_s: float) -> str:
    import httpx
    from ray import serve

    from npdraw_serving.app import build
    from npdraw_serving.options import ServeOptions

    options = ServeOptions(
        models={"m": model},
        max_samples=64,
        batching={"enabled": batching, "max_batch_images": 64, "batch_wait_timeout_s": batch_wait_s},
        sampler={"num_cpus": 0.5, "max_ongoing_requests": 128, "max_queued_requests": -1, **sampler},
    )
    serve.run(build(options), name=APP, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    httpx.post(f"{url}/v1/samples", json={"seed": 0}, timeout=120).raise_for_status()  # warm-up
    return url


def sampler_replicas() -> int:
    from ray import serve

    status = serve.status().applications[APP].deployments["Sampler"]
    return status.replica_states.get("RUNNING", 0)


def model_alone(model: str) -> dict:
    """Seconds per model call on the per-sample path (what a request costs unbatched), in this process."""
    import torch

    from npdraw_core.model_file import load_trained
    from npdraw_core.sampling import generators_for

    torch.set_num_threads(1)
    net = load_trained(model, device="cpu")
    out = {}
    for n in (1, 32, 64):
        net.sample(n, generator=generators_for(range(n)))
        start = time.perf_counter()
        net.sample(n, generator=generators_for(range(n)))
        out[f"seconds_{n}"] = round(time.perf_counter() - start, 3)
    return out


def autoscaling(
    model: str, port: int, concurrency: int, load_s: float, idle_s: float, max_requests: int, batch_wait_s: float
) -> dict:
    scaling = {
        "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8,
        "upscale_delay_s": 2, "downscale_delay_s": 8, "look_back_period_s": 11,  # > Serve's 10 s metrics interval
    }
    url = deploy(model, port, batching=True, sampler={"autoscaling_config": scaling}, batch_wait_s=batch_wait_s)
    timeline: list[dict] = []
    start = time.perf_counter()
    done, idle = threading.Event(), threading.Event()

    def watch() -> None:
        while not done.is_set():
            phase = "idle" if idle.is_set() else "load"
            timeline.append({"t": round(time.perf_counter() - start, 1), "replicas": sampler_replicas(), "phase": phase})
            done.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    load = asyncio.run(closed_loop(url, concurrency, load_s, max_requests))
    idle.set()  # the last in-flight request has returned: from here on, no load
    load_end = time.perf_counter() - start
    time.sleep(idle_s)
    done.set()
    watcher.join()
    return {"config": scaling, "load": load, "load_end_s": round(load_end, 1), "timeline": timeline}


def plot(timeline: list[dict], load_end_s: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.6), dpi=120)
    ax.step([p["t"] for p in timeline], [p["replicas"] for p in timeline], where="post", color="tab:blue")
    ax.axvspan(0, load_end_s, color="tab:orange", alpha=0.15, label="load (closed loop)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("sampler replicas")
    ax.set_yticks([0, 1, 2])
    ax.set_title("npdraw serve: autoscaling under load and back")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model.pt or run directory")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per level")
    parser.add_argument("--max-requests", type=int, default=600, help="request cap per level")
    parser.add_argument("--skip-autoscaling", action="store_true")
    parser.add_argument("--scale-load", type=float, default=30.0)
    parser.add_argument("--scale-idle", type=float, default=25.0)
    parser.add_argument("--plot", default=None, help="PNG path for the autoscaling time series")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--batch-wait", type=float, default=0.05, help="batch_wait_timeout_s (default 0.05)")
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every node on loopback
    import logging

    import ray
    from ray import serve

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines go to stdout: keep one JSON line
    report: dict = {"batch_wait_timeout_s": args.batch_wait, "machine": f"{platform.machine()}, {os.cpu_count()} cores", "model_alone": model_alone(args.model)}
    port = free_port()
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for batching in (True, False):
            url = deploy(args.model, port, batching=batching, sampler={"num_replicas": 1}, batch_wait_s=args.batch_wait)
            key = "batching_on" if batching else "batching_off"
            report[key] = [
                asyncio.run(closed_loop(url, c, args.duration, args.max_requests)) for c in args.concurrency
            ]
            serve.delete(APP)
        on = {r["concurrency"]: r for r in report["batching_on"]}
        off = {r["concurrency"]: r for r in report["batching_off"]}
        report["throughput_ratio_on_over_off"] = {
            str(c): round(on[c]["images_per_s"] / off[c]["images_per_s"], 1) for c in on if off[c]["images_per_s"]
        }
        if not args.skip_autoscaling:
            top = max(args.concurrency)
            report["autoscaling"] = autoscaling(
                args.model, port, top, args.scale_load, args.scale_idle, args.max_requests * 4, args.batch_wait
            )
            replicas = [p["replicas"] for p in report["autoscaling"]["timeline"]]
            report["autoscaling"]["max_replicas_seen"] = max(replicas)
            report["autoscaling"]["final_replicas"] = replicas[-1]
            if args.plot:
                plot(report["autoscaling"]["timeline"], report["autoscaling"]["load_end_s"], args.plot)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
