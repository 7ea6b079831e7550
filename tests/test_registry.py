"""Model registry: profiles as data, every loader round-tripped on real tiny files, offline errors.

The demo models are random but real networks in each library's own format; the paper profile's
loading code paths (architecture name + checkpoint file, segment-anything registry, OWLv2) are
exercised on tiny files built here, and its hub ids must fail fast and clearly offline.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from use_core.config import PAPER_CAPTION_PROMPT, ModelsConfig, ModelSpec
from use_core.pretrained import demo
from use_core.pretrained.profiles import PROFILES, ROLES, resolve_spec
from use_core.pretrained.registry import (
    CaptionerBundle,
    ClipBundle,
    DinoBundle,
    GroundingBundle,
    ModelUnavailableError,
    clear_cache,
    load_component,
    load_spec,
)


@pytest.fixture(scope="module")
def demo_cfg(demo_models: dict[str, Path]) -> ModelsConfig:
    return ModelsConfig(profile="demo", cache_dir=str(demo_models["clip"].parents[1]))


@pytest.fixture(scope="module")
def rgb() -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((448, 448, 3)) * 255).astype("uint8"))


# ---- profiles -------------------------------------------------------------------------------


def test_every_profile_names_every_role() -> None:
    for profile in PROFILES.values():
        assert set(profile) == set(ROLES)


def test_resolve_spec_expands_cache_and_applies_overrides(tmp_path: Path) -> None:
    cfg = ModelsConfig(profile="demo", cache_dir=str(tmp_path))
    assert resolve_spec("sam", cfg).pretrained == f"{tmp_path}/mobile_sam.pt"
    assert resolve_spec("dinov2", cfg).name == f"{tmp_path}/demo/dinov2"
    override = ModelSpec(kind="hf_dinov2", name="{cache}/elsewhere")
    cfg = ModelsConfig(profile="paper", cache_dir=str(tmp_path), overrides={"dinov2": override})
    assert resolve_spec("dinov2", cfg) == ModelSpec(kind="hf_dinov2", name=f"{tmp_path}/elsewhere")
    assert resolve_spec("clip", cfg).pretrained == "openai"
    with pytest.raises(ValueError, match="unknown model role"):
        resolve_spec("vae", cfg)  # type: ignore[arg-type]


# ---- demo builders ----------------------------------------------------------------------------


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    assert len(files) == 1, files
    return load_file(str(files[0]))


def test_same_seed_gives_identical_weights_and_tokenizers(
    demo_models: dict[str, Path], tmp_path: Path
) -> None:
    again = demo.build_demo_models(tmp_path, seed=0)
    for role in demo.DEMO_ROLES:
        a, b = _weights(demo_models[role]), _weights(again[role])
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), role
    for role in ("grounding", "captioner"):
        same = (demo_models[role] / "tokenizer.json").read_text()
        assert same == (again[role] / "tokenizer.json").read_text()
    other = demo.build_demo_model("dinov2", tmp_path / "seed1", seed=1)
    a, b = _weights(demo_models["dinov2"]), _weights(other)
    assert not torch.equal(a["embeddings.patch_embeddings.projection.weight"],
                           b["embeddings.patch_embeddings.projection.weight"])  # fmt: skip


def test_build_is_idempotent_and_rebuilds_on_seed_change(tmp_path: Path) -> None:
    first = demo.build_demo_model("dinov2", tmp_path, seed=0)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert demo.build_demo_model("dinov2", tmp_path, seed=0) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    demo.build_demo_model("dinov2", tmp_path, seed=3)
    assert json.loads((first / demo.MANIFEST).read_text())["seed"] == 3
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["dinov2"]  # no temp dirs


def test_demo_tokenizer_handles_any_caption_with_offsets() -> None:
    tok = demo.build_bert_tokenizer()
    caption = "A purple zebra grazes beside the red house's roof, 42 times."
    enc = tok(caption, return_offsets_mapping=True)
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert "[UNK]" not in pieces  # every letter/digit is a piece
    spans = [caption[s:e].lower() for s, e in enc["offset_mapping"][1:-1]]
    assert "".join(spans) == "".join(caption.lower().split())
    assert tok("snow 漢")["input_ids"][-2] == tok.unk_token_id


# ---- loaders on the demo profile ------------------------------------------------------------


def test_clip_round_trip(demo_cfg: ModelsConfig) -> None:
    bundle = load_component("clip", demo_cfg)
    assert isinstance(bundle, ClipBundle)
    assert load_component("clip", demo_cfg) is bundle  # cached per process
    assert bundle.preprocess_cfg["image_size"] == 224 and bundle.preprocess_cfg["patch_size"] == 16
    assert not bundle.model.training
    with torch.no_grad():
        img = bundle.model.encode_image(torch.randn(2, 3, 224, 224))
        txt = bundle.model.encode_text(bundle.tokenizer(["a red circle", "a roof"]))
    dim = demo.TINY_CLIP_CFG["embed_dim"]
    assert img.shape == (2, dim) and txt.shape == (2, dim)
    big = load_component("clip", demo_cfg, image_size=448)
    assert big.preprocess_cfg["image_size"] == 448
    with torch.no_grad():
        assert big.model.encode_image(torch.randn(1, 3, 448, 448)).shape == (1, dim)


def test_demo_clip_text_embeddings_are_distinct(demo_cfg: ModelsConfig) -> None:
    """The random demo text tower must tell class names apart, also across prompt styles: a
    head trained on one style is evaluated against class names in another."""
    from use_core.config import CLASS_TEMPLATES, PAPER_TEXT_TEMPLATES
    from use_core.model.text import TextEncoder

    bundle = load_component("clip", demo_cfg)
    colours, shapes = ["red", "green", "blue", "yellow", "pink"], ["circle", "square", "star"]
    names = [f"{c} {s}" for s in shapes for c in colours]
    text = TextEncoder(bundle.model, tokenizer=bundle.tokenizer)
    classes = text(names, CLASS_TEMPLATES)
    cos = classes @ classes.T
    off = cos[~torch.eye(len(names), dtype=torch.bool)]
    assert off.mean() < 0.87 and off.max() < 0.97, (float(off.mean()), float(off.max()))
    phrases = text([f"the {n}" for n in names], PAPER_TEXT_TEMPLATES)
    nearest = (phrases @ classes.T).argmax(dim=1)
    assert nearest.tolist() == list(range(len(names)))


def test_clip_architecture_name_plus_checkpoint_file(
    demo_cfg: ModelsConfig, tmp_path: Path
) -> None:
    """The paper profile's path: a registered open_clip architecture + a weights file."""
    import open_clip

    config = tmp_path / "USE-Tiny-Test.json"
    config.write_text(json.dumps(demo.TINY_CLIP_CFG))
    open_clip.add_model_config(config)
    clip_dir = Path(resolve_spec("clip", demo_cfg).name.removeprefix("local-dir:"))
    spec = ModelSpec(
        kind="open_clip",
        name="USE-Tiny-Test",
        pretrained=str(clip_dir / "open_clip_model.safetensors"),
    )
    by_name = load_spec("clip", spec).model.state_dict()
    by_dir = load_component("clip", demo_cfg).model.state_dict()
    assert all(torch.equal(by_name[k], by_dir[k]) for k in by_dir)
    with pytest.raises(ModelUnavailableError, match="neither an open_clip tag"):
        load_spec("clip", ModelSpec(kind="open_clip", name="USE-Tiny-Test", pretrained="nope"))


