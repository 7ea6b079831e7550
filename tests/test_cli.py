"""The user-facing commands end to end: `use segment`, `use index`, `use query`, `use schedule`.

Every command runs through the real Typer app on real inputs: a small shapes corpus, a tiny
USE model trained for one epoch on it (demo CLIP from the registry), the real MobileSAM.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tiny_project import train_tiny_model, write_tiny_params
from typer.testing import CliRunner

from use_core.cli import app
from use_core.ops.rle import decode_rle

VOCAB = ["red circle", "blue square", "green triangle", "house", "tree", "background"]
runner = CliRunner()


def flat(text: str) -> str:
    """Output without rich's box drawing and line wrapping (messages are searched as text)."""
    return " ".join(re.sub(r"[│╭╮╰╯─┃┏┓┗┛━]", " ", text).split())


def use(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory,
    shapes_small: Path,
    models_cache: Path,
    demo_models: dict,
    mobile_sam_checkpoint: Path,
) -> dict[str, Path]:
    """params.yaml + a trained tiny model (artifacts/train) + the val pairs table."""
    from use_core.data.shapes.gt import pairs_from_shapes_gt

    root = tmp_path_factory.mktemp("cli_project")
    params = write_tiny_params(
        root / "params.yaml",
        shapes_small,
        models_cache,
        runtime={"schedule_cron": "15 4 * * 1"},
    )
    train_dir = train_tiny_model(params, shapes_small, root / "artifacts" / "train")
    pairs = root / "val_pairs.parquet"
    pairs_from_shapes_gt(shapes_small, "val").to_parquet(pairs)
    return {"root": root, "params": params, "train": train_dir, "pairs": pairs}


def _val_image(shapes: Path, index: int = 0) -> Path:
    return sorted((shapes / "val" / "images").glob("*.png"))[index]


