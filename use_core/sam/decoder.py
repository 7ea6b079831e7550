"""SAM's mask decoder, rewritten for many prompts on one image (same weights, same maths).

segment-anything's ``MaskDecoder.predict_masks`` copies the 64×64×256 image embedding once per
prompt (``repeat_interleave``) and runs every projection of its two-way transformer on those
4,096 image tokens per prompt. On a CPU that is memory traffic, not arithmetic: with MobileSAM
the decoder took ~100 ms per prompt at 32 prompts, 30 % of it in ``copy_``/``add`` of 128 MB
tensors. :func:`decode_prompts` computes the same function with three exact rewrites:

* **shared first layer**: without a mask prompt the dense prompt embedding is one vector for all
  prompts, so the first block's image-side projections (token→image keys and values,
  image→token queries) are computed once for the image, not once per prompt;
* **attention through the few prompt tokens**: the image tokens attend to only ``T`` (= 7)
  prompt tokens per head, so the image→token output ``softmax(Q Kᵀ) V W_o`` is computed as
  ``A · (V W_o)`` with ``A`` of width ``heads × T`` (56) instead of projecting 4,096 tokens to
  128 and back; likewise token→image attention folds ``W_k`` into the queries and ``W_v`` after
  the weighted sum (the key bias is a per-row constant that softmax cancels; the value bias
  passes through because attention weights sum to one);
* **transposed convolutions as matmuls**: each 2×2 stride-2 ``ConvTranspose2d`` is a GEMM on
  channels-last tokens, split by output sub-row so every GEMM's rows come out as whole mask
  rows (no pixel shuffle), the ``LayerNorm2d`` is ``F.layer_norm`` over the contiguous
  channels, and the hypernetwork product runs per block of token rows so the 8 MB-per-prompt
  upscaled features stay in cache; only the mask tokens that are returned are multiplied out.

Prompts are split over torch's threads, whole prompts per thread
(:func:`use_core.runtime.run_split`); the second block's image→token residual is added in
place.

The results equal ``sam.mask_decoder(...)`` up to float32 rounding (tests compare them with the
stock decoder). Inputs it does not cover (a dense embedding that differs between prompts, i.e.
a mask prompt, or a decoder whose structure is not SAM's) go to the stock decoder.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from use_core.runtime import run_split

PROMPT_GROUP = 1  # prompts decoded together per thread (measured best: 1, then 2, 4)
TOKEN_BATCH = 16  # prompts whose shared-image token work runs as one batch
UPSCALE_ROWS = 32  # token rows upscaled at once


def _shared_dense(dense: torch.Tensor) -> bool:
    """True when the dense prompt embedding is the same for every prompt (no mask prompt)."""
    return dense.shape[0] == 1 or dense.stride(0) == 0


def _supported(decoder: Any) -> bool:
    tr = getattr(decoder, "transformer", None)
    layers = getattr(tr, "layers", None)
    up = getattr(decoder, "output_upscaling", None)
    if layers is None or up is None or len(up) != 5 or len(layers) < 1:
        return False
    conv1, conv2 = up[0], up[3]
    return (
        isinstance(conv1, torch.nn.ConvTranspose2d)
        and isinstance(conv2, torch.nn.ConvTranspose2d)
        and conv1.kernel_size == conv1.stride == (2, 2)
        and conv2.kernel_size == conv2.stride == (2, 2)
        and bool(layers[0].skip_first_layer_pe)
        and not any(bool(layer.skip_first_layer_pe) for layer in layers[1:])
    )


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, C) → (B, H, T, C/H)."""
    b, t, c = x.shape
    return x.reshape(b, t, n_heads, c // n_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, d) → (B, T, H·d)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def _token_to_image(attn: Any, q_in: torch.Tensor, keys_pe: torch.Tensor, keys: torch.Tensor):
    """``attn(q=q_in, k=keys_pe, v=keys)`` for per-prompt image tokens ``(B, N, C)``.

    ``softmax(q W_k Xᵀ) X W_vᵀ``: the key projection is folded into the queries (its bias adds
    a constant per row, which softmax removes) and the value projection is applied after the
    weighted sum (weights sum to 1, so the bias passes through).
    """
    n_heads = attn.num_heads
    b, t, _ = q_in.shape
    q = _heads(attn.q_proj(q_in), n_heads)  # (B, H, T, d)
    d = q.shape[-1]
    wk = attn.k_proj.weight.view(n_heads, d, -1)  # (H, d, C)
    qk = torch.matmul(q, wk) / math.sqrt(d)  # (B, H, T, C)
    logits = torch.bmm(qk.reshape(b, n_heads * t, -1), keys_pe.transpose(1, 2))  # (B, HT, N)
    weights = torch.softmax(logits, dim=-1)
    pooled = torch.bmm(weights, keys).view(b, n_heads, t, -1)  # (B, H, T, C)
    wv = attn.v_proj.weight.view(n_heads, d, -1)  # (H, d, C)
    out = torch.matmul(pooled, wv.transpose(1, 2)) + attn.v_proj.bias.view(n_heads, 1, d)
    return attn.out_proj(_merge(out))


def _token_to_image_shared(attn: Any, q_in: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor):
    """``attn(q=q_in, k=k, v=v)`` with one image's projected keys/values ``kh``/``vh``
    (1, H, N, d), computed once for all prompts; the ``g`` prompts' queries (g, T, C) go
    through as one ``(H, g·T, d)`` batch (no per-prompt copy of the keys)."""
    n_heads = attn.num_heads
    g, t, _ = q_in.shape
    q = _heads(attn.q_proj(q_in), n_heads)  # (g, H, T, d)
    d = q.shape[-1]
    qh = q.transpose(0, 1).reshape(n_heads, g * t, d)
    weights = torch.softmax(torch.bmm(qh, kh[0].transpose(1, 2)) / math.sqrt(d), -1)
    out = torch.bmm(weights, vh[0]).view(n_heads, g, t, d).transpose(0, 1)  # (g, H, T, d)
    return attn.out_proj(_merge(out))


def _image_to_token(
    attn: Any,
    keys: torch.Tensor,
    keys_pe: torch.Tensor,
    tok_pe: torch.Tensor,
    tokens: torch.Tensor,
    shared_q: torch.Tensor | None = None,
    in_place: bool = False,
) -> torch.Tensor:
    """``keys + attn(q=keys_pe, k=tok_pe, v=tokens)`` ``(B, N, C)``, through the few tokens.

    The output ``Σ_h softmax(Q_h K_hᵀ) V_h W_o,hᵀ`` is ``A · V'`` with ``A`` (B, N, H·T) and
    ``V'_h = V_h W_o,hᵀ`` (B, H·T, C): no (B, N, C/2) projection of the image tokens. The
    logits are laid out (B, H, T, N) so the softmax over the T tokens runs along contiguous N.
    ``shared_q``: the image queries ``q_proj(keys_pe)`` as (1, H, N, d) when ``keys_pe`` is
    one image's tokens (1, N, C).
    """
    n_heads = attn.num_heads
    b, t, _ = tokens.shape
    k = _heads(attn.k_proj(tok_pe), n_heads)  # (B, H, T, d)
    v = _heads(attn.v_proj(tokens), n_heads)
    d = k.shape[-1]
    n = keys_pe.shape[1]
    scale = 1.0 / math.sqrt(d)
    if shared_q is not None:  # (B, H, T, d) · (1, H, d, N) → (B, H, T, N)
        logits = torch.matmul(k * scale, shared_q.transpose(-1, -2))
    else:  # fold W_q into the token keys: (B, H·T, C) · (B, C, N)
        wq = attn.q_proj.weight.view(n_heads, d, -1)  # (H, d, C)
        kq = torch.matmul(k * scale, wq).reshape(b, n_heads * t, -1)  # (B, H·T, C)
        kb = torch.matmul(k * scale, attn.q_proj.bias.view(n_heads, d, 1))  # (B, H, T, 1)
        logits = torch.baddbmm(kb.reshape(b, n_heads * t, 1), kq, keys_pe.transpose(1, 2))
    weights = torch.softmax(logits.view(b, n_heads, t, n), dim=2).view(b, n_heads * t, n)
    wo = attn.out_proj.weight.view(-1, n_heads, d).permute(1, 2, 0)  # (H, d, C)
    # Each token's H softmax rows sum to H, so the output bias is b_o / H on every row of V'.
    vo = torch.matmul(v, wo).reshape(b, n_heads * t, -1) + attn.out_proj.bias / n_heads
    if in_place:  # the per-prompt residual is not needed afterwards: add into it
        return keys.baddbmm_(weights.transpose(1, 2), vo)
    return torch.baddbmm(keys.expand(b, n, -1), weights.transpose(1, 2), vo)


def _upscale_masks(
    decoder: Any, src: torch.Tensor, hyper: torch.Tensor, hw: tuple[int, int], out: torch.Tensor
) -> None:
    """``out[:] = hyper @ output_upscaling(src)`` for tokens ``src`` (B, N, C), ``out``
    (B, M, 4h, 4w), in blocks of :data:`UPSCALE_ROWS` token rows so the features stay in
    cache.

    Each 2×2 stride-2 transposed convolution is split by its output sub-row ``i`` (first) and
    ``i2`` (second): for fixed ``(i, i2)`` the GEMM rows come out as token row × (column, j,
    j2), which is one full-resolution mask row ``4r + 2i + i2`` in order, so the masks are
    written as whole rows with no pixel shuffle.
    """
    up = decoder.output_upscaling
    conv1, norm, act1, conv2, act2 = up[0], up[1], up[2], up[3], up[4]
    c_in, c1 = conv1.weight.shape[:2]
    c2 = conv2.weight.shape[1]
    # (C_in, C_out, i, j) → per i: (C_in, [j, C_out])
    w1 = [conv1.weight[:, :, i].permute(0, 2, 1).reshape(c_in, 2 * c1) for i in range(2)]
    b1 = conv1.bias.repeat(2)
    w2 = [conv2.weight[:, :, i].permute(0, 2, 1).reshape(c1, 2 * c2) for i in range(2)]
    b2 = conv2.bias.repeat(2)
    h, w = hw
    m = hyper.shape[1]
    for p in range(src.shape[0]):
        hyp = hyper[p]  # (M, c2)
        for r in range(0, h, UPSCALE_ROWS):
            rows = min(UPSCALE_ROWS, h - r)
            x = src[p, r * w : (r + rows) * w]  # (rows·w, C)
            dst = out[p, :, 4 * r : 4 * (r + rows)].view(m, rows, 4, 4 * w)
            for i in range(2):
                y = torch.addmm(b1, x, w1[i]).view(-1, c1)  # rows (r, col, j)
                y = act1(F.layer_norm(y, (c1,), norm.weight, norm.bias, norm.eps))
                for i2 in range(2):
                    z = act2(torch.addmm(b2, y, w2[i2])).view(-1, c2)  # rows (r, col, j, j2)
                    dst[:, :, 2 * i + i2] = torch.mm(hyp, z.t()).view(m, rows, 4 * w)


@torch.inference_mode()
def decode_prompts(
    sam: Any,
    image_embeddings: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor,
    multimask_output: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sam.mask_decoder(...)`` for B prompts on one image embedding ``(1, C, h, w)``.

    Returns low-res mask logits ``(B, M, 4h, 4w)`` and predicted IoU ``(B, M)`` (M = 3 with
    ``multimask_output``, else 1), equal to the stock decoder's up to float rounding.
    """
    decoder = sam.mask_decoder
    image_pe = sam.prompt_encoder.get_dense_pe()
    if (
        image_embeddings.shape[0] != 1
        or not _shared_dense(dense_prompt_embeddings)
        or not _supported(decoder)
    ):
        return decoder(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
            multimask_output=multimask_output,
        )
    b = sparse_prompt_embeddings.shape[0]
    _, _, h, w = image_embeddings.shape
    src = (image_embeddings + dense_prompt_embeddings[:1]).flatten(2).transpose(1, 2)  # (1,N,C)
    keys = src.contiguous()
    pe = image_pe.flatten(2).transpose(1, 2).contiguous()  # (1, N, C)
    # First block, image side: the same for every prompt, computed once.
    first = decoder.transformer.layers[0]
    t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
    keys_pe = keys + pe
    shared = (
        keys,
        keys_pe,
        _heads(t2i.k_proj(keys_pe), t2i.num_heads),
        _heads(t2i.v_proj(keys), t2i.num_heads),
        _heads(i2t.q_proj(keys_pe), i2t.num_heads),
    )
    mask_slice = slice(1, None) if multimask_output else slice(0, 1)
    token_ids = list(range(decoder.num_mask_tokens)[mask_slice])
    masks = src.new_empty((b, len(token_ids), 4 * h, 4 * w))
    iou_pred = src.new_empty((b, len(token_ids)))
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)

    tokens = torch.cat((out_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings), 1)
    # Token side of the first block (and the second block's self-attention): it sees only the
    # shared image, so all prompts go through it together.
    pre = [
        _token_side(decoder.transformer, tokens[s : s + TOKEN_BATCH], shared)
        for s in range(0, b, TOKEN_BATCH)
    ]
    queries0 = torch.cat([q0 for q0, _ in pre])
    second = [q1 for _, q1 in pre if q1 is not None]
    queries1 = torch.cat(second) if second else None

    def run(start: int, stop: int) -> None:
        for s in range(start, stop, PROMPT_GROUP):
            e = min(s + PROMPT_GROUP, stop)
            g = e - s
            queries, keys_g = _transformer(
                decoder.transformer,
                tokens[s:e],
                queries0[s:e],
                None if queries1 is None else queries1[s:e],
                pe,
                shared,
            )
            hyper = torch.stack(
                [decoder.output_hypernetworks_mlps[i](queries[:, 1 + i, :]) for i in token_ids],
                1,
            )  # (g, M, c2)
            _upscale_masks(decoder, keys_g, hyper, (h, w), masks[s : s + g])
            iou_pred[s : s + g] = decoder.iou_prediction_head(queries[:, 0, :])[:, mask_slice]

    run_split(run, b, parts=-(-b // PROMPT_GROUP), device=image_embeddings.device)
    return masks, iou_pred


def _token_side(
    tr: Any, tokens: torch.Tensor, shared: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prompt-token work of ``TwoWayTransformer`` that sees only the shared image, for
    prompts ``tokens`` (g, T, C): the first block up to its MLP, and the second block's
    self-attention (its input does not depend on the prompt's image tokens either).

    Returns (first-block queries, second-block queries after ``norm1`` or ``None`` for a
    one-block transformer)."""
    _, _, k0, v0, _ = shared
    layer = tr.layers[0]  # skip_first_layer_pe (checked by _supported)
    queries = layer.norm1(layer.self_attn(q=tokens, k=tokens, v=tokens))
    t2i = _token_to_image_shared(layer.cross_attn_token_to_image, queries + tokens, k0, v0)
    queries = layer.norm2(queries + t2i)
    queries = layer.norm3(queries + layer.mlp(queries))
    if len(tr.layers) < 2:
        return queries, None
    second = tr.layers[1]
    q = queries + tokens
    return queries, second.norm1(queries + second.self_attn(q=q, k=q, v=queries))


def _transformer(
    tr: Any,
    tokens: torch.Tensor,
    queries0: torch.Tensor,
    queries1: torch.Tensor | None,
    pe: torch.Tensor,
    shared: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayTransformer`` for a group of prompts ``tokens`` (g, T, C), continuing from
    :func:`_token_side`'s ``queries0`` / ``queries1``; the first block's image side comes
    precomputed in ``shared``. Returns (queries, image tokens (g, N, C))."""
    keys0, keys_pe0, _, _, q0 = shared
    query_pe = tokens
    first = tr.layers[0]
    keys = _image_to_token(
        first.cross_attn_image_to_token, keys0, keys_pe0, queries0 + query_pe, queries0, q0
    )
    keys = first.norm4(keys)
    queries = queries0
    for i, layer in enumerate(tr.layers[1:], start=1):
        if i == 1:
            assert queries1 is not None
            queries = queries1
        else:
            q = queries + query_pe
            queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
        q = queries + query_pe
        keys_pe = keys + pe
        t2i = _token_to_image(layer.cross_attn_token_to_image, q, keys_pe, keys)
        queries = layer.norm2(queries + t2i)
        queries = layer.norm3(queries + layer.mlp(queries))
        i2t = layer.cross_attn_image_to_token
        keys = _image_to_token(i2t, keys, keys_pe, queries + query_pe, queries, in_place=True)
        keys = layer.norm4(keys)
    final = _token_to_image(tr.final_attn_token_to_image, queries + query_pe, keys + pe, keys)
    return tr.norm_final_attn(queries + final), keys
