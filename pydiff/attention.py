"""``pydiff.attention``: fused, non-causal attention forward with the diffusion variants, as ``pydiff::attention``.

    out = pydiff.attention(q, k, v)                          # (B, H, N, D) like F.scaled_dot_product_attention
    out = pydiff.attention(q, k, v, layout="bnhd")           # (B, N, H, D) read in place, output (B, N, H, D)
    img, txt = pydiff.attention(q_img, k_img, v_img, joint=(q_txt, k_txt, v_txt))   # SD3/Flux joint attention

Backends: "triton" (the fused kernel of ``pydiff.kernels.attention``; compiled on CUDA, interpreted on CPU under
TRITON_INTERPRET=1) and "torch" (``pydiff.reference.attention``: SDPA plus each variant's math). ``auto`` runs the
kernel on CUDA tensors and the torch reference on CPU tensors.

On a CUDA machine the op is a ``torch.library.triton_op`` so Inductor and export see the kernel; elsewhere it is a
``torch.library.custom_op`` (``triton_op`` would hand fake tensors to the Triton interpreter).
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .ops import native
from .ops.backend import OpBackends, backend_key_reader, env_switch
from .reference.attention import LAYOUTS, attention_reference

try:  # torch with triton_op (2.6+); without it wrap_triton is the identity and never records
    from torch._library.triton import is_wrap_triton_enabled as _wrap_triton_enabled
    from torch._library.triton import set_wrap_triton_enabled as _set_wrap_triton_enabled
except ImportError:
    def _wrap_triton_enabled() -> bool:
        return False

    def _set_wrap_triton_enabled(enabled: bool):
        return contextlib.nullcontext()


SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
LENGTH_DTYPES = (torch.int32, torch.int64)

backends = OpBackends("pydiff::attention", gpu_order=("triton", "torch"))


@dataclass
class _Call:
    """The op's arguments, as the backends receive them."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    layout: str
    kv_lens: Optional[torch.Tensor]
    cu_seqlens_q: Optional[torch.Tensor]
    cu_seqlens_k: Optional[torch.Tensor]
    max_seqlen_q: int
    joint: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    negative: Optional[Tuple[torch.Tensor, torch.Tensor]]
    negative_scale: float
    negative_kv_lens: Optional[torch.Tensor]
    rope: Optional[Tuple[torch.Tensor, torch.Tensor]]
    rope_interleaved: bool
    q_norm_weight: Optional[torch.Tensor]
    k_norm_weight: Optional[torch.Tensor]
    joint_q_norm_weight: Optional[torch.Tensor]
    joint_k_norm_weight: Optional[torch.Tensor]
    norm_eps: float
    attn_mask: Optional[torch.Tensor]
    key_rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    block_mask: Optional[torch.Tensor] = None
    block_size: Tuple[int, int] = (0, 0)
    block_tiles: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    rope_dims: int = 0
    negative_q: Optional[torch.Tensor] = None
    rope_sections: int = 1
    block_lists: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def bhnd(self, t: torch.Tensor) -> Tuple[int, int, int, int]:
        """(B, H, N, D) of a q/k/v-like tensor in this call's layout."""
        b, x, y, d = t.shape
        return (b, y, x, d) if self.layout == "bnhd" else (b, x, y, d)


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"{tuple(t.shape)} {t.dtype} on {t.device}"
    return type(t).__name__