def test_torchscript_clip_archive_is_a_clear_error_whose_fix_works(
    demo_cfg: ModelsConfig, tmp_path: Path
) -> None:
    """OpenAI's original CLIP files are TorchScript: refused with a conversion that loads."""
    import re
    import subprocess
    import sys

    import open_clip

    from use_core.pretrained.registry import is_torchscript_archive

    config = tmp_path / "USE-Tiny-Jit.json"
    config.write_text(json.dumps(demo.TINY_CLIP_CFG))
    open_clip.add_model_config(config)
    reference = load_component("clip", demo_cfg).model
    archive = tmp_path / "ViT-Tiny-px.pt"
    torch.jit.save(torch.jit.script(reference), str(archive))  # as OpenAI shipped its CLIPs
    tiny = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tiny))
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    assert is_torchscript_archive(archive) and is_torchscript_archive(tiny)
    assert not is_torchscript_archive(plain) and not is_torchscript_archive(config)

    with pytest.raises(ModelUnavailableError) as err:
        load_spec("clip", ModelSpec(kind="open_clip", name="USE-Tiny-Jit", pretrained=str(tiny)))
    message = str(err.value)
    assert "TorchScript archive" in message and "models.overrides.clip" in message
    assert "weights_only" not in message  # not open_clip's raw torch.load error
    with pytest.raises(ModelUnavailableError) as err:
        load_spec("clip", ModelSpec(kind="open_clip", name="USE-Tiny-Jit", pretrained=str(archive)))
    command = re.search(r'`python -c "(.+?)"`', str(err.value))
    assert command is not None
    subprocess.run([sys.executable, "-c", command.group(1)], check=True, timeout=120)
    converted = archive.with_suffix(".safetensors")
    assert converted.is_file() and converted.name in str(err.value)
    spec = ModelSpec(kind="open_clip", name="USE-Tiny-Jit", pretrained=str(converted))
    loaded = load_spec("clip", spec).model.state_dict()
    want = reference.state_dict()
    assert loaded.keys() == want.keys()
    assert all(torch.equal(loaded[k], want[k]) for k in want)


