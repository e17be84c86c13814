"""``ExpertPool``: the configured experts and the one Weaviate connection they share.

Searches are batched per expert: requests for the same expert (across episodes, or across the samples of a group)
go into one ``search`` call. The ``none`` expert is built in and returns nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence

from more_lightning.experts.connection import WeaviateConfig, open_weaviate
from more_lightning.experts.indexing import index_expert, progress_bar
from more_lightning.experts.weaviate_expert import WeaviateExpert
from more_lightning.protocol.experts import NONE_EXPERT, ExpertSpec, check_unique
from more_lightning.protocol.records import Passage

log = logging.getLogger(__name__)


class ExpertPool:
    """Experts plus their Weaviate connection (opened by :meth:`open`, closed by :meth:`close`).

    Args:
        experts: the retrieval experts, in the order their passages appear in answer prompts.
        weaviate: how to reach Weaviate (default: the embedded server).
        index_if_missing: on open, index the corpus of every expert whose collection is missing or empty. A
            collection that is there is checked against its expert's embedder (:class:`CollectionMismatch`).
    """

    def __init__(
        self, experts: list[WeaviateExpert], weaviate: WeaviateConfig = WeaviateConfig(), index_if_missing: bool = True
    ) -> None:
        self.experts = {e.name: e for e in experts}
        check_unique([e.spec for e in experts])
        self.weaviate = weaviate
        self.index_if_missing = index_if_missing
        self._stack: contextlib.ExitStack | None = None
        self.calls = 0

    @property
    def specs(self) -> tuple[ExpertSpec, ...]:
        return tuple(e.spec for e in self.experts.values())

    def open(self) -> ExpertPool:
        if self._stack is None:
            self._stack = contextlib.ExitStack()
            try:
                self._open_experts(self._stack.enter_context(open_weaviate(self.weaviate)))
            except BaseException:
                self.close()
                raise
        return self

    def _open_experts(self, client) -> None:
        """Bind every expert to ``client``; index the missing collections, check the existing ones."""
        for expert in self.experts.values():
            expert.bind(client, self.weaviate.describe())
            if not self._empty(client, expert):
                expert.check_embedder(foreign_ok=True)
            elif self.index_if_missing and expert.corpus:
                with progress_bar() as progress:
                    report = index_expert(expert, progress=progress)
                log.info(
                    "indexed %s: %d objects (%d rows not indexed)",
                    expert.collection_name,
                    report.imported,
                    len(report.failures),
                )

    @staticmethod
    def _empty(client, expert: WeaviateExpert) -> bool:
        return not client.collections.exists(expert.collection_name) or expert.count() == 0

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def __enter__(self) -> ExpertPool:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def search(self, requests: Sequence[tuple[str, str, str | None]], k: int = 10) -> list[list[Passage]]:
        """``requests``: ``(expert name, query, image or None)``; one ranked passage list per request."""
        by_expert: dict[str, list[int]] = defaultdict(list)
        for i, (expert, _, _) in enumerate(requests):
            if expert != NONE_EXPERT:
                if expert not in self.experts:
                    raise KeyError(f"unknown expert {expert!r}; configured: {list(self.experts)}")
                by_expert[expert].append(i)
        results: list[list[Passage]] = [[] for _ in requests]
        for expert, positions in by_expert.items():
            found = self.experts[expert].search(
                [requests[i][1] for i in positions], [requests[i][2] for i in positions], k
            )
            self.calls += 1
            for position, passages in zip(positions, found, strict=True):
                results[position] = passages
        return results