def _check_qkv_like(name: str, t, ref: torch.Tensor, token_dim: Optional[int] = None) -> None:
    """t: 4-D like ``ref`` (q) in dtype and device, with no empty dimension (but its token dim, where given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D, got {_describe(t)}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype}; expected {ref.dtype} like q")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device}; expected {ref.device} like q")
    if t.numel() == 0 and (token_dim is None or any(n == 0 for i, n in enumerate(t.shape) if i != token_dim)):
        raise ValueError(f"{name} is empty: {_describe(t)}; every dimension must be >= 1")


def _check_lengths(name: str, t, device: torch.device, count: int, what: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in LENGTH_DTYPES:
        raise TypeError(f"{name} must be an int32 or int64 tensor, got {_describe(t)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}; expected {device} like q")
    if t.numel() != count:
        raise ValueError(f"{name} must hold {count} lengths ({what}), got {_describe(t)}")


def _check_weight(name: str, t, head_dim: int, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {_describe(t)}")
    if t.shape != (head_dim,):
        raise ValueError(f"{name} must have shape ({head_dim},) (the head dim), got {_describe(t)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}; expected {device} like q")


def _check_attn_mask(mask, device: torch.device, expected: Tuple[int, int, int, int]) -> None:
    """attn_mask: bool or float, broadcastable to ``expected`` = (B, H, queries, keys) as SDPA broadcasts it."""
    if not isinstance(mask, torch.Tensor) or (mask.dtype != torch.bool and mask.dtype not in SUPPORTED_DTYPES):
        raise TypeError(f"attn_mask must be a bool or {SUPPORTED_DTYPES} tensor, got {_describe(mask)}")
    if mask.device != device:
        raise ValueError(f"attn_mask is on {mask.device}; expected {device} like q")
    sizes = (1,) * (4 - mask.dim()) + tuple(mask.shape)
    if not 1 <= mask.dim() <= 4 or any(n not in (1, e) for n, e in zip(sizes, expected)):
        raise ValueError(f"attn_mask must broadcast to (B, H, N_q, N_k) = {expected} (N_q and N_k count both "
                         f"streams' tokens with joint=); got {_describe(mask)}")


#: what the block sizes of a block mask must be multiples of: the kernel's smallest query and key tiles on a GPU
BLOCK_MULTIPLES = (64, 32)


def _check_sparse(call: _Call, name: str) -> None:
    """What block-sparse attention (a block mask, or block lists: ``name``) takes: one query and one key stream,
    blocks of whole tiles."""
    if call.joint is not None or call.negative is not None or call.cu_seqlens_q is not None:
        raise ValueError(f"{name} cannot be combined with joint=, negative= or cu_seqlens_q (one query and one key "
                         f"stream)")
    if any(size < 1 or size % multiple for size, multiple in zip(call.block_size, BLOCK_MULTIPLES)):
        raise ValueError(f"block_size must be (query block, key block) in multiples of {BLOCK_MULTIPLES} tokens (the "
                         f"kernel's tiles), got {call.block_size}")


def _check_block_mask(call: _Call, batch: int, heads: int, n_q: int, n_k: int) -> None:
    """block_mask: bool, broadcastable to (B, H, query blocks, key blocks) for its block sizes; one query and one key
    stream."""
    mask, (block_q, block_k) = call.block_mask, call.block_size
    _check_sparse(call, "block_mask")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"block_mask must be a bool tensor (True: a block of queries attends to a block of keys), "
                        f"got {_describe(mask)}")
    if mask.device != call.q.device:
        raise ValueError(f"block_mask is on {mask.device}; expected {call.q.device} like q")
    expected = (batch, heads, -(-n_q // block_q), -(-n_k // block_k))
    sizes = (1,) * (4 - mask.dim()) + tuple(mask.shape)
    if not 2 <= mask.dim() <= 4 or any(n not in (1, e) for n, e in zip(sizes[:2], expected)) or \
            sizes[2:] != expected[2:]:
        raise ValueError(f"block_mask must broadcast to (B, H, ceil(N_q / {block_q}), ceil(N_k / {block_k})) = "
                         f"{expected} (its last two sizes exactly), got {_describe(mask)}")
    if call.block_tiles is not None:
        _check_block_tiles(call, mask)


#: the query blocks of block lists are multiples of the kernel's widest tile (128 rows): no rows for pairs of blocks
LIST_BLOCK_Q = 128


def _check_block_lists(call: _Call, n_q: int) -> None:
    """block_lists = (counts, lists), in place of block_mask (``BlockLists``: made by pydiff, not by hand), the same
    for every batch row and head: int32 (1, 1, query blocks, 2) and (1, 1, query blocks, entries, 3), entries
    contiguous; query blocks of a multiple of ``LIST_BLOCK_Q``; block_tiles (None, tiles): tiles (T, query block,
    key block) bool, their ids in the lists; not with attn_mask or kv_lens."""
    counts, lists = call.block_lists
    _check_sparse(call, "block_lists")
    if call.block_mask is not None:
        raise ValueError("block_lists are given in place of block_mask, not with it")
    if call.kv_lens is not None:
        raise ValueError("block_lists cannot be combined with kv_lens (the lists say which keys each query block "
                         "reads)")
    if call.block_size[0] % LIST_BLOCK_Q:
        raise ValueError(f"block_lists need query blocks of a multiple of {LIST_BLOCK_Q} tokens, got "
                         f"{call.block_size}")
    rows = -(-n_q // call.block_size[0])
    for name, t, dims, last in (("counts", counts, 4, 2), ("lists", lists, 5, 3)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.dim() != dims or \
                t.shape[:3] != (1, 1, rows) or t.shape[-1] != last or t.device != call.q.device:
            raise ValueError(f"block_lists' {name} must be an int32 tensor of {dims} dims, (1, 1, {rows} query blocks, "
                             f"..., {last}) on {call.q.device} (the same for every batch row and head), got "
                             f"{_describe(t)}")
    if lists.stride(-1) != 1 or lists.stride(-2) != 3 or counts.stride(-1) != 1:
        raise ValueError("block_lists' entries must be contiguous")
    ids, tiles = call.block_tiles if call.block_tiles is not None else (None, None)
    if ids is not None or not isinstance(tiles, torch.Tensor) or tiles.dtype != torch.bool or tiles.dim() != 3 or \
            tuple(tiles.shape[1:]) != call.block_size or tiles.device != call.q.device:
        raise ValueError(f"with block_lists, block_tiles must be (None, tiles): tiles bool (T, {call.block_size[0]}, "
                         f"{call.block_size[1]}) on {call.q.device}, their ids in the lists, got {_describe(tiles)}")
    if call.attn_mask is not None:
        raise ValueError("block_tiles cannot be combined with attn_mask (the tiles are the elements' mask)")


def _check_block_tiles(call: _Call, mask: torch.Tensor) -> None:
    """block_tiles = (tile_ids, tiles): int32 ids shaped like block_mask, bool tiles (T >= 1, query block, key
    block); not with attn_mask. (Ids are not range-checked, which would read them on the host: the kernel's
    launcher clamps them into [0, T).)"""
    ids, tiles = call.block_tiles
    if call.attn_mask is not None:
        raise ValueError("block_tiles cannot be combined with attn_mask (the tiles are the elements' mask)")
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int32 or ids.shape != mask.shape:
        raise TypeError(f"block_tiles' ids must be an int32 tensor shaped like block_mask {tuple(mask.shape)}, got "
                        f"{_describe(ids)}")
    if not isinstance(tiles, torch.Tensor) or tiles.dtype != torch.bool or tiles.dim() != 3 or \
            tiles.shape[0] < 1 or tuple(tiles.shape[1:]) != call.block_size:
        raise TypeError(f"block_tiles' tiles must be a bool tensor (T >= 1, {call.block_size[0]}, "
                        f"{call.block_size[1]}) (a block's elements, tile 0 a whole block's), got {_describe(tiles)}")
    for name, t in (("ids", ids), ("tiles", tiles)):
        if t.device != call.q.device:
            raise ValueError(f"block_tiles' {name} are on {t.device}; expected {call.q.device} like q")


def _check_rope(name: str, tables, need: int, batch: int, heads: int, other_heads: int, head_dim: int,
                device: torch.device, rope_dims: int = 0) -> None:
    """RoPE tables (cos, sin) for tensors of ``heads`` heads (and, where they serve both, ``other_heads``) with
    ``need`` token positions, turning the first ``rope_dims`` channels (0: all of ``head_dim``)."""
    turned = rope_dims or head_dim
    for part, t in (("cos", tables[0]), ("sin", tables[1])):
        label = f"{name} {part}"
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() not in (2, 4):
            raise TypeError(f"{label} must be a floating-point table (tokens, D), or (B, tokens, H, D) per batch row "
                            f"and head, got {_describe(t)}")
        rows, dim = (t.shape[0], t.shape[1]) if t.dim() == 2 else (t.shape[1], t.shape[3])
        if dim not in (turned, turned // 2) or dim != tables[0].shape[-1] or rows < need:
            raise ValueError(f"{label} must have {turned} columns (or {turned // 2}: one angle per pair of "
                             f"channels{'; rope_dims' if rope_dims else ''}), as many as {name} cos, and >= {need} "
                             f"rows (one per token position), got {_describe(t)}")
        if t.dim() == 4 and (t.shape[0] not in (1, batch) or t.shape[2] not in (1, heads)
                             or (t.shape[2] > 1 and other_heads != heads)):
            raise ValueError(f"{label}: a per-head table must be (1 or B = {batch}, tokens, 1 or H = {heads}, D), "
                             f"its heads those of q and k alike (H_kv = {other_heads}), got {_describe(t)}")
        if t.device != device:
            raise ValueError(f"{label} is on {t.device}; expected {device} like q")


def check_attention_args(call: _Call) -> None:
    """Validate every argument before anything is allocated or launched (shared by the op and its fake)."""
    q, k, v = call.q, call.k, call.v
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a tensor, got {type(q).__name__}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q has dtype {q.dtype}; expected one of {SUPPORTED_DTYPES}")
    if call.layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {call.layout!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_qkv_like(name, t, q)
    batch, heads, n_q, head_dim = call.bhnd(q)
    kb, kv_heads, n_k, kd = call.bhnd(k)
    vb, vh, n_v, vd = call.bhnd(v)
    dims = "(B, N, H, D)" if call.layout == "bnhd" else "(B, H, N, D)"
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head dim D = {head_dim} is larger than the supported {MAX_HEAD_DIM}")
    if (kb, kd) != (batch, head_dim) or (vb, vd, vh, n_v) != (batch, head_dim, kv_heads, n_k):
        raise ValueError(f"k {_describe(k)} and v {_describe(v)} must match q {_describe(q)} in batch and head dim "
                         f"and each other in heads and length; tensors are {dims}")
    if heads % kv_heads != 0:
        raise ValueError(f"q has {heads} heads, not a multiple of k/v's {kv_heads} (grouped-query attention needs "
                         f"H_q = G * H_kv)")
    if not math.isfinite(call.scale):
        raise ValueError(f"scale must be finite, got {call.scale}")
    if not (math.isfinite(call.norm_eps) and call.norm_eps >= 0):
        raise ValueError(f"norm_eps must be finite and >= 0, got {call.norm_eps}")

    segments = 1
    if call.cu_seqlens_q is not None:
        for name, cu in (("cu_seqlens_q", call.cu_seqlens_q), ("cu_seqlens_k", call.cu_seqlens_k)):
            if not isinstance(cu, torch.Tensor) or cu.dtype not in LENGTH_DTYPES or cu.dim() != 1 or cu.shape[0] < 2:
                raise TypeError(f"{name} must be a 1-D int32/int64 tensor of segment offsets (S + 1 >= 2 values), "
                                f"got {_describe(cu)}")
            if cu.device != q.device:
                raise ValueError(f"{name} is on {cu.device}; expected {q.device} like q")
        if call.cu_seqlens_k.shape != call.cu_seqlens_q.shape:
            raise ValueError(f"cu_seqlens_k {_describe(call.cu_seqlens_k)} must have as many segments as "
                             f"cu_seqlens_q {_describe(call.cu_seqlens_q)}")
        if call.max_seqlen_q < 1:
            raise ValueError(f"max_seqlen_q must be >= 1 with cu_seqlens_q, got {call.max_seqlen_q}")
        if call.joint is not None or call.negative is not None:
            raise ValueError("cu_seqlens_q (packed segments) cannot be combined with joint= or negative=")
        segments = call.cu_seqlens_q.shape[0] - 1
    if call.kv_lens is not None:
        _check_lengths("kv_lens", call.kv_lens, q.device, batch * segments,
                       "one per batch row" if segments == 1 else f"B x S = {batch} x {segments}, row-major")

    rows_q, rows_k = n_q, n_k
    if call.joint is not None:
        if len(call.joint) != 3:
            raise ValueError(f"joint must be (q2, k2, v2), got {len(call.joint)} tensors")
        q2, k2, v2 = call.joint
        _check_qkv_like("joint q", q2, q, token_dim=1 if call.layout == "bnhd" else 2)
        for name, t in (("joint k", k2), ("joint v", v2)):
            _check_qkv_like(name, t, q)
        b2, h2, n_q2, d2 = call.bhnd(q2)
        kb2, kh2, n_k2, kd2 = call.bhnd(k2)
        if (b2, h2, d2) != (batch, heads, head_dim) or (kb2, kh2, kd2) != (batch, kv_heads, head_dim) \
                or call.bhnd(v2) != (batch, kv_heads, n_k2, head_dim):
            raise ValueError(f"joint (q2, k2, v2) = ({_describe(q2)}, {_describe(k2)}, {_describe(v2)}) must match "
                             f"q, k, v in batch, heads and head dim, with k2 and v2 of one length; tensors are {dims}")
        rows_q, rows_k = n_q + n_q2, n_k + n_k2
    for name, w in (("joint_q_norm_weight", call.joint_q_norm_weight),
                    ("joint_k_norm_weight", call.joint_k_norm_weight)):
        if w is not None and call.joint is None:
            raise ValueError(f"{name} is given but joint= is not")
    if call.negative is not None:
        if len(call.negative) != 2:
            raise ValueError(f"negative must be (k_neg, v_neg), got {len(call.negative)} tensors")
        k_neg, v_neg = call.negative
        for name, t in (("negative k", k_neg), ("negative v", v_neg)):
            _check_qkv_like(name, t, q)
        nb, nh, n_neg, nd = call.bhnd(k_neg)
        if (nb, nh, nd) != (batch, kv_heads, head_dim) or call.bhnd(v_neg) != (batch, kv_heads, n_neg, head_dim):
            raise ValueError(f"negative (k_neg, v_neg) = ({_describe(k_neg)}, {_describe(v_neg)}) must match k in "
                             f"batch, heads and head dim, and each other in length; tensors are {dims}")
        if not math.isfinite(call.negative_scale):
            raise ValueError(f"negative_scale must be finite, got {call.negative_scale}")
        rows_k = max(rows_k, n_neg)
        if call.negative_kv_lens is not None:
            _check_lengths("negative_kv_lens", call.negative_kv_lens, q.device, batch, "one per batch row")
        if call.negative_q is not None:
            _check_qkv_like("negative q", call.negative_q, q)
            if call.negative_q.shape != q.shape:
                raise ValueError(f"negative q {_describe(call.negative_q)} must have q's shape {tuple(q.shape)} "
                                 f"(differential attention: a second query per query)")
            if call.joint is not None:
                raise ValueError("negative=(q_neg, k_neg, v_neg) (differential attention) cannot be combined with "
                                 "joint= (one query stream)")
    elif call.negative_kv_lens is not None or call.negative_q is not None:
        raise ValueError(f"{'negative_kv_lens' if call.negative_kv_lens is not None else 'negative_q'} is given but "
                         f"negative= is not")
    if call.attn_mask is not None:
        if call.negative is not None and (call.negative_q is None or call.bhnd(call.negative[0])[2] != n_k):
            raise ValueError(f"attn_mask cannot be combined with negative=(k_neg, v_neg) (negative-prompt attention: "
                             f"give its padding as negative_kv_lens); with differential attention (negative=(q_neg, "
                             f"k_neg, v_neg)) it applies to both streams, whose keys must then be as many (N_k = "
                             f"{n_k}), got k_neg {_describe(call.negative[0])}")
        _check_attn_mask(call.attn_mask, q.device, (batch, heads, rows_q, rows_k))
    if call.block_lists is not None:
        _check_block_lists(call, n_q)
    elif call.block_mask is not None:
        _check_block_mask(call, batch, heads, n_q, n_k)

    if call.rope is not None or call.key_rope is not None:
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got D = {head_dim}")
        if call.rope_dims and not (call.rope_dims % 2 == 0 and 2 <= call.rope_dims <= head_dim):
            raise ValueError(f"rope_dims must be even and in [2, D = {head_dim}] (the channels RoPE turns), got "
                             f"{call.rope_dims}")
        turned = call.rope_dims or head_dim
        if call.rope_sections != 1 and (call.rope_sections < 1 or call.rope_interleaved or
                                        turned % (2 * call.rope_sections)):
            raise ValueError(f"rope_sections must be >= 1, with rope_interleaved=False (halves turned within each "
                             f"section), and split the {turned} turned channels into sections of an even size, got "
                             f"{call.rope_sections}{' with rope_interleaved=True' if call.rope_interleaved else ''}")
    elif call.rope_dims or call.rope_sections != 1:
        raise ValueError(f"{'rope_dims' if call.rope_dims else 'rope_sections'} is given but neither rope nor "
                         f"key_rope is")
    rope_dims = call.rope_dims
    if call.key_rope is None:
        if call.rope is not None:  # (q's and the keys' alike)
            _check_rope("rope", call.rope, max(rows_q, rows_k), batch, heads, kv_heads, head_dim, q.device,
                        rope_dims)
    else:
        if call.rope is not None:
            _check_rope("rope", call.rope, rows_q, batch, heads, heads, head_dim, q.device, rope_dims)
        _check_rope("key_rope", call.key_rope, rows_k, batch, kv_heads, kv_heads, head_dim, q.device, rope_dims)
    for name, w in (("q_norm_weight", call.q_norm_weight), ("k_norm_weight", call.k_norm_weight),
                    ("joint_q_norm_weight", call.joint_q_norm_weight),
                    ("joint_k_norm_weight", call.joint_k_norm_weight)):
        if w is not None:
            _check_weight(name, w, head_dim, q.device)


def _allocate(q: torch.Tensor, joint_q: Optional[torch.Tensor], packed: bool) -> List[torch.Tensor]:
    """The outputs: shaped like q (and the joint q). Packed segments need not cover every token; tokens outside
    all segments are defined as zero."""
    new = torch.zeros_like if packed else torch.empty_like
    outs = [new(q, memory_format=torch.contiguous_format)]
    if joint_q is not None:
        outs.append(torch.empty_like(joint_q, dtype=q.dtype, memory_format=torch.contiguous_format))
    return outs


def _outputs(call: _Call) -> List[torch.Tensor]:
    return _allocate(call.q, call.joint[0] if call.joint is not None else None, call.cu_seqlens_q is not None)


def _make_call(q, k, v, scale, layout, kv_lens, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, joint_q, joint_k, joint_v,
               negative_k, negative_v, negative_scale, negative_kv_lens, rope_cos, rope_sin, rope_interleaved,
               q_norm_weight, k_norm_weight, joint_q_norm_weight, joint_k_norm_weight, norm_eps, attn_mask,
               key_rope_cos=None, key_rope_sin=None, block_mask=None, block_size_q=0, block_size_k=0,
               block_tile_ids=None, block_tiles=None, rope_dims=0, negative_q=None, rope_sections=1,
               block_counts=None, block_lists=None) -> _Call:
    joint = None if joint_q is None and joint_k is None and joint_v is None else (joint_q, joint_k, joint_v)
    negative = None if negative_k is None and negative_v is None else (negative_k, negative_v)
    rope = None if rope_cos is None and rope_sin is None else (rope_cos, rope_sin)
    key_rope = None if key_rope_cos is None and key_rope_sin is None else (key_rope_cos, key_rope_sin)
    if cu_seqlens_q is not None and cu_seqlens_k is None:
        cu_seqlens_k = cu_seqlens_q
    return _Call(q, k, v, float(scale), layout, kv_lens, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), joint,
                 negative, float(negative_scale), negative_kv_lens, rope, bool(rope_interleaved), q_norm_weight,
                 k_norm_weight, joint_q_norm_weight, joint_k_norm_weight, float(norm_eps), attn_mask, key_rope,
                 block_mask, (int(block_size_q), int(block_size_k)),
                 None if block_tile_ids is None and block_tiles is None else (block_tile_ids, block_tiles),
                 int(rope_dims), negative_q, int(rope_sections),
                 None if block_counts is None and block_lists is None else (block_counts, block_lists))


def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, layout: str,
                  kv_lens: Optional[torch.Tensor], cu_seqlens_q: Optional[torch.Tensor],
                  cu_seqlens_k: Optional[torch.Tensor], max_seqlen_q: int,
                  joint_q: Optional[torch.Tensor], joint_k: Optional[torch.Tensor], joint_v: Optional[torch.Tensor],
                  negative_k: Optional[torch.Tensor], negative_v: Optional[torch.Tensor], negative_scale: float,
                  negative_kv_lens: Optional[torch.Tensor], rope_cos: Optional[torch.Tensor],
                  rope_sin: Optional[torch.Tensor], rope_interleaved: bool, q_norm_weight: Optional[torch.Tensor],
                  k_norm_weight: Optional[torch.Tensor], joint_q_norm_weight: Optional[torch.Tensor],
                  joint_k_norm_weight: Optional[torch.Tensor], norm_eps: float,
                  attn_mask: Optional[torch.Tensor], key_rope_cos: Optional[torch.Tensor] = None,
                  key_rope_sin: Optional[torch.Tensor] = None, block_mask: Optional[torch.Tensor] = None,
                  block_size_q: int = 0, block_size_k: int = 0, block_tile_ids: Optional[torch.Tensor] = None,
                  block_tiles: Optional[torch.Tensor] = None, rope_dims: int = 0,
                  negative_q: Optional[torch.Tensor] = None, rope_sections: int = 1,
                  block_counts: Optional[torch.Tensor] = None,
                  block_lists: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    return _run(_make_call(q, k, v, scale, layout, kv_lens, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, joint_q,
                           joint_k, joint_v, negative_k, negative_v, negative_scale, negative_kv_lens, rope_cos,
                           rope_sin, rope_interleaved, q_norm_weight, k_norm_weight, joint_q_norm_weight,
                           joint_k_norm_weight, norm_eps, attn_mask, key_rope_cos, key_rope_sin, block_mask,
                           block_size_q, block_size_k, block_tile_ids, block_tiles, rope_dims, negative_q,
                           rope_sections, block_counts, block_lists))


def _run(call: _Call) -> List[torch.Tensor]:
    """The op's body: check, allocate, run the selected backend."""
    check_attention_args(call)
    outs = _outputs(call)
    backend, impl = backends.select(call.q.device)
    if backend == "triton" and call.q.is_cuda:
        _attention_triton_cuda(call, outs)  # called by name so triton_op finds the kernel inside
    else:
        impl(call, outs)
    return outs


