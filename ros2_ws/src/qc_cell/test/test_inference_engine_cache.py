"""TensorRT engine cache integrity (issue 18), without a GPU: a cached engine reaches TensorRT's deserialiser only
with a valid HMAC under the cell's key; planted, tampered, foreign or renamed engines are refused."""

from __future__ import annotations

import json
import stat

import pytest

from qc_cell.inference.backends.engine_cache import (
    KEY_BYTES,
    EngineCache,
    EngineIntegrityError,
    EngineKey,
    load_or_create_key,
)

KEY = EngineKey("ab" * 32, "10.3.0", "Orin", "fp16", 4, (3, 224, 224), "8.7")
OTHER_MODEL = EngineKey("cd" * 32, "10.3.0", "Orin", "fp16", 4, (3, 224, 224), "8.7")
ENGINE = b"serialized engine " * 1000


@pytest.fixture
def cache(tmp_path):
    return EngineCache(tmp_path / "engines", load_or_create_key(tmp_path / "engines" / ".engine_hmac.key"))


def test_an_engine_stored_by_this_cell_loads(cache):
    cache.store(KEY, ENGINE)
    assert cache.load(KEY) == ENGINE
    assert cache.load(OTHER_MODEL) is None  # nothing cached for it


def test_the_key_file_is_private_and_kept(tmp_path):
    path = tmp_path / "keys" / "engine.key"
    key = load_or_create_key(path)
    assert len(key) == KEY_BYTES and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    path.write_bytes(b"short")
    with pytest.raises(EngineIntegrityError, match="at least 32"):
        load_or_create_key(path)


def test_a_planted_engine_without_a_digest_is_refused(cache):
    cache.directory.mkdir(parents=True, exist_ok=True)
    cache.path(KEY).write_bytes(b"crafted engine")  # what the old cache loaded without a question
    with pytest.raises(EngineIntegrityError, match="no readable digest"):
        cache.load(KEY)
    cache.path(KEY).with_suffix(".json").write_text(json.dumps({"hmac_sha256": "0" * 64}))
    with pytest.raises(EngineIntegrityError, match="fails its keyed digest"):
        cache.load(KEY)


def test_a_tampered_engine_is_refused(cache):
    cache.store(KEY, ENGINE)
    data = bytearray(cache.path(KEY).read_bytes())
    data[100] ^= 1
    cache.path(KEY).write_bytes(bytes(data))
    with pytest.raises(EngineIntegrityError, match="fails its keyed digest"):
        cache.load(KEY)


def test_an_engine_of_another_cell_or_another_model_is_refused(tmp_path, cache):
    other_cell = EngineCache(cache.directory, load_or_create_key(tmp_path / "other.key"))
    other_cell.store(KEY, ENGINE)  # a valid digest, under another cell's key
    with pytest.raises(EngineIntegrityError):
        cache.load(KEY)
    cache.store(OTHER_MODEL, ENGINE)  # genuine, but for another model: renamed into KEY's place
    cache.path(OTHER_MODEL).replace(cache.path(KEY))
    cache.path(OTHER_MODEL).with_suffix(".json").replace(cache.path(KEY).with_suffix(".json"))
    with pytest.raises(EngineIntegrityError):
        cache.load(KEY)
    cache.discard(KEY)
    assert cache.load(KEY) is None
