"""pydiff.attention: the fused Triton kernel (interpreted on CPU) and the torch backend against float64 references.

Accuracy rule: fp32 within 1e-5 relative of float64 (TF32 tolerance on a GPU); fp16/bf16 within twice the error of
the same computation done by plain PyTorch in that precision, plus 1e-3.
Cases: a curated hostile grid (``GRID``) and random ones (``random_case``); GPU tests move inputs with ``moved``,
which keeps their strides (``Tensor.to`` does not).
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Optional, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F

import pydiff
from pydiff.ops import native
from pydiff.attention import block_mask_tiles
from pydiff.reference.attention import attention_reference, flex_block_mask, in_context_block_mask

attention_module = __import__("pydiff.attention", fromlist=["attention"])

CPU = torch.device("cpu")
needs_interpreter = pytest.mark.skipif(native.triton_why_not(CPU) is not None,
                                       reason=f"Triton on CPU: {native.triton_why_not(CPU)}")


# ----------------------------------------------------------------------------------------------------------------
# case construction


@dataclass
class Case:
    dtype: torch.dtype
    head_dim: int
    n_q: int
    n_k: int
    heads: int = 2
    kv_heads: Optional[int] = None
    batch: int = 1
    layout: str = "bhnd"
    strided: bool = False          # inputs are slices of larger tensors (token stride and head-dim stride 2)
    kv_lens: Optional[Sequence[int]] = None
    cu_q: Optional[Sequence[int]] = None
    cu_k: Optional[Sequence[int]] = None
    joint: Optional[Tuple[int, int]] = None      # (n_q2, n_k2)
    negative: Optional[int] = None               # n_neg
    negative_scale: float = 0.75
    negative_kv_lens: Optional[Sequence[int]] = None
    # with negative: queries of the negative stream's own (differential attention)
    negative_q: bool = False
    rope: Optional[str] = None                   # "interleaved" | "half"
    # the RoPE tables: "shared" (rows, D) | "heads" (1, rows, H, D) | "batch-heads" (B, rows, H, D) as a view of
    # (B, rows, H*D), LTX-Video's layout | "batch" (B, rows, 1, D), Z-Image's and Lumina 2's
    rope_tables: str = "shared"
    # tables of one angle per pair of channels (D/2 columns), the real and imaginary parts of a complex table
    # (strided views, as the diffusers processors pass Z-Image's, Lumina 2's and Qwen-Image's)
    rope_pairs: bool = False
    # partial rotary (``rope_dims``): the tables turn each head's first R channels (R or R/2 columns); 0: all
    rope_dims: int = 0
    # halves turned within this many equal sections of the turned channels (``rope_sections``: Allegro's t, h, w)
    rope_sections: int = 1
    # the keys' own tables (``key_rope``, other angles in the same form; per head: the key heads'); with
    # rope_queries False, ``rope`` is left out: the keys turn, the queries do not
    key_rope: bool = False
    rope_queries: bool = True
    q_norm: bool = False
    k_norm: bool = False
    joint_q_norm: bool = False
    joint_k_norm: bool = False
    scale: Optional[float] = None
    # an attention mask (``attn_mask``): (values "bool" | "float" [-inf, q's dtype] | "f32" | "diffusers"
    # [0 / -10000] | "min" [finfo(dtype).min, q's dtype], shape); key masks "b11n" | "bh1n" | "1h1n" | "n" [1-D] |
    # "strided" [every other key of a longer tensor] | "expanded" [a key mask expanded over the queries, stride 0];
    # masks per query "bhmn" | "b1mn" | "mn" [2-D] | "transposed" [(B, H, N_k, N_q) storage] | "outer" [Chroma's:
    # token mask x token mask, N_q == N_k] | "bhm1" [one value per query for every key: its key dim broadcast]
    mask: Optional[Tuple[str, str]] = None
    # block-sparse attention (``block_mask``): (query block, key block, the mask's shape "bhmn" | "b1mn" | "1hmn" |
    # "mn" [2-D]), random blocks with batch row 0's second query block attending to none
    block_mask: Optional[Tuple[int, int, str]] = None
    # with block_mask, random elements in its blocks (``block_tiles``: tile 0 whole, one tile of none)
    block_tiles: bool = False
    blocks: Tuple[int, int] = (64, 32)
    name: str = field(default="")

    def __str__(self):
        return self.name


def _qkv_like(case: Case, gen: torch.Generator, heads: int, n: int) -> torch.Tensor:
    shape_bhnd = (case.batch, heads, n, case.head_dim)
    if case.strided:
        # every stride differs from the contiguous one, head-dim stride included (the dtype set first: Tensor.to
        # gives a strided view contiguous strides)
        big = torch.randn(case.batch, heads, 2 * n + 1, 2 * case.head_dim, generator=gen).to(case.dtype)
        t = big[:, :, 1::2][:, :, :n, ::2]
    else:
        t = torch.randn(*shape_bhnd, generator=gen).to(case.dtype)
    if case.layout == "bnhd":
        # (B, N, H, D) storage, handed over as is
        t = t.transpose(1, 2).contiguous() if not case.strided else t.transpose(1, 2)
    return t


def build(case: Case, seed: int = 0):
    """(q, k, v, kwargs) for pydiff.attention / attention_reference, with random inputs."""
    gen = torch.Generator().manual_seed(seed)
    kv_heads = case.kv_heads or case.heads
    q = _qkv_like(case, gen, case.heads, case.n_q)
    k = _qkv_like(case, gen, kv_heads, case.n_k)
    # non-uniform value scales so that a wrong weighting shows
    v = _qkv_like(case, gen, kv_heads, case.n_k)
    kw = {"layout": case.layout}
    if case.scale is not None:
        kw["scale"] = case.scale
    if case.kv_lens is not None:
        kw["kv_lens"] = torch.tensor(case.kv_lens, dtype=torch.int32)
    if case.cu_q is not None:
        kw["cu_seqlens_q"] = torch.tensor(case.cu_q, dtype=torch.int32)
        if case.cu_k is not None:
            kw["cu_seqlens_k"] = torch.tensor(case.cu_k, dtype=torch.int64)
    rows = max(case.n_q, case.n_k)
    if case.joint is not None:
        n_q2, n_k2 = case.joint
        kw["joint"] = (_qkv_like(case, gen, case.heads, n_q2), _qkv_like(case, gen, kv_heads, n_k2),
                       _qkv_like(case, gen, kv_heads, n_k2))
        rows = max(case.n_q + n_q2, case.n_k + n_k2)
    if case.negative is not None:
        kw["negative"] = (_qkv_like(case, gen, kv_heads, case.negative), _qkv_like(case, gen, kv_heads, case.negative))
        if case.negative_q:
            kw["negative"] = (_qkv_like(case, gen, case.heads, case.n_q), *kw["negative"])
        kw["negative_scale"] = case.negative_scale
        rows = max(rows, case.negative)
        if case.negative_kv_lens is not None:
            kw["negative_kv_lens"] = torch.tensor(case.negative_kv_lens, dtype=torch.int64)
    if case.mask is not None:
        joined = case.joint if case.joint is not None else (0, 0)
        kw["attn_mask"] = _attn_mask(case, gen, case.n_q + joined[0], case.n_k + joined[1])
    if case.block_mask is not None:
        block_q, block_k, shape = case.block_mask
        kw["block_mask"] = _block_mask(case, gen, block_q, block_k, shape)
        kw["block_size"] = (block_q, block_k)
        if case.block_tiles:
            kw["block_tiles"] = _block_tiles(gen, kw["block_mask"], block_q, block_k)
    if case.rope is not None:
        if case.rope_queries:
            kw["rope"] = _rope_tables(case, gen, rows, case.heads, 50.0)
        if case.key_rope:
            kw["key_rope"] = _rope_tables(case, gen, rows, kv_heads, 20.0)
        kw["rope_interleaved"] = case.rope == "interleaved"
        if case.rope_dims:
            kw["rope_dims"] = case.rope_dims
        if case.rope_sections > 1:
            kw["rope_sections"] = case.rope_sections
    for flag, name in ((case.q_norm, "q_norm_weight"), (case.k_norm, "k_norm_weight"),
                       (case.joint_q_norm, "joint_q_norm_weight"), (case.joint_k_norm, "joint_k_norm_weight")):
        if flag:
            # a half-precision model holds its norm weights in its own dtype
            kw[name] = (0.5 + torch.rand(case.head_dim, generator=gen)).to(case.dtype)
    if case.q_norm or case.k_norm or case.joint_q_norm or case.joint_k_norm:
        kw["norm_eps"] = 1e-5
    return q, k, v, kw


def _rope_tables(case: Case, gen: torch.Generator, rows: int, heads: int, base: float):
    """``case.rope``'s (cos, sin) tables in ``case.rope_tables``' form for ``heads`` heads (where per head), rows for
    positions 0..rows+2: diffusers-style, one frequency per pair (powers of ``base``) repeated to fill D, or one
    angle per pair read in place from a complex table (``case.rope_pairs``); with ``case.rope_sections``, each
    section its own frequencies, its columns after the section before's."""
    half = (case.rope_dims or case.head_dim) // (2 * case.rope_sections)
    sections = []
    for section in range(case.rope_sections):
        freqs = 1.0 / ((base + 7 * section) ** (torch.arange(half, dtype=torch.float64) / half))
        angles = torch.arange(rows + 3, dtype=torch.float64)[:, None] * freqs[None, :]
        if case.rope_pairs:
            pass
        elif case.rope == "interleaved":
            angles = angles.repeat_interleave(2, dim=1)
        else:
            angles = torch.cat([angles, angles], dim=1)
        sections.append(angles)
    angles = torch.cat(sections, dim=1)
    if case.rope_tables != "shared":  # (each batch row and/or head its own angles)
        rows_b = case.batch if case.rope_tables in ("batch", "batch-heads") else 1
        heads = 1 if case.rope_tables == "batch" else heads
        scale = 0.5 + torch.rand(rows_b, 1, heads, 1, generator=gen, dtype=torch.float64)
        angles = (angles[None, :, None, :] * scale).flatten(2).unflatten(2, (heads, angles.shape[-1]))
    if case.rope_pairs:  # (e^(i angle) as complex64, its parts read in place: column stride 2)
        parts = torch.view_as_real(torch.polar(torch.ones_like(angles), angles).to(torch.complex64))
        return parts[..., 0], parts[..., 1]
    return angles.cos().float(), angles.sin().float()


