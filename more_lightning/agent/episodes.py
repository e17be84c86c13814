"""The episode runner: the MoRE protocol run live against the experts — one place for training, evaluation and ``ask``.

For a batch of questions, up to ``max_steps`` times: every active episode gets its routing prompt; the policy samples
``group_size`` outputs per prompt (1 for evaluation); each output is parsed (unparseable ones are re-sampled up to
``parse_retries`` times when ``group_size`` is 1); the chosen experts search their collections, batched across
episodes and samples; one output continues the episode (``continue_with``); the sub-answer prompt carries the passages
(top ``passages_per_expert`` per expert); its answer joins the history. ``none`` (or a failure after the retries) ends
routing, and every episode gets its final answer. With a ``rewarder`` (on-policy training) every sampled group is
scored and kept in the trace, ready for the Step-GRPO buffer. A baseline router (``baseline_routers.py``) replaces
the policy's choice of experts; the trace records (``traces.py``) hold what each episode did and cost.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from more_lightning.agent.baseline_routers import BaselineRouter, route_label
from more_lightning.agent.traces import UNPARSED_ROUTE, EpisodeTrace, RewardedGroup, StepTrace
from more_lightning.errors import SettingError, check_ranges
from more_lightning.experts.pool import ExpertPool
from more_lightning.policy.sampler import PolicySampler, SampledGroup
from more_lightning.protocol.demonstrations import answer_demonstration, routing_demonstration
from more_lightning.protocol.parse import AnswerOutput, RoutingOutput, parse_answer, parse_routing
from more_lightning.protocol.prompts import PromptStyle, final_answer_prompt, routing_prompt, sub_answer_prompt
from more_lightning.protocol.records import Episode, Passage, StepPrompt, SubStep

ContinueWith = Literal["best", "sample", "teacher", "first"]
ROUTERS = ("policy", "none", "all", "gold", "fixed:<expert>")


@dataclass
class EpisodeConfig:
    """How an episode runs."""

    max_steps: int = 3
    """Routing steps (sub-questions) before the final answer (official: 3)."""
    retrieve_k: int = 10
    """Passages each chosen expert returns (official: 10)."""
    passages_per_expert: int = 5
    """Passages per expert kept in the sub-answer prompt (official: 5)."""
    parse_retries: int = 2
    """Re-samples of an unparseable output (single-sample runs) before the step counts as ``none``."""
    router: str = "policy"
    """Who routes: ``policy`` (MoRE: the policy writes each sub-question and picks its expert), or a baseline in place
    of the policy's choice of experts: ``none`` (no retrieval), ``fixed:<expert>`` (always that expert), ``all``
    (every expert) or ``gold`` (each step's gold expert: the routing oracle, an upper bound). With ``max_steps: 1`` a
    baseline retrieves once with the question itself; with more, the policy writes each sub-question and decides
    when to stop, the baseline picks the experts (``agent/baseline_routers.py``)."""
    prompt_style: PromptStyle = "official"
    """The system prompts: ``official`` (MoRE's) or ``compact`` (short, same output format; small policies)."""
    passage_chars: int | None = None
    """Cut each passage in the sub-answer prompt to this many characters (``None``: whole passages, as the official
    code). A small policy on a CPU reads far faster with short passages."""
    stop_on_repeat: bool = False
    """End an episode's routing when its chosen output asks a sub-question it already asked, of the same experts
    (same words up to case, spacing and end punctuation): that search would return the passages it already read.
    Nothing is searched for such an output, and the final answer follows. Not in the official loop, which searches
    again, up to ``max_steps``; it saves the retrievals and generations of a policy that repeats itself before
    stopping (``docs/step_grpo.md``)."""

    def __post_init__(self) -> None:
        known = self.router in ROUTERS[:-1] or (self.router.startswith("fixed:") and self.router[6:].strip())
        chars = self.passage_chars
        check_ranges(
            "episode",
            {
                "max_steps": (self.max_steps, self.max_steps >= 1, ">= 1"),
                "retrieve_k": (self.retrieve_k, self.retrieve_k >= 1, ">= 1 (router: none retrieves nothing)"),
                "passages_per_expert": (self.passages_per_expert, self.passages_per_expert >= 1, ">= 1"),
                "parse_retries": (self.parse_retries, self.parse_retries >= 0, ">= 0"),
                "router": (self.router, bool(known), f"one of {', '.join(ROUTERS)}"),
                "passage_chars": (chars, chars is None or chars >= 1, "null or >= 1"),
            },
        )


def chosen_experts(parsed) -> tuple[str, ...]:
    """The experts a parsed output chose: none for answers and for outputs that do not follow the protocol."""
    return parsed.experts if isinstance(parsed, RoutingOutput) and parsed.ok else ()


class Rewarder(Protocol):
    """Scores the samples of a step of an episode (on-policy training)."""

    def routing(
        self, episode: Episode, step: int, parsed: list[RoutingOutput], passages: list[list[Passage]]
    ) -> list[float]: ...

    def answer(self, episode: Episode, step: int | None, parsed: list[AnswerOutput]) -> list[float]: ...


class EpisodeRunner:
    """Runs episodes with a policy sampler against an expert pool.

    Args:
        sampler: the policy.
        pool: the experts (with their Weaviate connection open).
        config: step limit, retrieval depth, retries.
        group_size: samples per step prompt (1 for evaluation; the GRPO group size in training).
        rewarder: scores each group (training); ``None`` for evaluation.
        continue_with: which sample continues the episode: ``first`` valid (evaluation), ``best`` reward,
            a random valid ``sample``, or the ``teacher``'s step where the episode has one.
        seed: for ``continue_with: sample``.
        demonstrations: training: teacher demonstrations put in each group whose step has a teacher (routing and
            sub-answer steps while ``continue_with: teacher`` follows the teacher; final answers from the golds).
    """

    def __init__(
        self,
        sampler: PolicySampler,
        pool: ExpertPool,
        config: EpisodeConfig | None = None,
        group_size: int = 1,
        rewarder: Rewarder | None = None,
        continue_with: ContinueWith = "first",
        seed: int = 0,
        demonstrations: int = 0,
    ) -> None:
        self.sampler = sampler
        self.pool = pool
        self.config = config or EpisodeConfig()
        self.group_size = group_size
        self.rewarder = rewarder
        self.continue_with = continue_with
        self.rng = random.Random(seed)
        self.demonstrations = demonstrations
        router = self.config.router
        if router != "policy" and rewarder is not None:
            raise SettingError(f"episode.router {router!r} is a baseline for evaluation: training needs router: policy")
        experts = [spec.name for spec in pool.specs]
        self.baseline = BaselineRouter(router, experts) if router != "policy" else None

    # -- sampling with retries -----------------------------------------------------------------------------------
    def _sample(
        self, prompts: list[StepPrompt], parse, traces: list[EpisodeTrace], demonstrations: list[str | None]
    ) -> list[tuple[SampledGroup, list]]:
        groups = self.sampler.sample(prompts, self.group_size)
        if self.demonstrations:
            for group, text in zip(groups, demonstrations, strict=True):
                if text is not None:
                    self.sampler.demonstrate(group, text, self.demonstrations)
        parsed = [[parse(t) for t in g.texts] for g in groups]
        for trace, group in zip(traces, groups, strict=True):
            trace.prompt_tokens += group.prompt_tokens
            trace.seconds["generation"] += group.seconds
        if self.group_size == 1:
            for i, trace in enumerate(traces):
                retries = 0
                while not parsed[i][0].ok and retries < self.config.parse_retries:
                    retries += 1
                    groups[i] = self.sampler.sample([prompts[i]], 1)[0]
                    parsed[i] = [parse(groups[i].texts[0])]
                    trace.prompt_tokens += groups[i].prompt_tokens
                    trace.seconds["generation"] += groups[i].seconds
                trace.retries += retries
        for trace, results in zip(traces, parsed, strict=True):
            trace.parse_failures += sum(not p.ok for p in results)
        return list(zip(groups, parsed, strict=True))

    def _choose(self, trace: EpisodeTrace, candidates: list, rewards: list[float] | None) -> int | None:
        valid = [i for i, p in enumerate(candidates) if p.ok or getattr(p, "answer", None) is not None]
        if not valid:
            return None
        if self.continue_with == "best" and rewards is not None:
            return max(valid, key=lambda i: rewards[i])
        if self.continue_with == "sample":
            return self.rng.choice(valid)
        return valid[0]

    @staticmethod
    def _timed(trace: EpisodeTrace, name: str, function, *args):
        began = time.perf_counter()
        result = function(*args)
        trace.seconds[name] += time.perf_counter() - began
        return result

    def _record(self, trace: EpisodeTrace, group: SampledGroup, rewards: list[float] | None, parsed: list) -> None:
        if rewards is not None:
            trace.groups.append(
                RewardedGroup(group, rewards, sum(not p.ok for p in parsed), [chosen_experts(p) for p in parsed])
            )

    # -- one routing step for all active episodes ----------------------------------------------------------------
    def _routing_step(self, traces: list[EpisodeTrace], step: int) -> list[EpisodeTrace]:
        specs = self.pool.specs
        style = self.config.prompt_style
        prompts = [routing_prompt(t.episode.question, t.history(), t.episode.image, specs, style) for t in traces]
        demonstrations = [
            routing_demonstration(t.sub_question, t.experts) if (t := self._teacher_step(trace, step)) else None
            for trace in traces
        ]
        sampled = self._sample(prompts, lambda text: parse_routing(text, specs), traces, demonstrations)
        if self.baseline is not None:  # the baseline picks the experts of the policy's routing step
            sampled = [
                (group, [self.baseline.route(trace.episode, step, p) for p in parsed])
                for trace, (group, parsed) in zip(traces, sampled, strict=True)
            ]
        requests, owners = [], []
        for t_index, (trace, (_, parsed)) in enumerate(zip(traces, sampled, strict=True)):
            for s_index, p in enumerate(parsed):
                if p.ok and not p.stops and not self._repeats(trace, p):
                    for expert in p.experts:
                        requests.append((expert, p.sub_question, trace.episode.image))
                        owners.append((t_index, s_index))
        began = time.perf_counter()
        results = self.pool.search(requests, self.config.retrieve_k) if requests else []
        found: dict[tuple[int, int], list[Passage]] = {}
        for owner, passages in zip(owners, results, strict=True):
            found.setdefault(owner, []).extend(passages)
            traces[owner[0]].retrieval_calls += 1
        for trace in traces:
            trace.seconds["retrieval"] += (time.perf_counter() - began) / len(traces)
        continuing = []
        for t_index, (trace, (group, parsed)) in enumerate(zip(traces, sampled, strict=True)):
            passages = [found.get((t_index, s), []) for s in range(len(parsed))]
            rewards = (
                self._timed(trace, "scoring", self.rewarder.routing, trace.episode, step, parsed, passages)
                if self.rewarder
                else None
            )
            self._record(trace, group, rewards, parsed)
            teacher = self._teacher_step(trace, step)
            if teacher is not None:
                requests_teacher = [(e, teacher.sub_question, trace.episode.image) for e in teacher.experts]
                teacher_passages = [p for r in self.pool.search(requests_teacher, self.config.retrieve_k) for p in r]
                trace.steps.append(StepTrace("(teacher)", teacher.sub_question, teacher.experts, teacher_passages))
                trace.routes.append(route_label(teacher.experts))
                continuing.append(trace)
                continue
            chosen = self._choose(trace, parsed, rewards)
            trace.routes.append(UNPARSED_ROUTE if chosen is None else route_label(parsed[chosen].experts))
            if chosen is not None and parsed[chosen].stops:
                trace.stop_prompt = prompts[t_index]
            if chosen is not None and self._repeats(trace, parsed[chosen]):
                trace.ended_on_repeat = True
            if chosen is None or parsed[chosen].stops or trace.ended_on_repeat:
                continue
            choice = parsed[chosen]
            trace.steps.append(
                StepTrace(
                    group.texts[chosen],
                    choice.sub_question,
                    choice.experts,
                    passages[chosen],
                    routing_prompt=prompts[t_index],
                )
            )
            continuing.append(trace)
        return continuing

    def _repeats(self, trace: EpisodeTrace, output: RoutingOutput) -> bool:
        """Whether ``output`` repeats one of ``trace``'s earlier searches and ``stop_on_repeat`` ends it there."""
        return self.config.stop_on_repeat and output.ok and trace.asked(output.sub_question, output.experts)

    def _teacher_step(self, trace: EpisodeTrace, step: int) -> SubStep | None:
        teacher = trace.episode.teacher
        if self.continue_with == "teacher" and teacher is not None and step < len(teacher):
            return teacher[step]
        return None

    # -- the sub-answer step -------------------------------------------------------------------------------------
    def _answer_step(self, traces: list[EpisodeTrace], step: int) -> None:
        specs = self.pool.specs
        prompts = []
        for trace in traces:
            current = trace.steps[-1]
            by_expert: dict[str, list[Passage]] = {}
            for passage in current.passages:
                by_expert.setdefault(passage.expert, []).append(self._cut(passage))
            per_expert = self.config.passages_per_expert
            trace.passages_read += sum(min(len(by_expert.get(spec.name, ())), per_expert) for spec in specs)
            prompts.append(
                sub_answer_prompt(
                    current.sub_question,
                    by_expert,
                    trace.episode.image,
                    specs,
                    self.config.passages_per_expert,
                    self.config.prompt_style,
                )
            )
        demonstrations = [
            answer_demonstration(t.answer) if (t := self._teacher_step(trace, step)) else None for trace in traces
        ]
        sampled = self._sample(prompts, parse_answer, traces, demonstrations)
        for trace, prompt, (group, parsed) in zip(traces, prompts, sampled, strict=True):
            rewards = (
                self._timed(trace, "scoring", self.rewarder.answer, trace.episode, step, parsed)
                if self.rewarder
                else None
            )
            self._record(trace, group, rewards, parsed)
            teacher = self._teacher_step(trace, step)
            current = trace.steps[-1]
            current.answer_prompt = prompt
            if teacher is not None:
                current.answer = teacher.answer
                continue
            chosen = self._choose(trace, parsed, rewards)
            current.answer_output = group.texts[chosen if chosen is not None else 0]
            current.answer = parsed[chosen].answer if chosen is not None else ""

    def _final_step(self, traces: list[EpisodeTrace]) -> None:
        style = self.config.prompt_style
        prompts = [final_answer_prompt(t.episode.question, t.history(), t.episode.image, style) for t in traces]
        demonstrations = [answer_demonstration(t.episode.golds[0]) if t.episode.golds else None for t in traces]
        sampled = self._sample(prompts, parse_answer, traces, demonstrations)
        for trace, prompt, (group, parsed) in zip(traces, prompts, sampled, strict=True):
            rewards = (
                self._timed(trace, "scoring", self.rewarder.answer, trace.episode, None, parsed)
                if self.rewarder
                else None
            )
            self._record(trace, group, rewards, parsed)
            trace.final_prompt = prompt
            chosen = self._choose(trace, parsed, rewards)
            trace.final_output = group.texts[chosen if chosen is not None else 0]
            trace.final_answer = (parsed[chosen].answer or "").strip() if chosen is not None else ""

    def _cut(self, passage: Passage) -> Passage:
        limit = self.config.passage_chars
        return passage if limit is None or len(passage.text) <= limit else replace(passage, text=passage.text[:limit])

    def run(self, episodes: Sequence[Episode], on_stage: Callable[[str], None] | None = None) -> list[EpisodeTrace]:
        """Run ``episodes`` together, step by step; returns one trace per episode, in order. ``on_stage`` hears where
        the batch is (``routing step 2/3, 40 episodes``, ``sub-answers 2/3``, ``final answers``) as each stage
        begins: a progress line's status while a long batch runs."""
        said = on_stage or (lambda stage: None)
        traces = [EpisodeTrace(e) for e in episodes]
        if self.baseline is not None and self.config.max_steps == 1:
            said("retrieval")
            self.baseline.retrieve_once(traces, self.pool, self.config.retrieve_k)
            if retrieved := [trace for trace in traces if trace.steps]:
                said("sub-answers")
                self._answer_step(retrieved, 0)
            said("final answers")
            self._final_step(traces)
            return traces
        active = list(traces)
        steps = self.config.max_steps
        for step in range(steps):
            if not active:
                break
            said(f"routing step {step + 1}/{steps}, {len(active)} episodes")
            active = self._routing_step(active, step)
            if active:
                said(f"sub-answers {step + 1}/{steps}")
                self._answer_step(active, step)
        said("final answers")
        self._final_step(traces)
        return traces