@backends.op_reference
def _attention_op_reference(*args) -> List[torch.Tensor]:
    """The op's arguments through `attention_reference` (pure torch), its outputs in q's dtype."""
    call = _make_call(*args)
    check_attention_args(call)
    result = attention_reference(call.q, call.k, call.v, call.scale, **_reference_args(call))
    return [out.to(call.q.dtype) for out in (result if call.joint is not None else (result,))]


def _attention_fake(*args):
    """Shapes only: the same checks, outputs shaped like q (and the joint q)."""
    call = _make_call(*args)
    check_attention_args(call)
    return _outputs(call)


def _reference_args(call: _Call) -> dict:
    return dict(layout=call.layout, kv_lens=call.kv_lens, cu_seqlens_q=call.cu_seqlens_q,
                cu_seqlens_k=call.cu_seqlens_k, joint=call.joint, negative=_negative(call),
                negative_scale=call.negative_scale, negative_kv_lens=call.negative_kv_lens, rope=call.rope,
                rope_interleaved=call.rope_interleaved, q_norm_weight=call.q_norm_weight,
                k_norm_weight=call.k_norm_weight, joint_q_norm_weight=call.joint_q_norm_weight,
                joint_k_norm_weight=call.joint_k_norm_weight, norm_eps=call.norm_eps, attn_mask=call.attn_mask,
                key_rope=call.key_rope, block_mask=call.block_mask, block_size=call.block_size,
                block_tiles=call.block_tiles, rope_dims=call.rope_dims, rope_sections=call.rope_sections,
                block_lists=call.block_lists)


