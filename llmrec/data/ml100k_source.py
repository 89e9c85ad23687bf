"""Where MovieLens-100K comes from (docs/design.md §3): a chain of sources, tried in order.

1. files the user put in the raw folder (default `data/raw/ml-100k/`): GroupLens `u.data` + `u.item`, or
   RecBole `ml-100k.inter` + `ml-100k.item` (also inside a `ml-100k/` subfolder, as the archive unpacks);
2. the cache (`data/cache/`): a GroupLens archive or recbole wheel fetched by an earlier run, so a second run
   needs no network;
3. the official GroupLens archive (short timeout: many machines reach only package registries);
4. the copy inside the `recbole==1.2.1` wheel on PyPI, fetched with `pip download --no-deps` and read from
   the zip (never installed); the wheel and both members are checked against known sha256 sums.
The source used is logged and recorded in `meta.json`. If every source fails the error lists each failure
and says exactly where to put which files. The two fetchers (`download_url`, `pip_download`) are module
functions so tests replace them and never touch the network.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from llmrec.data.formats.movielens_100k import load_grouplens_100k
from llmrec.data.formats.recbole import load_recbole_ml100k
from llmrec.data.raw import RawData, RawFile
from llmrec.base.files import file_sha256
from llmrec.base.errors import DataError

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_ZIP = "ml-100k.zip"
GROUPLENS_MEMBERS = ("ml-100k/u.data", "ml-100k/u.item")
GROUPLENS_TIMEOUT_S = 5.0

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_MEMBERS: dict[str, tuple[str, str]] = {
    "ml-100k.inter": ("recbole/dataset_example/ml-100k/ml-100k.inter",
                      "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"),
    "ml-100k.item": ("recbole/dataset_example/ml-100k/ml-100k.item",
                     "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"),
}
PIP_TIMEOUT_S = 300



# ------------------------------------------------------------------------------------------------ fetchers
def download_url(url: str, dest: Path, timeout: float = GROUPLENS_TIMEOUT_S) -> None:
    """Download `url` to `dest`; raises OSError (incl. URLError, timeouts) on failure."""
    with urllib.request.urlopen(url, timeout=timeout) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f)


def pip_download(requirement: str, dest: Path) -> None:
    """`python -m pip download REQ --no-deps -d DEST` with this interpreter; raises OSError on failure."""
    cmd = [sys.executable, "-m", "pip", "download", requirement, "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", "--timeout", "20", "-d", str(dest)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise OSError(f"`pip download {requirement}` took longer than {PIP_TIMEOUT_S} s") from None
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise OSError(f"`pip download {requirement}` failed: {tail[0]}")


# ------------------------------------------------------------------------------------------------ readers
def _from_grouplens_zip(path: Path, kind: str, location: str) -> RawData:
    """Read u.data/u.item straight from the GroupLens archive; a broken archive raises OSError."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            missing = [m for m in GROUPLENS_MEMBERS if m not in names]
            if missing:
                raise OSError(f"{path} does not contain {', '.join(missing)}")
            data = {m: z.read(m) for m in GROUPLENS_MEMBERS}
    except zipfile.BadZipFile as e:
        raise OSError(f"{path} is not a valid zip archive ({e})") from None
    files = [RawFile(name=f"{path}!{m}", data=data[m]) for m in GROUPLENS_MEMBERS]
    raw = load_grouplens_100k(*files)
    raw.source = {"kind": kind, "location": location, "format": "grouplens",
                  "files": {path.name: file_sha256(path), **{f.basename: f.sha256() for f in files}}}
    return raw


def _from_recbole_wheel(path: Path, kind: str, location: str) -> RawData:
    """Read the two ML-100K atomic files from the recbole wheel, checking every checksum."""
    sha = file_sha256(path)
    if sha != RECBOLE_WHEEL_SHA256:
        raise OSError(f"{path} has sha256 {sha}, expected {RECBOLE_WHEEL_SHA256} ({RECBOLE_WHEEL})")
    files = []
    try:
        with zipfile.ZipFile(path) as z:
            for member, expected in RECBOLE_MEMBERS.values():
                data = z.read(member)
                got = hashlib.sha256(data).hexdigest()
                if got != expected:
                    raise OSError(f"{path}!{member} has sha256 {got}, expected {expected}")
                files.append(RawFile(name=f"{path}!{member}", data=data))
    except (zipfile.BadZipFile, KeyError) as e:
        raise OSError(f"{path}: cannot read the ML-100K files from the wheel ({e})") from None
    raw = load_recbole_ml100k(*files)
    raw.source = {"kind": kind, "location": location, "format": "recbole",
                  "files": {path.name: sha, **{f.basename: f.sha256() for f in files}}}
    return raw


