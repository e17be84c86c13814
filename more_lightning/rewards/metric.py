"""The F1-Recall metric of the official MoRE ``evaluate.py``, reproduced exactly, quirks included.

Per example: normalise the prediction and every gold (VQA-eval style), tokenise with NLTK, compute bag-of-tokens
precision / recall / F1 against each gold, keep the gold with the highest F1 (strictly greater; the first wins ties)
and report *its recall*. A dataset's score is the mean × 100.

Quirks kept on purpose, because scores must be comparable with the paper's:
- number words map to digits and ``none`` maps to ``"0"``;
- only ``an`` and ``the`` are dropped as articles (``a`` is kept);
- the period-stripping regex is called with ``re.UNICODE`` as its *count* argument, so at most 32 periods go;
- the punctuation rule looks at the *original* text: if any punctuation char touches a space anywhere (or a
  ``digit,digit`` occurs), that char is deleted everywhere, otherwise replaced by a space.

NLTK's ``punkt_tab`` data cannot be assumed, so tokenisation is ``word_tokenize(s, preserve_line=True)``. This gives
the same tokens as the official ``word_tokenize(s)`` on every normalised string with at most 32 periods: the
normaliser deletes ``?`` and ``!`` and every period not followed by a digit, so punkt finds no sentence boundary to
split at (``tests/test_metric.py`` checks that property on generated strings).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
import torch
from torchmetrics import Metric

CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = ("an", "the")  # the official list leaves out "a"
PUNCTUATION = [
    ";",
    r"/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
OFFICIAL_PERIOD_LIMIT = int(re.UNICODE)  # 32: the official code passes re.UNICODE as re.sub's count
DROPPED_TOKEN_CHARS = ",.?!:;'\""


def process_punctuation(text: str) -> str:
    """The VQA-eval punctuation rule, with the official 32-period cap."""
    out = text
    has_digit_comma = COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, OFFICIAL_PERIOD_LIMIT)


def process_digits_and_articles(text: str) -> str:
    """Lower-case, map number words (and ``none``) to digits, drop ``an``/``the``, expand contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """The official normaliser: whitespace, punctuation, then digits/articles/contractions."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digits_and_articles(process_punctuation(text))


@lru_cache(maxsize=65536)
def _gold_tokens(gold: str) -> tuple[str, ...]:
    return tuple(answer_tokens(normalize_answer(gold)))


def answer_tokens(text: str) -> list[str]:
    """Tokens of a normalised string: NLTK word tokens, minus those that are substrings of ``,.?!:;'"``."""
    from nltk.tokenize import word_tokenize

    return [t for t in word_tokenize(text.lower(), preserve_line=True) if t not in DROPPED_TOKEN_CHARS]


def precision_recall_f1(prediction_tokens: Sequence[str], gold_tokens: Sequence[str]) -> tuple[float, float, float]:
    """Bag-of-tokens precision, recall and F1."""
    same = sum((Counter(prediction_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0, 0.0, 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(gold_tokens)
    return precision, recall, 2 * precision * recall / (precision + recall)


def answer_recall(prediction: str, golds: Sequence[str]) -> float:
    """The official per-example score in [0, 1]: the recall against the gold with the highest F1."""
    if not prediction or not golds:
        return 0.0
    prediction_tokens = answer_tokens(normalize_answer(prediction))
    best_f1, best_recall = 0.0, 0.0
    for gold in golds:
        _, recall, f1 = precision_recall_f1(prediction_tokens, _gold_tokens(str(gold)))
        if f1 > best_f1:
            best_f1, best_recall = f1, recall
    return best_recall


def _range_step(width: float) -> float:
    if width >= 50:
        return 1.0
    if width >= 5:
        return 0.1
    if width >= 1:
        return 0.01
    return 0.001


def expand_infoseek_golds(answer_eval: Iterable) -> list[str]:
    """InfoSeek's ``answer_eval``: strings stay; ``{"range": [lo, hi]}`` becomes every value of the range.

    The step is 1 / 0.1 / 0.01 / 0.001 for widths ≥ 50 / ≥ 5 / ≥ 1 / else; values are ``str(round(x, 3))`` for
    ``x in arange(lo, hi + step, step)``, plus the integers ``int(lo) … int(hi)``.
    """
    golds: list[str] = []
    for item in answer_eval:
        if isinstance(item, dict) and "range" in item:
            low, high = (float(v) for v in item["range"])
            step = _range_step(high - low)
            golds.extend(str(round(float(x), 3)) for x in np.arange(low, high + step, step))
            golds.extend(str(i) for i in range(int(low), int(high) + 1))
        else:
            golds.append(str(item))
    return golds


class F1Recall(Metric):
    """F1-Recall as a torchmetrics ``Metric``: mean per-example :func:`answer_recall` × 100.

    Sums are synced across processes under DDP. With ``datasets`` it also reports each dataset's score, and
    ``compute()`` returns ``{"all": …, "<dataset>": …}``.

    Args:
        datasets: the dataset names that ``update`` may be given (fixed up front so every rank has the same states).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, datasets: Sequence[str] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.datasets = list(datasets)
        size = max(len(self.datasets), 1)
        self.add_state("recall_sum", default=torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, predictions: Sequence[str], golds: Sequence[Sequence[str]], datasets: Sequence[str] | None = None
    ) -> None:
        """Add a batch: one prediction, its golds and (with ``datasets`` configured) its dataset per example."""
        if len(predictions) != len(golds):
            raise ValueError(f"{len(predictions)} predictions but {len(golds)} gold lists")
        if self.datasets and (datasets is None or len(datasets) != len(predictions)):
            raise ValueError("this F1Recall reports per dataset: pass one dataset name per prediction")
        unknown = sorted(set(datasets or ()) - set(self.datasets)) if self.datasets else []
        if unknown:
            raise ValueError(f"unknown dataset(s) {unknown}; this metric was built for {self.datasets}")
        for i, (prediction, gold) in enumerate(zip(predictions, golds, strict=True)):
            slot = self.datasets.index(datasets[i]) if self.datasets else 0
            self.recall_sum[slot] += answer_recall(prediction or "", list(gold))
            self.count[slot] += 1

    def compute(self) -> torch.Tensor | dict[str, torch.Tensor]:
        overall = 100.0 * self.recall_sum.sum() / self.count.sum().clamp(min=1)
        if not self.datasets:
            return overall.float()
        scores = {"all": overall.float()}
        for i, name in enumerate(self.datasets):
            scores[name] = (100.0 * self.recall_sum[i] / self.count[i].clamp(min=1)).float()
        return scores