@backends.register("torch", usable=lambda device: None)
def _attention_torch(call: _Call, outs: List[torch.Tensor]) -> None:
    result = attention_reference(call.q, call.k, call.v, call.scale, **_reference_args(call))
    for out, ref in zip(outs, result if call.joint is not None else (result,)):
        out.copy_(ref)


def _triton_kwargs(call: _Call, outs: List[torch.Tensor]) -> dict:
    return dict(
        bnhd=call.layout == "bnhd", scale=call.scale,
        joint=None if call.joint is None else (*call.joint, outs[1]),
        negative=_negative(call), negative_scale=call.negative_scale, kv_lens=call.kv_lens,
        negative_kv_lens=call.negative_kv_lens, cu_seqlens_q=call.cu_seqlens_q, cu_seqlens_k=call.cu_seqlens_k,
        max_seqlen_q=call.max_seqlen_q, rope=call.rope, rope_interleaved=call.rope_interleaved,
        q_norm_weight=call.q_norm_weight, k_norm_weight=call.k_norm_weight,
        joint_q_norm_weight=call.joint_q_norm_weight, joint_k_norm_weight=call.joint_k_norm_weight,
        norm_eps=call.norm_eps, attn_mask=call.attn_mask, key_rope=call.key_rope, block_mask=call.block_mask,
        block_size=call.block_size, block_tiles=call.block_tiles, rope_dims=call.rope_dims,
        rope_sections=call.rope_sections, block_lists=call.block_lists)


def _negative(call: _Call):
    """The call's negative stream as the reference and the launcher take it: (k_neg, v_neg), or (q_neg, k_neg,
    v_neg) for differential attention."""
    return call.negative if call.negative_q is None else (call.negative_q, *call.negative)


def _tile_in_blocks(call: _Call, block_m: int, block_n: int) -> Tuple[int, int]:
    """A tile (block_m, block_n) narrowed, where a block mask needs it, to divide the mask's blocks."""
    if call.block_mask is None and call.block_lists is None:
        return block_m, block_n
    return math.gcd(block_m, call.block_size[0]), math.gcd(block_n, call.block_size[1])


@backends.register("triton", usable=native.triton_why_not)
def _attention_triton(call: _Call, outs: List[torch.Tensor]) -> None:
    if call.q.is_cuda:
        _attention_triton_cuda(call, outs)
        return
    from pydiff.kernels.attention import attention_forward, interpreter_blocks

    n_q = call.bhnd(call.q)[2]
    rows = call.max_seqlen_q if call.cu_seqlens_q is not None else n_q
    keys = call.bhnd(call.k)[2]
    if call.joint is not None:
        rows = max(rows, call.bhnd(call.joint[0])[2])
        keys = max(keys, call.bhnd(call.joint[1])[2])
    if call.negative is not None:
        keys = max(keys, call.bhnd(call.negative[0])[2])
    block_m, block_n = _tile_in_blocks(call, *interpreter_blocks(rows, keys))
    attention_forward(native.triton_kernel("attention", "_attn_fwd_kernel"), call.q, call.k, call.v, outs[0],
                      block_m=block_m, block_n=block_n, **_triton_kwargs(call, outs))


def autotune_enabled() -> bool:
    """Whether the CUDA kernel autotunes its tile sizes (``PYDIFF_ATTENTION_AUTOTUNE``, default on); off, each head
    dim uses one default tile (no tuning compiles: faster first calls, e.g. on a short-lived GPU machine)."""
    return env_switch("PYDIFF_ATTENTION_AUTOTUNE")


def _attention_triton_cuda(call: _Call, outs: List[torch.Tensor]) -> None:
    """The kernel on CUDA tensors: autotuned, or each head dim's default tile."""
    from pydiff.kernels.attention import attention_forward, default_config, default_use_tma, shared_limit_of

    tracing = _wrap_triton_enabled()  # a tracer (torch.compile, export) records the kernels through torch.library
    if tracing:
        plain, tuner, prologue, lists = wrap_triton(_attn_fwd_kernel), wrap_triton(_attn_fwd_autotuned), \
            wrap_triton(_qk_prologue), wrap_triton(_block_lists_kernel)
    else:  # eager: the wrapper would only forward the launch
        plain, tuner, prologue, lists = _attn_fwd_kernel, _attn_fwd_autotuned, _qk_prologue, _block_lists_kernel
    # Triton launches on the current device: switch only when q lives elsewhere (the guard costs host time)
    index = call.q.device.index
    guard = contextlib.nullcontext() if index is None or index == torch.cuda.current_device() else \
        torch.cuda.device(index)
    with guard:
        if autotune_enabled():
            # eager launches remember the tuner's choice per specialisation and then skip the tuner; a tracer
            # sees the autotuned kernel itself
            tuned = None if tracing else (tuner, plain)
            attention_forward(tuner, call.q, call.k, call.v, outs[0], prologue_kernel=prologue, lists_kernel=lists,
                              tuned=tuned, **_triton_kwargs(call, outs))
        else:
            head_dim = call.bhnd(call.q)[3]
            heavy = call.joint is not None or call.negative is not None
            block_m, block_n, warps, stages = default_config(head_dim, heavy, call.negative is not None,
                                                             call.q.element_size(), shared_limit_of(call.q.device))
            block_m, block_n = _tile_in_blocks(call, block_m, block_n)
            attention_forward(plain, call.q, call.k, call.v, outs[0], block_m=block_m, block_n=block_n,
                              num_warps=warps, num_stages=stages, use_tma=default_use_tma(head_dim),
                              prologue_kernel=prologue, lists_kernel=lists, **_triton_kwargs(call, outs))