def _from_raw_dir(raw_dir: Path) -> RawData | None:
    """User-provided files, GroupLens or RecBole format; None if the folder holds neither."""
    for folder in (raw_dir, raw_dir / "ml-100k"):
        pairs = {"grouplens": (folder / "u.data", folder / "u.item"),
                 "recbole": (folder / "ml-100k.inter", folder / "ml-100k.item")}
        for fmt, (a, b) in pairs.items():
            if a.is_file() or b.is_file():
                if not (a.is_file() and b.is_file()):
                    have, lack = (a, b) if a.is_file() else (b, a)
                    raise DataError(f"ml-100k: found {have} but not {lack}; put both {a.name} and {b.name} "
                                    f"in {folder}")
                files = [RawFile.from_path(a), RawFile.from_path(b)]
                raw = load_grouplens_100k(*files) if fmt == "grouplens" else load_recbole_ml100k(*files)
                raw.source = {"kind": "raw-dir", "location": str(folder), "format": fmt,
                              "files": {f.basename: f.sha256() for f in files}}
                return raw
    return None


def _into_cache(src: Path, cache_dir: Path, name: str) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / name
    partial = cache_dir / f".{name}.partial"
    shutil.move(str(src), partial)  # may copy across filesystems; only a complete file gets the real name
    os.replace(partial, dest)
    return dest


def load_ml100k(raw_dir: Path, cache_dir: Path, download: bool = True) -> RawData:
    """Walk the source chain (module docstring) and return the first source that works."""
    raw = _from_raw_dir(Path(raw_dir))
    if raw is not None:
        log.info("ml-100k: using files from %s (%s format)", raw.source["location"], raw.source["format"])
        return raw

    failures: list[str] = []
    cache_dir = Path(cache_dir)
    cached_zip, cached_wheel = cache_dir / GROUPLENS_ZIP, cache_dir / RECBOLE_WHEEL
    for path, reader, kind, location in (
            (cached_zip, _from_grouplens_zip, "grouplens", GROUPLENS_URL),
            (cached_wheel, _from_recbole_wheel, "recbole-wheel", f"PyPI {RECBOLE_REQUIREMENT}")):
        if path.is_file():
            try:
                raw = reader(path, kind, location)
                raw.source["cached"] = str(path)
                log.info("ml-100k: using the cached %s copy %s", kind, path)
                return raw
            except OSError as e:  # a damaged cache entry is reported, left in place, and fetched again
                failures.append(f"cached copy: {e}")
                log.warning("ml-100k: ignoring cached %s: %s", path, e)

    if not download:
        failures.append("downloads disabled (--no-download)")
    else:
        with tempfile.TemporaryDirectory(prefix="llmrec-ml100k-") as tmp:
            tmp_zip = Path(tmp) / GROUPLENS_ZIP
            try:
                log.info("ml-100k: trying the GroupLens archive %s", GROUPLENS_URL)
                download_url(GROUPLENS_URL, tmp_zip, GROUPLENS_TIMEOUT_S)
                raw = _from_grouplens_zip(tmp_zip, "grouplens", GROUPLENS_URL)
                raw.source["cached"] = str(_into_cache(tmp_zip, cache_dir, GROUPLENS_ZIP))
                log.info("ml-100k: using the GroupLens archive (cached in %s)", raw.source["cached"])
                return raw
            except (OSError, ValueError) as e:
                failures.append(f"GroupLens archive {GROUPLENS_URL}: {e}")
                log.info("ml-100k: GroupLens archive unavailable (%s); trying the recbole wheel on PyPI", e)
            try:
                pip_download(RECBOLE_REQUIREMENT, Path(tmp))
                wheel = Path(tmp) / RECBOLE_WHEEL
                if not wheel.is_file():
                    raise OSError(f"pip download did not produce {RECBOLE_WHEEL}")
                raw = _from_recbole_wheel(wheel, "recbole-wheel", f"PyPI {RECBOLE_REQUIREMENT}")
                raw.source["cached"] = str(_into_cache(wheel, cache_dir, RECBOLE_WHEEL))
                log.info("ml-100k: using the copy inside the %s wheel (cached in %s)", RECBOLE_REQUIREMENT,
                         raw.source["cached"])
                return raw
            except OSError as e:
                failures.append(f"{RECBOLE_REQUIREMENT} wheel from PyPI: {e}")

    raise DataError(
        "ml-100k: no source worked:\n  - " + "\n  - ".join(
            [f"raw folder {raw_dir}: no u.data + u.item (GroupLens) or ml-100k.inter + ml-100k.item (RecBole)"]
            + failures)
        + f"\nTo fix: download {GROUPLENS_URL}, unzip it and put u.data and u.item in {raw_dir}/ "
          f"(or pass --raw DIR); or put {GROUPLENS_ZIP} or {RECBOLE_WHEEL} in {cache_dir}/.")