def _block_mask(case: Case, gen: torch.Generator, block_q: int, block_k: int, shape: str) -> torch.Tensor:
    """A random block mask (about half the blocks) of ``shape``, batch row 0's second query block (where there is
    one) attending to no key block."""
    rows, cols = -(-case.n_q // block_q), -(-case.n_k // block_k)
    keep = torch.rand(case.batch, case.heads, rows, cols, generator=gen) > 0.5
    keep[0, :, 1:2] = False
    return {"bhmn": keep, "b1mn": keep[:, :1], "1hmn": keep[:1], "mn": keep[0, 0]}[shape]


def _block_tiles(gen: torch.Generator, mask: torch.Tensor, block_q: int, block_k: int):
    """Random (tile_ids, tiles) for ``mask``'s blocks: six tiles, tile 0 whole and tile 5 empty, the others about
    60% kept."""
    tiles = torch.rand(6, block_q, block_k, generator=gen) > 0.4
    tiles[0], tiles[5] = True, False
    return torch.randint(0, 6, mask.shape, generator=gen, dtype=torch.int32), tiles


_ROW_MASKS = ("bhmn", "b1mn", "mn", "transposed", "outer", "bhm1")


def _attn_mask(case: Case, gen: torch.Generator, queries: int, keys: int) -> torch.Tensor:
    """``case.mask``'s mask over ``queries`` x ``keys``: random, with the first 20 keys of batch row 0 masked (whole
    key blocks masked before any valid one) and, with more than one batch row, the last row's every key masked
    (zeros; with "diffusers" values -10000 is finite, so that row attends to every key, as in PyTorch); per query,
    also query rows 1 and 2 of batch row 0 with every key masked. "outer": a random token mask t (the first 20
    tokens out) as t_q & t_k, so the masked tokens' queries see no key."""
    values, shape = case.mask
    rows = queries if shape in _ROW_MASKS else 1
    keep = torch.rand(case.batch, case.heads, rows, 1 if shape == "bhm1" else keys, generator=gen) > 0.3
    keep[0, ..., :20] = False
    if case.batch > 1:
        keep[-1] = False
    if rows > 1:
        keep[0, :, 1:3] = False
    if shape == "outer":
        tokens = keep[:, :1, 0]
        keep = tokens[..., :queries, None] & tokens[..., None, :]
    if values == "diffusers":
        bias = (1.0 - keep.to(case.dtype)) * -10000.0
    elif values == "min":  # (Hugging Face's: the dtype's lowest finite value; a row of it absorbs the scores)
        bias = (2 * torch.randn(keep.shape, generator=gen)).masked_fill(~keep, torch.finfo(case.dtype).min)
    else:
        bias = (2 * torch.randn(keep.shape, generator=gen)).masked_fill(~keep, float("-inf"))
    mask = {"bool": keep, "float": bias.to(case.dtype), "f32": bias, "diffusers": bias,
            "min": bias.to(case.dtype)}[values]
    if shape in ("b11n", "strided", "b1mn"):
        mask = mask[:, :1]
    elif shape == "1h1n":
        mask = mask[:1]
    elif shape == "n":
        mask = mask[0, 0, 0]
    elif shape == "mn":
        mask = mask[0, 0]
    elif shape == "expanded":
        mask = mask.expand(-1, -1, queries, -1)
    elif shape == "transposed":
        mask = mask.transpose(2, 3).contiguous().transpose(2, 3)
    if shape == "strided":
        wide = torch.zeros(*mask.shape[:-1], 2 * keys, dtype=mask.dtype)
        wide[..., ::2] = mask
        mask = wide[..., ::2]
    return mask


def mask_flag(case: Case) -> int:
    """The kernel's HAS_BIAS for the case's mask: 0 none, 1 a key mask, ``ROW_MASK`` a mask per query."""
    from pydiff.kernels.attention import ROW_MASK

    return 0 if case.mask is None else ROW_MASK.value if case.mask[1] in _ROW_MASKS else 1


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_accurate(out, ref64, lowp, dtype, fp32_rtol=1e-5):
    """fp32: relative error vs float64; fp16/bf16: max error <= 2x plain PyTorch's + 1e-3."""
    assert out.shape == ref64.shape and out.dtype == dtype
    assert torch.isfinite(out).all(), "non-finite output (an element was never written or the math overflowed)"
    if out.numel() == 0:  # (a joint stream of keys only has no query rows: its output is empty)
        return
    if dtype == torch.float32:
        err = rel_err(out, ref64)
        assert err <= fp32_rtol, f"fp32 relative error {err:.3g} > {fp32_rtol}"
    else:
        ours = (out.double() - ref64.double()).abs().max().item()
        torch_err = (lowp.double() - ref64.double()).abs().max().item()
        assert ours <= 2 * torch_err + 1e-3, f"{dtype}: max error {ours:.3g} > 2 x torch's {torch_err:.3g} + 1e-3"


def references(q, k, v, kw):
    ref64 = attention_reference(q, k, v, compute_dtype=torch.float64, **kw)
    lowp = attention_reference(q, k, v, **kw) if q.dtype != torch.float32 else None
    return ref64, lowp


def descriptors_fit(case: Case) -> bool:
    """Whether the case's tensors meet the descriptor loads' layout rules (a contiguous head dim, 16-byte aligned
    rows); the launcher refuses ``use_tma=True`` otherwise."""
    return not case.strided and case.head_dim * case.dtype.itemsize % 16 == 0


def refused_descriptors(q, k, v, kw, blocks, **launch) -> None:
    """``run_kernel`` with descriptor loads on tensors that do not fit them: an error before any launch."""
    with pytest.raises(ValueError, match="use_tma: the key/value tensors need .* a contiguous head dim"):
        run_kernel(q, k, v, kw, blocks, use_tma=True, **launch)


def streams_accurate(case, out, ref64, lowp):
    """``assert_accurate`` on each output stream of a call (two with a joint stream) against its references."""
    lows = (None,) * len(_streams(case, out)) if lowp is None else _streams(case, lowp)
    for got, ref, low in zip(_streams(case, out), _streams(case, ref64), lows):
        assert_accurate(got, ref, low, case.dtype)


def run_kernel(q, k, v, kw, blocks, poison=float("nan"), use_tma=False, rowsum_mma=False, stream_k=None, warps=4,
               stages=2, overlap=False, prologue_heads=1, warp_spec=False, join_keys=None):
    """The Triton kernel through its launcher, into outputs poisoned beforehand (every element must be written);
    use_tma: key/value blocks through tensor descriptors; rowsum_mma: the row sums on the tensor cores; stream_k:
    the stream-K kernels over this many programs; overlap: the softmax overlapped with the next block's scores;
    prologue_heads: heads per program of the QK prologue; warp_spec: q through descriptors too and the key loop
    warp-specialised; join_keys: a joint call's keys and values joined first, one key loop."""
    from pydiff.kernels.attention import _attn_fwd_kernel, attention_forward

    out = torch.full_like(q, poison, memory_format=torch.contiguous_format)
    joint = None
    if "joint" in kw:
        out2 = torch.full_like(kw["joint"][0], poison, memory_format=torch.contiguous_format)
        joint = (*kw["joint"], out2)
    cu_q = kw.get("cu_seqlens_q")
    max_seqlen = 0 if cu_q is None else int((cu_q[1:] - cu_q[:-1]).max())
    attention_forward(
        _attn_fwd_kernel, q, k, v, out, bnhd=kw["layout"] == "bnhd",
        scale=kw.get("scale", 1.0 / math.sqrt(q.shape[-1])), joint=joint, negative=kw.get("negative"),
        negative_scale=kw.get("negative_scale", 1.0), kv_lens=kw.get("kv_lens"),
        negative_kv_lens=kw.get("negative_kv_lens"), cu_seqlens_q=cu_q, cu_seqlens_k=kw.get("cu_seqlens_k"),
        max_seqlen_q=max_seqlen, rope=kw.get("rope"), rope_interleaved=kw.get("rope_interleaved", True),
        q_norm_weight=kw.get("q_norm_weight"), k_norm_weight=kw.get("k_norm_weight"),
        joint_q_norm_weight=kw.get("joint_q_norm_weight"), joint_k_norm_weight=kw.get("joint_k_norm_weight"),
        norm_eps=kw.get("norm_eps", 1e-6), block_m=blocks[0], block_n=blocks[1], num_warps=warps,
        num_stages=stages, use_tma=use_tma, rowsum_mma=rowsum_mma, stream_k=stream_k, overlap=overlap,
        prologue_heads=prologue_heads, warp_spec=warp_spec, join_keys=join_keys, attn_mask=kw.get("attn_mask"),
        key_rope=kw.get("key_rope"), block_mask=kw.get("block_mask"), block_size=kw.get("block_size", (0, 0)),
        block_tiles=kw.get("block_tiles"), rope_dims=kw.get("rope_dims", 0),
        rope_sections=kw.get("rope_sections", 1))
    return (out, joint[3]) if joint is not None else out


F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

_KEY_MASK_CASES = [
    Case(F32, 64, 97, 77, batch=3, mask=("bool", "b11n"), blocks=(32, 16), name="f32-mask-bool"),
    Case(F16, 40, 33, 77, batch=2, heads=4, kv_heads=2, layout="bnhd", kv_lens=[77, 50], mask=("float", "bh1n"),
         name="f16-mask-float-bnhd-gqa-kvlens"),
    Case(BF16, 80, 33, 45, heads=3, mask=("diffusers", "1h1n"), name="bf16-mask-diffusers"),
    Case(F32, 64, 201, 201, cu_q=[0, 7, 7, 104, 201], mask=("f32", "n"), name="f32-mask-varlen"),
    Case(F16, 64, 45, 45, batch=2, joint=(19, 19), rope="interleaved", q_norm=True, k_norm=True, joint_q_norm=True,
         joint_k_norm=True, mask=("bool", "strided"), name="f16-mask-joint-prologue-strided"),
    Case(BF16, 96, 77, 40, strided=True, scale=-0.2, mask=("f32", "b11n"), name="bf16-mask-strided-negative-scale"),
    # a row whose every key is -10000 (diffusers' all-padding prompt) attends to all keys: float32 resolves the
    # scores only once the mask's largest value is taken out (the kernel's shift), over both streams when joint
    Case(F32, 64, 45, 77, batch=2, mask=("diffusers", "b11n"), name="f32-mask-all-padding"),
    Case(F32, 40, 33, 33, batch=2, joint=(17, 17), mask=("diffusers", "bh1n"), name="f32-mask-joint-all-padding"),
    # Hugging Face's masks (the dtype's lowest finite value): a row of only such values has its scores absorbed into
    # the mask, in float64 as in SDPA, and attends to every key alike (the kernel zeroes its queries)
    Case(F32, 64, 45, 77, batch=2, mask=("min", "b11n"), name="f32-mask-min-all-padding"),
    Case(BF16, 64, 33, 40, batch=2, joint=(17, 17), mask=("min", "bh1n"), name="bf16-mask-min-joint"),
]
#: each key mask's shape -> a mask per query (a BLOCK_M x BLOCK_N tile per key block) in its place: every broadcast
#: shape, transposed storage, Chroma's outer product (the joint case with its prologue: rows and keys of the joined
#: sequence), query rows with every key masked, rows as tokens with packed segments, the all-padding rows' shift
#: per row
_PER_QUERY = {"b11n": "bhmn", "bh1n": "b1mn", "1h1n": "transposed", "n": "mn", "strided": "outer"}

# A curated hostile grid: every dtype, head dims 32..256 (non powers of two included), odd lengths 1..1025,
# Nq != Nk, both layouts, strided inputs, grouped/multi-query heads, each variant and their combinations.
GRID = [
    Case(F32, 64, 97, 97, batch=2, name="f32-d64-97x97"),
    Case(F16, 40, 77, 333, heads=4, kv_heads=2, layout="bnhd", name="f16-d40-77x333-bnhd-gqa"),
    Case(BF16, 80, 1, 97, heads=3, kv_heads=1, name="bf16-d80-1x97-mqa"),
    Case(F32, 72, 333, 7, heads=1, layout="bnhd", blocks=(128, 16), name="f32-d72-333x7-bnhd"),
    Case(F16, 96, 97, 77, strided=True, name="f16-d96-strided"),
    Case(BF16, 160, 64, 128, heads=1, name="bf16-d160-even-blocks"),
    Case(F32, 256, 33, 65, heads=1, blocks=(32, 32), name="f32-d256"),
    Case(F32, 32, 1025, 1025, heads=1, blocks=(128, 128), name="f32-d32-1025"),
    Case(F16, 128, 130, 256, heads=3, kv_heads=1, layout="bnhd", strided=True, name="f16-d128-bnhd-strided-mqa"),
    Case(F32, 48, 7, 33, scale=0.3, name="f32-d48-custom-scale"),
    # key padding, with a row that may attend to nothing (defined as zeros)
    Case(F32, 64, 97, 77, batch=3, kv_lens=[77, 13, 0], name="f32-kvlens"),
    Case(F16, 80, 33, 77, batch=2, heads=4, kv_heads=2, layout="bnhd", kv_lens=[5, 77], name="f16-kvlens-bnhd-gqa"),
    # packed variable-length segments (one empty), per-segment key padding, separate key offsets
    Case(F32, 64, 201, 201, cu_q=[0, 7, 7, 104, 201], kv_lens=[7, 0, 90, 97], name="f32-varlen-kvlens"),
    Case(BF16, 40, 99, 60, batch=2, cu_q=[0, 33, 99], cu_k=[0, 21, 60], layout="bnhd", name="bf16-varlen-cross"),
    # joint two-stream attention, with key padding over the joined sequence
    Case(F32, 64, 97, 97, joint=(13, 13), kv_lens=[105], name="f32-joint-kvlens"),
    Case(BF16, 80, 77, 77, heads=4, kv_heads=2, joint=(33, 33), layout="bnhd", name="bf16-joint-gqa-bnhd"),
    # negative-prompt attention
    Case(F32, 64, 97, 97, negative=77, negative_scale=0.7, name="f32-negative"),
    Case(F16, 40, 33, 77, batch=2, heads=4, kv_heads=2, layout="bnhd", negative=13, negative_kv_lens=[13, 4],
         kv_lens=[77, 50], name="f16-negative-lens-gqa"),
    # fused prologue
    Case(F32, 64, 97, 77, rope="interleaved", name="f32-rope-interleaved"),
    Case(BF16, 96, 77, 77, rope="half", name="bf16-rope-half-d96"),
    Case(F32, 40, 33, 33, rope="half", q_norm=True, k_norm=True, name="f32-norm-rope-half-d40"),
    Case(F16, 72, 33, 97, q_norm=True, k_norm=True, name="f16-qknorm-d72"),
    Case(F32, 160, 33, 33, heads=1, rope="interleaved", k_norm=True, blocks=(32, 16), name="f32-rope-knorm-d160"),
    # everything at once: Flux-like joint attention with per-stream norms and RoPE, plus a negative stream
    Case(F32, 64, 45, 45, joint=(19, 19), rope="interleaved", q_norm=True, k_norm=True, joint_q_norm=True,
         joint_k_norm=True, negative=23, name="f32-joint-norms-rope-negative"),
    Case(F16, 128, 64, 64, heads=2, joint=(16, 16), rope="interleaved", q_norm=True, k_norm=True, joint_q_norm=True,
         joint_k_norm=True, layout="bnhd", blocks=(64, 64), name="f16-flux-like-even"),
    Case(F32, 64, 33, 33, joint=(17, 17), joint_q_norm=True, k_norm=True, name="f32-joint-one-sided-norms"),
    # the keys' own RoPE tables (LTX-2's audio-video cross-attention): with norms, a joint stream and a negative
    # stream; per head with grouped-query heads (the key heads' tables); keys turned while the queries are not
    Case(F32, 64, 45, 33, rope="interleaved", key_rope=True, q_norm=True, k_norm=True, joint=(19, 17),
         joint_k_norm=True, negative=13, name="f32-key-rope-joint-negative"),
    Case(BF16, 80, 33, 41, batch=2, heads=4, kv_heads=2, layout="bnhd", rope="half", rope_tables="batch-heads",
         rope_pairs=True, key_rope=True, name="bf16-key-rope-per-head-gqa"),
    Case(F16, 48, 29, 37, rope="interleaved", key_rope=True, rope_queries=False, kv_lens=[30],
         name="f16-key-rope-only"),
    # a second stream of keys only (no queries: IP-Adapter's image-prompt keys joined to SD3's, a cache of
    # reference keys), with its own norm, RoPE rows after stream 1's, key padding over the joined keys; GQA
    Case(F32, 64, 45, 45, joint=(0, 19), rope="interleaved", q_norm=True, k_norm=True, joint_k_norm=True,
         kv_lens=[50], name="f32-joint-keys-only-prologue-kvlens"),
    Case(BF16, 80, 33, 33, batch=2, heads=4, kv_heads=2, joint=(0, 7), layout="bnhd", name="bf16-joint-keys-only-gqa"),
    # key masks (attn_mask): bool and float, every broadcast shape, strided; with key padding, GQA, packed
    # segments, joint streams (a mask over the joined keys) and a negative scale; then each again with a mask per
    # query (``_PER_QUERY``)
    *_KEY_MASK_CASES,
    *(replace(c, mask=(c.mask[0], _PER_QUERY[c.mask[1]]), name=c.name.replace("-mask-", "-rowmask-"))
      for c in _KEY_MASK_CASES),
    # RoPE tables per head, and per batch row and head (LTX-Video's (B, N, H*D)), with the norms, joint streams
    Case(F32, 64, 45, 45, batch=2, heads=3, rope="interleaved", rope_tables="batch-heads", q_norm=True, k_norm=True,
         name="f32-rope-per-batch-and-head"),
    Case(BF16, 80, 33, 33, rope="half", rope_tables="heads", joint=(17, 17), layout="bnhd",
         name="bf16-rope-per-head-joint"),
    # RoPE tables per batch row shared by every head (Z-Image's, Lumina 2's), with grouped-query heads, the norms, a
    # key mask and a scale of its own (Lumina 2's call)
    Case(F32, 72, 41, 41, batch=2, heads=6, kv_heads=2, layout="bnhd", rope="interleaved", rope_tables="batch",
         q_norm=True, k_norm=True, mask=("bool", "b11n"), scale=0.3, name="f32-d72-gqa-rope-per-batch-masked"),
    # tables of one angle per pair of channels, read in place from complex tables (the processors' Z-Image,
    # Lumina 2 and Qwen-Image calls), both layouts, shared and per batch row; LTX-2's split tables per head
    Case(F32, 72, 41, 41, batch=2, heads=6, kv_heads=2, layout="bnhd", rope="interleaved", rope_tables="batch",
         rope_pairs=True, q_norm=True, k_norm=True, mask=("bool", "b11n"), name="f32-d72-gqa-rope-pairs-per-batch"),
    Case(BF16, 64, 33, 33, joint=(17, 17), layout="bnhd", rope="interleaved", rope_pairs=True, q_norm=True,
         k_norm=True, joint_q_norm=True, joint_k_norm=True, name="bf16-joint-rope-pairs"),
    Case(F16, 80, 45, 45, batch=2, heads=3, rope="half", rope_tables="batch-heads", rope_pairs=True,
         name="f16-d80-half-rope-pairs-per-head"),
    # a key mask expanded over the queries (stride 0) reads as a key mask; a mask's key dim of 1 broadcasts
    Case(F16, 48, 19, 45, batch=2, mask=("float", "expanded"), name="f16-mask-expanded"),
    Case(F32, 64, 33, 45, batch=2, mask=("f32", "bhm1"), name="f32-rowmask-broadcast-keys"),
    # a negative scale keeps the scale out of the running max (the positive-scale path folds it into exp2)
    Case(F16, 48, 19, 45, scale=-0.2, kv_lens=[30], name="f16-negative-scale-kvlens"),
    # block-sparse attention (``block_mask``): each broadcast shape, tiles smaller than the mask's blocks (several
    # key blocks of the loop per listed block: a key block of 96 at 32-key tiles), partial last blocks, GQA, both
    # layouts, strided inputs, key padding (blocks past a row's last key left out; a row of none), the prologue, a
    # key mask inside the listed blocks, query blocks attending to no block
    Case(F32, 64, 200, 333, batch=2, heads=2, kv_heads=1, block_mask=(64, 32, "bhmn"), name="f32-block-sparse-gqa"),
    Case(BF16, 80, 130, 97, batch=2, layout="bnhd", kv_lens=[90, 0], block_mask=(64, 64, "b1mn"),
         name="bf16-block-sparse-bnhd-kvlens"),
    Case(F16, 96, 77, 150, strided=True, block_mask=(64, 96, "mn"), name="f16-block-sparse-strided-wide-blocks"),
    Case(F32, 128, 256, 256, heads=3, rope="interleaved", q_norm=True, k_norm=True, mask=("bool", "b11n"),
         block_mask=(128, 64, "1hmn"), blocks=(32, 16), name="f32-block-sparse-prologue-key-mask"),
    # the elements of each block (``block_tiles``, a flex BlockMask's mask_mod): random tiles, a whole and an empty
    # one among them, with GQA, key padding, the bnhd layout, the prologue
    Case(F32, 64, 200, 333, batch=2, heads=2, kv_heads=1, block_mask=(64, 32, "bhmn"), block_tiles=True,
         name="f32-block-tiles-gqa"),
    Case(BF16, 80, 130, 97, batch=2, layout="bnhd", kv_lens=[90, 0], block_mask=(64, 64, "b1mn"), block_tiles=True,
         name="bf16-block-tiles-bnhd-kvlens"),
    Case(F16, 128, 256, 256, heads=3, rope="half", q_norm=True, k_norm=True, block_mask=(128, 64, "1hmn"),
         block_tiles=True, blocks=(32, 16), name="f16-block-tiles-prologue"),
    # partial rotary (``rope_dims``): the first R channels turn, the rest pass (Stable Audio 3's R = D/2, whose
    # tables of D/2 columns are one per channel, not one per pair; R/2 columns one per pair; pairs crossing the
    # head dim's two chunks; interleaved, with the keys' own tables and a joint stream)
    Case(F32, 64, 97, 77, rope="half", rope_dims=32, q_norm=True, k_norm=True, name="f32-partial-rope-half"),
    Case(BF16, 128, 77, 77, batch=2, heads=4, kv_heads=2, layout="bnhd", rope="half", rope_pairs=True,
         rope_dims=64, name="bf16-partial-rope-pairs-gqa-bnhd"),
    Case(F16, 96, 45, 60, rope="half", rope_dims=80, k_norm=True, strided=True, name="f16-partial-rope-split-d"),
    Case(F32, 80, 33, 40, joint=(13, 13), rope="interleaved", rope_dims=48, key_rope=True,
         name="f32-partial-rope-interleaved-joint-key-rope"),
    # differential attention (``negative=(q_neg, k_neg, v_neg)``, Stable Audio 3's): the negative stream's own
    # queries through q's prologue, with partial rotary; with GQA, the bnhd layout and both streams' key padding
    Case(F32, 64, 97, 77, negative=77, negative_q=True, negative_scale=1.0, rope="half", rope_dims=32, q_norm=True,
         k_norm=True, name="f32-differential-prologue"),
    Case(BF16, 64, 130, 130, batch=2, heads=4, kv_heads=2, layout="bnhd", negative=130, negative_q=True,
         kv_lens=[130, 90], negative_kv_lens=[130, 60], name="bf16-differential-gqa-bnhd-lens"),
    # ... under a mask, which applies to both streams' keys (the same tokens): a key mask with the prologue, a
    # boolean mask per query with GQA, finfo.min rows (a padded query: zeros in both streams)
    Case(F32, 64, 97, 77, negative=77, negative_q=True, negative_scale=1.0, mask=("float", "b11n"), rope="half",
         rope_dims=32, q_norm=True, k_norm=True, name="f32-differential-key-mask-prologue"),
    Case(BF16, 64, 77, 130, batch=2, heads=4, kv_heads=2, layout="bnhd", negative=130, negative_q=True,
         mask=("bool", "bhmn"), kv_lens=[130, 90], name="bf16-differential-mask-per-query-gqa"),
    Case(F16, 48, 45, 45, batch=2, negative=45, negative_q=True, mask=("min", "b1mn"), negative_kv_lens=[45, 30],
         name="f16-differential-min-mask"),
    # RoPE by halves within sections (``rope_sections``, Allegro's t, h, w thirds of a 96-channel head): sections
    # crossing the head dim's two chunks, with the norm, GQA, the bnhd layout; one angle per pair; under partial
    # rotary (the sections split the turned channels)
    Case(F32, 96, 97, 77, heads=4, kv_heads=2, layout="bnhd", rope="half", rope_sections=3, q_norm=True, k_norm=True,
         name="f32-rope-sections-gqa-bnhd"),
    Case(BF16, 96, 77, 130, rope="half", rope_pairs=True, rope_sections=3, strided=True,
         name="bf16-rope-sections-pairs-strided"),
    Case(F16, 128, 45, 60, batch=2, rope="half", rope_dims=96, rope_sections=2, key_rope=True,
         name="f16-rope-sections-partial-key-rope"),
]


@needs_interpreter
@pytest.mark.parametrize("use_tma", [False, True], ids=["pointers", "descriptors"])
@pytest.mark.parametrize("case", GRID, ids=str)
def test_kernel_accuracy(case, use_tma):
    q, k, v, kw = build(case)
    if use_tma and not descriptors_fit(case):
        return refused_descriptors(q, k, v, kw, case.blocks)
    out = run_kernel(q, k, v, kw, case.blocks, use_tma=use_tma)
    streams_accurate(case, out, *references(q, k, v, kw))


def random_case(seed: int):
    """(case, launch) drawn at random: any dtype, head dims 8-256 (odd ones too), lengths 1-150 (block edges and odd
    ones), 1-3 batches, 1-4 heads with grouped/multi-query key/value heads, either layout, strided inputs, a scale of
    either sign; the variants (key padding, packed segments with their own key offsets and padding, joint streams,
    negative keys with their padding and a scale of either sign) and the prologue (RoPE of both kinds, each norm),
    alone and combined, a mask (per key or per query) and a block mask (one query and one key stream); a random tile
    and warps, and a random one of the launcher's modes that takes the case: descriptor loads, row sums by MMA, the
    overlap, stream-K, warp specialisation, joined keys, prologue head groups."""
    import random

    r = random.Random(seed)

    def length(most=150):
        return r.choice([1, 2, 15, 16, 17, 31, 33, 63, 64, 65, 77, 97, 128, 129, r.randint(1, most)])

    def offsets(total, segments):
        return [0, *sorted(r.randint(0, total) for _ in range(segments - 1)), total]

    heads = r.choice([1, 2, 3, 4])
    c = dict(dtype=r.choice([F32, F16, BF16]), head_dim=r.choice([8, 16, 32, 40, 48, 59, 64, 72, 80, 96, 100, 111,
                                                                     112, 128, 160, 192, 203, 256]),
             n_q=length(), n_k=length(), heads=heads, kv_heads=r.choice([g for g in (1, 2, 3, 4) if heads % g == 0]),
             batch=r.choice([1, 1, 2, 3]), layout=r.choice(["bhnd", "bnhd"]), strided=r.random() < 0.3,
             blocks=r.choice([(16, 16), (32, 16), (16, 32), (32, 32), (64, 32), (64, 16), (32, 64), (64, 64),
                              (128, 16), (128, 32)]))
    if r.random() < 0.2:
        c["scale"] = r.choice([0.05, 0.3, -0.2, 1.5])
    variant = r.choice(["plain", "kv_lens", "segments", "joint", "negative", "joint+negative"])
    if variant == "segments":
        segments, c["batch"] = r.randint(1, 4), r.choice([1, 2])
        c["cu_q"] = offsets(c["n_q"], segments)
        if r.random() < 0.5:
            c["cu_k"] = offsets(c["n_k"], segments)
        else:
            c["n_k"] = c["n_q"]
        if r.random() < 0.4:
            c["kv_lens"] = [r.randint(0, 40) for _ in range(segments * c["batch"])]
    if "joint" in variant:
        c["joint"] = (length(40), length(40))
    if "negative" in variant:
        c["negative"] = length(80)
        c["negative_scale"] = r.choice([0.75, 1.0, 3.0, -0.5])
        if r.random() < 0.4:
            c["negative_kv_lens"] = [r.randint(0, c["negative"]) for _ in range(c["batch"])]
    if variant in ("kv_lens", "joint", "negative", "joint+negative") and r.random() < 0.5:
        c["kv_lens"] = [r.randint(0, c["n_k"] + c.get("joint", (0, 0))[1]) for _ in range(c["batch"])]
    if c["head_dim"] % 2 == 0 and r.random() < 0.4:
        c["rope"] = r.choice(["interleaved", "half"])
    for flag in ("q_norm", "k_norm") + (("joint_q_norm", "joint_k_norm") if "joint" in c else ()):
        c[flag] = r.random() < 0.3
    case = Case(**c, name=f"random-{seed}")

    # the modes that take the case (the launcher's limits, each an error otherwise)
    fits = descriptors_fit(case)
    one_stream = case.negative is None
    plain = one_stream and case.kv_lens is None and case.cu_q is None
    modes = [{}, {"rowsum_mma": True}, {"overlap": True}, {"overlap": True, "rowsum_mma": True}]
    if fits:
        modes.append({"use_tma": True})
    if plain:
        modes.append({"stream_k": r.choice([1, 2, 3, 7]), **({"use_tma": True} if fits else {})})
    if one_stream and fits:
        modes.append({"use_tma": True, "warp_spec": True, **({"join_keys": True} if case.joint else {})})
    if case.joint is not None and one_stream:
        modes.append({"join_keys": True, **({"use_tma": True} if fits else {})})
    launch = r.choice(modes)
    if _prologued(case) and _prologue_group(case) > 1 and r.random() < 0.3:
        launch["prologue_heads"] = 2
    launch["warps"] = r.choice([1, 2, 4])
    # (drawn last, so that the cases drawn before masks existed stay as they were)
    if case.negative is None and "stream_k" not in launch and r.random() < 0.3:
        shapes = ["b11n", "bh1n", "1h1n", "n", "strided", "expanded"]
        if not launch.get("warp_spec"):  # (masks per query are not warp-specialised: the launcher refuses them)
            shapes += ["bhmn", "b1mn", "mn", "transposed"]
            joined = case.joint if case.joint is not None else (0, 0)
            if case.n_q + joined[0] == case.n_k + joined[1]:
                shapes.append("outer")
        case.mask = (r.choice(["bool", "float", "f32", "diffusers"]), r.choice(shapes))
    if case.rope is not None and r.random() < 0.3:  # (tables per head need as many key heads as query heads)
        case.rope_tables = r.choice(["heads", "batch-heads", "batch"] if case.kv_heads in (None, case.heads) else
                                    ["batch"])
    if case.rope is not None:
        case.rope_pairs = r.random() < 0.3
    # block-sparse, for one query and one key stream (drawn last too): the tile narrowed to divide the blocks, the
    # experiments that refuse it left out
    if case.joint is None and case.negative is None and case.cu_q is None and r.random() < 0.4:
        case.block_mask = (r.choice([64, 128]), r.choice([32, 64, 96, 128]), r.choice(["bhmn", "b1mn", "1hmn", "mn"]))
        case.blocks = (math.gcd(case.blocks[0], case.block_mask[0]), math.gcd(case.blocks[1], case.block_mask[1]))
        case.block_tiles = case.mask is None and r.random() < 0.5
        for experiment in ("stream_k", "overlap", "warp_spec"):
            launch.pop(experiment, None)
    if case.rope is not None and r.random() < 0.25:  # partial rotary (drawn last: the cases before keep their draws)
        case.rope_dims = 2 * r.randint(1, case.head_dim // 2)
    if case.rope == "half" and r.random() < 0.25:  # RoPE by sections (drawn last): any that split the turned channels
        turned = case.rope_dims or case.head_dim
        case.rope_sections = r.choice([n for n in range(1, 5) if turned % (2 * n) == 0])
    # differential attention (drawn last): the negative stream's own queries over as many keys, under a mask of
    # both streams' keys or of each query's
    if case.negative is not None and case.joint is None and r.random() < 0.3:
        case.negative_q, case.negative = True, case.n_k
        if r.random() < 0.5:
            case.mask = (r.choice(["bool", "float", "f32", "diffusers", "min"]),
                         r.choice(["b11n", "bh1n", "n", "strided", "bhmn", "b1mn", "mn"]))
    return case, launch


@needs_interpreter
@pytest.mark.parametrize("seed", range(64))
def test_kernel_accuracy_random_cases(seed):
    """Random cases and launch modes (``random_case``), against float64, every output element written."""
    case, launch = random_case(seed)
    q, k, v, kw = build(case, seed=seed)
    out = run_kernel(q, k, v, kw, case.blocks, **launch)
    streams_accurate(case, out, *references(q, k, v, kw))


@needs_interpreter
def test_norm_weights_in_any_float_dtype_and_stride():
    """QK-norm weights are read in their own dtype (a bf16 model's) and through any stride: the kernel widens them as
    it loads them, with no cast or copy launched beforehand unless they are strided."""
    case = Case(BF16, 80, 97, 77, rope="half", q_norm=True, k_norm=True, name="bf16-strided-norm-weights")
    q, k, v, kw = build(case, seed=3)
    for name in ("q_norm_weight", "k_norm_weight"):
        spaced = torch.full((2 * case.head_dim,), float("nan"), dtype=BF16)
        spaced[::2] = kw[name]
        kw[name] = spaced[::2]
    assert kw["q_norm_weight"].dtype == BF16 and kw["q_norm_weight"].stride() == (2,)
    out = run_kernel(q, k, v, kw, case.blocks)
    ref64, lowp = references(q, k, v, kw)
    assert_accurate(out, ref64, lowp, BF16)


def _gpu_default_tile(case):
    """The GPU's untuned tile for a case (narrowed, with a block mask, to divide its blocks, as the op does)."""
    from pydiff.kernels.attention import default_config

    heavy = case.joint is not None or case.negative is not None
    block_m, block_n = default_config(case.head_dim, heavy, case.negative is not None, case.dtype.itemsize)[:2]
    if case.block_mask is not None:
        block_m, block_n = math.gcd(block_m, case.block_mask[0]), math.gcd(block_n, case.block_mask[1])
    return block_m, block_n


# The op's interpreter path runs one large tile; a GPU runs default_config's (or the tuner's) tiles, so the cases
# that once failed on a GPU are run here with that tile and with a narrow one: many query and key blocks per
# segment, segments starting off block boundaries, masked head-dim chunks.
MULTI_BLOCK = [GRID[i] for i in (1, 13, 17)]


@needs_interpreter
@pytest.mark.parametrize("tile", ["gpu-default", (32, 16)], ids=str)
@pytest.mark.parametrize("case", MULTI_BLOCK, ids=str)
def test_kernel_accuracy_gpu_tiles(case, tile):
    q, k, v, kw = build(case, seed=15)
    blocks = _gpu_default_tile(case) if tile == "gpu-default" else tile
    assert blocks != case.blocks
    out = run_kernel(q, k, v, kw, blocks)
    ref64, lowp = references(q, k, v, kw)
    assert_accurate(out, ref64, lowp, case.dtype)


def _prologued(case) -> bool:
    return case.rope is not None or case.q_norm or case.k_norm or case.joint_q_norm or case.joint_k_norm


def _prologue_group(case) -> int:
    """The largest power of two dividing every head count the case's QK prologue sees (q, k and the joint stream's)."""
    counts = [case.heads, case.kv_heads or case.heads]
    group = 1
    while all(n % (group * 2) == 0 for n in counts):
        group *= 2
    return group


#: prologued grid cases with at least two heads per group, and three made for it: Flux's layout at head dim 80 (split
#: into 64 + 16) with GQA, four heads in (B, H, N, D) with half-split RoPE, and tables per batch row and head
PROLOGUE_GROUP_CASES = [c for c in GRID if _prologued(c) and _prologue_group(c) > 1] + [
    Case(BF16, 80, 37, 29, heads=8, kv_heads=4, layout="bnhd", rope="interleaved", q_norm=True, k_norm=True,
         joint=(11, 7), joint_q_norm=True, name="bf16-d80-bnhd-gqa-joint-prologue"),
    Case(F32, 64, 45, 45, heads=4, batch=2, rope="half", q_norm=True, negative=9, strided=True,
         name="f32-d64-half-rope-negative-strided"),
    Case(F16, 64, 33, 29, heads=4, batch=2, rope="interleaved", rope_tables="batch-heads", q_norm=True, k_norm=True,
         name="f16-rope-per-batch-and-head"),
]


@needs_interpreter
@pytest.mark.parametrize("case", PROLOGUE_GROUP_CASES, ids=str)
def test_prologue_head_groups(case):
    """The QK prologue taking several heads per program (``prologue_heads``, an experiment whose programs share the
    RoPE table rows across their heads) is as accurate as one head per program, against float64."""
    q, k, v, kw = build(case, seed=21)
    ref64, lowp = references(q, k, v, kw)
    for heads in sorted({2, _prologue_group(case)}):
        out = run_kernel(q, k, v, kw, case.blocks, prologue_heads=heads)
        streams_accurate(case, out, ref64, lowp)


@needs_interpreter
def test_prologue_head_groups_bad_input():
    case, = [c for c in PROLOGUE_GROUP_CASES if c.name == "bf16-d80-bnhd-gqa-joint-prologue"]  # 8 and 4 heads
    q, k, v, kw = build(case)
    for heads in (0, 3, 8):
        with pytest.raises(ValueError, match=r"prologue_heads must be a power of two dividing .*\[4, 8\], got"):
            run_kernel(q, k, v, kw, case.blocks, prologue_heads=heads)


ROWSUM_CASES = [c for c in GRID if c.name in (
    "f32-d64-97x97", "bf16-d80-1x97-mqa", "f32-varlen-kvlens", "f32-joint-kvlens", "f16-negative-lens-gqa",
    "f32-joint-norms-rope-negative", "f16-negative-scale-kvlens")]


@needs_interpreter
@pytest.mark.parametrize("case", ROWSUM_CASES, ids=str)
def test_row_sums_on_the_tensor_cores(case):
    """The kernel's ROWSUM_MMA experiment (row sums as P times ones): as accurate as the adds, every variant, the
    partial key block and the fully masked rows (kv_lens 0) included."""
    q, k, v, kw = build(case, seed=17)
    out = run_kernel(q, k, v, kw, case.blocks, rowsum_mma=True)
    streams_accurate(case, out, *references(q, k, v, kw))


# stream-K takes plain and joint attention: dtypes, head dims 40/48/64/80/96/128 (split and padded), 1 query row,
# GQA and MQA, (B, N, H, D) and strided inputs; joint streams with the QK prologue (norms, RoPE) before them
STREAM_K_CASES = [c for c in GRID if c.name in (
    "f32-d64-97x97", "f16-d40-77x333-bnhd-gqa", "bf16-d80-1x97-mqa", "f16-d96-strided", "f32-d48-custom-scale",
    "f16-d128-bnhd-strided-mqa", "bf16-joint-gqa-bnhd", "f16-flux-like-even", "f32-joint-one-sided-norms")]


@needs_interpreter
@pytest.mark.parametrize("programs, use_tma", [(1, False), (5, False), (100, False), (5, True)])
@pytest.mark.parametrize("case", STREAM_K_CASES, ids=str)
def test_stream_k(case, programs, use_tma):
    """Stream-K (``_attn_fwd_stream_k`` + ``_attn_stream_k_combine``): every query block's keys shared among programs
    in every way the counts allow (one program with all the work; query blocks split between 2 or more programs,
    some holding a middle part only, joint blocks split inside either key stream or across the two; more programs
    than key blocks, so some have none), at a tile with several query and key blocks, with pointer and (shared
    blocks) descriptor loads; every output element written, as accurate as the one-program-per-block kernel."""
    q, k, v, kw = build(case, seed=19)
    if use_tma and not descriptors_fit(case):
        return refused_descriptors(q, k, v, kw, (32, 32), stream_k=programs)
    out = run_kernel(q, k, v, kw, (32, 32), stream_k=programs, use_tma=use_tma)
    streams_accurate(case, out, *references(q, k, v, kw))


def test_experiments_take_what_they_can_run():
    """The experiments' limits are errors before launch. Stream-K: a fixed tile, row sums by adds, no other
    variant, at least one program; row sums by MMA and the overlap: a fixed tile; the overlap not with stream-K."""
    from pydiff.kernels.attention import _attn_fwd_autotuned, _attn_fwd_kernel, attention_forward

    q = torch.randn(1, 1, 8, 16)
    lens = torch.tensor([4], dtype=torch.int32)
    fixed_tile = "overlap: an experiment for a fixed tile"
    for kernel, extra, match in ((_attn_fwd_kernel, {"stream_k": 0}, "stream_k must be >= 1"),
                                 (_attn_fwd_autotuned, {"stream_k": 3, "block_m": None}, "fixed tile"),
                                 (_attn_fwd_kernel, {"stream_k": 3, "rowsum_mma": True}, "row sums by adds"),
                                 (_attn_fwd_kernel, {"stream_k": 3, "kv_lens": lens}, "plain and joint"),
                                 (_attn_fwd_kernel, {"stream_k": 3, "negative": (q, q)}, "plain and joint"),
                                 (_attn_fwd_autotuned, {"rowsum_mma": True, "block_m": None}, "rowsum_mma"),
                                 (_attn_fwd_autotuned, {"overlap": True, "block_m": None}, fixed_tile),
                                 (_attn_fwd_kernel, {"overlap": True, "stream_k": 2}, fixed_tile),
                                 (_attn_fwd_autotuned, {"warp_spec": True, "block_m": None}, "warp_spec: for a fixed"),
                                 (_attn_fwd_kernel, {"warp_spec": True}, "needs descriptor loads"),
                                 (_attn_fwd_kernel, {"warp_spec": True, "use_tma": True, "overlap": True},
                                  "not with rowsum_mma, overlap"),
                                 (_attn_fwd_kernel, {"warp_spec": True, "use_tma": True, "negative": (q, q)},
                                  "one key stream only"),
                                 (_attn_fwd_kernel, {"warp_spec": True, "use_tma": True,
                                                     "joint": (q, q, q, torch.empty_like(q))}, "one key stream only"),
                                 (_attn_fwd_kernel, {"warp_spec": True, "use_tma": True, "join_keys": False,
                                                     "joint": (q, q, q, torch.empty_like(q)),
                                                     "k_norm_weight": q[0, 0, 0]}, "joint only with join_keys"),
                                 (_attn_fwd_kernel, {"warp_spec": True, "use_tma": True,
                                                     "attn_mask": torch.ones(1, 1, 8, 8, dtype=torch.bool)},
                                  "warp_spec: not with a mask per query"),
                                 (_attn_fwd_kernel, {"join_keys": True}, "join_keys: for joint attention"),
                                 *((_attn_fwd_kernel, {"block_mask": torch.ones(1, 1, dtype=torch.bool),
                                                       "block_size": (64, 32), **extra}, match)
                                   for extra, match in (({"stream_k": 2}, "block_mask: one query and one key"),
                                                        ({"overlap": True}, "not with the stream_k, overlap"),
                                                        ({"negative": (q, q)}, "block_mask: one query"),
                                                        ({"block_n": 64}, r"the tile \(16, 64\) must divide"))),
                                 (_attn_fwd_kernel, {"join_keys": True, "stream_k": 2,
                                                     "joint": (q, q, q, torch.empty_like(q))}, "not with stream_k")):
        with pytest.raises(ValueError, match=match):
            attention_forward(kernel, q, q, q, torch.empty_like(q), scale=0.25,
                              **{"block_m": 16, "block_n": 16, **extra})
    # warp_spec reads q through a descriptor: a head dim with a stride is an error (k and v may have one), in either
    # query stream of a joint call
    strided = torch.randn(1, 1, 8, 32)[..., ::2]
    with pytest.raises(ValueError, match=r"q is read through a tensor descriptor.*strides \(256, 256, 32, 2\)"):
        attention_forward(_attn_fwd_kernel, strided, q, q, torch.empty_like(q), scale=0.25, block_m=16, block_n=16,
                          use_tma=True, warp_spec=True)
    with pytest.raises(ValueError, match=r"warp_spec: joint q is read through a tensor descriptor"):
        attention_forward(_attn_fwd_kernel, q, q, q, torch.empty_like(q), scale=0.25, block_m=16, block_n=16,
                          use_tma=True, warp_spec=True, join_keys=True, joint=(strided, q, q, torch.empty_like(q)))
    # where a prologue writes q anew, the new tensor is what the descriptor reads: a strided q is fine then, 72-byte
    # rows (fp16, head dim 36) are not, and that is named before the prologue launches
    rope = (torch.rand(8, 16), torch.rand(8, 16))
    keys = torch.randn(2, 1, 8, 16)
    out = torch.full_like(strided, float("nan"))
    attention_forward(_attn_fwd_kernel, strided, keys[0:1], keys[1:], out, scale=0.25, block_m=16, block_n=16,
                      use_tma=True, warp_spec=True, rope=rope)
    assert rel_err(out, attention_reference(strided, keys[0:1], keys[1:], scale=0.25, rope=rope,
                                            compute_dtype=torch.float64)) <= 1e-5
    # (the interpreter's descriptors take the layout rules too: a key or value head dim with a stride is an error)
    with pytest.raises(ValueError, match="use_tma: the key/value tensors need"):
        attention_forward(_attn_fwd_kernel, q, q, strided, torch.empty_like(q), scale=0.25, block_m=16, block_n=16,
                          use_tma=True)
    launched = []

    class Prologue:
        def __getitem__(self, grid):
            return lambda *args, **flags: launched.append(grid)

    rope = (torch.rand(8, 36), torch.rand(8, 36))
    for x in (torch.randn(1, 1, 8, 72, dtype=torch.float16)[..., ::2], torch.randn(1, 1, 8, 36, dtype=torch.float16)):
        with pytest.raises(ValueError, match=r"q is read through a tensor descriptor.*\(288, 288, 36, 1\) \(its "
                                             r"prologue's output\)"):
            attention_forward(_attn_fwd_kernel, x, x, x, torch.empty_like(x), scale=0.25, block_m=16, block_n=16,
                              use_tma=True, warp_spec=True, rope=rope, prologue_kernel=Prologue())
    # the key/value tensors too are judged before the prologue, as the kernel will read them: keys a prologue
    # writes anew with 72-byte rows, a joint call's keys and values joined into such rows, negative keys; and
    # warp_spec without use_tma, which takes descriptor loads on a GPU only
    half = dict(dtype=torch.float16)
    fit, unfit = torch.randn(1, 1, 8, 64, **half), torch.randn(1, 1, 8, 36, **half)
    rope64 = (torch.rand(8, 64), torch.rand(8, 64))
    for x, extra, match in (
            (unfit, dict(rope=rope), "use_tma: the key/value tensors need"),
            (unfit, dict(k_norm_weight=torch.rand(36, **half)), "use_tma: the key/value tensors need"),
            (unfit, dict(join_keys=True, k_norm_weight=torch.rand(36, **half),
                         joint=(unfit, unfit, unfit, torch.empty_like(unfit))), "use_tma: the key/value tensors need"),
            (fit, dict(rope=rope64, negative=(unfit, unfit)), "use_tma: the key/value tensors need"),
            (fit, dict(rope=rope64, use_tma=None, warp_spec=True), "warp_spec: needs descriptor loads"),
            (fit, dict(block_m=None), "use_tma: for a fixed tile")):
        with pytest.raises(ValueError, match=match):
            attention_forward(_attn_fwd_kernel, x, x, x, torch.empty_like(x), scale=0.25,
                              **{"block_m": 16, "block_n": 16, "use_tma": True, "prologue_kernel": Prologue(),
                                 **extra})
    assert launched == []
    # strided keys and values that the key join copies into fitting rows run through descriptors, accurately
    gen = torch.Generator().manual_seed(5)
    big = torch.randn(4, 1, 16, 64, generator=gen)[..., ::2]          # head-dim stride 2: unfit as they are
    q2, k2, v2 = (torch.randn(1, 1, 8, 32, generator=gen) for _ in range(3))
    out, out2 = torch.full((1, 1, 16, 32), float("nan")), torch.full_like(q2, float("nan"))
    k_weight = 0.5 + torch.rand(32, generator=gen)
    attention_forward(_attn_fwd_kernel, big[0:1], big[1:2], big[2:3], out, scale=0.25, block_m=16, block_n=16,
                      use_tma=True, join_keys=True, k_norm_weight=k_weight, joint=(q2, k2, v2, out2))
    refs = attention_reference(big[0:1], big[1:2], big[2:3], scale=0.25, k_norm_weight=k_weight, joint=(q2, k2, v2),
                               compute_dtype=torch.float64)
    assert max(rel_err(out, refs[0]), rel_err(out2, refs[1])) <= 1e-5


# the warp-specialised key loop (WARP_SPEC: q through descriptors too), one key stream: every dtype, head dims
# padded (40) and split (80, 96), one query row, GQA and MQA, (B, N, H, D), strided keys and values (q's head dim
# must be contiguous), the QK prologue before it; keys ending inside a block (every block masked), key padding with
# a row of none, packed segments (one empty)
WARP_SPEC_CASES = [
    Case(F32, 64, 97, 64, batch=2, name="f32-d64-97x64"),
    Case(F16, 40, 77, 96, heads=4, kv_heads=2, layout="bnhd", name="f16-d40-77x96-bnhd-gqa"),
    Case(BF16, 80, 1, 64, heads=3, kv_heads=1, name="bf16-d80-1x64-mqa"),
    Case(F16, 96, 45, 32, layout="bnhd", name="f16-d96-45x32-bnhd"),
    Case(F32, 128, 33, 64, heads=1, name="f32-d128-33x64"),
    Case(BF16, 64, 50, 96, rope="interleaved", q_norm=True, k_norm=True, name="bf16-norm-rope-d64"),
    Case(F16, 80, 33, 77, heads=3, kv_heads=1, name="f16-d80-33x77-partial"),
    Case(F32, 64, 40, 77, batch=3, kv_lens=[77, 13, 0], name="f32-kvlens"),
    Case(BF16, 40, 99, 60, batch=2, cu_q=[0, 33, 33, 99], cu_k=[0, 21, 40, 60], layout="bnhd", name="bf16-varlen"),
    Case(F16, 64, 50, 77, batch=2, mask=("diffusers", "b11n"), name="f16-key-mask"),
]


# joint calls with their keys joined first (one key loop): key padding over the joined sequence, GQA in (B, N, H, D),
# Flux's per-stream norms and RoPE (with a negative stream, and one-sided norms, whose unnormed keys are copied)
JOINED_KEY_CASES = [c for c in GRID if c.joint is not None]


@needs_interpreter
@pytest.mark.parametrize("loads", ["pointers", "descriptors", "warp-specialised"])
@pytest.mark.parametrize("case", JOINED_KEY_CASES, ids=str)
def test_joined_keys(case, loads, monkeypatch):
    """A joint call with join_keys (the keys through their prologue into one tensor, the values copied beside
    them, the kernel's JOINED_KV: one key loop over both streams): as accurate as two key loops, both outputs
    written. join_keys=None joins them where the call has a key prologue and warp specialisation is asked for
    (which takes one key loop only), and not without warp specialisation."""
    import pydiff.kernels.attention as A

    warp_spec = loads == "warp-specialised"
    if warp_spec and case.negative is not None:
        pytest.skip("a negative stream is a second key loop, which warp specialisation does not take")
    joins, join = [], A._joined_keys
    monkeypatch.setattr(A, "_joined_keys", lambda *a: joins.append(a[2][0].shape) or join(*a))
    q, k, v, kw = build(case, seed=31)
    if warp_spec and case.mask is not None and case.mask[1] in _ROW_MASKS:
        for join_keys in (None, True):  # (refused before the keys are joined)
            with pytest.raises(ValueError, match="warp_spec: not with a mask per query"):
                run_kernel(q, k, v, kw, case.blocks, use_tma=True, warp_spec=True, join_keys=join_keys)
        assert not joins
        return
    prologued = any(name in kw for name in ("rope", "k_norm_weight", "joint_k_norm_weight"))
    out = run_kernel(q, k, v, kw, case.blocks, use_tma=loads != "pointers", warp_spec=warp_spec,
                     join_keys=None if warp_spec and prologued else True)
    assert joins == [k.shape]
    streams_accurate(case, out, *references(q, k, v, kw))
    joins.clear()
    run_kernel(q, k, v, kw, case.blocks, use_tma=loads != "pointers")  # (no warp specialisation: not joined)
    assert not joins


@needs_interpreter
@pytest.mark.parametrize("case", WARP_SPEC_CASES, ids=str)
def test_warp_specialised_loop(case):
    """The kernel's WARP_SPEC tiles (``_WARP_SPEC_TILES``' path: q read through tensor descriptors, zero-filled past
    its rows and head dim, the key loop marked for Triton's warp specialisation, which the interpreter runs as a
    plain loop, and a partial last key block masked inside it) at a tile of several query and key blocks: as
    accurate as the plain kernel, every output element written. With keys and values strided (one case's k and v
    are slices of wider tensors) where their head dim is still contiguous."""
    q, k, v, kw = build(case, seed=29)
    if case.name == "f32-d64-97x64":
        k, v = (torch.cat([t, torch.randn_like(t)], dim=-2)[..., ::2, :] for t in (k, v))
        assert not k.is_contiguous() and k.stride(-1) == 1
    out = run_kernel(q, k, v, kw, (32, 32), use_tma=True, warp_spec=True)
    ref64, lowp = references(q, k, v, kw)
    assert_accurate(out, ref64, lowp, case.dtype)

# the overlapped key loop: every variant and dtype, split and padded head dims, partial blocks, key counts giving
# 0, 1, 2 and more whole blocks per stream (kv_lens 16/21/32/33/0 at 16-key blocks: the loop needs two)
OVERLAP_CASES = [c for c in GRID if c.name in (
    "f32-d64-97x97", "f16-d40-77x333-bnhd-gqa", "bf16-d80-1x97-mqa", "f16-d96-strided", "f16-d128-bnhd-strided-mqa",
    "f32-varlen-kvlens", "bf16-varlen-cross", "f32-joint-kvlens", "bf16-joint-gqa-bnhd", "f16-negative-lens-gqa",
    "f32-joint-norms-rope-negative", "f16-negative-scale-kvlens")] + [
    Case(F32, 64, 33, 77, batch=5, kv_lens=[16, 21, 32, 33, 0], name="f32-kvlens-block-counts")]


@needs_interpreter
@pytest.mark.parametrize("case", OVERLAP_CASES, ids=str)
def test_softmax_overlap(case):
    """The kernel's OVERLAP experiment (``_attend_overlapped``: each block's softmax while the next block's scores
    are computed, the P V products one block behind) at a tile of many key blocks: as accurate as the plain loop,
    every output element written; descriptor loads too for the cases without key padding, and with the row sums on
    the tensor cores (ROWSUM_MMA)."""
    q, k, v, kw = build(case, seed=23)
    ref64, lowp = references(q, k, v, kw)
    loads = (False, True) if case.kv_lens is None and case.cu_q is None and descriptors_fit(case) else (False,)
    for use_tma, rowsum_mma in [(tma, False) for tma in loads] + [(False, True)]:
        out = run_kernel(q, k, v, kw, (32, 16), overlap=True, use_tma=use_tma, rowsum_mma=rowsum_mma)
        streams_accurate(case, out, ref64, lowp)


# ----------------------------------------------------------------------------------------------------------------
# the references are themselves checked against independent formulations


def naive_attention(q, k, v, scale, keep=None):
    """softmax(q k^T scale) v in float64 with an explicit boolean key mask; rows with no key give zeros."""
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.einsum("bhqk,bhkd->bhqd", p, v)


def test_reference_against_naive_math():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(3, 4, 9, 16, generator=gen)
    k = torch.randn(3, 2, 11, 16, generator=gen)
    v = torch.randn(3, 2, 11, 16, generator=gen)
    lens = torch.tensor([11, 3, 0])
    keep = (torch.arange(11)[None, :] < lens[:, None])[:, None, None, :]
    ref = attention_reference(q, k, v, kv_lens=lens, compute_dtype=torch.float64)
    assert rel_err(ref, naive_attention(q, k, v, 0.25, keep)) < 1e-12
    assert ref[2].abs().max() == 0
    k_neg, v_neg = torch.randn(3, 2, 5, 16, generator=gen), torch.randn(3, 2, 5, 16, generator=gen)
    ref = attention_reference(q, k, v, negative=(k_neg, v_neg), negative_scale=0.3, compute_dtype=torch.float64)
    expect = naive_attention(q, k, v, 0.25) - 0.3 * naive_attention(q, k_neg, v_neg, 0.25)
    assert rel_err(ref, expect) < 1e-12
    # group attention = packed segments: 2 groups of 3 "images" x 4 tokens attend jointly within their group
    x = torch.randn(1, 2, 24, 16, generator=gen, dtype=torch.float64)
    grouped = attention_reference(x, x, x, cu_seqlens_q=torch.tensor([0, 12, 24]), compute_dtype=torch.float64)
    keep = torch.zeros(24, 24, dtype=torch.bool)
    keep[:12, :12] = keep[12:, 12:] = True
    assert rel_err(grouped, naive_attention(x, x, x, 0.25, keep)) < 1e-12
    # block-sparse: query block i (of 64 tokens) sees key block j (of 32) where the block mask says so; key padding
    # on top; the second query block sees nothing (zeros)
    blocks = torch.rand(3, 4, 2, 1, generator=gen) > 0.4
    blocks[:, :, 1] = False
    q = torch.randn(3, 4, 100, 16, generator=gen)
    ref = attention_reference(q, k, v, kv_lens=lens, block_mask=blocks, block_size=(64, 32),
                              compute_dtype=torch.float64)
    rows = (torch.arange(100) // 64)[:, None].expand(100, 11)
    keep_blocks = blocks[:, :, rows, torch.zeros_like(rows)]  # (one key block: 11 keys)
    keep_lens = (torch.arange(11)[None, :] < lens[:, None])[:, None, None, :]
    assert rel_err(ref, naive_attention(q, k, v, 0.25, keep_blocks & keep_lens)) < 1e-12
    assert ref[:, :, 64:].abs().max() == 0


# ----------------------------------------------------------------------------------------------------------------
# the public API, both backends


API_CASES = [
    Case(F32, 40, 33, 21, batch=2, heads=4, kv_heads=2, layout="bnhd", kv_lens=[21, 8], name="api-bnhd-gqa-lens"),
    Case(F32, 64, 29, 29, joint=(7, 7), rope="half", q_norm=True, k_norm=True, joint_q_norm=True,
         joint_k_norm=True, name="api-joint-prologue"),
    Case(BF16, 64, 31, 17, negative=9, name="api-negative-bf16"),
    Case(F16, 64, 31, 17, negative=17, negative_q=True, rope="interleaved", q_norm=True, name="api-differential-f16"),
    Case(F16, 32, 40, 40, cu_q=[0, 10, 10, 40], name="api-varlen-f16"),
    Case(BF16, 48, 150, 100, batch=2, heads=4, kv_heads=2, layout="bnhd", kv_lens=[100, 33], q_norm=True,
         block_mask=(64, 32, "bhmn"), name="api-block-sparse-bf16"),
]


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_interpreter)])
@pytest.mark.parametrize("case", API_CASES, ids=str)
def test_api_backends(case, backend):
    q, k, v, kw = build(case, seed=3)
    with pydiff.use_backend(backend):
        out = pydiff.attention(q, k, v, **kw)
    ref64, lowp = references(q, k, v, kw)
    if case.joint is not None:
        assert isinstance(out, tuple) and len(out) == 2
        for got, ref in zip(out, ref64):
            assert got.is_contiguous()
            assert_accurate(got, ref, None, case.dtype)
    else:
        assert out.is_contiguous() and out.shape == q.shape
        assert_accurate(out, ref64, lowp, case.dtype)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_interpreter)])
