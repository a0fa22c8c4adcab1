"""What a caller may ask of the product, validated once: the admin pages, the HTTP API and the management
commands build these models and hand them to the services (the API also publishes them in its OpenAPI
schema). Types are strict: JSON's "yes" is not a boolean and 3.0 is not a step count."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

MAX_TRAIN_STEPS = 100_000


def explain(errors: list[dict]) -> str:
    """Validation errors (pydantic's `exc.errors()`) as one line a person can act on:
    'steps: Input should be greater than or equal to 1; ...'."""
    parts = []
    for error in errors:
        where = ".".join(
            str(p) for p in error.get("loc", ()) if p not in ("body", "payload", "query", "path")
        )
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


class TrainRequest(BaseModel):
    """A train job. `steps` None: TRAIN_WARM_STEPS for a warm start, TRAIN_STEPS from scratch (decided
    on the worker); `end_to_end` None: TRAIN_END_TO_END decides (fine-tune the backbones on a CUDA
    worker); `warm_start` True starts every member from the active version's weights (the job fails if it
    cannot be one), False from scratch, None: TRAIN_WARM_START decides, warm when it can."""

    model_config = ConfigDict(strict=True)

    steps: int | None = Field(None, ge=1, le=MAX_TRAIN_STEPS, description="optimisation steps per model")
    activate: bool = Field(False, description="activate the new version if it is not worse than the active")
    force: bool = Field(False, description="with activate: activate it even if it is worse")
    end_to_end: bool | None = Field(None, description="fine-tune both backbones (GPU); null: configured")
    warm_start: bool | None = Field(None, description="start from the active version; null: configured")

    @model_validator(mode="after")
    def _force_needs_activate(self):
        if self.force and not self.activate:
            raise ValueError("force only makes sense with activate")
        return self


SkuList = Annotated[
    list[Annotated[str, StringConstraints(min_length=1, max_length=200)]], Field(max_length=100_000)
]


class ScoreRequest(BaseModel):
    """A score job: the whole catalogue, or one family, one category (a path such as 'Food > Fruit',
    its subcategories included) or a list of SKUs (their families are scored)."""

    model_config = ConfigDict(strict=True)

    family: Annotated[str, StringConstraints(max_length=200)] | None = None
    category: Annotated[str, StringConstraints(max_length=500)] | None = None
    skus: SkuList | None = None

    def scope(self) -> dict:
        return {key: value for key, value in self.model_dump().items() if value}


def _blank_is_none(value):
    return value or None


class DecisionRequest(BaseModel):
    """A reviewer's decision on a flag. `client_request_id` makes a retry safe (the first decision is
    returned); a fix (`suggested_family` or `belongs_to_no_family`) goes with confirming a wrong variant."""

    model_config = ConfigDict(strict=True)

    decision: Literal["confirm", "reject", "skip"]
    note: Annotated[str, StringConstraints(max_length=2000)] = ""
    client_request_id: Annotated[
        Annotated[str, StringConstraints(max_length=100)] | None, BeforeValidator(_blank_is_none)
    ] = None
    suggested_family: Annotated[str, StringConstraints(max_length=200)] | None = Field(
        None, description="confirming a wrong variant: the family code it belongs to"
    )
    belongs_to_no_family: bool = Field(False, description="confirming a wrong variant: it stands alone")


__all__ = ["MAX_TRAIN_STEPS", "DecisionRequest", "ScoreRequest", "TrainRequest", "ValidationError", "explain"]
