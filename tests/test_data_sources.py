"""The MovieLens-100K source chain, with the network fetchers replaced (no test touches the network,
except the opt-in one at the end: LLMREC_NETWORK_TESTS=1)."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import zipfile
from pathlib import Path

import pytest
from data_fixtures import write_grouplens_100k, write_recbole_100k

from llmrec.data import ml100k_source as src
from llmrec.data.prepare import PrepareConfig, prepare
from llmrec.base.errors import DataError


def _no_network(*args, **kwargs):
    raise AssertionError("this test must not reach the network")


def _unreachable(url, dest, timeout):
    raise urllib.error.URLError("Name or service not known")


def _pip_fails(requirement, dest):
    raise OSError("No matching distribution found for recbole==1.2.1")


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch) -> Path:
    """A wheel-shaped zip holding toy RecBole files; the module's known checksums are pointed at it."""
    d = write_recbole_100k(tmp_path / "recbole-src")
    wheel = tmp_path / "built" / src.RECBOLE_WHEEL
    wheel.parent.mkdir()
    members = {}
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("recbole/__init__.py", "")
        for name in ("ml-100k.inter", "ml-100k.item"):
            data = (d / name).read_bytes()
            z.writestr(f"recbole/dataset_example/ml-100k/{name}", data)
            members[name] = (f"recbole/dataset_example/ml-100k/{name}", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(src, "RECBOLE_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(src, "RECBOLE_MEMBERS", members)
    return wheel


def _pip_gives(wheel: Path, calls: list):
    def fake(requirement, dest):
        calls.append(requirement)
        shutil.copy(wheel, Path(dest) / src.RECBOLE_WHEEL)
    return fake


def test_user_files_come_first(tmp_path, monkeypatch):
    monkeypatch.setattr(src, "download_url", _no_network)
    monkeypatch.setattr(src, "pip_download", _no_network)
    raw = src.load_ml100k(write_grouplens_100k(tmp_path / "raw"), tmp_path / "cache")
    assert raw.source["kind"] == "raw-dir" and raw.source["format"] == "grouplens"
    assert set(raw.source["files"]) == {"u.data", "u.item"}
    # RecBole files in the raw folder (inside an unpacked ml-100k/ subfolder) are used too
    raw = src.load_ml100k(write_recbole_100k(tmp_path / "raw2" / "ml-100k").parent, tmp_path / "cache")
    assert raw.source["format"] == "recbole"


def test_half_a_pair_in_the_raw_folder_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(src, "download_url", _no_network)
    d = write_grouplens_100k(tmp_path / "raw")
    (d / "u.item").unlink()
    with pytest.raises(DataError, match=r"found .*u.data but not .*u.item"):
        src.load_ml100k(d, tmp_path / "cache")


def test_recbole_wheel_fallback_then_cache(tmp_path, monkeypatch, fake_wheel, caplog):
    calls: list = []
    monkeypatch.setattr(src, "download_url", _unreachable)
    monkeypatch.setattr(src, "pip_download", _pip_gives(fake_wheel, calls))
    caplog.set_level("INFO")
    ds = prepare(PrepareConfig(raw=tmp_path / "nothing", cache=tmp_path / "cache", out=tmp_path / "out"))
    assert calls == ["recbole==1.2.1"]
    assert ds.meta["source"]["kind"] == "recbole-wheel"
    assert ds.meta["source"]["files"][src.RECBOLE_WHEEL] == src.RECBOLE_WHEEL_SHA256
    assert set(ds.meta["source"]["files"]) == {src.RECBOLE_WHEEL, "ml-100k.inter", "ml-100k.item"}
    assert (tmp_path / "cache" / src.RECBOLE_WHEEL).is_file()
    assert "recbole==1.2.1 wheel" in caplog.text
    assert ds.n_users == 10 and ds.meta["n_interactions"] == 80
    # second run: no network at all
    monkeypatch.setattr(src, "download_url", _no_network)
    monkeypatch.setattr(src, "pip_download", _no_network)
    again = prepare(PrepareConfig(raw=tmp_path / "nothing", cache=tmp_path / "cache", out=tmp_path / "out"))
    assert again.meta["source"]["kind"] == "recbole-wheel" and again.n_users == 10


def test_grouplens_archive_is_tried_before_pypi(tmp_path, monkeypatch):
    d = write_grouplens_100k(tmp_path / "gl")
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("u.data", "u.item"):
            z.write(d / name, f"ml-100k/{name}")

    def fake_download(url, dest, timeout):
        assert url == src.GROUPLENS_URL and timeout <= 10  # fail fast on machines without internet
        shutil.copy(archive, dest)

    monkeypatch.setattr(src, "download_url", fake_download)
    monkeypatch.setattr(src, "pip_download", _no_network)
    raw = src.load_ml100k(tmp_path / "nothing", tmp_path / "cache")
    assert raw.source["kind"] == "grouplens" and (tmp_path / "cache" / "ml-100k.zip").is_file()
    monkeypatch.setattr(src, "download_url", _no_network)
    assert src.load_ml100k(tmp_path / "nothing", tmp_path / "cache").source["kind"] == "grouplens"


def test_wheel_with_wrong_checksum_is_rejected(tmp_path, monkeypatch, fake_wheel):
    monkeypatch.setattr(src, "RECBOLE_WHEEL_SHA256", "0" * 64)
    monkeypatch.setattr(src, "download_url", _unreachable)
    monkeypatch.setattr(src, "pip_download", _pip_gives(fake_wheel, []))
    with pytest.raises(DataError, match="expected 0000"):
        src.load_ml100k(tmp_path / "nothing", tmp_path / "cache")
    assert not (tmp_path / "cache" / src.RECBOLE_WHEEL).exists()


def test_member_with_wrong_checksum_is_rejected(tmp_path, monkeypatch, fake_wheel):
    members = dict(src.RECBOLE_MEMBERS)
    members["ml-100k.item"] = (members["ml-100k.item"][0], "f" * 64)
    monkeypatch.setattr(src, "RECBOLE_MEMBERS", members)
    monkeypatch.setattr(src, "download_url", _unreachable)
    monkeypatch.setattr(src, "pip_download", _pip_gives(fake_wheel, []))
    with pytest.raises(DataError, match="ml-100k.item has sha256"):
        src.load_ml100k(tmp_path / "nothing", tmp_path / "cache")


def test_all_sources_fail_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setattr(src, "download_url", _unreachable)
    monkeypatch.setattr(src, "pip_download", _pip_fails)
    raw_dir = tmp_path / "data" / "raw" / "ml-100k"
    with pytest.raises(DataError) as e:
        src.load_ml100k(raw_dir, tmp_path / "cache")
    msg = str(e.value)
    assert f"put u.data and u.item in {raw_dir}/" in msg
    assert "Name or service not known" in msg and "No matching distribution" in msg
    assert src.GROUPLENS_URL in msg


def test_no_download_never_fetches(tmp_path, monkeypatch):
    monkeypatch.setattr(src, "download_url", _no_network)
    monkeypatch.setattr(src, "pip_download", _no_network)
    with pytest.raises(DataError, match="downloads disabled"):
        src.load_ml100k(tmp_path / "nothing", tmp_path / "cache", download=False)


@pytest.mark.skipif(os.environ.get("LLMREC_NETWORK_TESTS") != "1",
                    reason="reaches PyPI; set LLMREC_NETWORK_TESTS=1 to run")
def test_real_recbole_wheel(tmp_path, monkeypatch):  # pragma: no cover - network
    monkeypatch.setattr(src, "download_url", _unreachable)
    raw = src.load_ml100k(tmp_path / "nothing", tmp_path / "cache")
    assert raw.source["files"][src.RECBOLE_WHEEL] == src.RECBOLE_WHEEL_SHA256
    assert len(raw.interactions) == 100000 and len(raw.items) == 1682