def test_block_mask_forms_agree(backend):
    """A block mask given as a bool tensor with its block sizes, as a flex attention BlockMask of whole blocks (its
    sizes taken from it), and spelled out per query and key as attn_mask give the same output; broadcast over the
    batch or the heads, and as 2-D."""
    gen = torch.Generator().manual_seed(41)
    q = torch.randn(2, 2, 150, 32, generator=gen)
    k, v = torch.randn(2, 2, 300, 32, generator=gen), torch.randn(2, 2, 300, 32, generator=gen)
    dense = torch.rand(2, 2, 3, 5, generator=gen) > 0.5
    dense[1, 0, 2] = False
    with pydiff.use_backend(backend):
        for blocks in (dense, dense[:1], dense[:, :1], dense[0, 0]):
            elements = blocks.repeat_interleave(64, -2)[..., :150, :].repeat_interleave(64, -1)[..., :300]
            expect = pydiff.attention(q, k, v, attn_mask=elements)
            got = pydiff.attention(q, k, v, block_mask=blocks, block_size=64)
            assert rel_err(got, expect) <= 1e-6
            whole = blocks.reshape((1,) * (4 - blocks.dim()) + blocks.shape)
            assert rel_err(pydiff.attention(q, k, v, block_mask=flex_block_mask(whole, 64)), expect) <= 1e-6
        assert pydiff.attention(q, k, v, block_mask=dense, block_size=64)[1, 0, 128:].abs().max() == 0


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_interpreter)])
def test_flex_block_masks_with_a_mask_mod(backend):
    """A flex attention BlockMask made by ``create_block_mask`` (full blocks, and partial ones whose elements its
    mask_mod says): the same output as flex attention's (eagerly, which evaluates the mask_mod everywhere), under
    a block-causal sliding window over 100-token frames (the partial blocks off the block grid), per batch row, a
    row mask per query inside the listed blocks; and with key padding beside it."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    gen = torch.Generator().manual_seed(47)
    q, k, v = (torch.randn(2, 2, n, 32, generator=gen) for n in (300, 333, 333))
    lens = torch.tensor([333, 150])

    def window(b, h, i, j):
        return (i // 100 >= j // 100) & ((i - j).abs() < 150 + 20 * b)

    def padded(b, h, i, j):
        return window(b, h, i, j) & (j < lens[b])

    with pydiff.use_backend(backend):
        for mask_mod, extra in ((window, {}), (padded, {"kv_lens": lens})):
            blocks = create_block_mask(mask_mod, 2, 1, 300, 333, device="cpu", BLOCK_SIZE=64)
            assert blocks.kv_num_blocks.sum() > 0 and blocks.full_kv_num_blocks.sum() > 0  # (both kinds of block)
            expect = flex_attention(q.double(), k.double(), v.double(), block_mask=blocks)
            got = pydiff.attention(q, k, v, block_mask=blocks, **extra)
            assert rel_err(got, expect) <= 1e-5
            # the mask_mod evaluated in the partial blocks only, as a tile each; those it keeps whole or leaves
            # empty are no tiles (whole blocks; blocks out of the mask)
            made = block_mask_tiles(blocks, 300, 333)
            ids, tiles = made["block_tiles"]
            partial = blocks.to_dense().bool() & ~flex_block_mask_full(blocks)
            assert 1 < tiles.shape[0] <= int(partial.sum()) + 1 and tiles[0].all()
            assert all(0 < int(tile.sum()) < tile.numel() for tile in tiles[1:])
            assert int(made["block_mask"].sum()) <= int(blocks.to_dense().sum())
            assert torch.equal(pydiff.attention(q, k, v, **made, **extra), got)


def flex_block_mask_full(blocks) -> torch.Tensor:
    """A flex BlockMask's full blocks, dense (B, H, query blocks, key blocks) bool."""
    from torch.nn.attention.flex_attention import BlockMask

    return BlockMask.from_kv_blocks(blocks.full_kv_num_blocks, blocks.full_kv_indices, BLOCK_SIZE=blocks.BLOCK_SIZE,
                                    compute_q_blocks=False).to_dense().bool()


def _tiles(ids=None, tiles=None):
    """(tile_ids, tiles) for a (1, 1) block mask of 128 x 128 blocks, for the bad-input cases (either replaced)."""
    return (torch.zeros(1, 1, dtype=torch.int32) if ids is None else ids,
            torch.ones(2, 128, 128, dtype=torch.bool) if tiles is None else tiles)


CAUSAL_CASES = [
    Case(F32, 64, 300, 300, batch=2, heads=2, kv_heads=1, name="f32-causal-gqa"),
    Case(BF16, 80, 77, 333, layout="bnhd", kv_lens=[200], name="bf16-causal-short-queries-bnhd-kvlens"),
    Case(F16, 128, 333, 77, strided=True, rope="half", q_norm=True, k_norm=True,
         name="f16-causal-long-queries-prologue"),
]


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_interpreter)])
@pytest.mark.parametrize("case", CAUSAL_CASES, ids=str)
def test_causal(case, backend):
    """``causal=True`` (block-sparse over the lower triangle of 128 x 128 blocks, the diagonal's a triangle tile):
    SDPA's is_causal (top-left aligned) in float64, with GQA, key padding, the prologue, N_q < N_k and N_q > N_k,
    within 2x PyTorch's own low-precision error; a query that sees no key (key padding) gives zeros."""
    q, k, v, kw = build(case, seed=61)
    kw_ref = {name: value for name, value in kw.items() if name != "kv_lens"}
    bhnd = (lambda t: t.transpose(1, 2)) if case.layout == "bnhd" else (lambda t: t)
    keep = torch.ones(case.n_q, case.n_k, dtype=torch.bool).tril()
    if case.kv_lens is not None:
        keep = keep & (torch.arange(case.n_k) < case.kv_lens[0])
    refs = [attention_reference(q, k, v, attn_mask=keep, compute_dtype=dtype, **kw_ref)
            for dtype in ((torch.float64, None) if case.dtype != F32 else (torch.float64,))]
    with pydiff.use_backend(backend):
        out = pydiff.attention(q, k, v, causal=True, **kw)
    seen = keep.any(-1)
    assert_accurate(bhnd(out)[:, :, seen], bhnd(refs[0])[:, :, seen],
                    None if len(refs) == 1 else bhnd(refs[1])[:, :, seen], case.dtype)
    assert bhnd(out)[:, :, ~seen].abs().max() == 0 if (~seen).any() else True


PAIRED_ROW_CASES = [c for c in GRID if c.block_mask is not None and c.block_mask[0] == 64]


@needs_interpreter
@pytest.mark.parametrize("use_tma", [False, True], ids=["pointers", "descriptors"])
@pytest.mark.parametrize("case", PAIRED_ROW_CASES, ids=str)
def test_block_sparse_tiles_over_two_rows_of_blocks(case, use_tma):
    """128-row tiles over 64-row mask blocks (``sparse_tile_fits``: the GPU's tiles over NABLA's blocks): the union
    of the two rows' key blocks listed, each half's scores masked where its row does not attend; as accurate as the
    64-row tile, every output element written, the query block with no key block zeros."""
    q, k, v, kw = build(case, seed=53)
    if use_tma and not descriptors_fit(case):
        return refused_descriptors(q, k, v, kw, (128, 32))
    out = run_kernel(q, k, v, kw, (128, 32), use_tma=use_tma)
    streams_accurate(case, out, *references(q, k, v, kw))
    assert out.transpose(1, 2)[0, :, 64:128].abs().max() == 0 if case.layout == "bnhd" else \
        out[0, :, 64:128].abs().max() == 0


def block_lists_reference(mask, block_q: int, block_k: int, kv_lens, tile_ids=None, tile_count=0):
    """``_block_lists`` written with torch ops (a stable sort of each row, listed blocks first): the counts, and the
    lists with every row's unlisted blocks after its listed ones (the kernel leaves those entries unwritten)."""
    def grid(x):
        return x.reshape((1,) * (4 - x.dim()) + tuple(x.shape))

    mask = grid(mask)
    if kv_lens is not None:
        mask = mask & (torch.arange(mask.shape[-1]) * block_k < kv_lens.reshape(-1, 1, 1, 1))
    halves = []  # (the tiles of each half of a tile, per row of the lists)
    if tile_ids is not None:
        mask, tile_ids = torch.broadcast_tensors(mask, grid(tile_ids))
        tile_ids = torch.where(mask, tile_ids.clamp(0, tile_count - 1), 0)
        halves = [[tile_ids], [tile_ids]]
    bits = [mask.to(torch.int8) * 3]
    if 2 * block_q <= 128:  # (rows for each pair of query blocks: 128-row tiles over 64-row blocks)
        def pairs(x):
            return F.pad(x, (0, 0, 0, x.shape[-2] % 2)).unflatten(-2, (-1, 2))

        padded = pairs(mask).to(torch.int8)
        bits.append(padded[..., 0, :] + 2 * padded[..., 1, :])
        for half, ids in zip(halves, pairs(tile_ids).unbind(-2) if halves else ()):
            half.append(ids)
    bits = torch.cat(bits, -2)
    listed = bits > 0
    counts = listed.sum(-1, dtype=torch.int32)
    rank = (~listed).to(torch.int8)
    if halves:
        halves = [torch.cat(half, -2) for half in halves]
        partial = listed & ((halves[0] != 0) | (halves[1] != 0))
        rank = rank * 2 + partial.to(torch.int8)  # (whole ones first, then partial ones, then the rest)
        counts = torch.stack([counts - partial.sum(-1, dtype=torch.int32), counts], -1)
    order = torch.sort(rank, dim=-1, stable=True).indices
    entries = order * 4 + bits.gather(-1, order)
    if halves:
        entries = torch.stack([entries, *(half.gather(-1, order) for half in halves)], -1)
    return counts, entries.to(torch.int32)


@needs_interpreter
@pytest.mark.parametrize("shape,block_q,lens,tiles", [
    ((2, 2, 4, 6), 64, None, False), ((1, 3, 5, 7), 64, [100, 0], False), ((2, 1, 3, 9), 128, [200, 64], False),
    ((6, 40), 64, None, False), ((2, 2, 5, 6), 64, [150, 70], True), ((1, 2, 3, 4), 128, None, True),
    ((4, 5), 64, None, True)], ids=["bhmn-pairs", "1hmn-lens", "b1mn-128-lens", "mn-wide", "tiles-pairs-lens",
                                   "tiles-128", "tiles-mn"])
