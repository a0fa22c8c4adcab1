"""Adversarial negative titles (paper 3): rewrite a title's distinguishing words (colour, product
type, style words) with words taken from titles of *other* families in the same category, so that
the result reads like a real listing of a neighbouring product but no longer describes this image."""

from __future__ import annotations

import random
import re
from collections import defaultdict

_WORD = re.compile(r"[A-Za-z][A-Za-z'&-]+")


class AdversarialTitleGenerator:
    @classmethod
    def for_listings(cls, listings, texts: list[str], *, seed: int = 0) -> AdversarialTitleGenerator:
        """A generator over `listings` (ml_worker.catalogue.Listing) rewriting `texts` (their titles, or
        the text the model reads of them), with their families, categories and colours."""
        return cls(
            texts,
            [x.family for x in listings],
            [x.category for x in listings],
            colours=[str(x.attributes.get("colour", "")) for x in listings],
            seed=seed,
        )

    def __init__(
        self,
        titles: list[str],
        families: list[str],
        categories: list[tuple[str, ...]],
        colours: list[str] | None = None,
        seed: int = 0,
    ):
        self.titles, self.families, self.categories = titles, families, categories
        self.rng = random.Random(seed)
        self.vocab: dict[tuple[str, ...], list[str]] = defaultdict(list)
        self.by_category: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, (title, category) in enumerate(zip(titles, categories, strict=True)):
            self.by_category[category].append(i)
            self.vocab[category].extend(w for w in _WORD.findall(title) if len(w) > 2)
        self.colours = sorted({c for c in (colours or []) if c})

    def __call__(self, index: int) -> str:
        title, family, category = self.titles[index], self.families[index], self.categories[index]
        words = title.split()
        own = {w.lower() for w in words}
        pool = [w for w in self.vocab.get(category, []) if w.lower() not in own]
        candidates = [i for i, w in enumerate(words) if _WORD.fullmatch(w) and len(w) > 2]
        if not pool or not candidates:
            others = [i for i in self.by_category.get(category, []) if self.families[i] != family]
            others = others or [i for i in range(len(self.titles)) if self.families[i] != family]
            return self.titles[self.rng.choice(others)] if others else title + " (other)"
        # the last word is usually the product type, the most distinguishing one: rewrite it often
        positions = {candidates[-1]} if self.rng.random() < 0.6 else set()
        positions |= set(self.rng.sample(candidates, k=min(len(candidates), self.rng.choice([1, 2]))))
        for i in positions:
            words[i] = self.rng.choice(pool)
        if self.colours and self.rng.random() < 0.3:
            words.insert(0, self.rng.choice(self.colours))
        rewritten = " ".join(words)
        return rewritten if rewritten.lower() != title.lower() else rewritten + " " + self.rng.choice(pool)