def test_dinov2_round_trip(demo_cfg: ModelsConfig) -> None:
    bundle = load_component("dinov2", demo_cfg)
    assert isinstance(bundle, DinoBundle)
    assert bundle.preprocess_cfg["patch_size"] == 14
    with torch.no_grad():
        out = bundle.model(pixel_values=torch.randn(1, 3, 448, 448), output_hidden_states=True)
    assert out.last_hidden_state.shape == (1, 1 + 32 * 32, 64)
    assert len(out.hidden_states) == bundle.model.config.num_hidden_layers + 1 >= 7


def test_grounding_dino_round_trip(demo_cfg: ModelsConfig, rgb: Image.Image) -> None:
    bundle = load_component("grounding", demo_cfg)
    assert isinstance(bundle, GroundingBundle)
    text = "a red circle. a blue house with a roof."
    inputs = bundle.processor(images=rgb, text=text, return_tensors="pt")
    with torch.no_grad():
        out = bundle.model(**inputs)
    queries = bundle.model.config.num_queries
    assert out.logits.shape == (1, queries, bundle.model.config.max_text_len)
    assert out.pred_boxes.shape == (1, queries, 4)
    assert float(out.pred_boxes.min()) >= 0.0 and float(out.pred_boxes.max()) <= 1.0
    offsets = bundle.processor.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    assert text[offsets[1][0] : offsets[1][1]] == "a"


def test_owlv2_loader(tmp_path: Path, rgb: Image.Image) -> None:
    """OWLv2, the second open-vocabulary detector, through the same grounding loader."""
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    tok = demo.build_bert_tokenizer(max_length=16)
    text_cfg = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16,
                "pad_token_id": tok.pad_token_id, "eos_token_id": tok.sep_token_id}  # fmt: skip
    vision_cfg = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                  "num_attention_heads": 2, "image_size": 64, "patch_size": 16}  # fmt: skip
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(
        Owlv2Config(text_config=text_cfg, vision_config=vision_cfg, projection_dim=32)
    )
    model.save_pretrained(tmp_path)
    image_processor = Owlv2ImageProcessor(size={"height": 64, "width": 64})
    Owlv2Processor(image_processor=image_processor, tokenizer=tok).save_pretrained(tmp_path)
    bundle = load_spec("grounding", ModelSpec(kind="hf_owlv2", name=str(tmp_path)))
    assert isinstance(bundle, GroundingBundle) and bundle.kind == "hf_owlv2"
    inputs = bundle.processor(text=[["a red circle", "a roof"]], images=rgb, return_tensors="pt")
    with torch.no_grad():
        out = bundle.model(**inputs)
    assert out.logits.shape == (1, 16, 2) and out.pred_boxes.shape == (1, 16, 4)


def test_captioner_generates_with_paper_prompt_and_sampling(
    demo_cfg: ModelsConfig, rgb: Image.Image
) -> None:
    bundle = load_component("captioner", demo_cfg)
    assert isinstance(bundle, CaptionerBundle)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": PAPER_CAPTION_PROMPT}],
        }
    ]
    prompt = bundle.processor.apply_chat_template(messages, add_generation_prompt=True)
    assert PAPER_CAPTION_PROMPT in prompt
    inputs = bundle.processor(images=[rgb, rgb], text=[prompt, prompt], return_tensors="pt")
    image_token = bundle.model.config.image_token_index
    assert int((inputs["input_ids"][0] == image_token).sum()) == 49  # 7x7 patches (CLS dropped)

    def sample(seed: int) -> list[str]:
        torch.manual_seed(seed)
        out = bundle.model.generate(
            **inputs, do_sample=True, temperature=0.8, top_p=0.4, top_k=5, max_new_tokens=12
        )
        new = out[:, inputs["input_ids"].shape[1] :]
        assert new.shape[0] == 2 and 1 <= new.shape[1] <= 12
        return bundle.processor.batch_decode(new, skip_special_tokens=True)

    first = sample(0)
    assert first == sample(0)  # seeded sampling is reproducible
    assert all(isinstance(c, str) for c in first)


