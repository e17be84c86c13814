"""Baseline routers for ``evaluate``: a fixed rule in place of the policy's choice of experts.

``none`` (no retrieval), ``fixed:<expert>`` (always that expert), ``all`` (every expert) and ``gold`` (each step's gold
expert, ``Episode.gold_expert_at``: the routing oracle, an upper bound). The policy still answers.

- ``episode.max_steps: 1``: one retrieval with the question itself from the router's experts, then the sub-answer and
  the final answer (``none``: the final answer at once). The classic single-retrieval baseline, as before multi-step
  baselines existed.
- ``max_steps`` above 1: the policy writes every routing step (its thinking and sub-question) and decides when to stop
  (a ``none`` route), as the policy router does; the baseline replaces only the experts it chose, and the next
  routing step sees the sub-question and its sub-answer. ``none`` retrieves nothing: the sub-answers are written
  from no passages. Two rules of ours:

  - a routing output that does not follow the protocol (after the retries) does not end the episode, as it does for
    the policy router: the step retrieves with the question itself, so a baseline measures its experts, not the
    policy's formatting;
  - past the question's last gold hop the ``gold`` router stops routing: the gold trajectory needs no more experts,
    so the oracle never reads more steps than the question has hops.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from more_lightning.agent.traces import EpisodeTrace, StepTrace
from more_lightning.errors import SettingError
from more_lightning.experts.pool import ExpertPool
from more_lightning.protocol.experts import NONE_EXPERT
from more_lightning.protocol.parse import RoutingOutput
from more_lightning.protocol.records import Episode


def route_label(experts: Sequence[str]) -> str:
    """How a routing decision reads in traces and confusion matrices: the experts comma-joined, or ``none``."""
    return ", ".join(experts) or NONE_EXPERT


class BaselineRouter:
    """A baseline router (``episode.router`` other than ``policy``) over the pool's ``experts``."""

    def __init__(self, name: str, experts: Sequence[str]) -> None:
        self.name = name
        self.experts = tuple(experts)
        if name.startswith("fixed:") and name.removeprefix("fixed:") not in self.experts:
            raise SettingError(f"episode.router {name!r}: no such expert; the pool has {', '.join(self.experts)}")

    def experts_at(self, episode: Episode, step: int) -> tuple[str, ...] | None:
        """The experts read at routing step ``step`` (0-based); ``None``: stop routing (``gold`` past the last hop)."""
        if self.name == NONE_EXPERT:
            return ()
        if self.name == "all":
            return self.experts
        if self.name == "gold":
            gold = episode.gold_expert_at(step)
            if gold is None and step == 0:
                raise SettingError(
                    f"episode.router gold: question {episode.id!r} names no gold expert (give its rows an `expert`)"
                )
            return None if gold is None else (gold,)
        return (self.name.removeprefix("fixed:"),)

    def route(self, episode: Episode, step: int, parsed: RoutingOutput) -> RoutingOutput:
        """The policy's routing output at ``step`` with this router's experts in place of its choice (a stop is kept;
        an output that does not follow the protocol asks the question itself)."""
        if parsed.stops:
            return parsed
        experts = self.experts_at(episode, step)
        if experts is None:
            return RoutingOutput(parsed.think, NONE_EXPERT, (NONE_EXPERT,))
        return RoutingOutput(parsed.think, parsed.sub_question if parsed.ok else episode.question, experts)

    def retrieve_once(self, traces: list[EpisodeTrace], pool: ExpertPool, retrieve_k: int) -> None:
        """``max_steps: 1``: one retrieval with the question itself from this router's experts, as each episode's only
        step (``none``: no step), batched across the episodes."""
        requests, owners = [], []
        for index, trace in enumerate(traces):
            experts = self.experts_at(trace.episode, 0)
            trace.routes.append(route_label(experts))
            if not experts:
                continue
            trace.steps.append(StepTrace(f"(router: {self.name})", trace.episode.question, experts, []))
            for expert in experts:
                requests.append((expert, trace.episode.question, trace.episode.image))
                owners.append(index)
        if not requests:
            return
        began = time.perf_counter()
        for owner, passages in zip(owners, pool.search(requests, retrieve_k), strict=True):
            traces[owner].steps[-1].passages.extend(passages)
            traces[owner].retrieval_calls += 1
        for trace in traces:
            trace.seconds["retrieval"] += (time.perf_counter() - began) / len(traces)
