"""Lexical title similarity for listings without an image: TF-IDF cosine over word tokens.

Two listings of one product sold on two sites often share rare words (a model number, an edition:
"cs3", "r19-00846") that a sentence embedding averages away. With no image to compare, P(same
product) then mixes the embedding cosine with this one (`ml_worker.zero_shot.formula_logits`).

IDF comes from the catalogue being scored (sublinear tf, smoothed idf, L2-normalised, as
scikit-learn's `TfidfVectorizer(sublinear_tf=True)`), so the words that are common in *this*
catalogue ("software", "edition") weigh little.

Two kinds of disagreement then count against a pair, since most misses of the word cosine are
another edition or pack of the same line ("v 8.0" vs "v 9.0", "5 pack" vs "20-pack"):
- numbers: both titles carry numbers and share none (`NUMBER_PENALTY`);
- price: both listings have a price attribute and they differ (`PRICE_WEIGHT` x |log ratio|, capped at
  `PRICE_CAP`, e.g. an upgrade at a third of the full version's price).
The weights were chosen on amazon-google (image-less cross-site pairs; BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
TITLE_WEIGHT = 0.3  # share of the embedding cosine in the title similarity of image-less pairs
NUMBER_PENALTY = 0.2  # both titles carry numbers and share none
PRICE_WEIGHT = 0.2  # per unit of |log price ratio| ...
PRICE_CAP = 2.0  # ... up to this (a factor e^2 = 7.4 apart)


@functools.lru_cache(maxsize=65536)
def numbers(title: str) -> frozenset[str]:
    """The numbers of a title, decimals without trailing zeros ("8.0" and "8" are one number)."""
    return frozenset(n.rstrip("0").rstrip(".") if "." in n else n for n in _NUMBER.findall(title))


def price_of(attributes: dict | None) -> float | None:
    """A listing's `price` attribute as a positive number ("599.99", "$1,299", 12.5), else None."""
    value = (attributes or {}).get("price")
    if isinstance(value, bool) or value is None:
        return None
    if not isinstance(value, int | float):
        text = str(value).strip().replace(",", "").lstrip("$€£").strip()
        try:
            value = float(text)
        except ValueError:
            return None
    return float(value) if math.isfinite(value) and value > 0 else None


def disagreement(title_a: str, title_b: str, price_a: float | None, price_b: float | None) -> float:
    """What counts against two image-less listings being one product, beyond their words."""
    penalty = 0.0
    na, nb = numbers(title_a), numbers(title_b)
    if na and nb and not na & nb:
        penalty += NUMBER_PENALTY
    if price_a is not None and price_b is not None:
        penalty += PRICE_WEIGHT * min(abs(math.log(price_a / price_b)), PRICE_CAP)
    return penalty


class TitleIdf:
    """Word TF-IDF over a catalogue's titles: scikit-learn's `TfidfVectorizer(sublinear_tf=True)` (word
    tokens of 2+ characters, lower-cased, smoothed idf, L2-normalised rows), fitted once. A word of a
    compared title that the catalogue never used weighs as the rarest word could (idf of a document
    frequency of 0): a model number only the two compared titles share is strong evidence."""

    def __init__(self, titles: Iterable[str]):
        titles = list(titles)
        self.n = len(titles)
        self.unseen = math.log(1 + self.n) + 1
        self._tfidf = TfidfVectorizer(sublinear_tf=True, token_pattern=_TOKEN.pattern, dtype=np.float64)
        try:
            self._tfidf.fit(titles)
        except ValueError:  # no title has a word: every word is unseen
            self._tfidf = TfidfVectorizer(sublinear_tf=True, token_pattern=_TOKEN.pattern, vocabulary={})
            self._tfidf.idf_ = np.zeros(0)
        self._analyze = self._tfidf.build_analyzer()

    def matrix(self, titles: list[str]):
        """The titles' TF-IDF rows (sparse, L2-normalised), unseen words weighted as `unseen`."""
        vocabulary = self._tfidf.vocabulary_
        new = sorted({w for title in titles for w in self._analyze(title)} - vocabulary.keys())
        if not new:
            return self._tfidf.transform(titles)
        extended = TfidfVectorizer(
            sublinear_tf=True,
            token_pattern=_TOKEN.pattern,
            vocabulary=vocabulary | {w: len(vocabulary) + k for k, w in enumerate(new)},
        )
        extended.idf_ = np.concatenate([self._tfidf.idf_, np.full(len(new), self.unseen)])
        return extended.transform(titles)

    def pair_similarity(self, titles: list[str], ii: Iterable[int], jj: Iterable[int]) -> torch.Tensor:
        """TF-IDF cosine of titles[i] and titles[j] for each pair (0 where a title has no word)."""
        ii, jj = [int(i) for i in ii], [int(j) for j in jj]
        if not ii:
            return torch.zeros(0)
        used = sorted(set(ii) | set(jj))
        row = {i: r for r, i in enumerate(used)}
        rows = self.matrix([titles[i] for i in used])
        a, b = rows[[row[i] for i in ii]], rows[[row[j] for j in jj]]
        return torch.as_tensor(np.asarray(a.multiply(b).sum(axis=1)).ravel(), dtype=torch.float32)

    def pair_evidence(
        self,
        titles: list[str],
        ii: Iterable[int],
        jj: Iterable[int],
        prices: list[float | None] | None = None,
    ) -> torch.Tensor:
        """What image-less pairs are compared by: the TF-IDF cosine minus each pair's `disagreement`
        (numbers; prices where `prices`, `price_of` per listing, are given)."""
        ii, jj = [int(i) for i in ii], [int(j) for j in jj]
        prices = prices if prices is not None else [None] * len(titles)
        penalty = [
            disagreement(titles[i], titles[j], prices[i], prices[j]) for i, j in zip(ii, jj, strict=True)
        ]
        return self.pair_similarity(titles, ii, jj) - torch.tensor(penalty, dtype=torch.float32)
