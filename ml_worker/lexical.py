"""Lexical title similarity for listings without an image: TF-IDF cosine over word tokens.

Two listings of one product sold on two sites often share rare words (a model number, an edition:
"cs3", "r19-00846") that a sentence embedding averages away. With no image to compare, P(same
product) then mixes the embedding cosine with this one (`ml_worker.zero_shot.formula_logits`).
Measured on `../shared/data/amazon-google` (image-less, 1,103 true cross-site pairs; exact top-1
over all 4,393 listings): MiniLM title cosine 0.487, word TF-IDF 0.571, no IDF 0.51 (BENCHMARKS.md).

IDF comes from the catalogue being scored (sublinear tf, smoothed idf, L2-normalised, as
scikit-learn's `TfidfVectorizer(sublinear_tf=True)`), so the words that are common in *this*
catalogue ("software", "edition") weigh little.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

import torch

_TOKEN = re.compile(r"\b\w\w+\b")
TITLE_WEIGHT = 0.3  # share of the embedding cosine in the title similarity of image-less pairs


def tokens(title: str) -> list[str]:
    return _TOKEN.findall(title.lower())


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
