"""The one timing loop of every benchmark: untimed warm-up calls, then the wall-clock seconds of each timed call.

    from _timing import timed, seconds_per_call, items_per_second, interleaved

Plain ``time.perf_counter`` around each call (no thread or process changes, unlike
``torch.utils.benchmark.Timer``, which sets one thread unless told otherwise): the benchmarks choose their own
thread counts. ``cuda=True`` synchronises the device before and after each timed call, so queued kernels are
counted in the call that launched them.
"""

from __future__ import annotations

import time
from typing import Any, Callable


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], cuda: bool = False) -> tuple[float, Any]:
    """(seconds, result) of one call of ``fn()``."""
    _sync(cuda)
    start = time.perf_counter()
    result = fn()
    _sync(cuda)
    return time.perf_counter() - start, result


def seconds_per_call(fn: Callable[[], Any], repeats: int, warmup: int = 0, cuda: bool = False) -> list[float]:
    """``warmup`` untimed calls of ``fn()``, then the seconds of each of ``repeats`` calls."""
    for _ in range(warmup):
        fn()
    return [timed(fn, cuda)[0] for _ in range(repeats)]


def items_per_second(fn: Callable[[], int], repeats: int, warmup: int = 0, cuda: bool = False) -> float:
    """Throughput of ``fn()``, which returns how many items (samples, rows) it processed: the items of the
    ``repeats`` timed calls over their total time, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    seconds = items = 0
    for _ in range(repeats):
        s, n = timed(fn, cuda)
        seconds += s
        items += n
    return items / seconds


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 0,
                cuda: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each named function over ``repeats`` rounds; each round calls every function once,
    in turn, so that load from other processes drifts over all of them alike instead of penalising whichever
    ran last. ``warmup`` untimed calls of each function first."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds[name].append(timed(fn, cuda)[0])
    return seconds
