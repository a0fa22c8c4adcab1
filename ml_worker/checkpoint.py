"""Checkpoints: safetensors weights + config JSON + their sha256. Never pickle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from ml_worker.config import MapsConfig
from ml_worker.modeling_maps import MapsModel

WEIGHTS, CONFIG = "model.safetensors", "config.json"


class CheckpointError(Exception):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(model: MapsModel, directory: Path, *, metadata: dict | None = None) -> str:
    """Write the checkpoint; return the sha256 of its weights (recorded in config.json too)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    digest = sha256_file(directory / WEIGHTS)
    (directory / CONFIG).write_text(
        json.dumps(
            {"model": model.config.to_dict(), "weights_sha256": digest, **(metadata or {})},
            indent=1,
            sort_keys=True,
        )
    )
    return digest


def load_checkpoint(directory: Path, *, expected_sha256: str | None = None) -> tuple[MapsModel, dict]:
    directory = Path(directory)
    if not (directory / WEIGHTS).exists() or not (directory / CONFIG).exists():
        raise CheckpointError(f"{directory}: not a checkpoint (needs {WEIGHTS} and {CONFIG})")
    meta = json.loads((directory / CONFIG).read_text())
    digest = sha256_file(directory / WEIGHTS)
    for wanted in filter(None, (expected_sha256, meta.get("weights_sha256"))):
        if digest != wanted:
            raise CheckpointError(
                f"{directory / WEIGHTS}: sha256 {digest} does not match the recorded {wanted}; "
                "the checkpoint is corrupt or was replaced"
            )
    model = MapsModel(MapsConfig.from_dict(meta["model"]))
    model.load_state_dict(load_file(str(directory / WEIGHTS)), strict=True)
    return model.eval(), meta