def test_block_lists_match_reference(shape, block_q, lens, tiles):
    """The launcher's block lists (``_block_lists``, one Triton launch) equal the torch reference's: the counts, and
    each row's listed entries in order (whole blocks first with tiles; key padding's blocks left out; pairs of
    64-row blocks for 128-row tiles; each broadcast shape); tile ids out of range are clamped to the tiles."""
    from pydiff.kernels.attention import _block_lists

    gen = torch.Generator().manual_seed(sum(shape) + block_q)
    mask = torch.rand(shape, generator=gen) > 0.4
    ids = torch.randint(-1, 4, shape[-2:], generator=gen, dtype=torch.int32) if tiles else None  # (-1, 3: clamped)
    kv_lens = None if lens is None else torch.tensor(lens, dtype=torch.int32)
    counts, lists = _block_lists(mask, block_q, 32, kv_lens, ids, None, 3)
    ref_counts, ref_lists = block_lists_reference(mask, block_q, 32, kv_lens, ids, 3)
    assert counts.shape == ref_counts.shape and lists.shape == ref_lists.shape
    assert torch.equal(counts, ref_counts)
    listed = counts[..., -1] if tiles else counts
    for row in itertools.product(*map(range, listed.shape)):
        assert torch.equal(lists[row][:listed[row]], ref_lists[row][:listed[row]]), row


@needs_interpreter
@pytest.mark.parametrize("per_query", [False, True], ids=["key-mask", "mask-per-query"])
def test_block_sparse_float_mask_shift_from_listed_blocks(per_query):
    """A float mask's shift (its row's largest value, subtracted so that float32 resolves the scores) comes from
    the key blocks a query block attends to: query block 0 attends only to key block 0, where every value is
    -10000 (0 in the blocks it skips); its scores are then resolved as the float64 reference's (the whole row's 0
    would leave s - 10000 in float32: about 1e-3 off)."""
    gen = torch.Generator().manual_seed(47)
    q, k, v = (torch.randn(1, 2, n, 64, generator=gen) for n in (128, 192, 192))
    blocks = torch.ones(2, 3, dtype=torch.bool)
    blocks[0, 1:] = False
    mask = torch.zeros(1, 1, 128 if per_query else 1, 192)
    mask[..., :64] = -10000.0
    with pydiff.use_backend("triton"):
        out = pydiff.attention(q, k, v, attn_mask=mask, block_mask=blocks, block_size=64)
    ref = attention_reference(q.double(), k.double(), v.double(), attn_mask=mask.double(), block_mask=blocks,
                              block_size=64, compute_dtype=torch.float64)
    assert rel_err(out, ref) <= 1e-5


def _band(n: int, width: int, values: str, dtype=torch.float32) -> torch.Tensor:
    """A sliding-window mask over n tokens (|i - j| <= width), batch row 1's tokens from 3n/4 on padding (its last
    queries' windows padding alone), in ``values``' form: bool, float (-inf out), "min" (finfo.min out: rows of it
    alone), "diffusers" (-10000 out)."""
    position = torch.arange(n)
    keep = ((position[:, None] - position[None, :]).abs() <= width)[None, None].repeat(2, 1, 1, 1)
    keep[1, ..., 3 * n // 4:] = False
    if values == "bool":
        return keep
    out = {"float": float("-inf"), "min": torch.finfo(dtype).min, "diffusers": -10000.0}[values]
    return torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, out)


@pytest.mark.parametrize("values", ["bool", "float", "min", "diffusers"])
@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_interpreter)])
def test_mask_block_mask_keeps_the_output(backend, values):
    """``mask_block_mask``: a sliding-window band over 300 tokens as blocks of 64 x 32 that keep any weight (most
    skipped); attention under the mask and those blocks equals attention under the mask alone and the float64
    reference, rows of masked values alone included (finfo.min and -10000 rows list every block, attended
    uniformly as SDPA does; a bool row of none gives zeros either way), and a key mask's blocks broadcast over the
    queries."""
    from pydiff.attention import mask_block_mask

    gen = torch.Generator().manual_seed(48)
    q, k, v = (torch.randn(2, 2, 300, 32, generator=gen) for _ in range(3))
    mask = _band(300, 20, values)
    made = mask_block_mask(mask, 300, 300, (64, 32))
    assert made["block_size"] == (64, 32) and made["block_mask"].shape == (2, 1, 5, 10)
    assert made["block_mask"][0].float().mean() < 0.5
    with pydiff.use_backend(backend):
        sparse = pydiff.attention(q, k, v, attn_mask=mask, **made)
        dense = pydiff.attention(q, k, v, attn_mask=mask)
    ref = attention_reference(q.double(), k.double(), v.double(), attn_mask=mask if values == "bool" else
                              mask.double(), compute_dtype=torch.float64)
    rows = slice(None) if values != "bool" else slice(0, 1)  # (a bool row of no key: NaN in SDPA)
    assert rel_err(sparse, dense) <= 1e-6
    # (the kernel against float64; the torch backend is SDPA in float32, whose -10000 rows are 3e-5 off it)
    assert backend == "torch" or rel_err(sparse[rows], ref[rows]) <= 1e-5
    keys = mask_block_mask((torch.arange(300) < 150)[None, None, None], 300, 300)["block_mask"]
    assert keys.shape == (1, 1, 1, 3) and torch.equal(keys[0, 0, 0], torch.tensor([True, True, False]))


def test_mask_block_mask_bad_inputs():
    from pydiff.attention import mask_block_mask

    with pytest.raises(TypeError, match="attn_mask must be a bool or float tensor"):
        mask_block_mask(torch.ones(4, 4, dtype=torch.int32), 4, 4)
    with pytest.raises(ValueError, match=r"attn_mask must broadcast to \(\.\.\., N_q, N_k\) = \(\.\.\., 5, 4\)"):
        mask_block_mask(torch.ones(4, 4), 5, 4)


@needs_interpreter
def test_block_sparse_kernel_skips_the_masked_blocks():
    """The kernel reads only the listed key blocks: key and value blocks that no query block attends to, filled
    with NaN, leave the output unchanged (a dense mask would multiply them by zero: NaN)."""
    gen = torch.Generator().manual_seed(43)
    q = torch.randn(1, 2, 192, 64, generator=gen)
    k, v = torch.randn(1, 1, 320, 64, generator=gen), torch.randn(1, 1, 320, 64, generator=gen)
    blocks = torch.rand(1, 2, 3, 5, generator=gen) > 0.5
    blocks[..., 1] = blocks[..., 3] = False  # (key blocks 1 and 3: no query of either head attends to them)
    blocks[..., 0] = True
    with pydiff.use_backend("triton"):
        clean = pydiff.attention(q, k, v, block_mask=blocks, block_size=64)
        for t in (k, v):
            t[:, :, 64:128] = t[:, :, 192:256] = float("nan")
        poisoned = pydiff.attention(q, k, v, block_mask=blocks, block_size=64)
    assert torch.isfinite(poisoned).all() and torch.equal(poisoned, clean)


def test_layouts_agree_and_bnhd_is_read_in_place():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 19, 3, 3, 24, generator=gen)  # (B, N, 3, H, D): a fused qkv projection's view
    q, k, v = x.unbind(2)                             # (B, N, H, D) views, no copy
    out = pydiff.attention(q, k, v, layout="bnhd")
    assert out.shape == (2, 19, 3, 24) and out.is_contiguous()
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    torch.testing.assert_close(out, ref.transpose(1, 2))


def test_varlen_gaps_are_zero_and_max_seqlen_is_found():
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 2, 30, 16, generator=gen)
    cu = torch.tensor([2, 10, 25])  # tokens 0-1 and 25-29 belong to no segment
    for backend in ("torch",) + (("triton",) if native.triton_why_not(CPU) is None else ()):
        with pydiff.use_backend(backend):
            out = pydiff.attention(q, q, q, cu_seqlens_q=cu)
            explicit = pydiff.attention(q, q, q, cu_seqlens_q=cu, max_seqlen_q=15)
        assert out[:, :, :2].abs().max() == 0 and out[:, :, 25:].abs().max() == 0
        torch.testing.assert_close(out, explicit)
        seg = F.scaled_dot_product_attention(q[:, :, 10:25], q[:, :, 10:25], q[:, :, 10:25])
        torch.testing.assert_close(out[:, :, 10:25], seg)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_interpreter)])
def test_group_attention_without_copies(backend):
    """Group attention (the images of a group attend jointly): groups of 2 and 3 images of 16 tokens packed in one
    (B, N, H, D) tensor as segments, against SDPA run group by group."""
    gen = torch.Generator().manual_seed(13)
    images = torch.randn(5, 16, 2, 3, 32, generator=gen)   # 5 images, (N, 3 for q/k/v, H, D)
    packed = images.reshape(1, 80, 2, 3, 32)                 # a view: the images are already contiguous
    q, k, v = packed.unbind(3)
    with pydiff.use_backend(backend):
        out = pydiff.attention(q, k, v, layout="bnhd", cu_seqlens_q=torch.tensor([0, 32, 80]), max_seqlen_q=48)
    for start, end in ((0, 32), (32, 80)):
        group = [t[:, start:end].transpose(1, 2) for t in (q, k, v)]
        expect = F.scaled_dot_product_attention(*group).transpose(1, 2)
        torch.testing.assert_close(out[:, start:end], expect, rtol=1e-5, atol=1e-5)


def test_pydiff_attention_is_the_function_and_auto_is_torch_on_cpu():
    import sys

    from pydiff.attention import attention, backends

    assert pydiff.attention is attention and sys.modules["pydiff.attention"].attention is attention
    q = torch.randn(1, 1, 5, 8)
    torch.testing.assert_close(pydiff.attention(q, q, q), attention(q, q, q))
    assert backends.select(CPU)[0] == "torch"
    with pydiff.use_backend("auto"):
        assert backends.select(CPU)[0] == "torch"


# ----------------------------------------------------------------------------------------------------------------
# bad input: a clear error before anything is launched


def _ok():
    gen = torch.Generator().manual_seed(6)
    return torch.randn(2, 4, 9, 16, generator=gen), torch.randn(2, 2, 7, 16, generator=gen), \
        torch.randn(2, 2, 7, 16, generator=gen)


BAD = [
    ("q", lambda q, k, v: (q[0], k, v, {}), ValueError),
    ("k", lambda q, k, v: (q, k[:1], v, {}), ValueError),
    ("heads", lambda q, k, v: (q[:, :3], k, v, {}), ValueError),
    ("each other in heads and length", lambda q, k, v: (q, k, v[:, :, :5], {}), ValueError),
    ("head dim", lambda q, k, v: (q, k[..., :8], v, {}), ValueError),
    ("dtype", lambda q, k, v: (q, k.half(), v, {}), TypeError),
    ("on meta", lambda q, k, v: (q, k.to("meta"), v, {}), ValueError),
    ("on meta", lambda q, k, v: (q, k, v, {"kv_lens": torch.tensor([3, 4], device="meta")}), ValueError),
    ("dtype", lambda q, k, v: (q.double(), k.double(), v.double(), {}), TypeError),
    ("larger than the supported 256", lambda q, k, v: (q.new_zeros(1, 1, 2, 264), k.new_zeros(1, 1, 2, 264),
                                                        v.new_zeros(1, 1, 2, 264), {}), ValueError),
    ("empty", lambda q, k, v: (q[:, :, :0], k, v, {}), ValueError),
    ("layout", lambda q, k, v: (q, k, v, {"layout": "nhd"}), ValueError),
    ("kv_lens", lambda q, k, v: (q, k, v, {"kv_lens": torch.tensor([3])}), ValueError),
    ("kv_lens", lambda q, k, v: (q, k, v, {"kv_lens": torch.tensor([3.0, 4.0])}), TypeError),
    ("joint", lambda q, k, v: (q, k, v, {"joint": (q[:, :2], k, v)}), ValueError),
    ("joint", lambda q, k, v: (q, k, v, {"joint": (q, k)}), ValueError),
    # (a joint stream may hold no queries, but keys, heads and the head dim it must have)
    ("joint q is empty", lambda q, k, v: (q, k, v, {"joint": (q[:, :0], k, v)}), ValueError),
    ("joint k is empty", lambda q, k, v: (q, k, v, {"joint": (q[:, :, :0], k[:, :, :0], v[:, :, :0])}), ValueError),
    ("negative", lambda q, k, v: (q, k, v, {"negative": (k, v[:, :, :3])}), ValueError),
    ("rope", lambda q, k, v: (q, k, v, {"rope": (torch.ones(4, 16), torch.ones(4, 16))}), ValueError),
    ("rope", lambda q, k, v: (q, k, v, {"rope": (torch.ones(9, 16),)}), ValueError),
    (r"rope cos must have 16 columns \(or 8: one angle per pair of channels\)",
     lambda q, k, v: (q, k, v, {"rope": (torch.ones(9, 12), torch.ones(9, 12))}), ValueError),
    ("rope sin must have 16 columns", lambda q, k, v: (q, k, v, {"rope": (torch.ones(9, 8), torch.ones(9, 16))}),
     ValueError),  # (a table of pairs beside a full one)
    ("rope_dims must be even and in \\[2, D = 16\\]", lambda q, k, v: (q, k, v, {
        "rope": (torch.ones(9, 6), torch.ones(9, 6)), "rope_dims": 6 + 1}), ValueError),
    ("rope_dims must be even", lambda q, k, v: (q, k, v, {"rope": (torch.ones(9, 16),) * 2, "rope_dims": 18}),
     ValueError),
    ("rope_dims is given but neither rope nor key_rope is", lambda q, k, v: (q, k, v, {"rope_dims": 8}), ValueError),
    ("rope cos must have 8 columns \\(or 4: one angle per pair of channels; rope_dims\\)", lambda q, k, v: (q, k, v, {
        "rope": (torch.ones(9, 16),) * 2, "rope_dims": 8}), ValueError),
    ("rope_sections must be >= 1, with rope_interleaved=False .* got 3 with rope_interleaved=True", lambda q, k, v: (
        q, k, v, {"rope": (torch.ones(9, 16),) * 2, "rope_sections": 3}), ValueError),
    ("split the 16 turned channels into sections of an even size, got 3", lambda q, k, v: (q, k, v, {
        "rope": (torch.ones(9, 16),) * 2, "rope_interleaved": False, "rope_sections": 3}), ValueError),
    ("split the 12 turned channels into sections of an even size, got 4", lambda q, k, v: (q, k, v, {
        "rope": (torch.ones(9, 12),) * 2, "rope_interleaved": False, "rope_dims": 12, "rope_sections": 4}),
     ValueError),
    ("rope_sections must be >= 1", lambda q, k, v: (q, k, v, {
        "rope": (torch.ones(9, 16),) * 2, "rope_interleaved": False, "rope_sections": 0}), ValueError),
    ("rope_sections is given but neither rope nor key_rope is", lambda q, k, v: (q, k, v, {"rope_sections": 2}),
     ValueError),
    ("rope cos must be a floating-point table", lambda q, k, v: (q, k, v, {"rope": (torch.ones(9, 4, 16),) * 2}),
     TypeError),
    (r"a per-head table must be \(1 or B = 2, tokens, 1 or H = 4, D\), its heads those of q and k alike \(H_kv = 2\)",
     lambda q, k, v: (q, k, v, {"rope": (torch.ones(1, 9, 4, 16),) * 2}), ValueError),  # (GQA: 4 and 2 heads)
    ("a per-head table", lambda q, k, v: (q, k, v, {"rope": (torch.ones(3, 9, 1, 16),) * 2}), ValueError),
    # the keys' own tables: rows for the 7 keys, per head the 2 key heads'; the queries' then for the 9 queries alone
    (r"key_rope cos must have 16 columns \(or 8: one angle per pair of channels\), as many as key_rope cos, and >= 7 "
     r"rows", lambda q, k, v: (q, k, v, {"key_rope": (torch.ones(6, 16),) * 2}), ValueError),
    (r"key_rope cos: a per-head table must be \(1 or B = 2, tokens, 1 or H = 2, D\)",
     lambda q, k, v: (q, k, v, {"key_rope": (torch.ones(1, 7, 4, 16),) * 2}), ValueError),
    ("key_rope must be a", lambda q, k, v: (q, k, v, {"key_rope": torch.ones(7, 16)}), ValueError),
    (r"rope cos must have 16 columns .* >= 9 rows", lambda q, k, v: (q, k, v, {"rope": (torch.ones(8, 16),) * 2,
                                                                             "key_rope": (torch.ones(7, 16),) * 2}),
     ValueError),
    ("q_norm_weight", lambda q, k, v: (q, k, v, {"q_norm_weight": torch.ones(8)}), ValueError),
    ("joint_q_norm_weight", lambda q, k, v: (q, k, v, {"joint_q_norm_weight": torch.ones(16)}), ValueError),
    ("negative_kv_lens", lambda q, k, v: (q, k, v, {"negative_kv_lens": torch.tensor([1, 2])}), ValueError),
    ("cu_seqlens_q", lambda q, k, v: (q, k, v, {"cu_seqlens_q": torch.tensor([0, 5, 3])}), ValueError),
    ("cu_seqlens_q", lambda q, k, v: (q, k, v, {"cu_seqlens_q": torch.tensor([0.0, 5.0])}), TypeError),
    ("cannot be combined", lambda q, k, v: (q, k, v, {"cu_seqlens_q": torch.tensor([0, 5]),
                                                      "negative": (k, v)}), ValueError),
    ("scale", lambda q, k, v: (q, k, v, {"scale": float("nan")}), ValueError),
    ("attn_mask must be a bool", lambda q, k, v: (q, k, v, {"attn_mask": torch.ones(7, dtype=torch.int32)}),
     TypeError),
    ("attn_mask must be a bool", lambda q, k, v: (q, k, v, {"attn_mask": torch.ones(7, dtype=torch.float64)}),
     TypeError),
    ("attn_mask is on meta", lambda q, k, v: (q, k, v, {"attn_mask": torch.ones(7, device="meta")}), ValueError),
    (r"attn_mask must broadcast to \(B, H, N_q, N_k\) = \(2, 4, 9, 7\)",
     lambda q, k, v: (q, k, v, {"attn_mask": torch.ones(2, 4, 8, 7)}), ValueError),  # rows for 8 queries, not 9
    ("attn_mask must broadcast", lambda q, k, v: (q, k, v, {"attn_mask": torch.ones(9, 8)}), ValueError),
    ("attn_mask must broadcast", lambda q, k, v: (q, k, v, {"attn_mask": torch.ones(2, 2, 1, 7)}), ValueError),
    ("attn_mask must broadcast", lambda q, k, v: (q, k, v, {"attn_mask": torch.ones(8)}), ValueError),
    ("attn_mask must broadcast", lambda q, k, v: (q, k, v, {"attn_mask": torch.ones(1, 2, 1, 1, 7)}), ValueError),
    ("attn_mask must broadcast", lambda q, k, v: (q, k, v, {"attn_mask": torch.ones(())}), ValueError),
    ("attn_mask cannot be combined with negative=\\(k_neg, v_neg\\) \\(negative-prompt attention: give its padding as "
     "negative_kv_lens\\)", lambda q, k, v: (q, k, v, {"attn_mask": torch.ones(7), "negative": (k, v)}), ValueError),
    ("with differential attention .* whose keys must then be as many \\(N_k = 7\\)", lambda q, k, v: (q, k, v, {
        "attn_mask": torch.ones(7), "negative": (q, k[:, :, :5], v[:, :, :5])}), ValueError),
    # block masks: 9 queries and 7 keys make one block each
    (r"block_size must be \(query block, key block\) in multiples of \(64, 32\) tokens .* got \(48, 32\)",
     lambda q, k, v: (q, k, v, {"block_mask": torch.ones(1, 1, dtype=torch.bool), "block_size": (48, 32)}),
     ValueError),
    ("block_size must be an int or a", lambda q, k, v: (q, k, v, {"block_mask": torch.ones(1, 1, dtype=torch.bool),
                                                                   "block_size": "64"}), TypeError),
    ("block_size is given but block_mask is not", lambda q, k, v: (q, k, v, {"block_size": 64}), ValueError),
    ("block_mask must be a bool tensor", lambda q, k, v: (q, k, v, {"block_mask": torch.ones(1, 1)}), TypeError),
    ("block_mask is on meta", lambda q, k, v: (q, k, v, {"block_mask": torch.ones(1, 1, dtype=torch.bool,
                                                                                    device="meta")}), ValueError),
    (r"block_mask must broadcast to \(B, H, ceil\(N_q / 128\), ceil\(N_k / 128\)\) = \(2, 4, 1, 1\) \(its last two "
     r"sizes exactly\)", lambda q, k, v: (q, k, v, {"block_mask": torch.ones(2, 2, 1, 1, dtype=torch.bool)}),
     ValueError),  # (the key heads' count, not the query heads')
    ("block_mask must broadcast", lambda q, k, v: (q, k, v, {"block_mask": torch.ones(1, 2, dtype=torch.bool),
                                                             "block_size": (64, 32)}), ValueError),
    ("block_mask must broadcast", lambda q, k, v: (q, k, v, {"block_mask": torch.ones(1, dtype=torch.bool)}),
     ValueError),
    ("block_mask cannot be combined with joint=", lambda q, k, v: (q, k, v, {
        "block_mask": torch.ones(1, 1, dtype=torch.bool), "joint": (q, k, v)}), ValueError),
    ("block_mask cannot be combined", lambda q, k, v: (q, k, v, {
        "block_mask": torch.ones(1, 1, dtype=torch.bool), "negative": (k, v)}), ValueError),
    ("attn_mask cannot be combined with a BlockMask that has a mask_mod", lambda q, k, v: (q, k, v, {
        "block_mask": flex_block_mask(torch.ones(1, 1, 1, 1, dtype=torch.bool), 64,
                                       mask_mod=lambda b, h, i, j: i >= j),
        "attn_mask": torch.ones(7, dtype=torch.bool)}), ValueError),
    ("block_size .* differs from the BlockMask's BLOCK_SIZE", lambda q, k, v: (q, k, v, {
        "block_mask": flex_block_mask(torch.ones(1, 1, 1, 1, dtype=torch.bool), 64), "block_size": 128}),
     ValueError),
    (r"negative q \(3, 4, 9, 16\) .* must have q's shape \(2, 4, 9, 16\)", lambda q, k, v: (q, k, v, {
        "negative": (q[:1].expand(3, -1, -1, -1), k, v)}), ValueError),
    ("negative must be a \\(k_neg, v_neg\\) or \\(q_neg, k_neg, v_neg\\) tuple", lambda q, k, v: (q, k, v, {
        "negative": (q, k, v, v)}), ValueError),
    ("differential attention\\) cannot be combined with joint=", lambda q, k, v: (q, k, v, {
        "negative": (q, k, v), "joint": (q, k, v)}), ValueError),
    ("causal cannot be combined with block_mask", lambda q, k, v: (q, k, v, {
        "causal": True, "block_mask": torch.ones(1, 1, dtype=torch.bool)}), ValueError),
    ("causal cannot be combined with joint=", lambda q, k, v: (q, k, v, {"causal": True, "joint": (q, k, v)}),
     ValueError),
    ("causal cannot be combined with .* attn_mask", lambda q, k, v: (q, k, v, {
        "causal": True, "attn_mask": torch.ones(7, dtype=torch.bool)}), ValueError),
    ("block_tiles is given but block_mask is not", lambda q, k, v: (q, k, v, {"block_tiles": _tiles()}), ValueError),
    (r"block_tiles must be a \(tile_ids, tiles\) tuple", lambda q, k, v: (q, k, v, {
        "block_mask": torch.ones(1, 1, dtype=torch.bool), "block_tiles": _tiles()[1]}), ValueError),
    ("block_tiles cannot be combined with a BlockMask that has a mask_mod", lambda q, k, v: (q, k, v, {
        "block_mask": flex_block_mask(torch.ones(1, 1, 1, 1, dtype=torch.bool), 128,
                                       mask_mod=lambda b, h, i, j: i >= j), "block_tiles": _tiles()}), ValueError),
    ("block_tiles cannot be combined with attn_mask", lambda q, k, v: (q, k, v, {
        "block_mask": torch.ones(1, 1, dtype=torch.bool), "block_tiles": _tiles(),
        "attn_mask": torch.ones(7, dtype=torch.bool)}), ValueError),
    (r"block_tiles' ids must be an int32 tensor shaped like block_mask \(1, 1\)", lambda q, k, v: (q, k, v, {
        "block_mask": torch.ones(1, 1, dtype=torch.bool), "block_tiles": _tiles(ids=torch.zeros(1, 1).long())}),
     TypeError),
    (r"block_tiles' tiles must be a bool tensor \(T >= 1, 128, 128\)", lambda q, k, v: (q, k, v, {
        "block_mask": torch.ones(1, 1, dtype=torch.bool), "block_tiles": _tiles(tiles=torch.ones(2, 128, 64) > 0)}),
     TypeError),
    ("block_tiles' tiles are on meta", lambda q, k, v: (q, k, v, {
        "block_mask": torch.ones(1, 1, dtype=torch.bool),
        "block_tiles": _tiles(tiles=torch.ones(2, 128, 128, dtype=torch.bool, device="meta"))}), ValueError),
]


