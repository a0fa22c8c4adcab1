"""Families into folds.

A version's fold models (ml_worker.ensemble) and its scorer's own-evidence heads (ml_worker.evidence) are
cross-fitted by family: each family is read by a model fitted without it, so a wrong listing a family
links is not learnt as one of its members. Every place that splits families into folds asks `FamilyFolds`.
A family's fold is a stable hash of its code: the same across jobs, catalogues and machines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FamilyFolds:
    """`count` folds of families; with one fold (or none) every family is in fold 0."""

    count: int

    def of(self, family_code: str) -> int:
        if self.count <= 1:
            return 0
        return int(hashlib.sha256(family_code.encode("utf-8")).hexdigest()[:12], 16) % self.count

    def of_each(self, family_codes: Iterable[str]) -> np.ndarray:
        return np.array([self.of(code) for code in family_codes], dtype=np.int64)

    def groups(self, family_codes: Sequence[str]) -> dict[int, np.ndarray]:
        """The positions in `family_codes` of each fold present, folds in order."""
        fold = self.of_each(family_codes)
        return {int(k): np.nonzero(fold == k)[0] for k in np.unique(fold)}

    def fitted_without(self, fold: int, family_codes: Sequence[str]) -> np.ndarray:
        """The positions a fold's model fits on: every family outside the fold (all of them with one fold)."""
        if self.count <= 1:
            return np.arange(len(family_codes))
        return np.nonzero(self.of_each(family_codes) != fold)[0]
