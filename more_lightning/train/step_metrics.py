"""Training metrics of one step as weighted means, reduced exactly across ranks.

Ranks hold different groups, so they do not log the same names (one rank may have no routing group this step, or a
different expert in use); Lightning's ``sync_dist`` would then run a different number of collectives on each rank and
wait forever, and it averages rank means, not samples. Here each rank keeps ``(weighted sum, weight)`` per name; one
``all_gather_object`` unions the names and one ``all_reduce`` sums the pairs, so every logged number is the mean over
every sample of every rank (``reward/mean`` included).
"""

from __future__ import annotations

import math

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
