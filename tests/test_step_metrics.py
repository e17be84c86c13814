"""Step metrics are exact means and sample stds over every sample of every rank."""

from __future__ import annotations

import pytest
import torch

from more_lightning.train.step_metrics import StepMetrics

RANK_REWARDS = [torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0.5, 0.25, 0.0, 1.0, 0.75])]


@pytest.mark.unit
def test_one_process_means_and_std():
    stats = StepMetrics()
    stats.spread("reward", RANK_REWARDS[1])
    stats.mean("rate", 0.5, 4)
    stats.mean("rate", 1.0, 4)
    out = stats.reduce()
    assert out["reward/mean"] == pytest.approx(RANK_REWARDS[1].mean().item())
    assert out["reward/std"] == pytest.approx(RANK_REWARDS[1].std().item())
    assert out["rate"] == pytest.approx(0.75) and not any(k.startswith("squares") for k in out)


def _worker(rank: int, world_size: int, port: int, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    stats = StepMetrics()
    stats.spread("reward", RANK_REWARDS[rank])
    if rank == 1:
        stats.mean("experts/table retriever", 1.0, 2)  # a name only one rank has
    results[rank] = stats.reduce()
    dist.destroy_process_group()


@pytest.mark.e2e
def test_ranks_with_different_names_reduce_to_the_global_sample_statistics():
    from more_lightning.experts.ports import free_port

    context = torch.multiprocessing.get_context("spawn")
    results = context.Manager().dict()
    torch.multiprocessing.spawn(_worker, args=(2, free_port(), results), nprocs=2, join=True)
    everything = torch.cat(RANK_REWARDS)
    for rank in (0, 1):
        assert results[rank]["reward/mean"] == pytest.approx(everything.mean().item())
        assert results[rank]["reward/std"] == pytest.approx(everything.std().item())
        assert results[rank]["experts/table retriever"] == pytest.approx(1.0)