def define_attention_op(name: str, use_triton_op: bool):
    """Register the attention op under ``name`` as a ``triton_op`` (CUDA: Inductor traces into the kernel) or a
    ``custom_op`` with a fake (CPU and the interpreter). Returns the op definition."""
    if use_triton_op:
        op = torch.library.triton_op(name, _attention_op, mutates_args=())
    else:
        op = torch.library.custom_op(name, _attention_op, mutates_args=())
    # triton_op would trace its own body for shapes; the checks and allocations alone are cheaper and never run a
    # backend on fake tensors.
    op.register_fake(_attention_fake)
    return op


# The CUDA launcher's kernels and wrap_triton, bound at import on a CUDA machine. They are module globals because
# triton_op finds the kernels of an op by reading the names passed to wrap_triton in its source.
_attn_fwd_autotuned = _attn_fwd_kernel = _qk_prologue = _block_lists_kernel = None
# with them, launch plans (pydiff.kernels.plans), for eager calls
_plans = None


def wrap_triton(kernel):
    """Identity until ``_load_gpu_kernel`` binds ``torch.library.wrap_triton`` (only CUDA launches use it)."""
    return kernel


def _load_gpu_kernel() -> bool:
    """On a machine where Triton compiles for CUDA, bind the kernels and wrap_triton; returns whether it did."""
    if not torch.cuda.is_available() or native.triton_error() is not None or native.triton_interpreting():
        return False
    bind_gpu_kernels()
    return True


def bind_gpu_kernels() -> None:
    """Bind the compiled (not interpreted) kernels and torch.library's wrap_triton for CUDA launches; done at import
    on a CUDA machine (benchmarks/attention_host.py also does it to time the launch path without a GPU)."""
    global _attn_fwd_autotuned, _attn_fwd_kernel, _qk_prologue, _block_lists_kernel, wrap_triton, _plans
    from torch.library import wrap_triton

    from pydiff.kernels import plans as _plans
    from pydiff.kernels.attention import _attn_fwd_autotuned, _attn_fwd_kernel, _block_lists_kernel, _qk_prologue


