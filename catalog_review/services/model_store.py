"""The model store: where model versions live so that workers on several machines, with no disk in common,
score with the same version.

A version (ml_worker.ensemble: a manifest and one checkpoint per member, each with its sha256) is written
once, by the worker that trained it, through Django's storage API (`STORAGES["models"]`: files under
`MODEL_STORE_DIR` by default, an S3-compatible bucket when `MODEL_STORE_S3_BUCKET` is set). Every worker
keeps a local copy in its own `MODEL_DIR`, fetched on first use and verified: the manifest against the
sha256 recorded on the version row, every member against the manifest (`load_cross_fit`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import storages

from ml_worker.checkpoint import CONFIG, WEIGHTS, CheckpointError, sha256_file
from ml_worker.ensemble import MANIFEST


def model_store():
    return storages["models"]


def publish(directory: Path, name: str) -> str:
    """Copy the saved version in `directory` into the store under `name/`; return that key prefix (what
    `ModelVersion.checkpoint_path` records)."""
    store = model_store()
    files = sorted(p for p in Path(directory).rglob("*") if p.is_file())
    if not any(p.name == MANIFEST for p in files):
        raise CheckpointError(f"{directory}: not a model version (no {MANIFEST})")
    # the manifest last: a version in the store is complete once its manifest is there
    for path in sorted(files, key=lambda p: p.name == MANIFEST):
        key = f"{name}/{path.relative_to(directory).as_posix()}"
        with path.open("rb") as fh:  # (the store overwrites: STORAGES["models"])
            saved = store.save(key, File(fh, name=path.name))
        if saved != key:
            raise CheckpointError(f"the model store saved {key} as {saved}")
    return name


def local_copy(checkpoint_path: str, expected_sha256: str) -> Path:
    """The directory holding the version on this worker: its copy in `MODEL_DIR`, fetched from the store
    when missing or when its manifest is not the recorded one. (Versions saved before the model store
    record an absolute directory, used as it is.)"""
    if Path(checkpoint_path).is_absolute():
        return Path(checkpoint_path)
    target = Path(settings.MODEL_DIR) / checkpoint_path
    if _matches(target, expected_sha256):
        return target
    Path(settings.MODEL_DIR).mkdir(parents=True, exist_ok=True)
    fetching = Path(tempfile.mkdtemp(dir=settings.MODEL_DIR, prefix=f".fetch-{checkpoint_path}-"))
    try:
        store = model_store()
        key = f"{checkpoint_path}/{MANIFEST}"
        if not store.exists(key):
            raise CheckpointError(
                f"model version {checkpoint_path!r} is not in the model store ({key} missing)"
            )
        _download(store, key, fetching / MANIFEST)
        if sha256_file(fetching / MANIFEST) != expected_sha256:
            raise CheckpointError(
                f"{key} in the model store: sha256 does not match the recorded {expected_sha256}; "
                "the model version is corrupt or was replaced"
            )
        manifest = json.loads((fetching / MANIFEST).read_text())
        for member in manifest["members"]:
            for file_name in (WEIGHTS, CONFIG):
                _download(store, f"{checkpoint_path}/{member}/{file_name}", fetching / member / file_name)
        if target.exists():  # a stale or partial copy
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(fetching, target)
        except OSError:  # another process of this machine put its copy there first
            if not _matches(target, expected_sha256):
                raise
    finally:
        shutil.rmtree(fetching, ignore_errors=True)
    return target


def _matches(directory: Path, expected_sha256: str) -> bool:
    manifest = directory / MANIFEST
    return manifest.exists() and sha256_file(manifest) == expected_sha256


def _download(store, key: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with store.open(key, "rb") as source, path.open("wb") as out:
        shutil.copyfileobj(source, out, length=1 << 20)