@pytest.mark.parametrize("needle,make,error", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_bad_input_raises_before_launch(needle, make, error, monkeypatch):
    q, k, v = _ok()
    q, k, v, kw = make(q, k, v)
    launched = []
    module = attention_module
    for name in list(module.backends.impls):
        monkeypatch.setitem(module.backends.impls, name, lambda *a, **kw: launched.append(a))
    with pytest.raises(error, match=needle):
        pydiff.attention(q, k, v, **kw)
    assert not launched


def test_grid_axes_take_large_batches(monkeypatch):
    """The kernels put the heads on a CUDA grid's second axis and the batch (times the segments) on its third, each
    up to 65535 programs, in the order one axis of B * H ran them. So a batch x heads past 65535 launches: temporal
    attention in a video UNet attends over the frames with a batch of videos x latent pixels (SVD at 576 x 1024 with
    guidance: 2 x 72 x 128 = 18432, times 5 heads). Heads, or batch x segments, past 65535 are an error before any
    launch, the prologue's included."""
    from pydiff.kernels import attention as kernels

    launches = []

    def launch(kernel, grid, args, flags, *rest, **kwargs):
        launches.append((kernel, grid(flags) if callable(grid) else grid))

    monkeypatch.setattr(kernels.plans, "launch", launch)
    gen = torch.Generator().manual_seed(3)

    def call(batch, heads, n, layout="bnhd", **kw):
        q = torch.randn(batch, n, heads, 8, generator=gen) if layout == "bnhd" else \
            torch.randn(batch, heads, n, 8, generator=gen)
        launches.clear()
        kernels.attention_forward(kernels._attn_fwd_kernel, q, q, q, torch.empty_like(q), bnhd=layout == "bnhd",
                                  scale=0.3, block_m=16, block_n=16, **kw)
        return [grid for _, grid in launches]

    # 20000 videos' pixels x 5 heads = 100000 (B, H) pairs; a QK norm launches the prologue on q and k first
    norm = torch.rand(8) + 0.5
    assert call(20000, 5, 3, q_norm_weight=norm, k_norm_weight=norm) == \
        [(1, 5, 20000), (1, 5, 20000), (1, 5, 20000)]
    assert call(3, 4, 40, layout="bhnd") == [(3, 4, 3)]  # 40 queries in blocks of 16
    cu = torch.tensor([0, 7, 20, 33], dtype=torch.int32)
    assert call(2, 3, 33, cu_seqlens_q=cu, max_seqlen_q=13) == [(1, 3, 6)]  # 2 batches x 3 segments
    joint = [torch.randn(2, 9, 3, 8, generator=gen) for _ in range(3)]
    assert call(2, 3, 20, joint=(*joint, torch.empty_like(joint[0]))) == [(2 + 1, 3, 2)]
    for batch, heads, kw in ((65536, 1, {}), (1, 65536, {}), (1, 65536, {"q_norm_weight": norm}),
                             (1, 1, {"cu_seqlens_q": torch.arange(65537, dtype=torch.int32), "max_seqlen_q": 1})):
        n = 65536 if "cu_seqlens_q" in kw else 1
        with pytest.raises(ValueError, match="at most 65535 heads and 65535 batch x segments"):
            call(batch, heads, n, **kw)
        assert not launches


# ----------------------------------------------------------------------------------------------------------------
# torch.library: opcheck, torch.compile(fullgraph=True), the triton_op form of the registration


def _op_args(q, k, v, kw, max_seqlen=0):
    rope = kw.get("rope", (None, None))
    joint = kw.get("joint", (None, None, None))
    *negative_q, neg_k, neg_v = kw.get("negative", (None, None))
    neg = (neg_k, neg_v)
    return (q, k, v, kw.get("scale", q.shape[-1] ** -0.5), kw["layout"], kw.get("kv_lens"),
            kw.get("cu_seqlens_q"), kw.get("cu_seqlens_k"), max_seqlen, *joint, *neg, kw.get("negative_scale", 1.0),
            kw.get("negative_kv_lens"), rope[0], rope[1], kw.get("rope_interleaved", True), kw.get("q_norm_weight"),
            kw.get("k_norm_weight"), kw.get("joint_q_norm_weight"), kw.get("joint_k_norm_weight"),
            kw.get("norm_eps", 1e-6), kw.get("attn_mask"), *kw.get("key_rope", (None, None)), kw.get("block_mask"),
            *kw.get("block_size", (0, 0)), *kw.get("block_tiles", (None, None)), kw.get("rope_dims", 0),
            negative_q[0] if negative_q else None, kw.get("rope_sections", 1))


OPCHECK_CASES = [
    Case(F32, 16, 9, 7, layout="bnhd", kv_lens=[4], name="plain"),
    Case(F32, 16, 9, 9, joint=(5, 5), rope="interleaved", q_norm=True, k_norm=True, joint_q_norm=True,
         joint_k_norm=True, negative=6, name="joint-prologue-negative"),
    Case(F32, 16, 130, 70, batch=2, kv_lens=[70, 20], rope="half", key_rope=True, block_mask=(64, 32, "b1mn"),
         name="block-sparse-key-rope"),
    Case(F32, 16, 130, 70, heads=2, block_mask=(64, 32, "1hmn"), block_tiles=True, name="block-tiles"),
    Case(F32, 16, 9, 7, negative=5, negative_q=True, rope="half", rope_dims=8, rope_sections=2, q_norm=True,
         name="differential-partial-rope-sections"),
]


@pytest.mark.parametrize("case,backend", [
    (OPCHECK_CASES[0], "torch"), (OPCHECK_CASES[1], "torch"), (OPCHECK_CASES[2], "torch"),
    pytest.param(OPCHECK_CASES[0], "triton", marks=needs_interpreter),
    pytest.param(OPCHECK_CASES[2], "triton", marks=needs_interpreter), (OPCHECK_CASES[3], "torch"),
    pytest.param(OPCHECK_CASES[3], "triton", marks=needs_interpreter), (OPCHECK_CASES[4], "torch"),
    pytest.param(OPCHECK_CASES[4], "triton", marks=needs_interpreter),
], ids=["plain-torch", "joint-prologue-negative-torch", "block-sparse-torch", "plain-triton", "block-sparse-triton",
        "block-tiles-torch", "block-tiles-triton", "differential-torch", "differential-triton"])
def test_opcheck(case, backend):
    q, k, v, kw = build(case, seed=7)
    with pydiff.use_backend(backend):
        torch.library.opcheck(torch.ops.pydiff.attention.default, _op_args(q, k, v, kw))


def test_opcheck_random_cases():
    """opcheck (schema, fake tensors, autograd registration) over random cases: every variant, layout and stride
    combination ``random_case`` draws gets outputs of the right shape, dtype and strides from the fake too."""
    for seed in range(24):
        case = random_case(seed)[0]
        q, k, v, kw = build(case, seed=seed)
        longest = 0 if case.cu_q is None else max(max(b - a for a, b in zip(case.cu_q, case.cu_q[1:])), 1)
        with pydiff.use_backend("torch"):
            torch.library.opcheck(torch.ops.pydiff.attention.default, _op_args(q, k, v, kw, max_seqlen=longest))


def test_opcheck_varlen():
    q, k, v, kw = build(Case(F32, 16, 12, 12, cu_q=[0, 5, 12], kv_lens=[3, 7], name="varlen"), seed=8)
    torch.library.opcheck(torch.ops.pydiff.attention.default, _op_args(q, k, v, kw, max_seqlen=7))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_interpreter)])
def test_torch_compile_fullgraph(backend):
    case = Case(F32, 16, 11, 11, joint=(5, 5), rope="half", q_norm=True, k_norm=True, joint_q_norm=True,
                joint_k_norm=True, name="compile")
    q, k, v, kw = build(case, seed=9)

    def block(q, k, v, q2, k2, v2):
        img, txt = pydiff.attention(q * 2, k, v, joint=(q2, k2, v2), rope=kw["rope"], rope_interleaved=False,
                                    q_norm_weight=kw["q_norm_weight"], k_norm_weight=kw["k_norm_weight"],
                                    joint_q_norm_weight=kw["joint_q_norm_weight"],
                                    joint_k_norm_weight=kw["joint_k_norm_weight"], norm_eps=kw["norm_eps"])
        return img.sum(1) + 1, txt

    with pydiff.use_backend(backend):
        eager = block(q, k, v, *kw["joint"])
        torch._dynamo.reset()
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")(q, k, v, *kw["joint"])
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)


def test_torch_compile_block_masks():
    """Under torch.compile a BlockMask with a mask_mod is refused with the way out (its tiles take a host read);
    its tiles made before (``block_mask_tiles``) compile with fullgraph and give the eager output, as does
    ``causal=True``."""
    from torch.nn.attention.flex_attention import create_block_mask

    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 2, n, 32, generator=gen) for n in (300, 333, 333))
    blocks = create_block_mask(lambda b, h, i, j: i // 100 >= j // 100, 1, 1, 300, 333, device="cpu",
                               BLOCK_SIZE=64)
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"block_mask_tiles\(block_mask, N_q, N_k\)"):
        torch.compile(lambda q: pydiff.attention(q, k, v, block_mask=blocks), fullgraph=True,
                      backend="aot_eager")(q)
    made = block_mask_tiles(blocks, 300, 333)
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, mask, ids, tiles: pydiff.attention(
        q, k, v, block_mask=mask, block_size=64, block_tiles=(ids, tiles)), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, made["block_mask"], *made["block_tiles"]),
                               pydiff.attention(q, k, v, block_mask=blocks))
    # causal=True (its blocks and tiles made from the sizes alone) traces too
    torch._dynamo.reset()
    causal = torch.compile(lambda q: pydiff.attention(q * 2, k, v, causal=True), fullgraph=True,
                           backend="aot_eager")
    torch.testing.assert_close(causal(q), pydiff.attention(q * 2, k, v, causal=True))


def test_torch_compile_inductor_cpu():
    q, k, v, kw = build(Case(F32, 16, 13, 9, kv_lens=[5], name="inductor"), seed=10)

    def f(q, k, v, lens):
        return pydiff.attention(q.sin(), k, v, kv_lens=lens).cos()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, kw["kv_lens"]), f(q, k, v, kw["kv_lens"]))


def test_torch_export():
    class Block(torch.nn.Module):
        def forward(self, q, k, v, q2, k2, v2):
            img, txt = pydiff.attention(q, k, v, layout="bnhd", joint=(q2, k2, v2))
            return img.flatten(2), txt.flatten(2)

    q, k, v, kw = build(Case(F32, 16, 9, 9, layout="bnhd", joint=(4, 4), name="export"), seed=14)
    args = (q, k, v, *kw["joint"])
    program = torch.export.export(Block(), args)
    assert "pydiff.attention" in str(program.graph)
    for a, b in zip(program.module()(*args), Block()(*args)):
        torch.testing.assert_close(a, b)


@needs_interpreter
def test_triton_op_registration_runs_eagerly():
    """The CUDA registration (torch.library.triton_op) built on CPU: the same body, dispatched eagerly."""
    op = attention_module.define_attention_op("pydiff_test::attention_triton_op", use_triton_op=True)
    q, k, v, kw = build(Case(F32, 16, 9, 7, negative=4, name="triton-op"), seed=11)
    with pydiff.use_backend("triton"):
        outs = op(*_op_args(q, k, v, kw))
    ref64, _ = references(q, k, v, kw)
    assert_accurate(outs[0], ref64, None, F32)
    # what a GPU machine does with CPU tensors: the torch backend traced through the triton_op body, varlen included
    q, k, v, kw = build(Case(F32, 16, 12, 12, cu_q=[0, 5, 12], kv_lens=[3, 7], name="varlen"), seed=8)
    with pydiff.use_backend("torch"):
        torch.library.opcheck(op, _op_args(q, k, v, kw, max_seqlen=7))


def test_tiling_choices():
    from pydiff.kernels.attention import (_GPU_CONFIGS, _HEAVY_CONFIGS, _HEAVY_TMA_CONFIGS, _ONE_WARPGROUP_TILES,
                                          _SHORT_KEY_CONFIGS, _TMA_CONFIGS, _WARP_SPEC_TILES, _WIDE_KEY_BLOCK_TILES,
                                          _attn_fwd_autotuned, _prune_configs, default_config, head_dim_blocks)

    # non-powers of two are split into two power-of-two chunks when that is less work than padding
    assert head_dim_blocks(40) == (64, 16, False) and head_dim_blocks(72) == (128, 16, False)
    assert head_dim_blocks(80) == (64, 16, True) and head_dim_blocks(96) == (64, 32, True)
    assert head_dim_blocks(160) == (128, 32, True) and head_dim_blocks(100)[0:3:2] == (128, False)
    assert head_dim_blocks(64)[0:3:2] == (64, False) and head_dim_blocks(8)[0:3:2] == (16, False)
    configs = _attn_fwd_autotuned.configs
    pointer = [c for c in configs if not c.kwargs.get("USE_TMA")]
    assert len(pointer) == len(_GPU_CONFIGS)
    assert len(configs) == len(_GPU_CONFIGS) + len(_TMA_CONFIGS) + len(_WARP_SPEC_TILES)
    base = dict(BLOCK_DA=64, BLOCK_DB=16, SPLIT_D=False, NEG=False, JOINT=False, TMA_OK=False)
    # descriptor candidates only where the launcher found the tensors fit for them; at D 64 the 128 x 128 tile over
    # 4 warps (64 accumulator and 128 score registers per thread) spilled, so it is the one pointer tile pruned, and
    # the single-warpgroup descriptor tiles are for head dims above 64
    shape = lambda c: (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps)  # noqa: E731
    assert _prune_configs(configs, base) == [c for c in pointer if shape(c) != (128, 128, 4)]
    assert len(_prune_configs(configs, {**base, "TMA_OK": True})) == \
        len(configs) - 1 - len(_ONE_WARPGROUP_TILES) - len(_WARP_SPEC_TILES)
    heavy = _prune_configs(configs, {**base, "JOINT": True, "TMA_OK": True})
    assert _HEAVY_CONFIGS <= set(_GPU_CONFIGS) and _HEAVY_TMA_CONFIGS <= set(_TMA_CONFIGS)
    assert len(heavy) == len(_HEAVY_CONFIGS) + len(_HEAVY_TMA_CONFIGS - _ONE_WARPGROUP_TILES)
    assert all(c.num_stages <= 3 for c in heavy)
    # where every key stream is short (text), the variants try narrow key blocks too; one long stream rules them out
    negative = {**base, "NEG": True, "Nk": 77, "Nneg": 77}
    tiles = {shape(c) + (c.num_stages,) for c in _prune_configs(configs, negative)}
    # (128 x 32 over 4 warps would hold two 128 x 64 accumulators: 128 registers per thread, pruned)
    assert tiles == {t for t in _HEAVY_CONFIGS | _SHORT_KEY_CONFIGS if 2 * t[0] * 64 < 128 * t[2] * 32}
    assert (64, 32, 4, 2) in tiles
    for long_stream in ({"Nk": 4096}, {"Nneg": 333}):
        tiles = {shape(c) + (c.num_stages,) for c in _prune_configs(configs, {**negative, **long_stream})}
        assert tiles and tiles <= _HEAVY_CONFIGS
    joint = {**base, "JOINT": True, "Nk": 77, "Nk2": 77}
    assert (64, 32, 4, 2) in {shape(c) + (c.num_stages,) for c in _prune_configs(configs, joint)}
    assert (64, 32, 4, 2) not in {shape(c) + (c.num_stages,) for c in _prune_configs(configs, {**joint, "Nk2": 4096})}
    # 128 rows x D 128 over 4 warps would hold 128 accumulator registers per thread (it spilled): pruned
    d128 = _prune_configs(configs, {**base, "BLOCK_DA": 128})
    assert d128 and all(c.kwargs["BLOCK_M"] * 128 < 128 * c.num_warps * 32 for c in d128)
    # ... except the descriptor-load tiles that put two single-warpgroup CTAs on an SM, for one accumulator (plain
    # or joint), above head dim 64 and not past 128
    tma_kept = lambda args: {shape(c) + (c.num_stages,) for c in _prune_configs(configs, args)  # noqa: E731
                             if c.kwargs.get("USE_TMA")}
    one_warpgroup = lambda args: {t for t in tma_kept(args) if t[0] * 128 >= 128 * t[2] * 32}  # noqa: E731
    d128_tma = {**base, "BLOCK_DA": 128, "TMA_OK": True}
    assert _ONE_WARPGROUP_TILES and _ONE_WARPGROUP_TILES <= set(_TMA_CONFIGS) & _HEAVY_TMA_CONFIGS
    assert one_warpgroup(d128_tma) == one_warpgroup({**d128_tma, "JOINT": True}) == _ONE_WARPGROUP_TILES
    assert _ONE_WARPGROUP_TILES <= one_warpgroup({**base, "BLOCK_DB": 32, "SPLIT_D": True, "TMA_OK": True})  # D 96
    assert not one_warpgroup({**d128_tma, "NEG": True})
    assert not one_warpgroup({**d128_tma, "BLOCK_DB": 32, "SPLIT_D": True})  # D 160
    assert not tma_kept({**base, "TMA_OK": True}) & _ONE_WARPGROUP_TILES
    # the 64 x 128 descriptor tile: for every variant up to head dim 64, not above
    wide_keys = lambda args: tma_kept(args) & _WIDE_KEY_BLOCK_TILES  # noqa: E731
    assert _WIDE_KEY_BLOCK_TILES and _WIDE_KEY_BLOCK_TILES <= set(_TMA_CONFIGS) & _HEAVY_TMA_CONFIGS
    for variant in ({}, {"JOINT": True}, {"NEG": True}):
        assert wide_keys({**base, "TMA_OK": True, **variant}) == _WIDE_KEY_BLOCK_TILES
    assert not wide_keys(d128_tma) and not wide_keys({**base, "BLOCK_DB": 32, "SPLIT_D": True, "TMA_OK": True})
    # head dim 256: nothing fits the rule, so the untuned default runs (64 rows: the Hopper matrix instructions)
    for negative, tile in ((True, (32, 32)), (False, (64, 32))):
        wide = _prune_configs(configs, {**base, "BLOCK_DA": 256, "NEG": negative, "HEAD_DIM": 256})
        assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in wide] == [tile]
    # block-sparse: tiles inside the mask's blocks or spanning two rows of them (64 x 32 blocks: 64- and 128-row
    # tiles of 32-key blocks), none warp-specialised; the untuned default narrowed to them at head dim 256
    ws_ok = {**base, "TMA_OK": True, "WS_OK": True, "Nk": 4096}
    for blocks in ((64, 32), (128, 64), (192, 96)):
        sparse = {**ws_ok, "SPARSE": True, "BLOCK_Q": blocks[0], "BLOCK_K": blocks[1]}
        kept = _prune_configs(configs, sparse)
        assert kept and not any(c.kwargs.get("WARP_SPEC") for c in kept)
        fits = [c for c in _prune_configs(configs, ws_ok) if not c.kwargs.get("WARP_SPEC") and blocks[1] %
                c.kwargs["BLOCK_N"] == 0 and (blocks[0] % c.kwargs["BLOCK_M"] == 0 or
                                              c.kwargs["BLOCK_M"] == 2 * blocks[0])]
        assert {shape(c) for c in kept} == {shape(c) for c in fits}
        assert (128 in {c.kwargs["BLOCK_M"] for c in kept}) == (blocks[0] != 192)  # (192: no 2 x 96 or 128 | 192)
    wide = _prune_configs(configs, {**base, "BLOCK_DA": 256, "HEAD_DIM": 256, "SPARSE": True, "BLOCK_Q": 64,
                                    "BLOCK_K": 32})
    assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in wide] == [(64, 32)]
    for d in (32, 64, 128, 160, 256):
        for negative in (False, True):
            bm, bn, warps, stages = default_config(d, heavy=negative, negative=negative)
            assert (2 if negative else 1) * bm * head_dim_blocks(d)[0] <= 128 * warps * 32


def test_default_tiles_fit_shared_memory():
    """Without autotuning, every head dim, dtype and variant gets a tile whose shared memory fits the device:
    Hopper's 16-bit tiles as timed; fp32, an A100 (163 KiB a program) and a consumer card (99 KiB) with fewer stages
    or narrower blocks where those do not fit (fp32 at head dim 128 took 448 KiB, a launch that failed). The
    estimate (``shared_bytes``) is what Triton's compiler allocates for sm_90a at the tiles that take the most."""
    from pydiff.kernels.attention import HOPPER_SHARED, default_config, shared_bytes

    for limit in (HOPPER_SHARED, 166912, 101376):
        for size in (2, 4):
            for head_dim in range(1, 257):
                for heavy, negative in ((False, False), (True, False), (True, True)):
                    tile = default_config(head_dim, heavy, negative, size, limit)
                    assert shared_bytes(*tile, head_dim, size) <= limit, (limit, size, head_dim, heavy, tile)
    assert [default_config(d, False, element_size=2) for d in (64, 96, 128)] == \
        [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3)]
    assert default_config(128, False, element_size=4) == (128, 64, 8, 2)
    assert shared_bytes(128, 128, 8, 3, 128, 4) > HOPPER_SHARED
    tiles = [(128, (128, 128, 8, 3)), (96, (128, 64, 8, 3)), (72, (64, 64, 4, 2)), (256, (64, 32, 4, 2))]
    compiled = _resources_tool(
        "from benchmarks.attention_resources import compile_attention\n"
        f"for head_dim, tile in {tiles!r}:\n"
        "    info = {}\n    compile_attention(head_dim, tile, {}, info=info)\n    print(info['shared'])").split()
    assert [int(n) for n in compiled] == [shared_bytes(*tile, head_dim, 2) for head_dim, tile in tiles]
    # the autotuner's candidates for q's dtype: fp32 at head dim 128 kept 8 of 11 that could not fit
    from pydiff.kernels.attention import _attn_fwd_autotuned, _prune_configs

    base = dict(BLOCK_DA=128, BLOCK_DB=16, SPLIT_D=False, JOINT=False, NEG=False, TMA_OK=True, WS_OK=False,
                HEAD_DIM=128)
    kept = {dtype: [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                    for c in _prune_configs(_attn_fwd_autotuned.configs, {**base, "Q": torch.ones(1, dtype=dtype)})]
            for dtype in (BF16, F32)}
    assert len(kept[BF16]) == len(_prune_configs(_attn_fwd_autotuned.configs, base)) == 11
    assert 0 < len(kept[F32]) < 11 and all(shared_bytes(*tile, 128, 4) <= HOPPER_SHARED for tile in kept[F32])


def test_warp_specialised_candidates(monkeypatch):
    """The warp-specialised tiles: tried only where the launcher found them usable (WS_OK), for one key stream (no
    joint or negative) up to each tile's widest head dim (128; 96 for the 3-stage 128 x 128, 64 for the 256-row
    tile), with a key mask those of 64-key blocks, with a mask per query none; and WS_OK only when asked for
    (PYDIFF_ATTENTION_WARP_SPEC=1), on compute capability 9, with a 16-bit q fit for a tensor descriptor."""
    import pydiff.kernels.attention as A

    configs = A._attn_fwd_autotuned.configs
    base = dict(BLOCK_DA=64, BLOCK_DB=16, SPLIT_D=False, NEG=False, JOINT=False, TMA_OK=True, WS_OK=True)

    def kept(**args):
        return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                for c in A._prune_configs(configs, {**base, **args}) if c.kwargs.get("WARP_SPEC")}

    assert all(c.kwargs.get("USE_TMA") for c in configs if c.kwargs.get("WARP_SPEC"))
    assert kept() == kept(EVEN_N=False, VARLEN=True) == set(A._WARP_SPEC_TILES) and (256, 64, 4, 2) in kept()
    up_to = lambda d: {t for t, widest in A._WARP_SPEC_TILES.items() if widest >= d}  # noqa: E731
    assert (256, 64, 4, 2) not in up_to(80) and (128, 128, 4, 3) in up_to(80) - up_to(128)
    assert kept(BLOCK_DB=16, SPLIT_D=True) == up_to(80) and kept(BLOCK_DA=128) == up_to(128)
    for off in ({"WS_OK": False}, {"JOINT": True}, {"NEG": True}, {"BLOCK_DA": 128, "BLOCK_DB": 32, "SPLIT_D": True},
                {"HAS_BIAS": A.ROW_MASK.value}):
        assert not kept(**off), off
    # (Triton 3.6 compiles the 64-key blocks with a key mask, and no block with a mask per query)
    assert kept(HAS_BIAS=1) == {t for t in A._WARP_SPEC_TILES if t[1] <= 64} != set()
    # one key loop over both streams' keys: the plain call's candidates
    assert A._prune_configs(configs, {**base, "JOINT": True, "JOINED_KV": True}) == A._prune_configs(configs, base)
    assert not kept(TMA_OK=False, WS_OK=False)

    q = torch.randn(1, 2, 8, 64, dtype=torch.float16)
    monkeypatch.setitem(A._CAPABILITY, q.device, 9)
    monkeypatch.setenv("PYDIFF_ATTENTION_WARP_SPEC", "1")
    assert A.warp_spec_usable(q) == A.warp_spec_usable(q.to(torch.bfloat16)) == A._HAS_WARP_SPEC
    assert not A.warp_spec_usable(q.float())  # (TF32 products fail to compile)
    assert not A.warp_spec_usable(torch.randn(1, 2, 8, 128, dtype=torch.float16)[..., ::2])  # a strided head dim
    monkeypatch.setitem(A._CAPABILITY, q.device, 10)
    assert not A.warp_spec_usable(q)
    monkeypatch.setitem(A._CAPABILITY, q.device, 9)
    # a GPU not yet looked up is looked up (the joined-keys decision asks before the key/value checks fill the cache)
    gpu = torch.device("cuda", 7)
    monkeypatch.delitem(A._CAPABILITY, gpu, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    on_gpu = SimpleNamespace(device=gpu, element_size=lambda: 2, data_ptr=lambda: 256, stride=lambda: (512, 64, 1))
    assert A.warp_spec_usable(on_gpu) == A._HAS_WARP_SPEC and A._CAPABILITY[gpu] == 9
    monkeypatch.delitem(A._CAPABILITY, gpu)
    for setting in ("", "0"):
        monkeypatch.setenv("PYDIFF_ATTENTION_WARP_SPEC", setting)
        assert not A.warp_spec_usable(q)


def test_pruner_leaves_out_candidates_that_failed_to_compile():
    """Candidates whose compile failed for the launch being tuned (``_UNBUILT``, set by ``attention_forward`` from
    ``plans.precompile``'s report) are not offered to the tuner; the rest are, as before."""
    import pydiff.kernels.attention as A

    base = dict(BLOCK_DA=64, BLOCK_DB=16, SPLIT_D=False, NEG=False, JOINT=False, TMA_OK=False)
    kept = A._prune_configs(A._attn_fwd_autotuned.configs, base)
    token = A._UNBUILT.set(frozenset({id(kept[0]), id(kept[2])}))
    try:
        assert A._prune_configs(A._attn_fwd_autotuned.configs, base) == [kept[1]] + kept[3:]
    finally:
        A._UNBUILT.reset(token)
    assert A._prune_configs(A._attn_fwd_autotuned.configs, base) == kept


def test_eager_launches_reuse_the_tuners_choice():
    """attention_forward with ``tuned``: the first launch of a specialisation goes through the tuner, later ones
    launch the plain kernel with the tile it chose (and its grid); a new shape goes to the tuner again."""
    import triton
    from pydiff.kernels import attention as kernels

    calls = []
    chosen = triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2)

    class Tuner:
        best_config = None
        configs, arg_names = [chosen], []  # (one candidate: nothing for plans.precompile to compile at once)

        def __getitem__(self, grid):
            def launch(*args, **flags):
                calls.append(("tuner", grid({**flags, **chosen.kwargs}), flags))
                Tuner.best_config = chosen
            return launch

    class Plain:
        def __getitem__(self, grid):
            return lambda *args, **flags: calls.append(("plain", grid(flags), flags))

    tuner = Tuner()
    gen = torch.Generator().manual_seed(5)
    k, v = torch.randn(1, 2, 50, 32, generator=gen), torch.randn(1, 2, 50, 32, generator=gen)
    kernels._TUNED.clear()
    for n_q in (100, 100, 77):
        q = torch.randn(1, 2, n_q, 32, generator=gen)
        kernels.attention_forward(tuner, q, k, v, torch.empty_like(q), scale=0.2, tuned=(tuner, Plain()))
    assert [c[0] for c in calls] == ["tuner", "plain", "tuner"]
    assert calls[1][1] == (2, 2, 1) and calls[1][2]["BLOCK_M"] == 64 and calls[1][2]["num_warps"] == 4
    assert "BLOCK_M" not in calls[0][2] and "BLOCK_M" not in calls[2][2]
    # under CUDA-graph capture a seen signature launches its choice; a new one (which would tune) is an error naming
    # the warm-up, before its launch
    calls.clear()
    with pytest.MonkeyPatch.context() as capture:
        capture.setattr(kernels, "_capturing", lambda q: True)
        q = torch.randn(1, 2, 100, 32, generator=gen)
        kernels.attention_forward(tuner, q, k, v, torch.empty_like(q), scale=0.2, tuned=(tuner, Plain()))
        q = torch.randn(1, 2, 33, 32, generator=gen)
        with pytest.raises(RuntimeError, match=r"first call of each signature .* CUDA graph is being captured; make "
                                               r"the same call once before capturing"):
            kernels.attention_forward(tuner, q, k, v, torch.empty_like(q), scale=0.2, tuned=(tuner, Plain()))
    assert [c[0] for c in calls] == ["plain"]
    kernels._TUNED.clear()