#: whether ``pydiff::attention`` is a ``triton_op`` here (a CUDA machine whose Triton compiles), which Inductor and
#: AOTInductor compile with its Triton kernel inside
ATTENTION_IS_TRITON_OP = _load_gpu_kernel()
attention_op = define_attention_op("pydiff::attention", use_triton_op=ATTENTION_IS_TRITON_OP)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None, *,
    layout: str = "bhnd",
    kv_lens: Optional[torch.Tensor] = None,
    attn_mask: Optional[torch.Tensor] = None,
    cu_seqlens_q: Optional[torch.Tensor] = None,
    cu_seqlens_k: Optional[torch.Tensor] = None,
    max_seqlen_q: Optional[int] = None,
    joint: Optional[Sequence[torch.Tensor]] = None,
    negative: Optional[Sequence[torch.Tensor]] = None,
    negative_scale: float = 1.0,
    negative_kv_lens: Optional[torch.Tensor] = None,
    rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    rope_interleaved: bool = True,
    key_rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    q_norm_weight: Optional[torch.Tensor] = None,
    k_norm_weight: Optional[torch.Tensor] = None,
    joint_q_norm_weight: Optional[torch.Tensor] = None,
    joint_k_norm_weight: Optional[torch.Tensor] = None,
    norm_eps: float = 1e-6,
    block_mask=None,
    block_size=None,
    block_tiles=None,
    rope_dims: Optional[int] = None,
    rope_sections: int = 1,
    causal: bool = False,
    block_lists: Optional["BlockLists"] = None,
):
    """Softmax attention ``softmax(q k^T * scale) v`` in one fused pass (FlashAttention-2 forward).

    q: (B, H, N_q, D); k, v: (B, H_kv, N_k, D) with H = G * H_kv (grouped/multi-query); fp16, bf16 or fp32;
    D <= 256. ``layout="bnhd"`` takes and returns (B, N, H, D) instead, read through strides without a copy.
    scale defaults to 1/sqrt(D). Returns a tensor shaped like q (two with ``joint``). Variants (combinable except
    where noted; all in the same attention pass, the norm and RoPE in one pre-pass per q/k tensor):

    * ``kv_lens`` (int, B values): key padding, row b attends to its first kv_lens[b] keys (0 keys gives zeros).
    * ``attn_mask``: an attention mask as ``F.scaled_dot_product_attention`` takes one: bool (True: the score
      takes part) or float (added to the scaled scores; -inf masks), sizes broadcastable to (B, H, N_q, N_k)
      whatever the layout; with ``joint``, N_q and N_k count the tokens of the joined sequence [stream 1; stream 2].
      A key mask (query size 1: diffusers' text-padding masks) costs one vector per key block, a mask per query
      (Chroma's) one tile. A query whose keys are all masked gives zeros. The kernel reads it as given. With
      differential attention (``negative=(q_neg, k_neg, v_neg)``) it masks both streams (their keys as many); not
      with negative-prompt attention (``negative_kv_lens`` masks its keys).
    * ``cu_seqlens_q`` / ``cu_seqlens_k`` (int, S + 1 offsets into the token dim): packed variable-length segments,
      each attending only within itself, in every batch row (FlashAttention's varlen; G images of N tokens laid out
      as one (G*N)-token segment give group attention without a copy). cu_seqlens_k defaults to cu_seqlens_q;
      kv_lens then holds B*S lengths (row-major). Pass ``max_seqlen_q`` to avoid reading the offsets on the host
      (needed under torch.compile and CUDA graphs). Not with joint/negative.
    * ``joint=(q2, k2, v2)``: joint attention over two token streams (SD3/Flux MMDiT) without concatenating:
      returns (out, out2) equal to attention over [stream 1; stream 2] split back. kv_lens then counts keys of the
      joined sequence, and RoPE rows follow it (stream 2 starts at row N_1). q2 may hold no tokens (B, H, 0, D):
      a second stream of keys only, such as IP-Adapter's image-prompt keys beside SD3's (out2 is then empty).
    * ``negative=(k_neg, v_neg)``, ``negative_scale`` alpha, ``negative_kv_lens``: negative-prompt attention
      (SNOOPI's NASA): A(q, k, v) - alpha * A(q, k_neg, v_neg), q read once. ``negative=(q_neg, k_neg, v_neg)``:
      differential attention (Differential Transformer; Stable Audio 3's), A(q, k, v) - alpha * A(q_neg, k_neg,
      v_neg), q_neg shaped like q (the norm and RoPE of q's), in the same pass; not with joint.
    * ``q_norm_weight`` / ``k_norm_weight`` (D,): per-head RMSNorm of q / k (k_neg too) with ``norm_eps``;
      ``joint_q_norm_weight`` / ``joint_k_norm_weight`` for stream 2 (None: no norm there).
    * ``rope=(cos, sin)`` tables (rows, D), one row per token position, as diffusers builds them, or
      (1 or B, rows, 1 or H, D) per batch row and head (LTX-Video's, whose tables span every head's channels; then
      q and k have the same heads): rotary embedding of q and k after the norm; ``rope_interleaved`` pairs
      (2i, 2i+1) (Flux) or halves (i, i + D/2). Tables of D/2 columns hold one angle per pair (channels 2i, 2i+1,
      or i and i + D/2), read as given, any strides: a complex table's ``torch.view_as_real(freqs)[..., 0]`` and
      ``[..., 1]``, or LTX-2's split tables.
      The Triton backend applies norm and RoPE in one float32 pass per tensor (read once, written once in the
      input dtype) before the attention pass, instead of per query block.
    * ``rope_dims`` R: partial rotary (GPT-NeoX's rotary_pct; Stable Audio 3, MiniMax-H3): RoPE turns each head's
      first R channels (even) and passes the rest through; the tables (both ``rope`` and ``key_rope``) then have
      R columns, or R/2 (one angle per pair), the pairs (2i, 2i+1) or (i, i + R/2) within them.
    * ``rope_sections`` S, with halves (``rope_interleaved=False``): the turned channels fall in S equal sections,
      each turned by halves of its own (pairs j, j + R/(2S) within a section), as Allegro's 3-D RoPE turns its t, h
      and w thirds of each head; the tables' columns lie in the same sections (cos = [cos_t | cos_h | cos_w] for
      each token), R/S each, or R/(2S) with one angle per pair.
    * ``key_rope=(cos, sin)``: tables of the keys' own (k, the joint k2 and the negative keys), in ``rope``'s forms
      and pairing, rows following the keys' positions, where queries and keys turn by different tables (LTX-2's
      audio-video cross-attention); ``rope`` then turns q alone (or, None, nothing does). Keys that must not turn
      take tables of cos 1 and sin 0 (one angle per pair: (N_k, D/2)).
    * ``block_mask``, ``block_size``: block-sparse attention (video models' sliding-tile and NABLA patterns): the
      queries and keys fall in blocks of ``block_size`` = (query block, key block) tokens (an int: both; default
      128), and a bool mask broadcastable to (B, H, ceil(N_q / query block), ceil(N_k / key block)) says which
      key blocks each query block attends to; the kernel never reads the others, so the work falls with the mask's
      density. Block sizes are multiples of (64, 32). A ``torch.nn.attention.flex_attention.BlockMask`` is taken too,
      with its block sizes, as compiled flex attention reads it: its full and partial blocks, and where it has a
      ``mask_mod`` (``create_block_mask``'s), the mask_mod's elements inside the partial blocks only, evaluated
      once per call at the BlockMask's batch rows and heads into a tile of block elements per partial block (one
      host read: how many there are, so not under torch.compile or CUDA graph capture: make the tiles before,
      ``block_mask_tiles``); the kernel reads a block's tile only where it is partial, and skips a partial block
      the mask_mod leaves empty (not with attn_mask).
      Combines with kv_lens, attn_mask, the prologue and grouped heads; not with joint, negative or cu_seqlens_q. A
      query whose blocks are all masked gives zeros. ``mask_block_mask`` makes one of a dense attn_mask's blocks
      that keep any weight (the output stays the mask alone's).
    * ``block_tiles=(tile_ids, tiles)``, with a block_mask tensor: the elements each block keeps, in the form a
      BlockMask's mask_mod becomes (``block_mask_tiles``): tiles (T, query block, key block) bool, tile 0 all True
      (a whole block), and tile_ids int32 shaped like block_mask, each block's tile. Given directly, nothing is read
      on the host (CUDA graphs capture the call); not with attn_mask.
    * ``causal=True``: query i attends to keys j <= i (top-left aligned, as SDPA's is_causal), as block-sparse
      attention over 128 x 128 blocks: those above the diagonal are never read, those on it read a triangle tile
      (``block_tiles``). With kv_lens, the prologue and grouped heads; not with attn_mask, block_mask, joint,
      negative or cu_seqlens_q.
    * ``block_lists``: a block-sparse pattern as the kernel reads it (``BlockLists``), in place of block_mask,
      block_size and block_tiles, made by pydiff without a dense block mask: ``pydiff.neighborhood``'s layouts
      (neighborhood attention over 100k-token grids, whose dense block mask alone would take gigabytes).

    On a GPU, the Triton kernel takes up to 65535 heads and 65535 batch rows (times the segments of packed
    sequences); beyond that it is an error before anything launches.
    """
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"q must be a 4-D tensor, got {_describe(q)}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    joint_q = joint_k = joint_v = negative_k = negative_v = rope_cos = rope_sin = None
    if joint is not None:
        if not isinstance(joint, (tuple, list)) or len(joint) != 3:
            raise ValueError(f"joint must be a (q2, k2, v2) tuple, got {_describe(joint)}")
        joint_q, joint_k, joint_v = joint
    negative_q = None
    if negative is not None:
        if not isinstance(negative, (tuple, list)) or len(negative) not in (2, 3):
            raise ValueError(f"negative must be a (k_neg, v_neg) or (q_neg, k_neg, v_neg) tuple, got "
                             f"{_describe(negative)}")
        *negative_q, negative_k, negative_v = negative
        negative_q = negative_q[0] if negative_q else None
    key_rope_cos = key_rope_sin = None
    for name, tables in (("rope", rope), ("key_rope", key_rope)):
        if tables is not None and (not isinstance(tables, (tuple, list)) or len(tables) != 2):
            raise ValueError(f"{name} must be a (cos, sin) tuple of tables, got {_describe(tables)}")
    if rope is not None:
        rope_cos, rope_sin = rope
    if key_rope is not None:
        key_rope_cos, key_rope_sin = key_rope
    if cu_seqlens_q is None:
        if cu_seqlens_k is not None or max_seqlen_q is not None:
            raise ValueError("cu_seqlens_k and max_seqlen_q need cu_seqlens_q")
        max_seqlen_q = 0
    elif max_seqlen_q is None:
        max_seqlen_q = _max_segment(cu_seqlens_q, "cu_seqlens_q")
        if cu_seqlens_k is not None:
            _max_segment(cu_seqlens_k, "cu_seqlens_k")
    sparse = (None, 0, 0, None, None)  # (block_mask, its block sizes, block_tiles' two tensors)
    axis = 1 if layout == "bnhd" else 2  # (the token axis; a bad q or k is named by the checks)
    n_k = k.shape[axis] if isinstance(k, torch.Tensor) and k.dim() == 4 else 0
    if causal:
        if block_mask is not None or block_size is not None or block_tiles is not None:
            raise ValueError("causal cannot be combined with block_mask, block_size or block_tiles (it is a block "
                             "mask of its own: put the causal blocks into yours)")
        if joint is not None or negative is not None or cu_seqlens_q is not None or attn_mask is not None:
            raise ValueError("causal cannot be combined with joint=, negative=, cu_seqlens_q (one query and one key "
                             "stream) or attn_mask (put the causal mask into yours)")
        if n_k:
            # (traced by torch.compile through the function itself: Dynamo does not take an lru_cache's)
            make = _causal_blocks.__wrapped__ if torch.compiler.is_compiling() else _causal_blocks
            block_mask, block_size, block_tiles = make(q.shape[axis], n_k, q.device)
    if block_mask is not None:
        block_mask, block_size, tiles = _dense_block_mask(block_mask, block_size, q.shape[axis], n_k)
        if tiles is not None and attn_mask is not None:
            raise ValueError("attn_mask cannot be combined with a BlockMask that has a mask_mod (its elements are "
                             "the mask)")
        if block_tiles is not None:
            if tiles is not None:
                raise ValueError("block_tiles cannot be combined with a BlockMask that has a mask_mod (its tiles "
                                 "come from the mask_mod)")
            if not isinstance(block_tiles, (tuple, list)) or len(block_tiles) != 2:
                raise ValueError(f"block_tiles must be a (tile_ids, tiles) tuple, got {_describe(block_tiles)}")
            tiles = tuple(block_tiles)
        sparse = (block_mask, *block_size, *(tiles or (None, None)))
    elif block_size is not None or block_tiles is not None:
        raise ValueError(f"{'block_size' if block_size is not None else 'block_tiles'} is given but block_mask is "
                         f"not")
    lists = (None, None)
    if block_lists is not None:
        if not isinstance(block_lists, BlockLists):
            raise TypeError(f"block_lists must be a pydiff.attention.BlockLists (made by pydiff.neighborhood), got "
                            f"{type(block_lists).__name__}")
        if block_mask is not None:
            raise ValueError("block_lists cannot be combined with block_mask, block_size, block_tiles or causal (it is "
                             "a block pattern of its own)")
        sparse = (None, *block_lists.block_size, None, block_lists.tiles)
        lists = (block_lists.counts, block_lists.lists)
    args = (q, k, v, float(scale), layout, kv_lens, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q),
            joint_q, joint_k, joint_v, negative_k, negative_v, float(negative_scale), negative_kv_lens,
            rope_cos, rope_sin, bool(rope_interleaved), q_norm_weight, k_norm_weight, joint_q_norm_weight,
            joint_k_norm_weight, float(norm_eps), attn_mask, key_rope_cos, key_rope_sin, *sparse, int(rope_dims or 0),
            negative_q, int(rope_sections), *lists)
    key = _call_key(args)
    outs = torch.ops.pydiff.attention(*args) if key is _THROUGH_OP else _eager(args, key)
    return (outs[0], outs[1]) if joint is not None else outs[0]


