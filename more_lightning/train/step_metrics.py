"""Training metrics of one step as weighted means, reduced exactly across ranks.

Ranks hold different groups, so they do not log the same names (one rank may have no routing group this step, or a
different expert in use); Lightning's ``sync_dist`` would then run a different number of collectives on each rank and
wait forever, and it averages rank means, not samples. Here each rank keeps ``(weighted sum, weight)`` per name; one
``all_gather_object`` unions the names and one ``all_reduce`` sums the pairs, so every logged number is the mean over
every sample of every rank (``reward/mean`` included).

:class:`StepClock` times one optimizer step and its parts (see its docstring and ``docs/operations.md``).
"""

from __future__ import annotations

import math
import time
from collections import Counter

import torch
import torch.distributed as dist

SQUARES = "squares:"


class StepMetrics:
    """Weighted means of named values, reducible across ranks."""

    def __init__(self) -> None:
        self._sums: dict[str, list[float]] = {}

    def mean(self, name: str, value, weight: float = 1.0) -> None:
        """Add ``value`` (a per-item mean) with ``weight`` items to the mean of ``name``."""
        pair = self._sums.setdefault(name, [0.0, 0.0])
        pair[0] += float(value.detach() if isinstance(value, torch.Tensor) else value) * weight
        pair[1] += weight

    def spread(self, name: str, values: torch.Tensor) -> None:
        """``{name}/mean`` and the sample standard deviation ``{name}/std`` of ``values``."""
        flat = values.detach().float().flatten()
        if flat.numel():
            self.mean(f"{name}/mean", flat.mean(), flat.numel())
            self.mean(SQUARES + name, (flat**2).mean(), flat.numel())

    def merge(self, other: StepMetrics) -> None:
        for name, (total, weight) in other._sums.items():
            pair = self._sums.setdefault(name, [0.0, 0.0])
            pair[0] += total
            pair[1] += weight

    def _reduced_sums(self) -> dict[str, list[float]]:
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self._sums
        names: list[list[str]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(names, sorted(self._sums))
        union = sorted({name for rank_names in names for name in rank_names})
        packed = torch.tensor([self._sums.get(name, [0.0, 0.0]) for name in union], dtype=torch.float64)
        dist.all_reduce(packed)
        return {name: packed[i].tolist() for i, name in enumerate(union)}

    def reduce(self) -> dict[str, float]:
        """The means over every rank (a collective: every rank must call it, once per step)."""
        sums = self._reduced_sums()
        means = {name: total / weight for name, (total, weight) in sums.items() if weight}
        out = {name: value for name, value in means.items() if not name.startswith(SQUARES)}
        for name, (total, weight) in sums.items():
            if name.startswith(SQUARES) and weight:
                base = name.removeprefix(SQUARES)
                variance = max(total / weight - out[f"{base}/mean"] ** 2, 0.0)
                out[f"{base}/std"] = math.sqrt(variance * weight / (weight - 1)) if weight > 1 else 0.0
        return out


GIB = 2**30
ALWAYS_LOGGED = ("update", "rollout", "generation", "logprobs", "scoring")


class StepClock:
    """Wall times of one optimizer step and its parts, and its CUDA memory peak, logged once per optimizer step.

    - ``time/step_s``: from the start of the step's first micro-batch (a rollout phase run for it included) to the
      end of the optimizer step.
    - ``time/update_s``: forward + backward, summed over the step's micro-batches.
    - ``time/rollout_s``: the rollout phase run in this step (0 in a step that reuses an earlier phase's groups),
      and its parts ``time/<part>_s``: ``generation``, ``logprobs`` (the old/reference passes), ``scoring`` and
      (on-policy) ``retrieval``.
    - ``rollout/generated_tokens``: the tokens of the sampled completions (teacher demonstrations not counted);
      ``rollout/tokens_per_s``: those tokens per second of generation (NaN in a step without a rollout phase).
    - On CUDA: ``memory/peak_allocated_gib``, the step's peak of allocated memory.

    On CUDA every reading synchronises the device, so a time covers the kernels its part launched.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._began: float | None = None
        self._seconds: Counter = Counter()
        self._tokens = 0

    @staticmethod
    def now() -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        """The step's first micro-batch begins (later calls within the step do nothing)."""
        if self._began is None:
            self._began = self.now()
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.reset_peak_memory_stats()

    def add(self, part: str, seconds: float) -> None:
        self._seconds[part] += seconds

    def add_rollout(self, timings: dict[str, float], generated_tokens: int) -> None:
        """A rollout phase's timings (``total`` and its parts, seconds) and the tokens it sampled."""
        for part, seconds in timings.items():
            self.add("rollout" if part == "total" else part, seconds)
        self._tokens += generated_tokens

    def finish(self) -> StepMetrics:
        """The step's metrics (reduce them on every rank); the clock starts over."""
        stats = StepMetrics()
        stats.mean("time/step_s", self.now() - self._began if self._began is not None else 0.0)
        for part in ALWAYS_LOGGED:  # 0 in a step without a rollout phase (a logger would repeat the last value)
            self._seconds.setdefault(part, 0.0)
        for part, seconds in self._seconds.items():
            stats.mean(f"time/{part}_s", seconds)
        stats.mean("rollout/generated_tokens", self._tokens)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            stats.mean("memory/peak_allocated_gib", torch.cuda.max_memory_allocated() / GIB)
        self._reset()
        return stats


def with_throughput(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` plus ``rollout/tokens_per_s``: of the rank means, so total tokens over total generation seconds;
    NaN in a step that generated nothing."""
    seconds = metrics["time/generation_s"]
    metrics["rollout/tokens_per_s"] = metrics["rollout/generated_tokens"] / seconds if seconds else math.nan
    return metrics