@needs_interpreter
def test_tuned_choice_kept_on_disk(tmp_path, monkeypatch):
    """The tuner's choice is kept in Triton's cache directory: a later process's first launch of the specialisation
    (the in-memory choices cleared) launches the stored tile without the tuner, with the same numbers; a new
    specialisation, an edit of the kernels' file, a damaged entry, a tile the tuner no longer offers or
    PYDIFF_TUNING_CACHE=0 tunes again; an unwritable cache warns and still runs; a bad switch is named before
    anything launches."""
    import triton
    from pydiff.kernels import attention as kernels

    calls = []
    chosen = triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2)
    plain = kernels._attn_fwd_kernel

    class Tuner:
        best_config = None
        configs, arg_names = [chosen], []

        def __getitem__(self, grid):
            def launch(*args, **flags):
                calls.append("tuner")
                Tuner.best_config = chosen
                plain[grid](*args, **flags, **chosen.all_kwargs())
            return launch

    class Plain:
        def __getitem__(self, grid):
            def launch(*args, **flags):
                calls.append(("plain", flags["BLOCK_M"], flags["BLOCK_N"]))
                plain[grid](*args, **flags)
            return launch

    tuner = Tuner()
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(1, 2, 100, 32, generator=gen)
    k, v = torch.randn(1, 2, 50, 32, generator=gen), torch.randn(1, 2, 50, 32, generator=gen)
    ref = attention_reference(q, k, v, scale=0.2, compute_dtype=torch.float64)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PYDIFF_TUNING_CACHE", "1")

    def first_launch(query=q):
        """A new process's first launch of the specialisation: what it launched, its output."""
        kernels._TUNED.clear()
        calls.clear()
        out = torch.full_like(query, float("nan"))
        kernels.attention_forward(tuner, query, k, v, out, scale=0.2, tuned=(tuner, Plain()))
        return list(calls), out

    def stored():
        return [json.loads(path.read_text()) for path in tmp_path.rglob("pydiff-tuned-choice.json")]

    launched, out = first_launch()
    assert launched == ["tuner"] and rel_err(out, ref) <= 1e-5
    assert [entry["choice"] for entry in stored()] == [chosen.all_kwargs()]
    launched, out = first_launch()
    assert launched == [("plain", 64, 32)] and rel_err(out, ref) <= 1e-5
    assert list(kernels._TUNED.values()) == [chosen.all_kwargs()]
    assert first_launch(q[:, :, :77])[0] == ["tuner"] and len(stored()) == 2  # a new specialisation
    monkeypatch.setenv("PYDIFF_TUNING_CACHE", "0")
    assert first_launch()[0] == ["tuner"]
    monkeypatch.setenv("PYDIFF_TUNING_CACHE", "1")
    with monkeypatch.context() as edited:
        edited.setattr(kernels, "_source_digest", lambda: "an edited kernels file")
        assert first_launch()[0] == ["tuner"] and len(stored()) == 3
    for path in tmp_path.rglob("pydiff-tuned-choice.json"):
        entry = json.loads(path.read_text())
        if entry["key"].count("an edited kernels file"):
            path.write_text("{")  # damaged
        else:
            path.write_text(json.dumps({**entry, "choice": {**entry["choice"], "BLOCK_M": 128}}))  # not offered
    assert first_launch()[0] == ["tuner"] and first_launch()[0] == [("plain", 64, 32)]
    with monkeypatch.context() as edited:
        edited.setattr(kernels, "_source_digest", lambda: "an edited kernels file")
        assert first_launch()[0] == ["tuner"] and first_launch()[0] == [("plain", 64, 32)]
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(not_a_directory))
    with pytest.warns(RuntimeWarning, match="could not be kept on disk"):
        launched, out = first_launch()
    assert launched == ["tuner"] and rel_err(out, ref) <= 1e-5
    monkeypatch.setenv("PYDIFF_TUNING_CACHE", "sometimes")
    with pytest.raises(ValueError, match="PYDIFF_TUNING_CACHE must be 0 or 1"):
        first_launch()
    assert calls == []
    kernels._TUNED.clear()


def test_descriptor_layout_rules():
    """Which layouts the tensor-descriptor loads accept (the rest of tma_usable needs a Hopper GPU)."""
    from pydiff.kernels.attention import descriptor_layout_ok, tma_usable

    bf16 = 2
    assert descriptor_layout_ok(4096, (2 * 24 * 77 * 40, 77 * 40, 40, 1), bf16)   # (B, H, N, 40): 80-byte rows
    assert descriptor_layout_ok(4096, (4608 * 24 * 128, 128, 24 * 128, 1), bf16)  # (B, N, H, D) read in place
    assert not descriptor_layout_ok(4096, (77 * 36, 36, 1), bf16)                 # 72-byte rows
    assert not descriptor_layout_ok(4096 + 8, (77 * 40, 40, 1), bf16)             # base 8 bytes off
    assert not descriptor_layout_ok(4096, (77 * 40, 1, 77), bf16)                 # head dim strided
    assert descriptor_layout_ok(4096, (77 * 36, 36, 1), 4)                        # fp32: 144-byte rows
    gen = torch.Generator().manual_seed(7)
    assert not tma_usable([torch.randn(1, 2, 16, 64, generator=gen)])              # CPU tensors never


def test_row_alignment_hint():
    """ROW_ALIGN (16 bytes of elements) only when every batch, head and token stride of every tensor is a multiple
    of it: the kernel tells Triton so, and a false hint would load misaligned vectors."""
    from pydiff.kernels import attention as kernels

    seen = []

    class Capture:
        def __getitem__(self, grid):
            return lambda *args, **flags: seen.append(flags["ROW_ALIGN"])

    gen = torch.Generator().manual_seed(6)

    def launch(q, k, v):
        kernels.attention_forward(Capture(), q, k, v, torch.empty_like(q), scale=0.1, block_m=16, block_n=16)

    def rand(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, generator=gen).to(dtype)

    launch(*(rand(1, 2, 33, 40) for _ in range(3)))                      # rows of 80 bytes
    launch(*(rand(1, 2, 33, 36) for _ in range(3)))                      # rows of 72 bytes
    launch(*(rand(1, 2, 33, 36, dtype=torch.float32) for _ in range(3)))  # rows of 144 bytes
    wide = rand(1, 2, 33, 41)
    launch(wide[..., :40], rand(1, 2, 33, 40), rand(1, 2, 33, 40))      # q rows 82 bytes apart
    assert seen == [8, 1, 4, 1]


def test_measure_batches_back_to_back_calls(monkeypatch):
    """benchmarks.common.measure with ``batch``: each sample is that many calls, and the time is per call."""
    common = pytest.importorskip("benchmarks.common")
    clock = [0.0]  # a call takes exactly 1 ms of this clock: the figure is checked, no time is measured
    monkeypatch.setattr(common, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    calls = []

    def fn():
        calls.append(1)
        clock[0] += 1e-3

    timing = common.measure(fn, warmup=1, min_repeat=4, max_repeat=4, min_time=0.0, batch=3)
    assert timing.n == 4 and len(calls) == 1 + 4 * 3
    assert timing.median == pytest.approx(1e-3)  # per call, not per sample of three


def test_autotune_switch(monkeypatch):
    for value, expect in (("0", False), ("1", True), ("off", False)):
        monkeypatch.setenv("PYDIFF_ATTENTION_AUTOTUNE", value)
        assert attention_module.autotune_enabled() is expect
    monkeypatch.setenv("PYDIFF_ATTENTION_AUTOTUNE", "sometimes")
    with pytest.raises(ValueError, match="PYDIFF_ATTENTION_AUTOTUNE"):
        attention_module.autotune_enabled()


def test_attention_switches_named_before_launch(monkeypatch):
    """The launcher's on/off settings (PYDIFF_ATTENTION_TMA, PYDIFF_ATTENTION_WARP_SPEC, PYDIFF_TUNING_CACHE) take
    0/1, true/false or on/off in any case (so "false" turns descriptor loads off, where only "0" once did); anything
    else is an error naming the variable, before anything launches (the launcher reads them after the prologue)."""
    from pydiff.kernels import attention as kernels
    from pydiff.ops.backend import env_switch

    for value, expect in (("0", False), ("off", False), ("False", False), ("1", True), ("ON", True), ("", True)):
        monkeypatch.setenv("PYDIFF_TEST_SWITCH", value)
        assert env_switch("PYDIFF_TEST_SWITCH") is expect
    monkeypatch.delenv("PYDIFF_TEST_SWITCH")
    assert env_switch("PYDIFF_TEST_SWITCH", default=False) is False
    launched = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **flags: launched.append(grid)

    q = torch.randn(1, 1, 8, 16)
    rope = (torch.rand(8, 16), torch.rand(8, 16))
    for name, _ in kernels._SWITCHES:
        with monkeypatch.context() as bad:
            bad.setenv(name, "yes please")
            with pytest.raises(ValueError, match=f"{name} must be 0 or 1"):
                kernels.attention_forward(Kernel(), q, q, q, torch.empty_like(q), scale=0.25, block_m=16, block_n=16,
                                          rope=rope, prologue_kernel=Kernel())
    assert launched == []


def test_eager_calls_skip_dispatch_but_tracers_see_the_op(monkeypatch):
    """Plain eager calls run the op's body directly (no torch.library dispatch); a dispatch mode, grad-requiring
    inputs or fake tensors go through torch.ops.pydiff.attention, with the same result."""
    from torch.utils._python_dispatch import TorchDispatchMode

    q, k, v, _ = build(Case(F32, 32, 9, 11, name="fast-path"), seed=21)
    from torch._library.triton import is_wrap_triton_enabled

    direct, wrapping = [], []
    body = attention_module._run
    monkeypatch.setattr(attention_module, "_run",
                        lambda call: direct.append(1) or wrapping.append(is_wrap_triton_enabled()) or body(call))
    eager = pydiff.attention(q, k, v)
    # launched as torch.library launches a triton_op body: wrap_triton off (through the tracing op, the autotuner
    # was rebuilt and re-tuned on every call)
    assert len(direct) == 1 and wrapping == [False] and is_wrap_triton_enabled()

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with Seen() as mode:
        traced = pydiff.attention(q, k, v)
    # dispatched: the mode sees the op, whose body runs the same checks and kernels once more
    assert len(direct) == 2 and any("pydiff.attention" in name for name in mode.ops)
    torch.testing.assert_close(traced, eager, rtol=0, atol=0)
    args = lambda q, k, v: _op_args(q, k, v, {"layout": "bhnd"})  # noqa: E731
    assert not attention_module.plain_eager(args(q.requires_grad_(), k, v))
    q = q.detach()
    assert not attention_module.plain_eager(args(q, k, v.requires_grad_()))  # any input, not only the first
    with torch.no_grad():
        assert attention_module.plain_eager(args(q, k, v))
    v = v.detach()
    assert attention_module.plain_eager(args(q, k, v))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as fake:
        fake_k = fake.from_tensor(k)
        assert not attention_module.plain_eager(args(q, k, v))  # the mode is active
    assert not attention_module.plain_eager(args(q, fake_k, v))  # a tensor subclass


def _resources_tool(script: str) -> str:
    """The standard output of ``script`` run with benchmarks/attention_resources.py importable, in a process of its
    own (the tool clears TRITON_INTERPRET at import, for its sm_90a compiles); skips where ptxas cannot compile
    for sm_90a or Triton's wheel has no nvdisasm (the SASS figures)."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0 and ("ptxas" in done.stderr or "nvdisasm" in done.stderr):
        pytest.skip(f"no ptxas for sm_90a or no nvdisasm: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_prologue_head_groups_in_sm90a_code():
    """The QK prologue over head groups (RMSNorm + interleaved RoPE, 16 / heads rows of ``heads`` heads per program,
    4 warps), compiled for sm_90a: no spills, and at most 128 registers (four or more CTAs per SM), as with one head
    per program (Triton 3.6: 56-64 registers; 3.9: 42-72)."""
    out = _resources_tool("from benchmarks.attention_resources import PROLOGUE_CASES, compile_prologue\n"
                          "for head_dim, heads in PROLOGUE_CASES:\n"
                          "    print(head_dim, heads, *compile_prologue(head_dim, heads)[:2])")
    figures = [[int(x) for x in line.split()] for line in out.splitlines()]
    assert len(figures) >= 6 and any(heads > 1 for _, heads, _, _ in figures), out
    assert all(spill == 0 and registers <= 128 for _, _, registers, spill in figures), out


def test_waves_report_occupancy():
    """attention_resources.py --waves: CTAs per Hopper SM from registers (per warp, in units of 256), shared memory
    (plus the 1 KiB each CTA reserves) and warps, as its table gives them for the tiles the H200 tuner timed. In a
    process of its own: the tool clears TRITON_INTERPRET at import, for its sm_90a compiles."""
    out = _resources_tool("from benchmarks.attention_resources import ctas_per_sm as c; "
                          "print(c(230, 229376, 8), c(127, 57344, 4), c(125, 65536, 8), c(180, 114688, 8), "
                          "c(40, 8192, 4), c(16, 0, 1))")
    # D 128 128 x 128 (shared memory), D 64 64 x 64 (both), D 64 128 x 64 x 8 warps (registers), D 64
    # 128 x 128 x 8 warps (registers: 184 x 32 x 8 > 65536 / 2), a small kernel (registers: 5 x 256 per warp),
    # a one-warp kernel (32 CTAs at most)
    assert out.split() == ["1", "4", "2", "1", "12", "32"]


def test_overlap_puts_the_softmax_under_the_scores_mma():
    """The OVERLAP experiment's point, in the code Triton generates for sm_90a: with it, the softmax's exp2s are
    issued while the next block's score matmul is in flight (no wgmma wait between its commit and them); without
    it, none are. Compiled without a GPU by this machine's Triton (the GPU machine's 3.6 gives the same:
    attention_resources.py --overlap), in a process of its own: the tool clears TRITON_INTERPRET at import."""
    out = _resources_tool("from benchmarks.attention_resources import compile_attention, softmax_under_mma\n"
                          "for overlap in (False, True):\n"
                          "    info = {}\n"
                          "    regs, spill, _, _ = compile_attention(64, (64, 64, 4, 3), {'OVERLAP': overlap}, "
                          "info=info)\n"
                          "    print(softmax_under_mma(info['ptx']), spill)")
    (plain, _), (overlapped, overlapped_spill) = (map(int, line.split()) for line in out.splitlines()[:2])
    # 64 x 64 scores over 128 threads: 32 exp2 per thread and block (and 2 for the rescale factors; Triton 3.6 and
    # 3.9: 0 and 34, no spills)
    assert overlapped >= 32 > plain and overlapped_spill == 0


def test_cycles_per_score_in_sm90a_code():
    """The cycle report's ceilings (``attention_resources.py --cycles``), in the code Triton generates for sm_90a: at
    head dim 64 the 64 x 64 tile the H200 tuner chose needs more SM cycles per score to issue its key loop than the
    tensor cores need for the score (bound by issue however well it overlaps), the wide-key descriptor tile fewer;
    at head dim 128 the 8-warp tile needs under two thirds of the tensor cores' cycles to issue and for its exp2s.
    Triton 3.6: 0.0703 and 0.0531 against 0.0625, 0.059 and 0.0645 against 0.125; 3.9: 0.0752, 0.0555, 0.062."""
    out = _resources_tool("from benchmarks.attention_resources import compile_attention, sass_key_loop, "
                          "_score_cycles\n"
                          "for head_dim, tile in ((64, (64, 64, 4, 3)), (64, (64, 128, 4, 2, True)), "
                          "(128, (128, 128, 8, 3, True))):\n"
                          "    info = {}\n"
                          "    compile_attention(head_dim, tile, {}, info=info)\n"
                          "    print(*_score_cycles(sass_key_loop(info['cubin']), tile[0] * tile[1], tile[2], "
                          "head_dim))")
    (issue_64, special_64, tensor_64), (issue_wide, _, _), (issue_128, special_128, tensor_128) = (
        map(float, line.split()) for line in out.splitlines()[:3])
    assert tensor_64 == 0.0625 and tensor_128 == 0.125
    assert issue_64 > tensor_64 > issue_wide and special_64 > tensor_64  # (16 exp2 lanes: 1/16 cycle per score)
    assert max(issue_128, special_128) < 2 / 3 * tensor_128


def test_descriptor_candidates_in_sm90a_code():
    """Why the autotuner keeps its extra descriptor-load tiles, in the code Triton generates for sm_90a
    (``attention_resources.py --warpgroups``). Head dim 128 (``_ONE_WARPGROUP_TILES``): the tuner's 8-warp tile is
    one CTA per SM whose two warpgroups meet at CTA-wide barriers every key block; the single-warpgroup tile fits two
    CTAs on an SM, with no spill inside its key loop. Head dim 64 (``_WIDE_KEY_BLOCK_TILES``): three CTAs per SM,
    and fewer instructions per score than the 64 x 64 pointer-load tile the H200 tuner chose. In a process of its
    own: the tool clears TRITON_INTERPRET at import."""
    from pydiff.kernels.attention import _ONE_WARPGROUP_TILES, _WIDE_KEY_BLOCK_TILES

    cases = ([(128, (128, 128, 8, 3, True))] + [(128, (*tile, True)) for tile in sorted(_ONE_WARPGROUP_TILES)]
             + [(64, (64, 64, 4, 3))] + [(64, (*tile, True)) for tile in sorted(_WIDE_KEY_BLOCK_TILES)])
    figures = [line.split() for line in _resources_tool(
        f"from benchmarks.attention_resources import warpgroup_figures\nfor head_dim, tile in {cases!r}:\n"
        "    print(*warpgroup_figures(head_dim, tile, {}))").splitlines()]
    # (warpgroups per CTA, CTAs per SM, registers, spill bytes, local memory ops in the key loop, CTA barriers per
    # key block, instructions per score and warp)
    d128, *single = figures[:1 + len(_ONE_WARPGROUP_TILES)]
    d64, *wide = figures[1 + len(_ONE_WARPGROUP_TILES):]
    assert d128[:2] == ["2", "1"] and int(d128[5]) >= 1   # Triton 3.6: 3 barriers, 3.9: 5
    # 255 registers, 96 KiB of shared memory; spill bytes outside the loop only (3.6: 28, 3.9: 4)
    assert single and all(f[:2] == ["1", "2"] and f[4] == "0" for f in single)
    # 3.6: 0.28 and 0.21 instructions per score, 3.9: 0.30 and 0.22
    assert wide and all(f[1] == "3" and f[4] == "0" and float(f[6]) < 0.8 * float(d64[6]) for f in wide)


@needs_interpreter
def test_hopper_probe_kernel_math():
    """benchmarks/attention_hopper_probe.py (the TMA + warp-specialisation + exp2-split probe run on GPU machines):
    its kernel's math under the interpreter, descriptors emulated, against float64; and its polynomial exp2's
    arithmetic over the softmax's range (the PTX's bit trick: masked scores give 2^-125, never garbage)."""
    probe = pytest.importorskip("benchmarks.attention_hopper_probe")
    attention_err, poly_err = probe.check_cpu()
    assert attention_err < 1e-5 and poly_err < 1e-4
    tiny = probe.poly_exp2_reference(torch.tensor([float("-inf"), -1e4, -125.0, -0.5, 0.0]))
    torch.testing.assert_close(tiny[:3], torch.full((3,), 2.0 ** -125), rtol=1e-4, atol=0)
    torch.testing.assert_close(tiny[3:], torch.tensor([2.0 ** -0.5, 1.0]), rtol=1e-4, atol=0)


@pytest.fixture
def tiny_bench(monkeypatch):
    """benchmarks/bench_attention.py with tiny stand-ins for the GPU shapes, a graph replay standing in as one timed
    call, and 3 SMs, for its GPU rows under the interpreter."""
    bench = pytest.importorskip("benchmarks.bench_attention")
    from benchmarks.common import measure

    monkeypatch.setattr(bench, "GPU_SHAPES", [bench.Shape("t128", 1, 1, 600, 600, 128),
                                              bench.Shape("t64", 1, 1, 64, 64, 64),
                                              bench.Shape("t64", 1, 2, 32, 32, 64)])
    monkeypatch.setattr(bench, "measure_graph", lambda fn: measure(fn, warmup=0, min_repeat=1, min_time=0.0))
    monkeypatch.setattr(bench, "_stream_k_programs", lambda device: 3)
    return bench


@needs_interpreter
def test_benchmark_experiment_rows_dry_run(tiny_bench):
    """The GPU benchmark's experiment rows (the tuner's extra descriptor tiles, Flux's joint call with its keys
    joined, OVERLAP, ROWSUM_MMA, stream-K), run on CPU under the interpreter at tiny shapes: both sides launch and
    every row is measured."""
    rows = tiny_bench._experiment_rows("cpu", torch.float32, None)
    names = [r["name"].split(":")[0] for r in rows]
    flux = "Flux joint + QK norm + RoPE"
    assert names == ["t128", flux, "t64", "t64", flux, flux, "t128", "t128", "t128", "t64", "t64", "t64", flux, "t128",
                     "t128", flux, flux, "t128", "t64", "t64", "t64", "t64"], rows
    assert all("one warpgroup per CTA, 128x64 w4 s2 tma" in r["name"] for r in rows[:2])
    assert all("64 rows x 128 keys, 64x128 w4 s2 tma" in r["name"] and "64x64 w4 s3" in r["peer"] for r in rows[2:4])
    assert [r["name"].split(": ")[1] for r in rows[4:6]] == ["keys joined, 128x128 w8 s3 tma (graph replay)",
                                                             "keys joined, 128x64 w8 s3 (graph replay)"]
    assert all(r["peer"] == "same tile, a key loop per stream (graph replay)" for r in rows[4:6])
    assert all("softmax under the next scores' MMA" in r["name"] for r in rows[6:13])
    assert "row sums by MMA" in rows[11]["name"] and "row sums by adds" in rows[11]["peer"]
    assert [r["name"].split(": ")[1] for r in rows[13:17]] == [
        "stream-K over 3 programs, 128x128 w8 s3 (graph replay)",
        "stream-K over 6 programs, 128x64 w4 s2 tma (graph replay)"] * 2
    assert all("row sums by MMA" in r["name"] for r in rows[17:])
    assert all(r["speedup"] > 0 and r["max_diff"] < 1e-4 for r in rows), rows


def test_benchmark_experiments_compile_first(monkeypatch):
    """On a GPU the experiment rows first go through once inside ``plans.compile_only`` (every kernel they launch
    compiles at once), where each row calls both sides and times nothing, then once for the rows."""
    import contextlib

    bench = pytest.importorskip("benchmarks.bench_attention")
    from pydiff.kernels import plans

    passes, calls = [], []

    @contextlib.contextmanager
    def compile_only():
        monkeypatch.setattr(plans, "compiling_only", lambda: True)
        yield True
        monkeypatch.setattr(plans, "compiling_only", lambda: False)

    monkeypatch.setattr(plans, "compile_only", compile_only)
    monkeypatch.setattr(bench, "_each_experiment", lambda *args: passes.append(plans.compiling_only()) or ["row"])
    assert bench._experiment_rows("cuda", torch.bfloat16, None) == ["row"] and passes == [True, False]
    assert bench._experiment_rows("cpu", torch.float32, None) == ["row"] and passes == [True, False, False]
    # a row in the compile pass: both sides called, nothing timed, no row
    monkeypatch.setattr(plans, "compiling_only", lambda: True)
    monkeypatch.setattr(bench, "measure_graph", lambda fn: pytest.fail("timed in the compile pass"))
    row = bench._experiment_row("x", "s", lambda: calls.append("ours"), "peer", lambda: calls.append("peer"), 1.0,
                                None)
    assert row == {} and calls == ["peer", "ours"]


@needs_interpreter
def test_benchmark_prologue_rows_dry_run(tiny_bench, monkeypatch):
    """The benchmark's QK-prologue rows (Flux's joint call, 4 and 8 heads per prologue program against one) at a
    tiny Flux-like shape of 8 heads under the interpreter: both sides run and agree."""
    monkeypatch.setattr(tiny_bench, "GPU_SHAPES", [tiny_bench.Shape("t128", 1, 8, 48, 48, 128)])
    monkeypatch.setattr(tiny_bench, "FLUX_TEXT_TOKENS", 16)
    rows = tiny_bench._prologue_rows("cpu", torch.float32, None)
    assert [r["name"] for r in rows] == [f"Flux joint + QK norm + RoPE: QK prologue {heads} heads per program, "
                                         "64x64 w4 s3 (graph replay)" for heads in (4, 8)], rows
    assert all(r["peer"] == "same, 1 head per program (graph replay)" for r in rows)
    assert all(r["speedup"] > 0 and r["max_diff"] < 1e-4 for r in rows), rows


def test_benchmark_rows_refuse_a_wrong_kernel():
    """An experiment row whose kernel writes outputs off its peer's by more than 3% of the largest, or leaves some
    unwritten, is an error row, not a timing; so is a shape row whose output is not SDPA's and a variant row whose
    outputs are not the stock sequence's (4% off, on CPU)."""
    bench = pytest.importorskip("benchmarks.bench_attention")
    out = torch.zeros(4)

    def peer():
        out.copy_(torch.arange(4.0))

    for ours in (lambda: out.copy_(torch.arange(4.0) + 0.1), lambda: out[:3].copy_(torch.arange(3.0))):
        row = bench._experiment_row("x", "s", ours, "peer", peer, 1.0, None, (out,))
        assert "outputs differ from the peer's" in row["error"], row
    assert bench._max_diff([torch.arange(4.0) + 0.08], [torch.arange(4.0)]) == pytest.approx(0.08)  # under 3%
    shape = bench.Shape("tiny", 1, 2, 64, 64, 32)
    for factor, error in ((1.04, True), (1.0, False)):
        rows = bench._plain_rows(shape, "cpu", torch.float32, True, None,
                                 lambda q, k, v: F.scaled_dot_product_attention(q, k, v) * factor)
        assert ("outputs differ from the peer's" in rows[0].get("error", "")) == error, rows
        assert error or all(r["max_diff"] == 0 for r in rows if "speedup" in r)
        x = torch.randn(3, 5)
        rows = bench._variant("v", "s", lambda: (x, x * factor), lambda: (x, x), "stock", 1.0, "cpu", True, None)
        assert ("outputs differ from the peer's" in rows[0].get("error", "")) == error, rows