def test_mobile_sam_loader(demo_cfg: ModelsConfig, mobile_sam_checkpoint: Path) -> None:
    spec = resolve_spec("sam", demo_cfg).model_copy(
        update={"pretrained": str(mobile_sam_checkpoint)}
    )
    sam = load_spec("sam", spec)
    state = torch.load(mobile_sam_checkpoint, map_location="cpu", weights_only=True)
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(sam.state_dict()[key], state[key])
    assert type(sam.image_encoder).__name__ == "TinyViT" and not sam.training


def test_segment_anything_registry_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper's SAM path (``sam_model_registry[arch](checkpoint=...)``) on a tiny SAM."""
    from functools import partial

    import segment_anything
    from segment_anything.build_sam import _build_sam

    tiny = partial(
        _build_sam,
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=[1],
    )
    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_tiny_test", tiny)
    torch.manual_seed(0)
    ckpt = tmp_path / "sam_tiny.pth"
    torch.save(tiny().state_dict(), ckpt)
    sam = load_spec("sam", ModelSpec(kind="sam", name="vit_tiny_test", pretrained=str(ckpt)))
    saved = torch.load(ckpt, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in sam.state_dict().items())
    with pytest.raises(ValueError, match="unknown sam architecture"):
        load_spec("sam", ModelSpec(kind="sam", name="vit_x", pretrained=str(ckpt)))


def test_spacy_loader_falls_back_to_the_repackaged_model(demo_cfg: ModelsConfig) -> None:
    nlp = load_component("spacy", demo_cfg)
    assert nlp.meta["name"].startswith("core_web_sm")
    paper = load_spec("spacy", PROFILES["paper"]["spacy"])
    assert paper.meta["name"].startswith("core_web_sm") and "ner" in paper.pipe_names


def test_missing_local_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="use_core.pretrained.assets"):
        load_spec("dinov2", ModelSpec(kind="hf_dinov2", name=str(tmp_path / "absent")))
    with pytest.raises(ModelUnavailableError, match="open_clip_config.json"):
        load_spec("clip", ModelSpec(kind="open_clip", name=f"local-dir:{tmp_path}"))


# ---- the paper profile offline -----------------------------------------------------------------


@pytest.mark.parametrize("role", ["clip", "dinov2", "sam", "grounding", "captioner"])
def test_paper_profile_offline_fails_fast_and_clearly(
    role: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clear_cache()
    cfg = ModelsConfig(profile="paper", cache_dir=str(tmp_path))
    spec = resolve_spec(role, cfg)  # type: ignore[arg-type]
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        load_component(role, cfg)  # type: ignore[arg-type]
    assert time.perf_counter() - start < 5.0
    message = str(err.value)
    assert "\n" not in message
    assert spec.name in message
    assert f"models.overrides.{role}" in message
    assert "not available" in message


# ---- runtime helpers ------------------------------------------------------------------------


def test_runtime_device_dtype_and_seeding() -> None:
    from use_core.config import RuntimeConfig
    from use_core.runtime import backbone_dtype, seed_everything, select_device

    cpu = select_device(RuntimeConfig(device="cpu"))
    assert cpu == torch.device("cpu") and backbone_dtype(cpu, RuntimeConfig()) == torch.float32
    auto = select_device(RuntimeConfig(device="auto"))
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.device("cuda")
    assert backbone_dtype(cuda, RuntimeConfig()) == torch.float16
    assert backbone_dtype(cuda, RuntimeConfig(half_precision_on_gpu=False)) == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            select_device(RuntimeConfig(device="cuda"))
    seed_everything(7)
    first = (torch.rand(3), np.random.rand(3))
    seed_everything(7)
    assert torch.equal(first[0], torch.rand(3)) and np.array_equal(first[1], np.random.rand(3))


def test_concurrent_loads_of_one_model_give_one_working_instance(demo_cfg: ModelsConfig) -> None:
    """Stage tasks on Prefect's thread runner load the same model at once: one load, no race."""
    from concurrent.futures import ThreadPoolExecutor

    clear_cache()
    with ThreadPoolExecutor(max_workers=4) as pool:
        bundles = list(pool.map(lambda _: load_component("grounding", demo_cfg, "cpu"), range(4)))
    assert all(b is bundles[0] for b in bundles)
    assert not any(p.is_meta for p in bundles[0].model.parameters())
