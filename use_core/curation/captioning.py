"""Multi-granularity image captions from an image-to-text model (paper §3.1, Fig. 3; §4.1).

The paper prompts the captioner with "Describe this image in detail. In your description,
specifically mention ALL VISIBLE parts of each object in the image." and samples with
temperature 0.8, top-p 0.4, top-k 5. Any transformers image-text-to-text model with a
processor works: the prompt goes through the processor's chat template when it has one
(a user turn holding the image and the prompt, then the generation prompt), else it is
passed as the text as is.

Sampling is seeded: batch ``b`` is generated under ``torch.manual_seed(seed + b)`` inside a
forked RNG (the caller's global RNG state is left untouched), so the same images, seed and
``batch_size`` always give the same captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def build_prompt(processor: Any, prompt: str) -> str:
    """The text fed to the processor: the chat-templated user turn, or ``prompt`` itself."""
    if getattr(processor, "chat_template", None):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        return str(processor.apply_chat_template(messages, add_generation_prompt=True))
    return prompt


def caption_images(
    images: Sequence[np.ndarray],
    model: Any,
    processor: Any,
    prompt: str,
    *,
    temperature: float = 0.8,
    top_p: float = 0.4,
    top_k: int = 5,
    max_new_tokens: int = 96,
    batch_size: int = 4,
    seed: int = 0,
) -> list[str]:
    """One sampled caption per image.

    Args:
        images: HWC uint8 RGB arrays.
        model: a transformers generative image-text model (e.g. ``AutoModelForImageTextToText``).
        processor: its processor (image processor + tokenizer [+ chat template]).
        prompt: the instruction (the paper's prompt is ``config.PAPER_CAPTION_PROMPT``).
    Returns:
        captions in image order: only the newly generated tokens, decoded without special
        tokens and stripped (the prompt is not echoed).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image {i} must be HWC uint8 RGB, got {image.shape} {image.dtype}")
    text = build_prompt(processor, prompt)
    device = next(model.parameters()).device
    captions: list[str] = []
    for b, start in enumerate(range(0, len(images), batch_size)):
        batch = list(images[start : start + batch_size])
        inputs = processor(
            images=batch, text=[text] * len(batch), return_tensors="pt", padding=True
        ).to(device)
        fork_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices), torch.inference_mode():
            torch.manual_seed(seed + b)
            out = model.generate(
                **inputs,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                max_new_tokens=max_new_tokens,
            )
        prompt_ids = inputs["input_ids"]
        n = prompt_ids.shape[1]
        if out.shape[1] >= n and torch.equal(out[:, :n], prompt_ids):
            out = out[:, n:]  # decoder-only models return prompt + continuation
        decoded = processor.batch_decode(out, skip_special_tokens=True)
        captions.extend(s.strip() for s in decoded)
    return captions
