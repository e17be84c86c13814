"""Which experts the policy can route to: their protocol names, passage prefixes and prompt guidelines.

The protocol's tokens are lower-case names (``text retriever``); the passage prefix marks each retrieved passage in
the answer prompt (``ter-0: …``). A fourth expert is one more :class:`ExpertSpec` in the config, no code change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from more_lightning.errors import SettingError

NONE_EXPERT = "none"
"""The expert that retrieves nothing; choosing it (with sub-question ``none``) ends the routing loop."""


@dataclass(frozen=True)
class ExpertSpec:
    """One retrieval expert as the policy sees it."""

    name: str
    """The protocol token, lower case, e.g. ``text retriever``."""
    prefix: str
    """The passage prefix in answer prompts, e.g. ``ter`` gives ``ter-0: …``."""
    title: str
    """How the routing system prompt names it, e.g. ``Text Retriever``."""
    guideline: str
    """When to choose it (one line in the routing system prompt)."""

    def __post_init__(self) -> None:
        if self.name != self.name.lower().strip() or "," in self.name or not self.name:
            raise SettingError(f"expert name {self.name!r} must be non-empty, lower case, trimmed and without commas")
        if self.name == NONE_EXPERT:
            raise SettingError("'none' is built in; do not declare it as an expert")


DEFAULT_EXPERTS: tuple[ExpertSpec, ...] = (
    ExpertSpec(
        "text retriever",
        "ter",
        "Text Retriever",
        'For non-visual commonsense knowledge (e.g., "Define photosynthesis")',
    ),
    ExpertSpec(
        "text image retriever",
        "tir",
        "Text Image Retriever",
        'When sub-question explicitly references visual elements (e.g., "Describe the painting style of...")',
    ),
    ExpertSpec(
        "table retriever", "tar", "Table Retriever", 'For numerical/statistical queries (e.g., "GDP of Japan in 2020")'
    ),
)
"""The three experts of the MoRE paper, in the order their passages appear in prompts."""


def expert_names(experts: Sequence[ExpertSpec]) -> tuple[str, ...]:
    """The names a routing output may choose: the experts plus ``none``."""
    return (*(e.name for e in experts), NONE_EXPERT)


def check_unique(experts: Sequence[ExpertSpec]) -> None:
    """Raise if two experts share a name or a prefix."""
    for attribute, plural in (("name", "names"), ("prefix", "prefixes")):
        values = [getattr(e, attribute) for e in experts]
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise SettingError(f"experts must have distinct {plural}; repeated: {duplicates}")
