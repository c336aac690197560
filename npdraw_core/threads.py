"""How many CPU threads torch uses, chosen so that throughput holds up when other processes share the cores.

Torch's default is one thread per core. Its OpenMP kernels end in barriers where every thread waits for the
slowest: when another CPU-bound process takes one of the cores, one thread keeps being descheduled and the
others spin at every barrier, so throughput collapses (measured on 2 cores: prior training fell from 3.9 to
0.45 iterations/s next to one busy process, while a single thread kept 2.5). The default here is therefore

* `--threads N` when given, else the environment variable NPDRAW_THREADS, else
* 1 thread on machines with up to 4 usable cores, and half of the usable cores above that,

and OpenMP is asked to sleep rather than spin while waiting (OMP_WAIT_POLICY=PASSIVE; only effective when
set before torch starts its OpenMP runtime, so it is also set here for child processes). On an idle machine
with many cores, `--threads` with the core count is the fastest choice for large batches.

`configure_threads` also keeps freed memory in the process (`retain_freed_memory`): a training step allocates
and frees the same few-MB tensors every step, and glibc's defaults hand them back to the kernel, which then
zeroes fresh pages for the next step (measured: 112 ms of kernel time in a 794 ms VAE step at demo sizes,
gone with it; the step 10-15% faster).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "NPDRAW_THREADS"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def nll_workers_within(base: dict, cpus: int) -> dict:
    """`base` (a plain config) with evaluation.nll_workers defaulting to `cpus`: a Ray trial's NLL then runs in
    the CPUs the trial was given, not one process per core of the machine (`base` is not changed)."""
    evaluation = base.get("evaluation") or {}
    if evaluation.get("nll_workers") is not None:
        return base
    return {**base, "evaluation": {**evaluation, "nll_workers": max(1, cpus)}}


def default_threads(cores: int | None = None) -> int:
    """1 thread up to 4 cores, half the cores above."""
    cores = usable_cores() if cores is None else cores
    return 1 if cores <= 4 else cores // 2


def chosen_threads(requested: int | None = None) -> int:
    """`requested`, else NPDRAW_THREADS, else `default_threads()`."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be at least 1, got {requested}")
        return requested
    value = os.environ.get(ENV, "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"{ENV} must be a positive integer, got {value!r}") from None
        if threads < 1:
            raise ValueError(f"{ENV} must be a positive integer, got {value!r}")
        return threads
    return default_threads()


def configure_threads(requested: int | None = None) -> int:
    """Set torch's intra-op thread count (see the module docstring) and return it."""
    import torch

    threads = chosen_threads(requested)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # for child processes (workers, subprocesses)
    torch.set_num_threads(threads)
    retain_freed_memory()
    return threads


MMAP_THRESHOLD = 32 * 2**20  # the largest glibc accepts at run time on 64-bit (half its heap size)
TRIM_THRESHOLD = 2**30


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to serve blocks up to 32 MiB from its heap and to keep up to 1 GiB of freed memory
    for reuse, instead of unmapping and trimming it (which costs page faults and zeroed pages on every
    step). True when the C library took both settings; False elsewhere (not glibc: nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold, TRIM_THRESHOLD))