@needs_interpreter
def test_benchmark_experiments_alone(tiny_bench, tmp_path):
    """``bench_attention.py --experiments --out DIR`` (the short-lease run, GPU only): the ceiling, the library's own
    path at the experiments' plain shapes, then the experiment rows, into results.json and report.md; on CPU under
    the interpreter at tiny shapes."""
    import json

    with pytest.raises(SystemExit):
        tiny_bench.main(["--experiments", "--device", "cpu"])
    from benchmarks.report import write_area

    write_area("benchmarks.bench_attention", tiny_bench.run(False, "cpu", experiments=True), tmp_path,
               "attention experiments", "cpu")
    rows = json.loads((tmp_path / "results.json").read_text())["areas"]["attention"]["rows"]
    names = [r["name"] for r in rows]
    assert names[0] == "fp32_matmul_TFLOPs"
    assert [n.split(":")[1].strip() for n in names[1:4]] == ["autotuned (graph replay)"] * 3
    assert len(rows) == 4 + 22 and all(r["speedup"] > 0 for r in rows[1:]), rows
    assert "autotuned (graph replay)" in (tmp_path / "report.md").read_text()


@needs_interpreter
def test_isolation_tool_runs_each_case_apart(monkeypatch, capsys):
    """benchmarks/attention_isolate.py (each GPU grid case and mode in a process of its own, for finding the case
    that breaks a GPU test run): it runs cases here under the interpreter, and its verdicts follow the GPU tests'
    tolerances; stream-K and the tuner's extra tiles run where they apply."""
    tool = pytest.importorskip("benchmarks.attention_isolate")
    assert tool.main(["f16-negative-scale-kvlens", "f32-d48-custom-scale", "--modes", "plain", "rowsum+noplans",
                      "streamk", "overlap", "tuner", "--jobs", "2"]) == 0
    assert tool.main(["f32-d256", "--modes", "tuner"]) == 0
    assert tool.main(["random-7", "--modes", "default"]) == 0  # (fp32, head dim 112: the untuned 128 x 64 tile)
    table = capsys.readouterr().out
    assert "| random-7 | default | ok | 128x64 w8 s2: err" in table
    assert "| f32-d48-custom-scale | streamk | ok |" in table
    assert "| f16-negative-scale-kvlens | streamk | n/a |" in table
    assert "| f16-negative-scale-kvlens | overlap | ok |" in table
    # the tuner's extra descriptor tile at head dim 48, none at 256
    assert "| f16-negative-scale-kvlens | tuner | ok | 64x128 w4 s2: err" in table
    assert "| f32-d256 | tuner | n/a |" in table
    with pytest.raises(SystemExit):
        tool.main(["no-such-case"])
    # in this process, outputs off by 0.01 fail the GPU check in 16-bit and in fp32 (TF32 tolerance)
    tests, _ = tool._case("f16-negative-scale-kvlens")
    run = tests.run_kernel
    monkeypatch.setattr(tests, "run_kernel", lambda *a, **kw: run(*a, **kw) + 0.01)
    for name in ("f16-negative-scale-kvlens", "f32-d64-97x97"):
        stream, = tool.run_one(name, "plain")["streams"]
        assert stream["failure"] and stream["err"] > 0.009 and stream["bad"] == 0


def test_benchmark_suite_runs_on_cpu():
    """benchmarks/bench_attention.py on tiny CPU shapes (ours = the torch backend): every row is measured."""
    bench = pytest.importorskip("benchmarks.bench_attention")
    rows = bench.run(quick=True, device="cpu")
    figures = [r for r in rows if "speedup" in r]
    assert len(figures) == len(bench.CPU_SHAPES) + 21  # the 21 variants (flex attention's rows: GPU only)
    assert all(r["ours_TFLOPs"] > 0 and r["peer_TFLOPs"] > 0 for r in figures)
    assert not [r for r in rows if "error" in r or "unavailable" in r]
    assert "joint + QK norm + RoPE (Flux)" in bench.section(rows)
    assert "key mask (PixArt text padding)" in bench.section(rows)
    assert "joint + QK norm + RoPE + text mask (Qwen-Image)" in bench.section(rows)
    assert "QK norm + RoPE (FLUX.2 single-stream)" in bench.section(rows)
    chroma = [r for r in figures if r["name"] == "joint + QK norm + RoPE + mask per query (Chroma)"]
    assert len(chroma) == 1 and chroma[0]["max_diff"] < 1e-2  # (padded text queries: zeros in both)
    assert "text + image-context attention (Wan I2V)" in bench.section(rows)
    hood = [r for r in figures if r["name"] == "neighborhood attention, 3-D windows (LTX-2 decoder)"]
    assert len(hood) == 1 and hood[0]["max_diff"] < 1e-5
    ideogram = [r for r in figures if r["name"].endswith("(Ideogram 4)")]
    assert len(ideogram) == 1 and ideogram[0]["max_diff"] < 1e-4
    lumina = [r for r in figures if r["name"] == "GQA + QK norm + RoPE per sample + text mask (Lumina 2)"]
    assert len(lumina) == 1 and lumina[0]["max_diff"] < 1e-4
    ip = [r for r in figures if r["name"].endswith("(SD3 IP-Adapter)")]
    assert len(ip) == 1 and ip[0]["max_diff"] < 1e-4
    av = [r for r in figures if r["name"].endswith("(LTX-2 audio-video)")]
    assert len(av) == 1 and av[0]["max_diff"] < 1e-4


# ----------------------------------------------------------------------------------------------------------------
# GPU (skipped without CUDA): the compiled kernel, autotuned, with TF32 tolerance for fp32


GPU_GRID = [GRID[i] for i in (0, 1, 2, 4, 6, 8, 10, 13, 15, 17, 20, 23)] + [
    c for c in GRID if c.name in ("f16-mask-float-bnhd-gqa-kvlens", "f16-mask-joint-prologue-strided",
                                  "bf16-mask-strided-negative-scale", "f16-rowmask-float-bnhd-gqa-kvlens",
                                  "bf16-rowmask-diffusers", "f16-rowmask-joint-prologue-strided",
                                  "bf16-rope-per-head-joint", "f32-joint-keys-only-prologue-kvlens",
                                  "bf16-key-rope-per-head-gqa", "f16-negative-scale-kvlens",
                                  "f32-block-sparse-gqa", "bf16-block-sparse-bnhd-kvlens", "f32-block-tiles-gqa",
                                  "bf16-partial-rope-pairs-gqa-bnhd", "bf16-differential-gqa-bnhd-lens",
                                  "bf16-rope-sections-pairs-strided", "bf16-differential-mask-per-query-gqa")] + [
    Case(BF16, 128, 4608, 4608, heads=4, layout="bnhd", rope="interleaved", q_norm=True, k_norm=True,
         name="gpu-flux-shape"),
    Case(F16, 64, 4096, 77, heads=10, batch=2, name="gpu-sdxl-cross"),
    Case(F16, 72, 4096, 300, heads=16, batch=2, layout="bnhd", mask=("diffusers", "b11n"),
         name="gpu-pixart-cross-masked"),
    # Chroma: Flux's joint call [text; image] under the outer product of its token mask
    Case(BF16, 128, 512, 512, heads=4, joint=(4096, 4096), layout="bnhd", rope="interleaved", q_norm=True,
         k_norm=True, joint_q_norm=True, joint_k_norm=True, mask=("bool", "outer"), name="gpu-chroma-shape"),
    # Kandinsky 6 SR's NABLA attention: 64 x 64 blocks, about a fifth of them attended
    Case(BF16, 128, 4096, 4096, heads=4, block_mask=(64, 64, "bhmn"), name="gpu-block-sparse-video"),
]


def moved(t: torch.Tensor, device=None, dtype=None) -> torch.Tensor:
    """t on ``device`` in ``dtype`` as the same view of its storage: its strides and storage offset kept
    (``Tensor.to`` gives a strided view contiguous strides)."""
    whole = t.new_empty(0).set_(t.untyped_storage(), 0, (t.untyped_storage().nbytes() // t.element_size(),))
    return whole.to(device=device, dtype=dtype).as_strided(t.shape, t.stride(), t.storage_offset())


def _to_device(kw, device):
    move = lambda t: moved(t, device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    return {name: tuple(move(t) for t in value) if isinstance(value, tuple) else move(value)
            for name, value in kw.items()}


def _streams(case, result):
    """One call's outputs (or references) as a tuple: (out, out2) with a joint stream, else (out,)."""
    return result if case.joint is not None else (result,)


def _on_device(case, device):
    """``build(case)`` with every tensor on ``device``."""
    q, k, v, kw = build(case)
    return moved(q, device), moved(k, device), moved(v, device), _to_device(kw, device)


def gpu_stream_checks(case, out, q, k, v, kw):
    """Per output stream, on the CPU: (ours, float64 reference, PyTorch's in the case's dtype or None for fp32, the
    GPU accuracy check's failure message or None). benchmarks/attention_isolate.py judges by it too."""
    ref64, lowp = references(q, k, v, kw)
    lows = (None,) * len(_streams(case, out)) if lowp is None else _streams(case, lowp)
    checks = []
    for got, ref, low in zip(_streams(case, out), _streams(case, ref64), lows):
        got, ref, low = got.cpu(), ref.cpu(), None if low is None else low.cpu()
        try:  # fp32 runs through TF32 tensor cores on the GPU
            assert_accurate(got, ref, low, case.dtype, fp32_rtol=5e-3)
            failure = None
        except AssertionError as error:
            failure = str(error).splitlines()[0]
        checks.append((got, ref, low, failure))
    return checks


def _assert_gpu_accurate(case, out, q, k, v, kw):
    failures = [failure for *_, failure in gpu_stream_checks(case, out, q, k, v, kw) if failure is not None]
    assert not failures, failures


def _gpu_check(case, device):
    q, k, v, kw = _on_device(case, device)
    with pydiff.use_backend("triton"):
        out = pydiff.attention(q, k, v, **kw)
    _assert_gpu_accurate(case, out, q, k, v, kw)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_GRID, ids=str)
def test_gpu_accuracy(case, cuda_device, monkeypatch):
    # one default tile per head dim: the grid checks the math, not the tuner (and compiles once per variant)
    monkeypatch.setenv("PYDIFF_ATTENTION_AUTOTUNE", "0")
    _gpu_check(case, cuda_device)


#: ``random_case``'s first cases, for the GPU
RANDOM_GPU_CASES = [random_case(seed)[0] for seed in range(24)]


def _default_launches(case):
    """The library's own launch of a case without autotuning: ``default_config``'s tile, warps and stages, descriptor
    loads where ``default_use_tma`` leaves them to the tensors (None: where they fit)."""
    from pydiff.kernels.attention import default_config, default_use_tma

    heavy = case.joint is not None or case.negative is not None
    _, _, warps, stages = default_config(case.head_dim, heavy, case.negative is not None, case.dtype.itemsize)
    return [dict(blocks=_gpu_default_tile(case), warps=warps, stages=stages, use_tma=default_use_tma(case.head_dim))]


@pytest.mark.gpu
@pytest.mark.parametrize("case", RANDOM_GPU_CASES, ids=str)
def test_gpu_accuracy_random_cases(case, cuda_device):
    """Random cases (combinations the grid does not hold, where a miscompile would show) at the library's own
    untuned launch, every output element written."""
    q, k, v, kw = _on_device(case, cuda_device)
    for launch in _default_launches(case):
        _assert_gpu_accurate(case, run_kernel(q, k, v, kw, **launch), q, k, v, kw)


#: the calls the diffusers processors for Chroma, HunyuanVideo's token refiner, Wan, CogVideoX, LTX-Video, Z-Image,
#: Lumina 2 and CogView4 make:
#: Chroma's joint call under the outer product of its token mask (tiny, as the GPU model test has it, and at 512 + 4096
#: tokens), the refiner's mask per query, Wan's RoPE self-attention and its image-to-video cross-attention (the
#: text's and the image context's attentions summed: the negative stream at scale -1), CogVideoX's joint
#: [text; video] call with RoPE (its LayerNorms run as modules), LTX-Video's self-attention with RoPE tables per
#: batch row and head; at 1024 x 1024, Z-Image's (QK norms, RoPE tables per sample: a complex table's parts, one
#: angle per pair, the padding as key mask), Lumina 2's (the same with grouped-query heads, D96 and the
#: proportional scale) and CogView4's joint call (the half-split RoPE, its text mask a float mask per query); LTX-2's
#: self-attention with its split tables per head (one angle per pair)
PROCESSOR_GPU_CASES = [
    Case(F16, 16, 6, 6, batch=2, joint=(20, 20), layout="bnhd", rope="interleaved", q_norm=True, k_norm=True,
         joint_q_norm=True, joint_k_norm=True, mask=("bool", "outer"), name="proc-chroma-tiny"),
    Case(BF16, 128, 512, 512, heads=4, joint=(4096, 4096), layout="bnhd", rope="interleaved", q_norm=True,
         k_norm=True, joint_q_norm=True, joint_k_norm=True, mask=("bool", "outer"), name="proc-chroma"),
    Case(BF16, 16, 7, 7, batch=2, layout="bnhd", mask=("bool", "b1mn"), name="proc-hunyuan-refiner"),
    Case(BF16, 128, 1560, 1560, heads=4, layout="bnhd", rope="interleaved", name="proc-wan-self"),
    Case(BF16, 128, 1560, 512, heads=4, layout="bnhd", negative=257, negative_scale=-1.0, name="proc-wan-i2v-cross"),
    Case(F16, 64, 226, 226, heads=4, joint=(1350, 1350), layout="bnhd", rope="interleaved", name="proc-cogvideox"),
    Case(BF16, 64, 1560, 1560, batch=2, heads=4, layout="bnhd", rope="interleaved", rope_tables="batch-heads",
         name="proc-ltx-video-self"),
    Case(BF16, 128, 4128, 4128, batch=2, heads=4, layout="bnhd", rope="interleaved", rope_tables="batch",
         rope_pairs=True, q_norm=True, k_norm=True, mask=("bool", "b11n"), name="proc-z-image"),
    Case(BF16, 96, 4352, 4352, batch=2, heads=6, kv_heads=2, layout="bnhd", rope="interleaved", rope_tables="batch",
         rope_pairs=True, q_norm=True, k_norm=True, mask=("bool", "b11n"), scale=0.11, name="proc-lumina2"),
    Case(BF16, 128, 1560, 1560, batch=2, heads=4, layout="bnhd", rope="half", rope_tables="batch-heads",
         rope_pairs=True, name="proc-ltx2-split"),
    Case(BF16, 128, 224, 224, heads=4, joint=(4096, 4096), layout="bnhd", rope="half", mask=("float", "outer"),
         name="proc-cogview4"),
    Case(BF16, 128, 4608, 4608, heads=8, kv_heads=2, layout="bnhd", rope="interleaved", q_norm=True, k_norm=True,
         mask=("bool", "b11n"), name="proc-krea2"),
    Case(BF16, 256, 4352, 4352, heads=2, layout="bnhd", rope="half", rope_tables="batch", q_norm=True, k_norm=True,
         mask=("bool", "b1mn"), name="proc-ideogram4"),
    Case(BF16, 128, 4680, 4680, heads=4, layout="bnhd", rope="half", q_norm=True, k_norm=True,
         name="proc-cosmos-self"),
    Case(BF16, 128, 4680, 512, batch=2, heads=4, layout="bnhd", q_norm=True, k_norm=True, mask=("bool", "b11n"),
         name="proc-cosmos-cross"),
    Case(BF16, 64, 6144, 6144, heads=4, layout="bnhd", rope="interleaved", rope_tables="batch", rope_pairs=True,
         q_norm=True, k_norm=True, name="proc-kandinsky5"),
    Case(BF16, 128, 4770, 4770, batch=2, heads=4, joint=(256, 256), layout="bnhd", rope="interleaved",
         rope_tables="batch-heads", rope_pairs=True, q_norm=True, k_norm=True, joint_q_norm=True, joint_k_norm=True,
         mask=("bool", "b11n"), name="proc-mochi"),
    Case(F16, 64, 4096, 77, batch=2, heads=10, layout="bnhd", negative=4, negative_scale=-0.6,
         name="proc-ip-adapter"),
    Case(BF16, 256, 256, 256, heads=2, joint=(4096, 4096), layout="bnhd", name="proc-auraflow"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", PROCESSOR_GPU_CASES, ids=str)
def test_gpu_accuracy_processor_calls(case, cuda_device):
    """The new processors' calls at the library's own untuned launch (the GPU model test's path), against float64,
    every output element written."""
    q, k, v, kw = _on_device(case, cuda_device)
    for launch in _default_launches(case):
        _assert_gpu_accurate(case, run_kernel(q, k, v, kw, **launch), q, k, v, kw)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_GRID, ids=str)
def test_gpu_accuracy_descriptors(case, cuda_device):
    """The key/value loads through tensor descriptors (the Hopper candidates the autotuner may pick), on every grid
    case whose tensors the descriptors take."""
    from pydiff.kernels.attention import tma_usable

    if torch.cuda.get_device_capability(cuda_device)[0] < 9:
        pytest.skip("tensor descriptors need compute capability 9+")
    q, k, v, kw = _on_device(case, cuda_device)
    kv = [k, v] + list(kw.get("joint", ())[1:3]) + list(kw.get("negative", ()))
    if not tma_usable(kv):
        pytest.skip("these key/value tensors are not 16-byte aligned")
    for launch in _descriptor_launches(case):
        _assert_gpu_accurate(case, run_kernel(q, k, v, kw, **launch), q, k, v, kw)


def _descriptor_launches(case):
    """``run_kernel``'s arguments for each launch of ``test_gpu_accuracy_descriptors`` (and of the other GPU tests
    below, in ``GPU_LAUNCHES``, which ``benchmarks/attention_resources.py --gpu-cases`` compiles without a GPU)."""
    return [dict(blocks=_gpu_default_tile(case), use_tma=True)]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_GRID, ids=str)
def test_gpu_accuracy_rowsum_mma(case, cuda_device):
    """The ROWSUM_MMA experiment compiled for the GPU (the benchmark times it): every grid case at its default tile."""
    q, k, v, kw = _on_device(case, cuda_device)
    for launch in _rowsum_launches(case):
        _assert_gpu_accurate(case, run_kernel(q, k, v, kw, **launch), q, k, v, kw)


def _rowsum_launches(case):
    return [dict(blocks=_gpu_default_tile(case), rowsum_mma=True)]


STREAM_K_GPU_CASES = [c for c in GPU_GRID if c.negative is None and c.kv_lens is None and c.cu_q is None and
                      c.mask is None and c.block_mask is None] + \
    [Case(BF16, 128, 4608, 4608, heads=4, layout="bnhd", name="gpu-flux-plain")]


@pytest.mark.gpu
@pytest.mark.parametrize("case", STREAM_K_GPU_CASES, ids=str)
def test_gpu_accuracy_stream_k(case, cuda_device):
    """The stream-K experiment compiled for the GPU (the benchmark times it) at the case's default tile, and at the
    production sizes also at the tiles it is meant for: 128 x 128 x 8 warps, and at head dim 128 the
    single-warpgroup tiles with descriptor loads where usable (two CTAs per SM); over as many programs as the SMs
    hold and over 7."""
    q, k, v, kw = _on_device(case, cuda_device)
    for launch in _stream_k_launches(case, torch.cuda.get_device_properties(cuda_device).multi_processor_count):
        _assert_gpu_accurate(case, run_kernel(q, k, v, kw, **launch), q, k, v, kw)


def _stream_k_launches(case, sms=132):
    from pydiff.kernels.attention import _ONE_WARPGROUP_TILES, default_config

    tiles = [(*default_config(case.head_dim, case.joint is not None, element_size=case.dtype.itemsize), False, 1)]
    if case.name.startswith("gpu-"):
        tiles += [(128, 128, 8, 3, False, 1)]
        tiles += [(*tile, None, 2) for tile in sorted(_ONE_WARPGROUP_TILES)] if case.head_dim == 128 else []
    return [dict(blocks=(bm, bn), stream_k=programs, warps=warps, stages=stages, use_tma=tma)
            for bm, bn, warps, stages, tma, per_sm in dict.fromkeys(tiles) for programs in (per_sm * sms, 7)]


# production-size cases beyond the GPU grid: SD3's self-attention size (partial key blocks), and Flux's joint call
GPU_SD3 = Case(BF16, 64, 4250, 4250, heads=4, batch=2, name="gpu-sd3-plain")
GPU_FLUX_JOINT = Case(BF16, 128, 512, 512, heads=4, joint=(4096, 4096), layout="bnhd", rope="interleaved",
                      q_norm=True, k_norm=True, joint_q_norm=True, joint_k_norm=True, name="gpu-flux-joint")


def _overlap_tile(case):
    """The OVERLAP experiment's tile for a grid case: the GPU default, but 32 x 32 above head dim 128 (fp32 at D 256
    with 64 x 32 would need 256 KiB of shared memory overlapped, more than an SM has; sm_90a, Triton 3.6)."""
    return _gpu_default_tile(case) if case.head_dim <= 128 else (32, 32)


# Tiles the benchmark times the OVERLAP experiment at, on production-size cases: (BLOCK_M, BLOCK_N, warps, stages,
# descriptor loads, row sums by MMA). The benchmark's rows check their own outputs against the same tile without
# the experiment, so one tile per case here keeps the GPU test stage short.
OVERLAP_GPU_TILES = {"gpu-flux-shape": [(128, 128, 8, 2, True, False)],
                     "gpu-sd3-plain": [(64, 64, 4, 2, False, False)],
                     "gpu-flux-joint": [(128, 128, 8, 2, True, False)]}


HEAD_GROUP_GPU_CASES = [c for c in GPU_GRID if _prologued(c)] + [GPU_FLUX_JOINT]
OVERLAP_GPU_CASES = [c for c in GPU_GRID if c.block_mask is None] + [GPU_SD3, GPU_FLUX_JOINT]


@pytest.mark.gpu
@pytest.mark.parametrize("case", HEAD_GROUP_GPU_CASES, ids=str)
def test_gpu_accuracy_prologue_head_groups(case, cuda_device):
    """The QK prologue over head groups compiled for the GPU (``prologue_heads``: 16 / G tokens of G heads per
    program, which the benchmark times at Flux's joint call): every group size up to the case's, at its default
    tile."""
    q, k, v, kw = _on_device(case, cuda_device)
    for launch in _head_group_launches(case):
        _assert_gpu_accurate(case, run_kernel(q, k, v, kw, **launch), q, k, v, kw)


def _head_group_launches(case):
    groups = [2 ** i for i in range(1, _prologue_group(case).bit_length())]  # 2, 4, ... up to the case's group
    return [dict(blocks=_gpu_default_tile(case), prologue_heads=heads) for heads in groups]


@pytest.mark.gpu
@pytest.mark.parametrize("case", OVERLAP_GPU_CASES, ids=str)
def test_gpu_accuracy_overlap(case, cuda_device):
    """The OVERLAP experiment compiled for the GPU (the benchmark times it): every grid case at its default tile,
    and the production-size cases at the tiles the benchmark times (descriptor loads where usable: the GPU suite
    turns them off when their own tests fail)."""
    q, k, v, kw = _on_device(case, cuda_device)
    for launch in _overlap_launches(case):
        _assert_gpu_accurate(case, run_kernel(q, k, v, kw, **launch), q, k, v, kw)


def _overlap_launches(case):
    tiles = OVERLAP_GPU_TILES.get(case.name) or [(*_overlap_tile(case), 4, 2, False, False)]
    return [dict(blocks=(bm, bn), overlap=True, warps=warps, stages=stages, use_tma=None if tma else False,
                 rowsum_mma=rowsum) for bm, bn, warps, stages, tma, rowsum in tiles]


def _kept_tiles(case, warp_spec):
    """(BLOCK_M, BLOCK_N, warps, stages) of the descriptor-load candidates ``_prune_configs`` keeps for a case where
    the launcher finds descriptors usable: the warp-specialised ones (``warp_spec``, where usable too) or the
    others."""
    from pydiff.kernels.attention import _attn_fwd_autotuned, _prune_configs, head_dim_blocks

    da, db, split = head_dim_blocks(case.head_dim)
    # (a joint call that may be warp-specialised has its keys joined: JOINED_KV)
    args = dict(BLOCK_DA=da, BLOCK_DB=db, SPLIT_D=split, JOINT=case.joint is not None, NEG=case.negative is not None,
                JOINED_KV=warp_spec and case.joint is not None, TMA_OK=True, WS_OK=warp_spec, HEAD_DIM=case.head_dim,
                HAS_BIAS=mask_flag(case), SPARSE=case.block_mask is not None,
                **dict(zip(("BLOCK_Q", "BLOCK_K"), case.block_mask or ())))
    return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
            for c in _prune_configs(_attn_fwd_autotuned.configs, args)
            if c.kwargs.get("USE_TMA") and c.kwargs.get("WARP_SPEC", False) == warp_spec}


def _tuner_descriptor_tiles(case):
    """The autotuner's extra descriptor-load candidates that ``_prune_configs`` keeps for a case."""
    from pydiff.kernels.attention import _ONE_WARPGROUP_TILES, _WIDE_KEY_BLOCK_TILES

    return sorted(_kept_tiles(case, False) & (_ONE_WARPGROUP_TILES | _WIDE_KEY_BLOCK_TILES))


#: production-size cases the descriptor stage runs the tuner's extra tiles on (so does attention_isolate.py's tuner
#: mode)
DESCRIPTOR_PRODUCTION_CASES = [GPU_SD3, GPU_FLUX_JOINT]


TUNER_TILE_GPU_CASES = [c for c in GPU_GRID if _tuner_descriptor_tiles(c)] + DESCRIPTOR_PRODUCTION_CASES


@pytest.mark.gpu
@pytest.mark.parametrize("case", TUNER_TILE_GPU_CASES, ids=str)
def test_gpu_accuracy_descriptors_tuner_tiles(case, cuda_device):
    """The autotuner's extra descriptor-load candidates, which the default-tile grid does not run: the
    single-warpgroup tile above head dim 64 (``_ONE_WARPGROUP_TILES``) and the 64 x 128 tile up to head dim 64
    (``_WIDE_KEY_BLOCK_TILES``), on the grid cases they apply to, SD3's size and Flux's joint call (descriptor loads
    where usable). Named for the GPU suite's descriptor stage (``-k descriptors``), whose failure turns descriptor
    loads, and with them these candidates, off for the rest of the suite."""
    q, k, v, kw = _on_device(case, cuda_device)
    for launch in _tuner_tile_launches(case):
        _assert_gpu_accurate(case, run_kernel(q, k, v, kw, **launch), q, k, v, kw)


def _tuner_tile_launches(case):
    return [dict(blocks=(bm, bn), warps=warps, stages=stages, use_tma=None)
            for bm, bn, warps, stages in _tuner_descriptor_tiles(case)]


# the warp-specialised tiles on a GPU: Flux's, SDXL's and SD3's head dims and lengths (SD3's keys end inside a
# block), cross-attention over 77 text keys, padded (40) and split (80, 96) head dims, GQA and MQA, (B, N, H, D),
# query counts ending inside a block, key padding and packed segments, a joint call with its keys joined; 16-bit
# (fp32 fails to compile)
WARP_SPEC_GPU_CASES = [
    Case(BF16, 128, 4608, 4608, heads=4, layout="bnhd", name="gpu-ws-flux-plain"),
    Case(F16, 64, 4096, 4096, heads=2, batch=2, name="gpu-ws-sdxl-self"),
    Case(BF16, 64, 4250, 4250, heads=2, batch=2, name="gpu-ws-sd3-plain"),
    Case(F16, 64, 4096, 77, heads=10, batch=2, name="gpu-ws-sdxl-cross"),
    Case(BF16, 40, 1000, 1024, heads=4, kv_heads=2, layout="bnhd", name="gpu-ws-d40-gqa"),
    Case(F16, 80, 333, 512, heads=3, kv_heads=1, name="gpu-ws-d80-mqa"),
    Case(F16, 64, 4096, 300, heads=2, batch=2, mask=("diffusers", "b11n"), name="gpu-ws-masked-cross"),
    Case(F16, 96, 97, 333, name="gpu-ws-f16-d96-partial"),
    Case(F16, 64, 1025, 1025, batch=3, kv_lens=[1025, 77, 0], name="gpu-ws-kvlens"),
    Case(BF16, 80, 1201, 1201, cu_q=[0, 7, 7, 604, 1201], kv_lens=[7, 0, 590, 597], name="gpu-ws-varlen-kvlens"),
    # Flux-like: the keys of both streams joined by their prologue (join_keys), the streams meeting inside a block
    Case(BF16, 128, 77, 77, heads=4, joint=(1000, 1000), layout="bnhd", rope="interleaved", q_norm=True, k_norm=True,
         joint_q_norm=True, joint_k_norm=True, name="gpu-ws-joint-joined-keys"),
]


def _warp_spec_tiles(case):
    """The warp-specialised candidates (``_WARP_SPEC_TILES``) that ``_prune_configs`` keeps for a case."""
    return sorted(_kept_tiles(case, True))


def _needs_hopper_warp_spec(device):
    from pydiff.kernels.attention import _HAS_WARP_SPEC

    if torch.cuda.get_device_capability(device)[0] != 9 or not _HAS_WARP_SPEC:
        pytest.skip("warp-specialised tiles: Hopper (compute capability 9) and a Triton with warp-specialised loops")


@pytest.mark.gpu
@pytest.mark.parametrize("case", WARP_SPEC_GPU_CASES, ids=str)
def test_gpu_accuracy_descriptors_warp_specialised(case, cuda_device):
    """Every warp-specialised tile that applies, on a Hopper GPU: Triton's warp specialisation (a producer
    warpgroup loading through descriptors, two consumers computing; the interpreter cannot check it) as accurate as
    the plain kernel. Named for the GPU suite's descriptor stage, whose failure here turns these candidates off for
    the rest of the suite (PYDIFF_ATTENTION_WARP_SPEC=0)."""
    _needs_hopper_warp_spec(cuda_device)
    q, k, v, kw = _on_device(case, cuda_device)
    tiles = _warp_spec_tiles(case)
    assert tiles
    with pytest.raises(ValueError, match="16-bit inputs only"):  # (TF32 products fail to compile)
        run_kernel(q.float(), k.float(), v.float(), kw, tiles[0][:2], warps=4, use_tma=True, warp_spec=True)
    for launch in _warp_spec_launches(case):
        _assert_gpu_accurate(case, run_kernel(q, k, v, kw, **launch), q, k, v, kw)


def _warp_spec_launches(case):
    return [dict(blocks=(bm, bn), warps=warps, stages=stages, use_tma=True, warp_spec=True)
            for bm, bn, warps, stages in _warp_spec_tiles(case)]


def tuner_launches(case) -> list:
    """``run_kernel``'s arguments for every tile the autotuner keeps on Hopper for a case, with warp specialisation on
    (as the GPU suite runs): descriptor loads where the case's tensors take them, warp-specialised tiles for one key
    stream in 16 bits, a joint call's keys joined where a key prologue writes them (the launcher joins them then,
    for every candidate); block-sparse, the tiles that fit its blocks (``attention_resources.py`` compiles them)."""
    from pydiff.kernels.attention import ROW_MASK, _attn_fwd_autotuned, _prune_configs, head_dim_blocks

    fits = descriptors_fit(case)
    joined = case.joint is not None and case.negative is None and \
        (case.rope is not None or case.k_norm or case.joint_k_norm)
    # (a mask per query: not warp-specialised, so not joined)
    ws = fits and case.dtype.itemsize == 2 and case.negative is None and mask_flag(case) != ROW_MASK.value and \
        (case.joint is None or joined)
    joined = joined and ws
    da, db, split = head_dim_blocks(case.head_dim)
    args = dict(BLOCK_DA=da, BLOCK_DB=db, SPLIT_D=split, JOINT=case.joint is not None, JOINED_KV=joined,
                NEG=case.negative is not None, TMA_OK=fits, WS_OK=ws, HEAD_DIM=case.head_dim, Nk=case.n_k,
                Nk2=(case.joint or (0, 0))[1], Nneg=case.negative or 0, Q=torch.ones(1, dtype=case.dtype),
                HAS_BIAS=mask_flag(case), SPARSE=case.block_mask is not None,
                **dict(zip(("BLOCK_Q", "BLOCK_K"), case.block_mask or ())))
    return [dict(blocks=(cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]), warps=cfg.num_warps, stages=cfg.num_stages,
                 use_tma=cfg.kwargs.get("USE_TMA", False), warp_spec=cfg.kwargs.get("WARP_SPEC", False),
                 **({"join_keys": True} if joined else {}))
            for cfg in _prune_configs(_attn_fwd_autotuned.configs, args)]