@dataclass(frozen=True)
class BlockLists:
    """A block-sparse pattern in the form the kernel reads (``attention(..., block_lists=)``), made without a dense
    block mask: for each block of ``block_size[0]`` queries (a multiple of ``LIST_BLOCK_Q``), ``counts`` (1, 1, query
    blocks, 2): how many of its listed key blocks are whole, then how many in all; ``lists`` (1, 1, query blocks,
    entries, 3) int32: the whole blocks first, each entry 4 x the key block's number + 3 and its tile's id twice
    (0: a whole block) into ``tiles`` (T, query block, key block) bool, tile 0 all True. Made by pydiff's builders
    (``pydiff.neighborhood``), whose entries lie in range by construction: the kernel reads them as given."""

    counts: torch.Tensor
    lists: torch.Tensor
    tiles: torch.Tensor
    block_size: Tuple[int, int]


#: plain eager calls whose body made only planned launches: signature (``_call_key``) -> replay (``_replay``)
_CALLS = {}
_SCALARS = (float, int, bool, str)


def _eager(args, key) -> List[torch.Tensor]:
    """A plain eager call (``key``: its ``_call_key``): the op's body; or, for a signature whose body already ran
    making only planned launches (``pydiff.kernels.plans``), those launches alone, into new outputs and
    intermediates. The checks passed for these shapes, strides, dtypes and devices, and the backend, tiles and
    kernels follow from them, the environment switches and the tuner's choice (kept per signature), so the body
    would launch the same plans."""
    replay = _CALLS.get(key) if key is not None else None
    if replay is not None:
        return replay(args)
    with _direct_launch(), _plans.recording() if key is not None else contextlib.nullcontext() as launches:
        outs = _run(_make_call(*args))
    replay = _replay(args, outs, launches) if key is not None else None
    if replay is not None:
        _plans.remember(_CALLS, key, replay)
    return outs


def _replay(args, outs, launches):
    """A function ``replay(args) -> outputs`` repeating ``launches`` (the body's, recorded) for a call with these
    argument signatures; None when one was not planned, when a launch read a tensor that neither the call passed nor
    a launch wrote (one the body made otherwise, such as a contiguous copy of a strided norm weight), or when the
    call passed one tensor twice (which argument a launch read would be ambiguous)."""
    if not launches or any(plan is None for plan, _ in launches):
        return None
    # each tensor's place in [*args, *outputs, *intermediates], the list a replay indexes
    where = {id(t): i for i, t in enumerate(args) if isinstance(t, torch.Tensor)}
    if len(where) != sum(isinstance(t, torch.Tensor) for t in args):
        return None
    where.update({id(t): len(args) + i for i, t in enumerate(outs)})
    temps, steps = [], []
    for plan, tensors in launches:
        for slot, t in enumerate(tensors):
            if id(t) not in where:
                if slot not in plan[4]:
                    return None
                where[id(t)] = len(args) + len(outs) + len(temps)
                temps.append((t.shape, t.stride(), t.dtype, t.device))
        places = [where[id(t)] for t in tensors]
        # (itemgetter of one index returns the item itself, not a tuple)
        steps.append((plan, operator.itemgetter(*places) if len(places) > 1 else lambda ts, i=places[0]: (ts[i],)))
    packed = args[6] is not None
    launch = _plans.launch_plan

    def replay(call_args):
        new = _allocate(call_args[0], call_args[9], packed)
        tensors = [*call_args, *new, *(torch.empty_strided(size, stride, dtype=dtype, device=device)
                                       for size, stride, dtype, device in temps)]
        for plan, pick in steps:
            launch(plan, pick(tensors))
        return new

    return replay


#: the backend in force and the environment switches that change what a call launches (the tuner, descriptor
#: loads, warp-specialised tiles), for call signatures
_SETTINGS = backend_key_reader("PYDIFF_ATTENTION_AUTOTUNE", "PYDIFF_ATTENTION_TMA", "PYDIFF_ATTENTION_WARP_SPEC")

#: ``_call_key``'s answer for a call that must go through ``torch.ops`` (see ``plain_eager``)
_THROUGH_OP = object()


