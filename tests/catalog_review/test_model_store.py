"""The model store (catalog_review.services.model_store): a version written once through Django's storage
API, fetched and verified by each worker into its own MODEL_DIR."""

from __future__ import annotations

import pytest

from catalog_review.services import model_store
from catalog_review.services.model_versions import store_version
from ml_worker.checkpoint import CheckpointError
from ml_worker.config import MapsConfig
from ml_worker.ensemble import CrossFitModel, load_cross_fit
from ml_worker.modeling_maps import MapsModel


@pytest.fixture
def stored(settings, tmp_path):
    """A two-fold version stored by "machine A" (its MODEL_DIR), in a store of its own."""
    settings.STORAGES = {
        **settings.STORAGES,
        "models": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "store"), "allow_overwrite": True},
        },
    }
    settings.MODEL_DIR = tmp_path / "machine-a"
    model = CrossFitModel(
        final=MapsModel(MapsConfig()), folds=[MapsModel(MapsConfig()), MapsModel(MapsConfig())]
    )
    digest = store_version(model, "v1", metadata={"note": "test"})
    return digest, tmp_path


def test_a_worker_with_an_empty_model_dir_fetches_and_verifies_the_version(stored, settings):
    digest, tmp_path = stored
    assert (tmp_path / "store" / "v1" / "manifest.json").exists()
    assert sorted(p.name for p in (tmp_path / "store" / "v1").iterdir()) == [
        "final", "fold-0", "fold-1", "manifest.json"
    ]  # fmt: skip
    assert not list((tmp_path / "machine-a").glob(".build-*")), "no half-built directory left behind"

    settings.MODEL_DIR = tmp_path / "machine-b"  # another machine: nothing local
    directory = model_store.local_copy("v1", digest)
    assert directory == tmp_path / "machine-b" / "v1"
    assert len(load_cross_fit(directory, expected_sha256=digest).folds) == 2
    before = (directory / "final" / "model.safetensors").stat().st_mtime_ns
    assert model_store.local_copy("v1", digest) == directory
    assert (directory / "final" / "model.safetensors").stat().st_mtime_ns == before, "a good copy is reused"
    assert not list((tmp_path / "machine-b").glob(".fetch-*"))


def test_a_local_copy_that_does_not_match_is_fetched_again(stored, settings):
    digest, tmp_path = stored
    settings.MODEL_DIR = tmp_path / "machine-b"
    directory = model_store.local_copy("v1", digest)
    (directory / "manifest.json").write_text("{}")  # a stale or damaged copy
    (directory / "stray").write_text("left over")
    directory = model_store.local_copy("v1", digest)
    assert not (directory / "stray").exists()
    load_cross_fit(directory, expected_sha256=digest)


def test_a_tampered_store_is_refused(stored, settings):
    digest, tmp_path = stored
    weights = tmp_path / "store" / "v1" / "fold-1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    settings.MODEL_DIR = tmp_path / "machine-b"
    with pytest.raises(CheckpointError, match="corrupt or was replaced"):
        load_cross_fit(model_store.local_copy("v1", digest), expected_sha256=digest)

    settings.MODEL_DIR = tmp_path / "machine-c"
    with pytest.raises(CheckpointError, match="corrupt or was replaced"):
        model_store.local_copy("v1", "0" * 64)  # the manifest is not the one the version row recorded
    assert not (tmp_path / "machine-c" / "v1").exists()
    with pytest.raises(CheckpointError, match="not in the model store"):
        model_store.local_copy("v2", digest)


def test_the_store_on_an_s3_compatible_server(settings, tmp_path, monkeypatch):
    """MODEL_STORE_S3_BUCKET's storage (django-storages' S3Storage, boto3 over HTTP) against a local
    S3-compatible server (moto's): the same publish, fetch and verification."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="models")
        settings.STORAGES = {
            **settings.STORAGES,
            "models": {
                "BACKEND": "storages.backends.s3.S3Storage",
                "OPTIONS": {
                    "bucket_name": "models",
                    "endpoint_url": endpoint,
                    "region_name": "us-east-1",
                    "location": "versions",
                    "file_overwrite": True,
                    "querystring_auth": False,
                },
            },
        }
        settings.MODEL_DIR = tmp_path / "machine-a"
        digest = store_version(CrossFitModel(final=MapsModel(MapsConfig())), "v1")
        keys = {
            o["Key"]
            for o in boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").list_objects_v2(
                Bucket="models"
            )["Contents"]
        }
        assert keys == {
            f"versions/v1/{f}" for f in ("manifest.json", "final/model.safetensors", "final/config.json")
        }
        settings.MODEL_DIR = tmp_path / "machine-b"
        directory = model_store.local_copy("v1", digest)
        load_cross_fit(directory, expected_sha256=digest)
        with pytest.raises(CheckpointError, match="corrupt or was replaced"):
            model_store.local_copy("v1", "f" * 64)
    finally:
        server.stop()