BLOCK_SPARSE_GPU_CASES = [c for c in GPU_GRID if c.block_mask is not None]


@pytest.mark.gpu
@pytest.mark.parametrize("case", BLOCK_SPARSE_GPU_CASES, ids=str)
def test_gpu_accuracy_block_sparse_tiles(case, cuda_device):
    """Every tile the autotuner may pick for a block-sparse call (``tuner_launches``: pointer and descriptor loads,
    tiles inside the mask's blocks and 128-row tiles over two rows of 64-row blocks), accurate."""
    q, k, v, kw = _on_device(case, cuda_device)
    launches = tuner_launches(case)
    assert any(launch["blocks"][0] == 2 * case.block_mask[0] for launch in launches) or case.block_mask[0] > 64
    for launch in launches:
        _assert_gpu_accurate(case, run_kernel(q, k, v, kw, **launch), q, k, v, kw)


#: (GPU test, its cases, its launches per case: ``run_kernel``'s arguments) of every GPU test that launches the
#: kernel at fixed tiles; ``benchmarks/attention_resources.py --gpu-cases`` compiles them all without a GPU (the
#: first three are the GPU suite's descriptor stage)
GPU_LAUNCHES = [("test_gpu_accuracy_descriptors", GPU_GRID, _descriptor_launches),
                ("test_gpu_accuracy_descriptors_tuner_tiles", TUNER_TILE_GPU_CASES, _tuner_tile_launches),
                ("test_gpu_accuracy_descriptors_warp_specialised", WARP_SPEC_GPU_CASES, _warp_spec_launches),
                ("test_gpu_accuracy_rowsum_mma", GPU_GRID, _rowsum_launches),
                ("test_gpu_accuracy_stream_k", STREAM_K_GPU_CASES, _stream_k_launches),
                ("test_gpu_accuracy_prologue_head_groups", HEAD_GROUP_GPU_CASES, _head_group_launches),
                ("test_gpu_accuracy_overlap", OVERLAP_GPU_CASES, _overlap_launches),
                ("test_gpu_accuracy_random_cases", RANDOM_GPU_CASES, _default_launches),
                ("test_gpu_accuracy_processor_calls", PROCESSOR_GPU_CASES, _default_launches),
                ("test_gpu_accuracy_block_sparse_tiles", BLOCK_SPARSE_GPU_CASES, tuner_launches)]


def test_random_candidate_launches():
    """``attention_resources.py --random-candidates`` compiles, for 40 random cases, every tile the autotuner keeps
    on Hopper: each is a ``run_kernel`` launch that fits Hopper's shared memory in the case's dtype, descriptor and
    warp-specialised tiles among them."""
    out = _resources_tool(
        "import sys, torch\nsys.path.insert(0, 'tests')\nimport test_attention as T\n"
        "from benchmarks import attention_resources as R\nimport pydiff.kernels.attention as A\n"
        "known = set(__import__('inspect').signature(T.run_kernel).parameters)\n"
        "for seed in range(40):\n    case = T.random_case(seed)[0]\n    launches = T.tuner_launches(case)\n"
        "    size = 4 if case.dtype == torch.float32 else 2\n"
        "    assert launches and all(set(l) <= known for l in launches), seed\n"
        "    assert all(A.shared_bytes(*l['blocks'], l['warps'], l['stages'], case.head_dim, size) <= A.HOPPER_SHARED"
        " for l in launches), seed\n"
        "    print(len(launches), sum(l['use_tma'] for l in launches), sum(l['warp_spec'] for l in launches))")
    counts = [list(map(int, line.split())) for line in out.splitlines()]
    assert len(counts) == 40 and all(n >= 1 for n, _, _ in counts)
    assert sum(tma for _, tma, _ in counts) > 0 and sum(ws for _, _, ws in counts) > 0


def test_gpu_launch_lists():
    """``GPU_LAUNCHES`` names GPU tests, and each test's launches are ``run_kernel`` arguments (what
    ``attention_resources.py --gpu-cases`` compiles): no test without launches, and every warp-specialised case and
    production case gets some."""
    known = set(inspect.signature(run_kernel).parameters)
    for test, cases, launches in GPU_LAUNCHES:
        assert callable(globals().get(test)), test
        made = {case.name: launches(case) for case in cases}
        assert all(set(launch) <= known and "blocks" in launch for runs in made.values() for launch in runs), test
        assert sum(map(len, made.values())) > 0, test
        if "warp_specialised" in test or "tuner_tiles" in test:
            assert all(made.values()), f"{test}: a case without launches"


@pytest.mark.gpu
def test_gpu_autotuned_descriptors_warp_specialised(cuda_device, monkeypatch):
    """With PYDIFF_ATTENTION_WARP_SPEC=1 the autotuner times the warp-specialised tiles beside the others, and its
    choice is accurate."""
    from pydiff.kernels.attention import _TUNED, _attn_fwd_autotuned
    from pydiff.kernels.plans import CACHE as _PLANS

    _needs_hopper_warp_spec(cuda_device)
    monkeypatch.setenv("PYDIFF_ATTENTION_AUTOTUNE", "1")
    monkeypatch.setenv("PYDIFF_ATTENTION_WARP_SPEC", "1")
    _TUNED.clear()
    _PLANS.clear()
    case = WARP_SPEC_GPU_CASES[1]
    _gpu_check(case, cuda_device)
    timed = [c for c in (_attn_fwd_autotuned.configs_timings or {}) if c.kwargs.get("WARP_SPEC")]
    assert len(timed) == len(_warp_spec_tiles(case))


@pytest.mark.gpu
def test_gpu_autotuned(cuda_device, monkeypatch):
    from pydiff.kernels.attention import _TUNED
    from pydiff.kernels.plans import CACHE as _PLANS

    monkeypatch.setenv("PYDIFF_ATTENTION_AUTOTUNE", "1")
    _TUNED.clear()
    _PLANS.clear()  # plans of the tuned kernel carry the tile the tuner chose
    case = Case(F16, 64, 1025, 1025, heads=4, layout="bnhd", name="gpu-autotuned")
    _gpu_check(case, cuda_device)   # through the tuner
    assert len(_TUNED) == 1
    _gpu_check(case, cuda_device)   # the plain kernel with the tuner's tile, through Triton's JIT
    assert len(_PLANS) == 1
    _gpu_check(case, cuda_device)   # the same, launched from its plan


@pytest.mark.gpu
def test_gpu_tuned_choice_kept_on_disk(cuda_device, monkeypatch):
    """The tuner's choice kept on disk: a new process's first call of the signature (every in-memory choice, plan and
    kernel cleared) launches the stored tile without precompiling or timing the candidates, accurately."""
    import uuid

    from pydiff.kernels import attention as kernels, plans

    monkeypatch.setenv("PYDIFF_ATTENTION_AUTOTUNE", "1")
    monkeypatch.setenv("PYDIFF_TUNING_CACHE", "1")
    digest = f"gpu test {uuid.uuid4()}"  # (a key nothing stored before)
    monkeypatch.setattr(kernels, "_source_digest", lambda: digest)
    precompiled = []
    precompile = plans.precompile
    monkeypatch.setattr(plans, "precompile", lambda *a: precompiled.append(len(a[4])) or precompile(*a))
    case = Case(F16, 64, 1025, 1025, heads=4, layout="bnhd", name="gpu-autotuned")  # (test_gpu_autotuned's)
    choices = []
    for _ in range(2):
        kernels._TUNED.clear()
        plans.CACHE.clear()
        attention_module._CALLS.clear()
        kernels._attn_fwd_autotuned.cache.clear()
        kernels._attn_fwd_kernel.device_caches.clear()
        _gpu_check(case, cuda_device)
        choices.append(list(kernels._TUNED.values()))
    assert len(precompiled) == 1 and precompiled[0] >= 2, precompiled
    assert len(choices[0]) == 1 and choices[1] == choices[0]


@pytest.mark.gpu
def test_gpu_capture_needs_a_warm_up(cuda_device, monkeypatch):
    """A signature's first call, which tunes its tile, is an error naming the warm-up when it comes inside a CUDA-graph
    capture (Triton's benchmarker cannot run there); after one call outside, the same call captures and replays."""
    from pydiff.kernels import attention as kernels
    from pydiff.kernels import plans

    monkeypatch.setenv("PYDIFF_ATTENTION_AUTOTUNE", "1")
    monkeypatch.setattr(attention_module, "_CALLS", {})
    monkeypatch.setattr(kernels, "_TUNED", {})
    monkeypatch.setattr(plans, "CACHE", {})  # (no launch plan of another test's call either)
    gen = torch.Generator(device=cuda_device).manual_seed(9)
    q, k, v = (torch.randn(1, 3, 203, 64, device=cuda_device, dtype=torch.float16, generator=gen) for _ in range(3))
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="make the same call once before capturing"):
        with torch.cuda.graph(graph):
            pydiff.attention(q, k, v)
    eager = pydiff.attention(q, k, v)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = pydiff.attention(q, k, v)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)
    ref64 = attention_reference(q, k, v, compute_dtype=torch.float64)
    assert_accurate(eager, ref64, attention_reference(q, k, v), torch.float16)


@pytest.mark.gpu
def test_gpu_batch_times_heads_past_65535(cuda_device, monkeypatch):
    """Temporal attention as a video UNet runs it (SVD at 576 x 1024 with guidance: a batch of 2 x 72 x 128 latent
    pixels, 5 heads, 14 frames), with a QK norm and RoPE: 92160 (batch, head) pairs, past one grid axis's 65535.
    Accurate at the library's untuned tile, the prologue's launches included."""
    monkeypatch.setenv("PYDIFF_ATTENTION_AUTOTUNE", "0")
    gen = torch.Generator(device=cuda_device).manual_seed(12)
    q, k, v = (torch.randn(18432, 14, 5, 64, device=cuda_device, dtype=torch.bfloat16, generator=gen)
               for _ in range(3))
    kw = dict(layout="bnhd", rope=tuple(torch.rand(14, 64, device=cuda_device, generator=gen) for _ in range(2)),
              q_norm_weight=torch.rand(64, device=cuda_device, generator=gen) + 0.5,
              k_norm_weight=torch.rand(64, device=cuda_device, generator=gen) + 0.5)
    with pydiff.use_backend("triton"):
        out = pydiff.attention(q, k, v, **kw)
    assert_accurate(out, *references(q, k, v, kw), torch.bfloat16)


# plain fp32, D40 (B, N, H, D) GQA, strided D96, segments, joint GQA, NASA with lengths, norms + RoPE + joint +
# negative
PLAN_CASES = [GRID[i] for i in (0, 1, 4, 13, 15, 17, 23)]


@pytest.mark.gpu
@pytest.mark.parametrize("case", PLAN_CASES, ids=str)
def test_gpu_plans(case, cuda_device, monkeypatch):
    """Eager calls after the first replay its launches (a call plan: no op body, no Triton JIT): the same numbers as
    the first call, bit for bit, and inside a CUDA graph too."""
    from pydiff.kernels import attention as kernels
    from pydiff.kernels.plans import CACHE as _PLANS

    monkeypatch.setenv("PYDIFF_ATTENTION_AUTOTUNE", "0")
    body, bodies = attention_module._run, []
    monkeypatch.setattr(attention_module, "_run", lambda call: bodies.append(1) or body(call))
    monkeypatch.setattr(attention_module, "_CALLS", {})  # (another test may have made this call already)
    jit_launches = []

    def counted(run):
        def launch(*args, **kwargs):
            jit_launches.append(1)
            return run(*args, **kwargs)
        return launch

    for kernel in (kernels._attn_fwd_kernel, kernels._qk_prologue):
        monkeypatch.setattr(kernel, "run", counted(kernel.run))
    q, k, v, kw = _on_device(case, cuda_device)
    if case.cu_q is not None:  # given, so that no call reads the offsets back (not allowed while capturing)
        kw["max_seqlen_q"] = max(b - a for a, b in zip(case.cu_q, case.cu_q[1:]))
    first = pydiff.attention(q, k, v, **kw)
    plans = len(_PLANS)
    assert plans > 0 and len(bodies) == 1
    jit_launches.clear()
    second = pydiff.attention(q, k, v, **kw)
    assert len(_PLANS) == plans and not jit_launches and len(bodies) == 1
    for a, b in zip(_streams(case, first), _streams(case, second)):
        assert torch.equal(a, b)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = pydiff.attention(q, k, v, **kw)
    q.copy_(torch.randn_like(q))  # the replay reads the new values
    graph.replay()
    eager = pydiff.attention(q, k, v, **kw)
    assert len(_PLANS) == plans and not jit_launches and len(bodies) == 1
    for a, b in zip(_streams(case, captured), _streams(case, eager)):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
def test_gpu_block_sparse_matches_flex_attention(cuda_device, dtype, monkeypatch):
    """Block-sparse attention against its peer, compiled flex attention (what diffusers' NABLA models run), on the
    same BlockMask of whole 64 x 64 blocks (Kandinsky's), per head: both within 2x PyTorch's own low-precision error
    of the float64 reference, plus 1e-3."""
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setenv("PYDIFF_ATTENTION_AUTOTUNE", "0")
    case = Case(dtype, 128, 2048, 2048, heads=4, block_mask=(64, 64, "bhmn"), name="flex")
    q, k, v, kw = _on_device(case, cuda_device)
    blocks = kw.pop("block_mask")
    kw.pop("block_size")
    whole = flex_block_mask(blocks, 64)
    ours = pydiff.attention(q, k, v, block_mask=whole, **kw)
    theirs = torch.compile(flex_attention)(q, k, v, block_mask=whole)
    ref64, lowp = references(q.cpu(), k.cpu(), v.cpu(), {**_to_device(kw, "cpu"), "block_mask": blocks.cpu(),
                                                           "block_size": (64, 64)})
    for out in (ours, theirs):
        assert_accurate(out.cpu(), ref64, lowp, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [BF16], ids=str)  # (one dtype: compiling flex attention takes device time)
def test_gpu_block_tiles_match_flex_attention(cuda_device, dtype):
    """A BlockMask with a mask_mod whose partial blocks fall off the block grid (Wan-Animate 2's, 400-token frames),
    ours (its partial blocks as tiles) against compiled flex attention on the same BlockMask: both within 2x
    PyTorch's own low-precision error of the float64 reference (the same mask, dense), plus 1e-3; then the tiles
    made once (``block_mask_tiles``) give the same output."""
    from torch.nn.attention.flex_attention import create_mask, flex_attention

    blocks, n_q, n_k = in_context_block_mask(4, 400, cuda_device)
    gen = torch.Generator(device=cuda_device).manual_seed(9)
    q, k, v = (torch.randn(1, 4, n, 128, device=cuda_device, dtype=dtype, generator=gen) for n in (n_q, n_k, n_k))
    ours = pydiff.attention(q, k, v, block_mask=blocks)
    theirs = torch.compile(flex_attention)(q, k, v, block_mask=blocks)
    dense = create_mask(blocks.mask_mod, 1, 1, n_q, n_k, device="cpu")
    ref64, lowp = references(q.cpu(), k.cpu(), v.cpu(), {"layout": "bhnd", "attn_mask": dense})
    rows = dense.any(-1)[0, 0]  # (flex gives a row of no key zeros, SDPA NaN: compared where keys are kept)
    for out in (ours, theirs):
        assert_accurate(out.cpu()[:, :, rows], ref64[:, :, rows], lowp[:, :, rows], dtype)
    assert torch.equal(pydiff.attention(q, k, v, **block_mask_tiles(blocks, n_q, n_k)), ours)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
def test_gpu_causal_matches_sdpa(cuda_device, dtype):
    """``causal=True`` at a video-length sequence (B1 H8 N4000 D128, the tuner on): within 2x the error of SDPA's
    is_causal (flash attention on the GPU) of the float64 reference."""
    gen = torch.Generator(device=cuda_device).manual_seed(13)
    q, k, v = (torch.randn(1, 8, 4000, 128, device=cuda_device, dtype=dtype, generator=gen) for _ in range(3))
    ours = pydiff.attention(q, k, v, causal=True)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref64 = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    assert_accurate(ours.cpu(), ref64.cpu(), theirs.cpu(), dtype)


@pytest.mark.gpu
def test_gpu_block_sparse_capture(cuda_device, monkeypatch):
    """A block-sparse call captured in a CUDA graph: its block lists are made inside the graph from the mask, so a
    replay after the mask (NABLA's changes every step) and q change computes the new pattern, as an eager call."""
    monkeypatch.setenv("PYDIFF_ATTENTION_AUTOTUNE", "0")
    case = Case(BF16, 128, 1024, 1024, heads=4, block_mask=(64, 64, "bhmn"), name="capture")
    q, k, v, kw = _on_device(case, cuda_device)
    first = pydiff.attention(q, k, v, **kw)  # (the warm-up: the kernel loads)
    _assert_gpu_accurate(case, first, q, k, v, kw)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = pydiff.attention(q, k, v, **kw)
    q.copy_(torch.randn_like(q))
    kw["block_mask"].copy_(torch.rand_like(kw["block_mask"], dtype=torch.float32) > 0.7)
    graph.replay()
    assert torch.equal(captured, pydiff.attention(q, k, v, **kw))
    _assert_gpu_accurate(case, captured, q, k, v, kw)
    # the elements of partial blocks given as tiles (``block_tiles``): nothing read on the host, so it captures
    ids, tiles = _block_tiles(torch.Generator().manual_seed(3), kw["block_mask"].cpu(), 64, 64)
    kw["block_tiles"] = (ids.to(cuda_device), tiles.to(cuda_device))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = pydiff.attention(q, k, v, **kw)
    kw["block_tiles"][0].copy_(torch.randint_like(kw["block_tiles"][0], 0, 6))
    graph.replay()
    assert torch.equal(captured, pydiff.attention(q, k, v, **kw))
    _assert_gpu_accurate(case, captured, q, k, v, kw)


@pytest.mark.gpu
def test_gpu_compile_autotuned_dynamic_shapes(cuda_device, monkeypatch):
    """``torch.compile(dynamic=True)``, as a pipeline compiled once for several resolutions runs it, with the
    autotuner on (the library's default): Inductor traces the op's kernels with symbolic sizes and tunes the tile
    itself (the pruner sees symbolic key counts). Each length's output is accurate against float64."""
    monkeypatch.setenv("PYDIFF_ATTENTION_AUTOTUNE", "1")
    gen = torch.Generator(device=cuda_device).manual_seed(5)
    weight = torch.rand(64, device=cuda_device, generator=gen) + 0.5

    def f(q, k, v, lens, cos, sin):
        return pydiff.attention(q * 1.5, k, v, layout="bnhd", kv_lens=lens, rope=(cos, sin), q_norm_weight=weight)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for n in (77, 200, 333):
        q, k, v = (torch.randn(2, n, 3, 64, device=cuda_device, dtype=torch.bfloat16, generator=gen)
                   for _ in range(3))
        lens = torch.tensor([n, n // 2], device=cuda_device, dtype=torch.int32)
        cos, sin = (torch.rand(n, 64, device=cuda_device, generator=gen) for _ in range(2))
        kw = dict(layout="bnhd", kv_lens=lens, rope=(cos, sin), q_norm_weight=weight)
        assert_accurate(compiled(q, k, v, lens, cos, sin), *references(q * 1.5, k, v, kw), torch.bfloat16)


@pytest.mark.gpu
def test_gpu_opcheck_and_compile(cuda_device, monkeypatch):
    monkeypatch.setenv("PYDIFF_ATTENTION_AUTOTUNE", "0")
    case = OPCHECK_CASES[1]
    q, k, v, kw = build(case, seed=12)
    to = lambda t: t.to(cuda_device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    args = tuple(to(a) for a in _op_args(q, k, v, kw))
    torch.library.opcheck(torch.ops.pydiff.attention.default, args)
    qc, kc, vc = to(q), to(k), to(v)
    lens = to(torch.tensor([7], dtype=torch.int32))
    rope = tuple(to(t) for t in kw["rope"])

    def f(q, k, v, lens):
        return pydiff.attention(q * 1.5, k, v, kv_lens=lens, rope=rope).sum(-1)

    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(qc, kc, vc, lens), f(qc, kc, vc, lens),
                               rtol=2e-3, atol=2e-3)

    class Attend(torch.nn.Module):
        def forward(self, q, k, v):
            return pydiff.attention(q, k, v, rope=rope)

    program = torch.export.export(Attend(), (qc, kc, vc))
    torch.testing.assert_close(program.module()(qc, kc, vc), Attend()(qc, kc, vc), rtol=2e-3, atol=2e-3)