def _call_key(args):
    """What one walk over a call's arguments says: ``_THROUGH_OP`` where the call must go through torch.ops (see
    ``plain_eager``); else its signature for ``_CALLS``: ``tensor_key`` of every tensor, the other arguments, the
    backend in force, the environment switches and the current device; or None where calls are not planned: off a
    CUDA machine (``bind_gpu_kernels`` not run), without launch plans (Triton < 3.3), on a device other than the
    current one, and where an argument is not what the checks take (the body then raises its error)."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() or \
            torch._C._is_torch_function_mode_enabled():
        return _THROUGH_OP
    key = _key_start(args[0], args[4])
    grad = torch.is_grad_enabled()
    add = None if key is None else key.append
    for a in args:  # most are None (variants not asked for)
        if a is None:
            if add is not None:
                add(None)
            continue
        kind = type(a)
        if kind is torch.Tensor:
            if grad and a.requires_grad:
                return _THROUGH_OP
            if add is not None:
                add(_plans.tensor_key(a))
        elif kind in _SCALARS:
            if add is not None:
                add(a)
        elif isinstance(a, torch.Tensor):  # a subclass: fake, functional or another wrapper
            return _THROUGH_OP
        else:
            key = add = None
    return None if key is None else tuple(key)


def _key_start(q, layout):
    """The first entries of a planned call's key (the backend, the environment switches, the current device), or
    None where calls are not planned."""
    if _plans is None or not _plans.ENABLED or type(layout) is not str or type(q) is not torch.Tensor:
        return None
    device = None
    if q.is_cuda:
        device = torch.cuda.current_device()
        if q.device.index != device:  # the body switches devices around its launches
            return None
    return [*_SETTINGS(), device]


def _direct_launch():
    """What torch.library does around a triton_op's body when it runs eagerly: ``wrap_triton`` then launches the
    kernel itself. Left enabled, every launch goes through the tracing higher-order op, which rebuilds the autotuner
    with no key (re-tuning every call: over a second per call at Flux's shape on an H200)."""
    return _set_wrap_triton_enabled(False)


def plain_eager(args) -> bool:
    """Whether a call may run the op's body directly instead of through ``torch.ops`` (same checks, same kernels).

    torch.library's dispatch costs ~100 us of Python per call on a slow host core, several times the kernel at
    small shapes (cross-attention over 77 text tokens). Nothing in plain eager execution needs it: the op only
    has to be seen by compilers, tracers and dispatch modes, and by autograd (which it refuses). So the body runs
    directly unless torch.compile/export is tracing, a dispatch or torch-function mode is active, an argument is
    a tensor subclass (fake or functional tensors), or an input requires grad. (``_call_key`` decides it, in the
    same walk over the arguments that builds the call's signature.)
    """
    return _call_key(args) is not _THROUGH_OP


#: the block size of ``causal``'s block mask
CAUSAL_BLOCK = 128


@functools.lru_cache(maxsize=64)
def _causal_blocks(n_q: int, n_k: int, device: torch.device):
    """``attention``'s causal mask as a block mask, its block size and tiles: the blocks on and below the diagonal
    (query block i, key block j <= i), those on it a lower triangle (tile 1). Made once per size and device (no host
    read: CUDA graphs capture calls that use them)."""
    rows, cols, size = -(-n_q // CAUSAL_BLOCK), -(-n_k // CAUSAL_BLOCK), CAUSAL_BLOCK
    i, j = torch.arange(rows, device=device)[:, None], torch.arange(cols, device=device)[None, :]
    tiles = torch.ones(2, size, size, dtype=torch.bool, device=device)
    tiles[1] = tiles[1].tril()
    return j <= i, (size, size), ((i == j).to(torch.int32), tiles)


def block_mask_tiles(block_mask, n_q: int, n_k: int):
    """A flex attention ``BlockMask`` as ``attention`` takes it for n_q queries and n_k keys, made once ahead of
    calls that must not read the host (CUDA graph capture): ``attention(q, k, v, **block_mask_tiles(bm, n_q, n_k))``
    is ``attention(q, k, v, block_mask=bm)``. Returns {"block_mask", "block_size"[, "block_tiles"]}."""
    if type(block_mask).__name__ != "BlockMask":
        raise TypeError(f"block_mask must be a torch.nn.attention.flex_attention.BlockMask, got "
                        f"{type(block_mask).__name__}")
    blocks, sizes, tiles = _dense_block_mask(block_mask, None, n_q, n_k)
    return dict(block_mask=blocks, block_size=sizes, **({} if tiles is None else {"block_tiles": tiles}))


def mask_block_mask(attn_mask: torch.Tensor, n_q: int, n_k: int, block_size=128) -> dict:
    """The blocks of a dense attention mask that keep any weight, as ``attention``'s block mask: with both,
    ``attention(q, k, v, attn_mask=m, **mask_block_mask(m, N_q, N_k))`` equals ``attention(q, k, v, attn_mask=m)``
    and the kernel skips the key blocks the mask leaves nothing in (a sliding window's band, a block-causal mask),
    reading neither their keys nor their mask values. An element keeps weight where it is True (bool), or (float)
    less than 1e4 under its row's largest value: the others weigh exp(-1e4) at most against it, 0 in float32 and
    float64 (-10000 against 0: diffusers' padding), and a row of only masked values (all finfo.min, or all -10000:
    SDPA attends it uniformly) keeps all of them. One pass over the mask, no host read (CUDA graphs capture it);
    worth it where one mask serves many calls (a model's layers). Returns {"block_mask", "block_size"};
    block_size an int or a (query block, key block) pair."""
    if not isinstance(attn_mask, torch.Tensor) or not 1 <= attn_mask.dim() <= 4 or \
            (attn_mask.dtype != torch.bool and not attn_mask.is_floating_point()):
        raise TypeError(f"attn_mask must be a bool or float tensor of 1 to 4 dims, got {_describe(attn_mask)}")
    block_q, block_k = _block_pair(block_size)
    mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    if mask.shape[-2] not in (1, n_q) or mask.shape[-1] not in (1, n_k):
        raise ValueError(f"attn_mask must broadcast to (..., N_q, N_k) = (..., {n_q}, {n_k}), got "
                         f"{_describe(attn_mask)}")
    if mask.dtype == torch.bool:
        kept = mask
    else:  # (>= top: where top - 1e4 rounds to top itself, finfo.min's rows)
        top = mask.amax(-1, keepdim=True)
        kept = (mask > top - 1e4) | (mask >= top)
    # (a dim of one, a key mask's queries, stays one block: it broadcasts)
    kept = F.pad(kept, (0, (-kept.shape[-1]) % block_k if kept.shape[-1] > 1 else 0,
                        0, (-kept.shape[-2]) % block_q if kept.shape[-2] > 1 else 0))
    rows, cols = max(kept.shape[-2] // block_q, 1), max(kept.shape[-1] // block_k, 1)
    blocks = kept.unflatten(-1, (cols, -1)).any(-1).unflatten(-2, (rows, -1)).any(-2)
    return {"block_mask": blocks, "block_size": (block_q, block_k)}


def _dense_block_mask(block_mask, block_size, n_q: int, n_k: int):
    """(mask, (query block, key block), tiles) of ``attention``'s block_mask and block_size for n_q queries and n_k
    keys: a tensor as given, with block_size an int, a pair or None (128), and no tiles; a flex attention
    ``BlockMask`` as its dense block mask (its full and partial blocks) and its sizes, and where it has a mask_mod,
    (tile_ids, tiles) as the op takes them: the mask_mod's elements in each partial block, as compiled flex
    attention reads them (every element of a full block). A partial block whose elements are all kept becomes a
    whole one (tile 0); one with none kept leaves the mask."""
    if not (type(block_mask).__name__ == "BlockMask" and hasattr(block_mask, "to_dense")):
        return block_mask, _block_pair(128 if block_size is None else block_size), None
    from torch.nn.attention.flex_attention import BlockMask, noop_mask

    sizes = tuple(int(n) for n in block_mask.BLOCK_SIZE)
    if block_size is not None and _block_pair(block_size) != sizes:
        raise ValueError(f"block_size {block_size} differs from the BlockMask's BLOCK_SIZE {sizes}")
    blocks = block_mask.to_dense().bool()
    if block_mask.mask_mod is noop_mask:
        return blocks, sizes, None
    if torch.compiler.is_compiling():
        raise ValueError("a BlockMask with a mask_mod becomes tiles through a host read (how many partial blocks), "
                         "which torch.compile cannot trace: make them before, attention(q, k, v, "
                         "**block_mask_tiles(block_mask, N_q, N_k)) (pydiff.attention.block_mask_tiles)")
    partial = blocks
    if block_mask.full_kv_num_blocks is not None:
        partial = BlockMask.from_kv_blocks(block_mask.kv_num_blocks, block_mask.kv_indices, BLOCK_SIZE=sizes,
                                           compute_q_blocks=False).to_dense().bool() & blocks
    where = partial.nonzero()  # (the one host read)
    kept = _block_elements(block_mask.mask_mod, where, sizes, n_q, n_k)
    whole, empty = kept.flatten(1).all(1), ~kept.flatten(1).any(1)
    some = ~(whole | empty)
    ids = torch.zeros(blocks.shape, dtype=torch.int32, device=blocks.device)
    ids[tuple(where[some].T)] = torch.arange(1, int(some.sum()) + 1, dtype=torch.int32, device=blocks.device)
    blocks = blocks.clone()
    blocks[tuple(where[empty].T)] = False
    tiles = torch.cat([torch.ones((1, *sizes), dtype=torch.bool, device=blocks.device), kept[some]])
    return blocks, sizes, (ids, tiles)


#: partial blocks whose elements one vmapped mask_mod call evaluates (bounds its index tensors' memory)
_TILES_PER_CALL = 256


def _block_elements(mask_mod, where: torch.Tensor, block_size: Tuple[int, int], n_q: int, n_k: int) -> torch.Tensor:
    """What ``mask_mod(b, h, q_idx, kv_idx)`` keeps in the blocks at ``where`` ((P, 4): batch row, head, query
    block, key block), (P, query block, key block) bool, evaluated as flex attention's ``create_mask`` does (vmapped
    over scalar indices), for queries < n_q and keys < n_k (the rest False, and not evaluated)."""
    block_q, block_k = block_size
    device = where.device
    rows = where[:, 2:3] * block_q + torch.arange(block_q, device=device)
    cols = where[:, 3:4] * block_k + torch.arange(block_k, device=device)
    keep = (rows < n_q)[:, :, None] & (cols < n_k)[:, None, :]
    rows, cols = rows.clamp(max=n_q - 1), cols.clamp(max=n_k - 1)
    over_kv = torch.vmap(mask_mod, in_dims=(None, None, None, 0))
    tile = torch.vmap(torch.vmap(over_kv, in_dims=(None, None, 0, None)), in_dims=(0, 0, 0, 0))
    for start in range(0, len(where), _TILES_PER_CALL):
        part = slice(start, start + _TILES_PER_CALL)
        keep[part] &= tile(where[part, 0], where[part, 1], rows[part], cols[part]).bool()
    return keep


def _block_pair(block_size) -> Tuple[int, int]:
    if isinstance(block_size, int) and not isinstance(block_size, bool):
        return block_size, block_size
    if isinstance(block_size, (tuple, list)) and len(block_size) == 2 and \
            all(isinstance(n, int) and not isinstance(n, bool) for n in block_size):
        return int(block_size[0]), int(block_size[1])
    raise TypeError(f"block_size must be an int or a (query block, key block) pair of ints, got {block_size!r}")


def _max_segment(cu: torch.Tensor, name: str) -> int:
    """Longest segment of offsets ``cu`` (one host read); checks that the offsets start at >= 0 and never fall."""
    if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.shape[0] < 2 or cu.dtype not in LENGTH_DTYPES:
        raise TypeError(f"{name} must be a 1-D int32/int64 tensor of S + 1 >= 2 offsets, got {_describe(cu)}")
    offsets = cu.tolist()
    lengths = [b - a for a, b in zip(offsets, offsets[1:])]
    if offsets[0] < 0 or min(lengths) < 0:
        raise ValueError(f"{name} must start at >= 0 and never decrease, got {offsets}")
    return max(max(lengths), 1)


__all__ = ["BlockLists", "MAX_HEAD_DIM", "SUPPORTED_DTYPES", "attention", "attention_op", "attention_reference",
           "autotune_enabled", "backends", "block_mask_tiles", "define_attention_op", "mask_block_mask"]
