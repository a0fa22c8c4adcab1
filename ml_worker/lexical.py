"""Lexical title similarity for listings without an image: TF-IDF cosine over word tokens.

Two listings of one product sold on two sites often share rare words (a model number, an edition:
"cs3", "r19-00846") that a sentence embedding averages away. With no image to compare, P(same
product) then mixes the embedding cosine with this one (`ml_worker.zero_shot.formula_logits`).
Measured on `../shared/data/amazon-google` (image-less, 1,103 true cross-site pairs; exact top-1
over all 4,393 listings): MiniLM title cosine 0.487, word TF-IDF 0.571, no IDF 0.51 (BENCHMARKS.md).

IDF comes from the catalogue being scored (sublinear tf, smoothed idf, L2-normalised, as
scikit-learn's `TfidfVectorizer(sublinear_tf=True)`), so the words that are common in *this*
catalogue ("software", "edition") weigh little.

Two kinds of disagreement then count against a pair, since most misses of the word cosine are
another edition or pack of the same line ("v 8.0" vs "v 9.0", "5 pack" vs "20-pack"):
- numbers: both titles carry numbers and share none (`NUMBER_PENALTY`);
- price: both listings have a price attribute and they differ (`PRICE_WEIGHT` x |log ratio|, capped at
  `PRICE_CAP`, e.g. an upgrade at a third of the full version's price).
amazon-google best match with the 20 embedding candidates: 0.554 words alone, 0.570 with numbers,
0.586 with prices, 0.606 with both (the weights are a plateau of a grid over 0-0.3, BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Iterable

import torch

_TOKEN = re.compile(r"\b\w\w+\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
TITLE_WEIGHT = 0.3  # share of the embedding cosine in the title similarity of image-less pairs
NUMBER_PENALTY = 0.2  # both titles carry numbers and share none
PRICE_WEIGHT = 0.2  # per unit of |log price ratio| ...
PRICE_CAP = 2.0  # ... up to this (a factor e^2 = 7.4 apart)


def tokens(title: str) -> list[str]:
    return _TOKEN.findall(title.lower())


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
    def __init__(self, titles: Iterable[str]):
        df, n = Counter(), 0
        for title in titles:
            df.update(set(tokens(title)))
            n += 1
        self.n = n
        self.idf = {t: math.log((1 + n) / (1 + d)) + 1 for t, d in df.items()}
        self.unseen = math.log(1 + n) + 1  # a word of a title outside the fitted catalogue

    def vector(self, title: str) -> dict[str, float]:
        counts = Counter(tokens(title))
        weights = {t: (1 + math.log(c)) * self.idf.get(t, self.unseen) for t, c in counts.items()}
        norm = math.sqrt(sum(w * w for w in weights.values()))
        return {t: w / norm for t, w in weights.items()} if norm else {}

    def pair_similarity(self, titles: list[str], ii: Iterable[int], jj: Iterable[int]) -> torch.Tensor:
        """TF-IDF cosine of titles[i] and titles[j] for each pair (0 where a title has no word)."""
        vectors: dict[int, dict[str, float]] = {}

        def vec(i: int) -> dict[str, float]:
            if i not in vectors:
                vectors[i] = self.vector(titles[i])
            return vectors[i]

        out = []
        for i, j in zip(ii, jj, strict=True):
            a, b = vec(int(i)), vec(int(j))
            if len(b) < len(a):
                a, b = b, a
            out.append(sum(w * b.get(t, 0.0) for t, w in a.items()))
        return torch.tensor(out, dtype=torch.float32)

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
