"""The Expert interface: what the episode runner and the prompts need from a retrieval expert."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from more_lightning.errors import UserError
from more_lightning.protocol.experts import NONE_EXPERT, ExpertSpec
from more_lightning.protocol.records import Passage


class ExpertUnavailable(UserError, ConnectionError):
    """An expert's backing store did not answer after the configured retries."""


class Expert(ABC):
    """A retrieval expert: a protocol name, a passage prefix, and a batched ``search``.

    Args:
        name: the protocol token the policy writes in ``<ret>`` (lower case), e.g. ``text retriever``.
        prefix: the passage prefix in answer prompts, e.g. ``ter``.
        title: how the routing system prompt names it (default: the name in title case).
        guideline: when to choose it, one line in the routing system prompt.
    """

    def __init__(self, name: str, prefix: str, title: str | None = None, guideline: str = "") -> None:
        self.spec = ExpertSpec(name=name, prefix=prefix, title=title or name.title(), guideline=guideline)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def prefix(self) -> str:
        return self.spec.prefix

    @abstractmethod
    def search(
        self, queries: Sequence[str], images: Sequence[str | None] | None = None, k: int = 10
    ) -> list[list[Passage]]:
        """The top-``k`` passages for each query (optionally with the question's image), best first."""


class NoneExpert:
    """The ``none`` choice: retrieves nothing."""

    name = NONE_EXPERT

    def search(
        self, queries: Sequence[str], images: Sequence[str | None] | None = None, k: int = 10
    ) -> list[list[Passage]]:
        return [[] for _ in queries]
