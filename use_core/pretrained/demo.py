"""Tiny, randomly initialised stand-ins for the paper's models, saved in each library's own format.

Nothing can be downloaded from a model hub here, so the ``demo`` profile builds small models
from config data (seeded: the same seed gives identical weights), saves them exactly as the
real checkpoints are laid out on disk, and the registry loads them back through the same code
path it uses for the paper's models:

==========  ==========================================  ======================================
role        saved as                                    loaded back by
==========  ==========================================  ======================================
clip        ``open_clip_config.json`` +                 ``open_clip.create_model("local-dir:D")``
            ``open_clip_model.safetensors``
dinov2      ``Dinov2Model.save_pretrained`` +           ``Dinov2Model.from_pretrained(D)``
            ``BitImageProcessor``
grounding   ``GroundingDinoForObjectDetection`` +       ``...from_pretrained(D)``
            ``GroundingDinoProcessor`` (WordPiece)
captioner   ``LlavaForConditionalGeneration`` +         ``AutoModelForImageTextToText`` /
            ``LlavaProcessor`` (chat template)          ``AutoProcessor.from_pretrained(D)``
==========  ==========================================  ======================================

Their outputs are real outputs of random networks: never a trained model's, never faked.

Its length is the four builders' configs, written as data beside the table above.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from use_core.pretrained.wordlist import DIGITS_AND_PUNCT, english_corpus

log = logging.getLogger(__name__)

DEMO_VERSION = "4"  # bump when a builder changes what it writes
MANIFEST = "demo_manifest.json"
DEMO_ROLES = ("clip", "dinov2", "grounding", "captioner")

# Model configs as data (open_clip's model_configs layout, and transformers config kwargs).
#
# The tiny CLIP's text tower is random, so the only thing that matters is how distinct and how
# template-stable its embeddings are. A random 64-wide, 2-layer tower maps every prompt to
# nearly the same vector (mean cosine 0.89 between the 60 shapes class names, 0.98 for "red
# circle" vs "blue circle"; a region phrase's nearest class name is its own in only 26% of
# cases), and a trained head cannot beat its text side. One 512-wide layer with 32 heads and a
# 512-d joint space mixes fewer, sharper token averages: mean cosine 0.81, and 98% of region
# phrases land nearest their own class name (the seed matters: 65-98% over seeds 0-3).
TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 512,
        "heads": 32,
        "layers": 1,
    },
}
# OpenAI CLIP's normalisation (what the paper's ViT-L-14-336 "openai" weights expect).
CLIP_PREPROCESS_CFG: dict[str, Any] = {
    "size": 224,
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
TINY_DINOV2_CFG: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 8,
    "num_attention_heads": 2,
    "mlp_ratio": 2,
    "patch_size": 14,
    "image_size": 224,
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_LLAMA_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
_ALPHABET = list("abcdefghijklmnopqrstuvwxyz") + DIGITS_AND_PUNCT
_SUFFIXES = ["##s", "##es", "##ed", "##ing", "##ly", "##er", "##est", "##ness", "##al"]

# Llava-1.5's conversation format ("USER: <image>\n... ASSISTANT:"), as a chat template.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %} "
    "{% else %}ASSISTANT: "
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _wordpiece_vocab(specials: list[str]) -> dict[str, int]:
    """Deterministic WordPiece vocabulary: specials, every alphabet character both as a word
    start and as a ``##`` continuation, common suffixes, then the built-in words (sorted)."""
    words = sorted({w for line in english_corpus(repeats=1) for w in line.lower().split()})
    words = [w.strip(".,;:!?'\"()/") for w in words]
    pieces = specials + _ALPHABET + [f"##{c}" for c in _ALPHABET if c.isalnum()] + _SUFFIXES
    vocab: dict[str, int] = {}
    for piece in pieces + [w for w in words if w]:
        vocab.setdefault(piece, len(vocab))
    return vocab


def _wordpiece_tokenizer(specials: list[str]) -> Any:
    """A lowercase WordPiece ``tokenizers.Tokenizer`` over the built-in word list.

    Known words are one token; any other word of letters and digits splits into pieces
    (greedy longest match); characters outside the alphabet become the unknown token. The
    vocabulary is written out, not trained, so it is identical on every build.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    unk = specials[1]
    vocab = _wordpiece_vocab(specials)
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=unk, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(specials)
    return tok


def build_bert_tokenizer(max_length: int = 256) -> Any:
    """A BERT tokenizer (``[CLS] text [SEP]``, character offsets) over the built-in word list."""
    from tokenizers import processors
    from transformers import BertTokenizer  # transformers 5: the fast, `tokenizers`-backed one

    tok = _wordpiece_tokenizer(_BERT_SPECIALS)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return BertTokenizer(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        do_lower_case=True,
        model_max_length=max_length,
    )


def build_llama_style_tokenizer(max_length: int = 2048) -> Any:
    """A causal-LM tokenizer (``<s>`` prefix, ``</s>`` end, ``<image>`` placeholder token)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _wordpiece_tokenizer(_LLAMA_SPECIALS)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=max_length,
        padding_side="left",
    )


