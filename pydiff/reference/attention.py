"""References for ``pydiff.attention``: SDPA plus each variant's math, written plainly and runnable in float64.

Every variant is defined here the simple way (concatenate, slice, call attention twice); the fused kernel must
match these numbers. Tensors are (B, H, N, D) for ``layout="bhnd"`` and (B, N, H, D) for ``layout="bnhd"``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

LAYOUTS = ("bhnd", "bnhd")


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim (Zhang & Sennrich 2019): ``x / sqrt(mean(x^2) + eps) * weight``, in x's dtype."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(x.dtype)


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool,
                   offset: int = 0, dims: int = 0, sections: int = 1) -> torch.Tensor:
    """Rotary embedding (Su et al. 2021, RoFormer) of x (B, H, N, D) with rows ``offset:offset+N`` of cos/sin (rows, D),
    or of per-batch-row and per-head tables (1 or B, rows, 1 or H, D).

    interleaved: rotate pairs (2i, 2i+1) (Flux, CogVideoX); otherwise the halves (i, i + D/2) (GPT-NeoX style).
    The tables hold one value per element (each frequency repeated to fill D), as diffusers builds them, or one per
    pair (D/2 columns). dims: partial rotary, only the first ``dims`` channels turn (tables of dims or dims/2
    columns, the pairs within them); 0: all. sections (halves only): the turned channels fall in that many equal
    sections, each rotated by its own halves with its own columns of the tables (Allegro's t, h, w thirds).
    """
    if 0 < dims < x.shape[-1]:
        return torch.cat([rope_reference(x[..., :dims], cos, sin, interleaved, offset, 0, sections), x[..., dims:]],
                         -1)
    if sections > 1:
        parts = zip(x.chunk(sections, -1), cos.chunk(sections, -1), sin.chunk(sections, -1))
        return torch.cat([rope_reference(*part, interleaved, offset) for part in parts], -1)
    n, d = x.shape[-2], x.shape[-1]
    if cos.dim() == 4:  # (B, rows, H, D) -> (B, H, rows, D), as x
        cos, sin = cos.transpose(1, 2), sin.transpose(1, 2)
    if 2 * cos.shape[-1] == d:  # one angle per pair: each for both channels of its pair
        cos, sin = ((t.repeat_interleave(2, -1) if interleaved else torch.cat([t, t], -1)) for t in (cos, sin))
    c = cos[..., offset:offset + n, :].to(x.dtype)
    s = sin[..., offset:offset + n, :].to(x.dtype)
    if interleaved:
        pairs = x.unflatten(-1, (d // 2, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    else:
        first, second = x[..., : d // 2], x[..., d // 2:]
        rotated = torch.cat([-second, first], dim=-1)
    return x * c + rotated * s


def _prologue(x: torch.Tensor, norm_weight: Optional[torch.Tensor], rope, interleaved: bool, offset: int,
              eps: float, dtype: torch.dtype, rope_dims: int = 0, rope_sections: int = 1) -> torch.Tensor:
    """QK RMSNorm then RoPE (the order of Flux and SD3; over the first ``rope_dims`` channels, 0: all, in
    ``rope_sections`` sections), computed in ``dtype``."""
    if norm_weight is None and rope is None:
        return x
    y = x.to(dtype)
    if norm_weight is not None:
        y = rms_norm_reference(y, norm_weight, eps)
    if rope is not None:
        y = rope_reference(y, rope[0], rope[1], interleaved, offset, rope_dims, rope_sections)
    return y


def _positive_scale(q: torch.Tensor, scale: float):
    """(q, scale), or (-q, -scale) for a negative scale: the same scores (negation is exact). torch.onnx's SDPA
    puts sqrt(scale) on q and k, which a negative scale turns into NaN in exported graphs."""
    return (-q, -scale) if scale < 0 else (q, scale)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
          kv_lens: Optional[torch.Tensor], attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax attention over the first ``kv_lens[b]`` keys of each batch row, under ``attn_mask``; rows with no
    key give zeros."""
    if kv_lens is None and attn_mask is None:
        group = q.shape[1] // k.shape[1]
        if group > 1:  # grouped / multi-query: KV head j serves query heads j*group .. j*group+group-1
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        q, scale = _positive_scale(q, scale)
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    keep = None
    if kv_lens is not None:
        lens = kv_lens.to(device=q.device, dtype=torch.long).reshape(-1, 1, 1, 1)
        keep = torch.arange(k.shape[2], device=q.device).reshape(1, 1, 1, -1) < lens
    return _masked_sdpa(q, k, v, scale, keep, attn_mask)


def _segment_mask(cu_q: torch.Tensor, cu_k: torch.Tensor, n_q: int, n_k: int, batch: int,
                  kv_lens: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, 1, N_q, N_k) bool: query token i may see key token j when both lie in the same packed segment s
    (cu[s] <= token < cu[s+1]) and j is among the segment's first kv_lens[b, s] keys. Tensor ops only, no host
    reads, so the reference traces under torch.compile and fake tensors."""
    cu_q, cu_k = cu_q.to(torch.long), cu_k.to(torch.long)
    segments = cu_q.shape[0] - 1
    tok_q = torch.arange(n_q, device=cu_q.device)
    tok_k = torch.arange(n_k, device=cu_k.device)
    # each token's segment: -1 before the first, S after the last (the boundaries at or before it, less one;
    # searchsorted's count, as comparisons, which ONNX export takes)
    seg_q = (cu_q[None, :] <= tok_q[:, None]).sum(-1) - 1
    seg_k = (cu_k[None, :] <= tok_k[:, None]).sum(-1) - 1
    inside_q = (seg_q >= 0) & (seg_q < segments)
    inside_k = (seg_k >= 0) & (seg_k < segments)
    keep = (seg_q[:, None] == seg_k[None, :]) & inside_q[:, None] & inside_k[None, :]
    keep = keep.expand(batch, n_q, n_k)
    if kv_lens is not None:
        lens = kv_lens.to(device=cu_q.device, dtype=torch.long).reshape(batch, segments)
        seg_k_safe = seg_k.clamp(0, segments - 1)
        position = tok_k - cu_k[seg_k_safe]                    # key index within its segment
        keep = keep & (position[None, None, :] < lens[:, seg_k_safe][:, None, :])
    return keep[:, None]


def _block_keep(mask: torch.Tensor, block_size, n_q: int, n_k: int, block_tiles=None) -> torch.Tensor:
    """A block mask with blocks of ``block_size`` (an int, or (query block, key block)) tokens as a mask per query
    and key: (B or 1, H or 1, N_q, N_k) bool. block_tiles = (tile_ids, tiles): each block's elements, tile
    tile_ids[b, h, i, j] of tiles (T, query block, key block)."""
    block_q, block_k = (block_size, block_size) if isinstance(block_size, int) else block_size
    mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    keep = mask.repeat_interleave(block_q, 2)[:, :, :n_q].repeat_interleave(block_k, 3)[..., :n_k]
    if block_tiles is not None:
        ids, tiles = block_tiles
        ids = ids.reshape((1,) * (4 - ids.dim()) + tuple(ids.shape)).long()
        elements = tiles[ids].permute(0, 1, 2, 4, 3, 5).flatten(4, 5).flatten(2, 3)
        keep = keep & elements[:, :, :n_q, :n_k]
    return keep


def neighborhood_mask_mod(grid, kernel_size):
    """Neighborhood attention's windows as a flex attention ``mask_mod(b, h, q_idx, kv_idx)`` over a grid's tokens
    (row-major): key j kept for query i where j lies in i's window of ``kernel_size`` along every dim, centred on i
    and shifted inward at the borders to hold kernel_size positions (NATTEN's windows; LTX-2's decoder's)."""
    def mask_mod(batch, head, query, key):
        inside = None
        for axis, (size, width) in enumerate(zip(grid, kernel_size)):
            step = math.prod(grid[axis + 1:])
            at_q, at_k = (query // step) % size, (key // step) % size
            start = (at_q - width // 2).clamp(0, size - width)
            kept = (at_k >= start) & (at_k < start + width)
            inside = kept if inside is None else inside & kept
        return inside
    return mask_mod


def neighborhood_mask_reference(grid, kernel_size, device=None) -> torch.Tensor:
    """``neighborhood_mask_mod``'s elements: (N, N) bool, query i keeping key j."""
    tokens = torch.arange(math.prod(grid), device=device)
    return neighborhood_mask_mod(grid, kernel_size)(None, None, tokens[:, None], tokens[None, :])


#: score elements one chunk of ``_listed_sdpa`` holds at most (beyond one query block's, which it always takes)
_LISTED_CHUNK = 1 << 24


def _listed_sdpa(q, k, v, scale: float, block_lists, block_size, tiles) -> torch.Tensor:
    """Softmax attention over block lists (the same for every batch row and head: (1, 1, query blocks, ...)), a
    chunk of query blocks at a time, each over its listed key blocks alone, gathered, under their tiles: the work
    and memory of the listed blocks, not N_q x N_k. q (B, H, N_q, D), k and v (B, H_kv, N_k, D) (grouped heads);
    computed in float32 at least; a row that keeps no key gives zeros."""
    counts, lists = block_lists
    block_q, block_k = block_size
    batch, heads, n_q, dim = q.shape
    kv_heads, n_k = k.shape[1], k.shape[2]
    dtype = torch.promote_types(q.dtype, torch.float32)
    rows, width = lists.shape[2], lists.shape[3]
    step = max(1, _LISTED_CHUNK // (batch * heads * block_q * width * block_k))
    columns = torch.arange(block_k, device=q.device)
    parts = []  # (joined at the end, not written into: exported graphs take no in-place writes)
    for first in range(0, rows, step):
        entries = lists[0, 0, first:first + step].long()                                   # (R, M, 3)
        listed = torch.arange(width, device=q.device) < counts[0, 0, first:first + step, 1:].long()
        keys = ((entries[..., 0] >> 2) * block_k)[..., None] + columns                       # (R, M, block_k)
        keep = tiles[entries[..., 1]] & (listed[..., None] & (keys < n_k))[:, :, None, :]   # (R, M, bq, bk)
        keep = keep.permute(0, 2, 1, 3).flatten(2)                                           # (R, bq, M bk)
        keys = keys.clamp(max=n_k - 1).flatten(1)                                            # (R, M bk)
        chunk = slice(first * block_q, (first + len(entries)) * block_q)
        queries = F.pad(q[:, :, chunk], (0, 0, 0, chunk.stop - min(chunk.stop, n_q)))
        queries = queries.reshape(batch, kv_heads, heads // kv_heads, len(entries), block_q, dim).to(dtype)
        scores = torch.einsum("bgxrqd,bgrkd->bgxrqk", queries, k[:, :, keys].to(dtype)) * scale
        scores = scores.masked_fill(~keep, float("-inf"))
        weights = torch.where(keep.any(-1, keepdim=True), torch.softmax(scores, -1), 0.0)
        parts.append(torch.einsum("bgxrqk,bgrkd->bgxrqd", weights, v[:, :, keys].to(dtype)).reshape(
            batch, heads, -1, dim))
    return torch.cat(parts, dim=2)[:, :, :n_q]


def flex_block_mask(blocks: torch.Tensor, block_size, mask_mod=None):
    """A flex attention ``BlockMask`` of whole blocks where ``blocks`` (B, H, query blocks, key blocks) is True, as
    Kandinsky's NABLA builds one (its full blocks; ``mask_mod``, if given, is kept for its partial ones: none)."""
    from torch.nn.attention.flex_attention import BlockMask

    counts = blocks.sum(-1, dtype=torch.int32)
    lists = torch.sort((~blocks).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
    return BlockMask.from_kv_blocks(torch.zeros_like(counts), lists, counts, lists, BLOCK_SIZE=block_size,
                                    mask_mod=mask_mod)


def in_context_block_mask(frames: int, hw: int, device=None):
    """Wan-Animate 2's in-context BlockMask, as its transformer builds it (``create_block_mask``, 128-token blocks):
    the queries of frames + 1 frames of hw tokens, padded to a whole block, attend to all of those tokens (the keys'
    first part, padded alike) and to the reference keys after them (frames frames of hw, padded alike) of their own
    frame less one; the padding's queries to none. Its partial blocks fall off the block grid wherever hw is not a
    multiple of 128. Returns (BlockMask, queries, keys)."""
    from torch.nn.attention.flex_attention import create_block_mask

    tokens = (frames + 1) * hw
    n_q = -(-tokens // 128) * 128
    n_k = n_q + -(-frames * hw // 128) * 128

    def mask_mod(b, h, i, j):
        first = j < n_q
        frame_k = torch.where(first, j // hw, (j - n_q) // hw + 1)
        valid = torch.where(first, j < tokens, j - n_q < frames * hw)
        return (i < tokens) & ((j < tokens) | ((i // hw == frame_k) & valid))

    return create_block_mask(mask_mod, None, None, n_q, n_k, device=device), n_q, n_k


def _masked_sdpa(q, k, v, scale, keep, attn_mask=None):
    """SDPA under a boolean mask ``keep`` (B, 1, N_q or 1, N_k) and the key mask ``attn_mask`` (bool, or float
    added to the scores in q's dtype), either of them None; a row that may see no key is defined as zeros (as in
    FlashAttention), not NaN."""
    q, scale = _positive_scale(q, scale)
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    mask = keep
    if attn_mask is not None:
        # (torch.full: a torch.tensor constant inside an exported graph is a lifted copy export cannot lower)
        zero, minus_inf = (torch.full((), x, dtype=q.dtype, device=q.device) for x in (0.0, float("-inf")))
        attn_mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + attn_mask.shape)  # (SDPA wants 2-D or more)
        mask = torch.where(attn_mask, zero, minus_inf) if attn_mask.dtype == torch.bool else attn_mask.to(q.dtype)
        if keep is not None:
            mask = torch.where(keep, mask, minus_inf)
        keep = mask > minus_inf
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return torch.where(keep.any(-1, keepdim=True), out, torch.zeros((), dtype=out.dtype, device=out.device))


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None, *,
    layout: str = "bhnd",
    kv_lens: Optional[torch.Tensor] = None,
    cu_seqlens_q: Optional[torch.Tensor] = None,
    cu_seqlens_k: Optional[torch.Tensor] = None,
    joint: Optional[Sequence[torch.Tensor]] = None,
    negative: Optional[Sequence[torch.Tensor]] = None,
    negative_scale: float = 1.0,
    negative_kv_lens: Optional[torch.Tensor] = None,
    rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    rope_interleaved: bool = True,
    q_norm_weight: Optional[torch.Tensor] = None,
    k_norm_weight: Optional[torch.Tensor] = None,
    joint_q_norm_weight: Optional[torch.Tensor] = None,
    joint_k_norm_weight: Optional[torch.Tensor] = None,
    norm_eps: float = 1e-6,
    attn_mask: Optional[torch.Tensor] = None,
    key_rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    block_mask: Optional[torch.Tensor] = None,
    block_size=128,
    block_tiles: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    rope_dims: int = 0,
    rope_sections: int = 1,
    compute_dtype: Optional[torch.dtype] = None,
    block_lists: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
):
    """The definition of ``pydiff.attention`` and its variants (same arguments; see ``pydiff.attention``).

    compute_dtype: None computes like the stock PyTorch sequence (prologue in float32, rounded to the input dtype,
    then SDPA in the input dtype) and returns the input dtype; a dtype (float64 for ground truth) computes
    everything in it and returns it.
    block_tiles = (tile_ids, tiles), with block_mask: the elements each block keeps, tile ``tile_ids[b, h, i, j]``
    of ``tiles`` (T, query block, key block) bool (what ``pydiff.attention`` makes of a flex BlockMask's mask_mod).
    block_lists = (counts, lists), in place of block_mask (``pydiff.attention.BlockLists``' tensors), with
    block_size and block_tiles = (None, tiles): attended a chunk of query blocks at a time (``_listed_sdpa``).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if block_mask is not None and (joint is not None or negative is not None or cu_seqlens_q is not None):
        raise ValueError("block_mask cannot be combined with joint=, negative= or cu_seqlens_q")
    if block_tiles is not None and block_mask is None and block_lists is None:
        raise ValueError("block_tiles is given but block_mask is not")
    in_dtype = q.dtype
    if compute_dtype is None:
        attn_dtype, pro_dtype = in_dtype, torch.promote_types(in_dtype, torch.float32)
    else:
        attn_dtype = pro_dtype = compute_dtype

    def bhnd(t):
        return t.transpose(1, 2) if layout == "bnhd" else t

    def back(t):
        return t.transpose(1, 2).contiguous() if layout == "bnhd" else t.contiguous()

    keys_rope = rope if key_rope is None else key_rope  # (the keys' tables)

    def pro(t, weight, offset, tables=rope):
        return _prologue(t, weight, tables, rope_interleaved, offset, norm_eps, pro_dtype, rope_dims,
                         rope_sections).to(attn_dtype)

    def pro_k(t, weight, offset):
        return pro(t, weight, offset, keys_rope)

    q, k, v = bhnd(q), bhnd(k), bhnd(v)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])

    if joint is not None:
        if negative is not None and len(negative) == 3:
            raise ValueError("negative=(q_neg, k_neg, v_neg) (differential attention) cannot be combined with joint=")
        q2, k2, v2 = (bhnd(t) for t in joint)
        n1 = q.shape[2]
        # Norms differ per stream (norm_q vs norm_added_q), so normalise before joining; RoPE rows follow the join.
        if q_norm_weight is not None:
            q = rms_norm_reference(q.to(pro_dtype), q_norm_weight, norm_eps)
        if joint_q_norm_weight is not None:
            q2 = rms_norm_reference(q2.to(pro_dtype), joint_q_norm_weight, norm_eps)
        if k_norm_weight is not None:
            k = rms_norm_reference(k.to(pro_dtype), k_norm_weight, norm_eps)
        if joint_k_norm_weight is not None:
            k2 = rms_norm_reference(k2.to(pro_dtype), joint_k_norm_weight, norm_eps)
        q_all = torch.cat([q.to(pro_dtype), q2.to(pro_dtype)], dim=2)
        k_all = torch.cat([k.to(pro_dtype), k2.to(pro_dtype)], dim=2)
        v_all = torch.cat([v, v2], dim=2).to(attn_dtype)
        q_all = _prologue(q_all, None, rope, rope_interleaved, 0, norm_eps, pro_dtype, rope_dims,
                          rope_sections).to(attn_dtype)
        k_all = _prologue(k_all, None, keys_rope, rope_interleaved, 0, norm_eps, pro_dtype, rope_dims,
                          rope_sections).to(attn_dtype)
        out = _sdpa(q_all, k_all, v_all, scale, kv_lens, attn_mask)
        if negative is not None:
            out = _subtract_negative(out, q_all, negative, bhnd, pro_k, k_norm_weight, scale, negative_scale,
                                     negative_kv_lens)
        out = out.to(attn_dtype if compute_dtype is not None else in_dtype)
        return back(out[:, :, :n1]), back(out[:, :, n1:])

    if cu_seqlens_q is not None:
        # RoPE rows are absolute token indices of the packed sequence dimension.
        qp, kp, vp = pro(q, q_norm_weight, 0), pro_k(k, k_norm_weight, 0), v.to(attn_dtype)
        keep = _segment_mask(cu_seqlens_q, cu_seqlens_k if cu_seqlens_k is not None else cu_seqlens_q,
                             q.shape[2], k.shape[2], q.shape[0], kv_lens)
        out = _masked_sdpa(qp, kp, vp, scale, keep, attn_mask)
        return back(out.to(attn_dtype if compute_dtype is not None else in_dtype))

    qp, kp, vp = pro(q, q_norm_weight, 0), pro_k(k, k_norm_weight, 0), v.to(attn_dtype)
    if block_lists is not None:
        out = _listed_sdpa(qp, kp, vp, scale, block_lists, block_size, block_tiles[1])
        return back(out.to(attn_dtype if compute_dtype is not None else in_dtype))
    if block_mask is not None:
        keep = _block_keep(block_mask, block_size, q.shape[2], k.shape[2], block_tiles)
        if kv_lens is not None:
            lens = kv_lens.to(device=q.device, dtype=torch.long).reshape(-1, 1, 1, 1)
            keep = keep & (torch.arange(k.shape[2], device=q.device).reshape(1, 1, 1, -1) < lens)
        return back(_masked_sdpa(qp, kp, vp, scale, keep, attn_mask).to(
            attn_dtype if compute_dtype is not None else in_dtype))
    out = _sdpa(qp, kp, vp, scale, kv_lens, attn_mask)
    if negative is not None:
        q_neg, neg_mask = qp, None
        if len(negative) == 3:  # (differential attention: the negative stream's own queries, q's prologue; the
            # mask over both streams' keys, the same tokens)
            q_neg, negative, neg_mask = pro(bhnd(negative[0]), q_norm_weight, 0), negative[1:], attn_mask
        out = _subtract_negative(out, q_neg, negative, bhnd, pro_k, k_norm_weight, scale, negative_scale,
                                 negative_kv_lens, neg_mask)
    return back(out.to(attn_dtype if compute_dtype is not None else in_dtype))


def _subtract_negative(out, q, negative, bhnd, pro, k_norm_weight, scale, negative_scale, negative_kv_lens,
                       attn_mask=None):
    """Negative-away steering attention (SNOOPI's NASA, Nguyen et al. 2024): A(q, k+, v+) - alpha A(q, k-, v-);
    with q the negative stream's own queries, differential attention (``attn_mask`` on its keys too)."""
    k_neg, v_neg = (bhnd(t) for t in negative)
    neg = _sdpa(q, pro(k_neg, k_norm_weight, 0), v_neg.to(q.dtype), scale, negative_kv_lens, attn_mask)
    combined = out.to(torch.promote_types(out.dtype, torch.float32)) - negative_scale * neg.to(
        torch.promote_types(out.dtype, torch.float32))
    return combined.to(out.dtype)