def _check_segment_outputs(png: Path, image: Path) -> dict[str, Any]:
    """The overlay (image + legend) and the JSON (labels from VOCAB, RLEs of the image size)."""
    with Image.open(image) as im:
        w, h = im.size
    with Image.open(png) as overlay:
        assert overlay.height >= h and overlay.width > w  # the legend panel is on the right
        pixels = np.asarray(overlay.convert("RGB"))[:h, :w]
    with Image.open(image) as im:
        assert not np.array_equal(pixels, np.asarray(im.convert("RGB")))  # colours blended in
    doc = json.loads(png.with_suffix(".json").read_text())
    assert (doc["height"], doc["width"]) == (h, w) and doc["vocab"] == VOCAB
    assert doc["segments"], "no segment"
    for seg in doc["segments"]:
        assert seg["label"] in VOCAB
        assert 1.0 / len(VOCAB) <= seg["score"] <= 1.0  # the top probability of a softmax
        mask = decode_rle(seg["rle"])
        assert mask.shape == (h, w) and int(mask.sum()) == seg["area"] > 0
        ys, xs = np.nonzero(mask)
        assert seg["bbox"] == pytest.approx(
            [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        )
    return doc


@pytest.mark.slow
def test_segment_with_sam_proposals(project: dict[str, Path], shapes_small: Path) -> None:
    image = _val_image(shapes_small)
    out = project["root"] / "out" / "segment.png"
    result = use(
        "segment", image, "--vocab", ", ".join(VOCAB), "-o", out, "--points-per-side", 8,
        "-p", project["params"], "--model-dir", project["train"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = _check_segment_outputs(out, image)
    assert doc["proposals"] == "sam"
    assert "segments" in result.output and str(out) in flat(result.output)


def test_segment_with_user_masks(project: dict[str, Path], shapes_small: Path) -> None:
    """Masks from another segmenter (the corpus' instance RLEs) replace SAM."""
    coco = json.loads((shapes_small / "val" / "instances.json").read_text())
    image_id = coco["images"][1]["id"]
    image = shapes_small / "val" / "images" / coco["images"][1]["file_name"]
    rles = [a["segmentation"] for a in coco["annotations"] if a["image_id"] == image_id]
    masks = project["root"] / "user_masks.json"
    masks.write_text(json.dumps(rles))
    out = project["root"] / "out" / "user.png"
    result = use(
        "segment", image, "--vocab", ",".join(VOCAB), "-o", out, "--masks", masks,
        "-p", project["params"], "--model-dir", project["train"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = _check_segment_outputs(out, image)
    assert doc["proposals"] == "user" and len(doc["segments"]) == len(rles)
    for seg, rle in zip(doc["segments"], rles, strict=True):
        assert np.array_equal(decode_rle(seg["rle"]), decode_rle(rle))


def test_index_then_query_ranks_by_similarity(project: dict[str, Path]) -> None:
    from use_core.config import load_params
    from use_core.infer.query import load_index
    from use_core.model.checkpoint import load_use_model
    from use_core.model.factory import load_backbones

    index = project["root"] / "index" / "val.parquet"
    result = use(
        "index", "--pairs", project["pairs"], "-o", index,
        "-p", project["params"], "--model-dir", project["train"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    loaded = load_index(index)
    assert len(loaded) == len(__import__("pandas").read_parquet(project["pairs"]))

    text, k = "a red circle", 7
    sheet = project["root"] / "out" / "hits.png"
    result = use(
        "query", text, "--top-k", k, "-o", sheet, "--index", index,
        "-p", project["params"], "--model-dir", project["train"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    hits = json.loads(sheet.with_suffix(".json").read_text())["hits"]
    assert len(hits) == k
    scores = [h["score"] for h in hits]
    assert all(a >= b for a, b in zip(scores, scores[1:], strict=False)), scores
    for hit in hits:
        assert (loaded.root / hit["image"]).exists()
        assert decode_rle(hit["rle"]).any() and len(hit["bbox"]) == 4
    # The same ranking recomputed independently: cosine of the model's text embedding with
    # every indexed segment embedding.
    params = load_params(project["params"])
    model = load_use_model(project["train"] / "model", load_backbones(params)).eval()
    query = model.encode_text([text])[0].detach().numpy()
    expected = np.sort(loaded.embeddings @ query)[::-1][:k]
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)
    best = int(np.argmax(loaded.embeddings @ query))
    assert (hits[0]["image"], hits[0]["segment_id"]) == (
        loaded.frame["image_path"].iloc[best],
        int(loaded.frame["segment_id"].iloc[best]),
    )
    with Image.open(sheet) as im:  # one row of 5 cells (160 px) + a second row for hits 6-7
        assert im.width == 5 * 160 and im.height > 2 * 160
    assert "a red circle" in result.output and hits[0]["image"] in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["segment", "{image}", "--vocab", " , ,"], "give at least one class name"),
        (["segment", "{image}", "--vocab", "sky,tree,sky"], "repeated class names: sky"),
        (["segment", "{root}/missing.png", "--vocab", "sky"], "does not exist"),
        (["segment", "{root}/params.yaml", "--vocab", "sky"], "cannot load image"),
        (["query", "   ", "--index", "{root}/index/val.parquet"], "the query text is empty"),
        (["query", "a roof", "--top-k", "0"], "greater than or equal to 1"),
        (["query", "a roof", "--index", "{root}/nope.parquet"], "build one with `use index`"),
        (["index", "--pairs", "{root}/nope.parquet"], "does not exist"),
        (["index"], "pass --images DIR or --pairs FILE"),
        (["schedule", "--dry-run", "--cron", "every day"], "invalid schedule"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    project: dict[str, Path], shapes_small: Path, args: list[str], message: str
) -> None:
    subst = {"image": str(_val_image(shapes_small)), "root": str(project["root"])}
    argv = [a.format(**subst) for a in args] + ["-p", str(project["params"])]
    result = use(*argv)
    assert result.exit_code == 2, result.output
    assert message in flat(result.output), result.output


def test_missing_model_is_a_clear_error(project: dict[str, Path], shapes_small: Path) -> None:
    result = use(
        "segment", _val_image(shapes_small), "--vocab", "sky", "-p", project["params"],
        "--model-dir", project["root"] / "no_training_here",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "no trained model" in flat(result.output) and "use train" in flat(result.output)


def test_schedule_dry_run_uses_the_cron_from_params(project: dict[str, Path]) -> None:
    result = use("schedule", "--dry-run", "-p", project["params"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout[result.stdout.index("{") :])
    assert plan["flow"] == "use-pipeline" and plan["deployment"] == "use-pipeline"
    assert plan["schedules"] == [{"cron": "15 4 * * 1", "timezone": None, "active": True}]
    assert plan["parameters"] == {"params_path": str(project["params"].resolve())}
    assert plan["entrypoint"].endswith("flows/pipeline.py:pipeline_flow")

    result = use(
        "schedule", "--dry-run", "--cron", "*/10 * * * *", "--name", "nightly",
        "-S", "train.lr=0.01", "-p", project["params"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout[result.stdout.index("{") :])
    assert plan["schedules"][0]["cron"] == "*/10 * * * *" and plan["deployment"] == "nightly"
    assert plan["parameters"]["overrides"] == {"train.lr": 0.01}


def test_console_script_reports_bad_input_with_exit_2(project: dict[str, Path]) -> None:
    """The installed `use` entry point (a separate process) keeps the exit code."""
    use_bin = Path(sys.executable).with_name("use")
    proc = subprocess.run(
        [str(use_bin), "query", "", "-p", str(project["params"])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "the query text is empty" in flat(proc.stderr)
    helptext = subprocess.run(
        [str(use_bin), "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    for command in ("segment", "index", "query", "schedule", "serve", "proposals"):
        assert command in helptext