def build_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """Tiny open_clip ``CLIP`` (ViT 64-wide, 4 layers, patch 16 @224; text 512-wide, 1 layer).

    Writes ``open_clip_config.json`` (``{"model_cfg", "preprocess_cfg"}``, the hub layout) and
    ``open_clip_model.safetensors`` into ``out_dir``; returns ``out_dir``. open_clip's own BPE
    tokenizer (shipped in the package) is used with it.
    """
    import open_clip
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=TINY_CLIP_CFG["embed_dim"],
        vision_cfg=TINY_CLIP_CFG["vision_cfg"],
        text_cfg=TINY_CLIP_CFG["text_cfg"],
    )
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))
    config = {"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": CLIP_PREPROCESS_CFG}
    (out_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def build_tiny_dinov2(out_dir: Path, seed: int = 0) -> Path:
    """Tiny transformers ``Dinov2Model`` (64-wide, 8 blocks, patch 14) + ``BitImageProcessor``.

    Saved with ``save_pretrained`` (``config.json``, ``model.safetensors``,
    ``preprocessor_config.json``) like ``facebook/dinov2-*``; position embeddings are
    interpolated by the model, so any multiple of 14 works as input side.
    """
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(**TINY_DINOV2_CFG))
    model.save_pretrained(out_dir)
    processor = BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": 256},
        resample=3,
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_normalize=True,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_convert_rgb=True,
    )
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_grounding_dino(out_dir: Path, seed: int = 0) -> Path:
    """Tiny ``GroundingDinoForObjectDetection`` (Swin embed 16, d_model 64, 2 decoder layers).

    The BERT text backbone's config is stored in full inside ``config.json`` (no reference to
    ``bert-base-uncased``); its tokenizer, WordPiece over a built-in word list, is saved in a
    ``GroundingDinoProcessor`` beside the weights. Images are resized to a shortest edge of 448.
    """
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_bert_tokenizer(max_length=256)
    backbone = {  # a dict config, as in a hub config.json (SwinConfig's stubs lack out_features)
        "model_type": "swin",
        "embed_dim": 16,
        "depths": [1, 1, 2, 1],
        "num_heads": [1, 1, 2, 2],
        "window_size": 7,
        "image_size": 224,
        "out_features": ["stage2", "stage3", "stage4"],
    }
    text = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,  # 1 breaks transformers' weight tying of the box heads
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=100,
        max_text_len=256,
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config)
    model.save_pretrained(out_dir)
    image_processor = GroundingDinoImageProcessor(
        size={"shortest_edge": 448, "longest_edge": 768},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(
        out_dir
    )
    return out_dir


def build_tiny_captioner(out_dir: Path, seed: int = 0) -> Path:
    """Tiny ``LlavaForConditionalGeneration`` (CLIP-ViT 64-wide @224/32 + Llama 64-wide, 2 layers).

    Llava is the architecture of the paper profile's default captioner (llava-1.5), and
    transformers' generic ``AutoModelForImageTextToText`` / ``AutoProcessor`` load it. The
    ``LlavaProcessor`` holds a ``CLIPImageProcessor``, a word-level tokenizer with an
    ``<image>`` token, and Llava-1.5's chat template.
    """
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_llama_style_tokenizer()
    image_side, patch = 224, 32
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_side,
        patch_size=patch,
        projection_dim=64,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_side},
        crop_size={"height": image_side, "width": image_side},
    )
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token of the CLIP vision tower
        chat_template=LLAVA_CHAT_TEMPLATE,
    ).save_pretrained(out_dir)
    return out_dir


BUILDERS: dict[str, Callable[[Path, int], Path]] = {
    "clip": build_tiny_clip,
    "dinov2": build_tiny_dinov2,
    "grounding": build_tiny_grounding_dino,
    "captioner": build_tiny_captioner,
}


def _manifest(role: str, seed: int) -> dict[str, Any]:
    return {"role": role, "seed": seed, "version": DEMO_VERSION}


def _is_built(path: Path, role: str, seed: int) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()) == _manifest(role, seed)
    except (OSError, ValueError):
        return False


def build_demo_model(role: str, cache_dir: Path, seed: int = 0, force: bool = False) -> Path:
    """Build one demo model into ``cache_dir/demo/<role>/`` (atomically; skipped if current)."""
    if role not in BUILDERS:
        raise ValueError(f"no demo builder for role {role!r}; known: {sorted(BUILDERS)}")
    final = Path(cache_dir) / "demo" / role
    if not force and _is_built(final, role, seed):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{role}-", dir=final.parent))
    try:
        BUILDERS[role](tmp, seed)
        (tmp / MANIFEST).write_text(json.dumps(_manifest(role, seed)))
        if final.exists():
            stale = final.with_name(f".{role}-stale-{os.getpid()}")
            final.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built demo %s model (seed %d) in %s", role, seed, final)
    return final


def build_demo_models(cache_dir: Path, seed: int = 0, force: bool = False) -> dict[str, Path]:
    """Build every demo model under ``cache_dir/demo/<role>/``; returns role → directory.

    Idempotent: a role whose ``demo_manifest.json`` matches ``seed`` and :data:`DEMO_VERSION` is
    left as is unless ``force``. Each build happens in a temporary sibling directory renamed
    into place, so an interrupted build never leaves a half-written model behind.
    """
    return {role: build_demo_model(role, Path(cache_dir), seed, force) for role in DEMO_ROLES}
