"""Triton flash-attention forward (FlashAttention, Dao et al. 2022, in FlashAttention-2's loop order, Dao 2023) with
the diffusion variants fused in.

One program owns BLOCK_M query rows of one (batch, head[, segment]) and streams key/value blocks through an online
softmax kept in float32 and base 2 (``exp2``, the scale folded with log2(e)). In the same pass, selected by
constexpr flags (so a plain call compiles to a plain flash-attention):

* key padding (``kv_lens``) and packed variable-length segments (``cu_seqlens``), which also give group attention;
* an attention mask (``attn_mask``: bool, or float added to the scores), read as given: a key mask, one row of
  values per batch row and head that every query shares (diffusers' text-padding masks; one BLOCK_N vector per key
  block), or one row per query (Chroma's; one BLOCK_M x BLOCK_N tile per key block);
* joint attention over two token streams (SD3/Flux MMDiT) read from separate tensors into separate outputs;
* negative-prompt attention (SNOOPI's NASA): a second online softmax over negative keys on the same q tile,
  ``out = A(q, k+, v+) - alpha A(q, k-, v-)``; with queries of the negative stream's own (``NEG_Q``), differential
  attention (Stable Audio 3's);
* block-sparse attention (``block_mask``: video models' sliding-tile and NABLA patterns, causal attention, flex
  BlockMasks): each query block's key loop runs over the key blocks listed for it (``_attend_listed``), the others
  never read; the partial blocks' elements as tiles (``TILE_MASK``), read only in those blocks;
* a prologue on q and k: per-head RMSNorm with weights, then RoPE from a per-token cos/sin table (interleaved
  pairs or half-split; over the first ``ROT_DIM`` channels alone: partial rotary), applied by ``_qk_prologue`` in
  one pass per tensor before the attention kernel. Inside the
  kernel, keys are read by every query block (their prologue was redone N_q / BLOCK_M times), and the q prologue
  made the joint kernel 252 registers per thread instead of 176 (ptxas, sm_90a) and a compile variant of its own.

Head dims that are the sum of two powers of two are split into those chunks (80 = 64 + 16, 96 = 64 + 32,
160 = 128 + 32) instead of being padded to the next power of two, so SD1.5's 80 and 160 do not pay 1.6x the
matmul work; other head dims (40, 72) are padded to one chunk (see ``head_dim_blocks``).
Strides are taken as given, so (B, H, N, D) and (B, N, H, D) tensors are read without copies.

On Hopper the autotuner also tries candidates whose key/value blocks are read through device-side tensor
descriptors (``USE_TMA``: the tensor memory accelerator copies each block into shared memory, zero-filling rows and
columns past the ends), where ``tma_usable`` finds the tensors aligned for it; Triton's global scratch for the
descriptors comes from torch's allocator (``_scratch``). Asked for (``PYDIFF_ATTENTION_WARP_SPEC=1``), it also tries
descriptor tiles whose key loop Triton warp-specialises (``WARP_SPEC``: a producer warpgroup loading, two consumer
warpgroups computing) for calls with one key loop: no negative stream, and a joint call only with its two key
streams joined first (``JOINED_KV``, ``attention_forward``'s join_keys), which it does where the keys have a
prologue (a pass that writes them anyway; the values then cost one copy).

Experiments beside it, reached only through ``attention_forward`` (the benchmark and the tests time and check
them): stream-K (``stream_k=P``: ``_attn_fwd_stream_k``), where P programs share all query blocks' key blocks
evenly instead of one program per query block, and ``_attn_stream_k_combine`` merges the blocks they share; the
softmax overlapped with the matmuls (``overlap=True``: ``_attend_overlapped``, FlashAttention-3's intra-warpgroup
pipelining in Triton's terms); the row sums on the tensor cores (``rowsum_mma=True``).
"""

import contextvars
import functools
import hashlib
import inspect
import math
import os
import warnings
from pathlib import Path

import triton
import triton.language as tl

from . import plans

LOG2E = 1.4426950408889634
#: the kernel's HAS_BIAS for a mask with a row of values per query (1, True: a key mask, one row every query shares)
ROW_MASK = tl.constexpr(2)
#: HAS_BIAS for block-sparse attention's partial blocks (with SPARSE): BIAS holds boolean tiles of BLOCK_Q x
#: BLOCK_K elements (tile 0 all True: a whole block), and each listed key block names the tile of each half of
#: the query tile (``_attend_listed``)
TILE_MASK = tl.constexpr(3)
#: ``HAS_ROPE`` of the QK prologue for RoPE tables of D/2 columns, one angle per pair of channels (read in place:
#: a complex table's real and imaginary parts, LTX-2's split tables); 1: tables of D columns
HALF_TABLES = tl.constexpr(2)


@triton.jit
def _round_to_bf16(x):
    """float32 -> nearest-even bfloat16 value, kept in float32 (Triton's interpreter truncates bf16 casts)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _head_sums(x, BLOCK_M: tl.constexpr, HEADS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Sums of x (BLOCK_M rows x HEADS heads of BLOCK_D columns each) over each head's columns: one per row and
    head (BLOCK_M x HEADS; BLOCK_M with one head)."""
    if HEADS == 1:
        sums = tl.sum(x, 1)
    else:
        sums = tl.sum(tl.reshape(x, (BLOCK_M, HEADS, BLOCK_D)), 2)
    return sums


@triton.jit
def _head_columns(v, BLOCK_M: tl.constexpr, HEADS: tl.constexpr, BLOCK_D: tl.constexpr):
    """A value per row and head (``_head_sums``' shape) over each of its head's BLOCK_D columns."""
    if HEADS == 1:
        cols = v[:, None]
    else:
        cols = tl.reshape(tl.broadcast_to(v[:, :, None], (BLOCK_M, HEADS, BLOCK_D)), (BLOCK_M, HEADS * BLOCK_D))
    return cols


@triton.jit
def _rope_chunk(x, base, rows, stride_n, stride_d, head_off, head, d, mask, rstd, W, COS, SIN, pos,
                stride_cn, stride_cd, stride_sn, stride_sd, stride_ch, stride_sh,
                HEAD_DIM: tl.constexpr, HAS_NORM: tl.constexpr, INTERLEAVED: tl.constexpr,
                HALF: tl.constexpr = False, ROT_DIM: tl.constexpr = 0, SECTIONS: tl.constexpr = 1):
    """RoPE (RoFormer) of one head-dim chunk x (float32, already normalised; columns at ``head_off`` + ``d``, d
    within the head, of the program's head ``head``, rstd per column): x cos + sign * x[partner] sin, the table's
    columns of each head stride_ch / stride_sh apart (0: one table for every head). HALF: the tables hold one
    angle per pair of channels (R/2 columns: pair i is channels 2i, 2i+1 interleaved, i and i + R/2 otherwise).
    ROT_DIM (partial rotary, GPT-NeoX's): only the first R = ROT_DIM channels turn, the tables R columns (or R/2)
    wide; the rest pass through (0: R = HEAD_DIM). SECTIONS (halves only): the R channels fall in SECTIONS equal
    sections of S channels, each turned by halves of its own (j and j + S/2 within it: Allegro's t, h and w
    sections), the tables' columns in the same sections (S each, or S/2 with HALF)."""
    R: tl.constexpr = HEAD_DIM if ROT_DIM == 0 else ROT_DIM
    col = d
    if INTERLEAVED:
        partner = d ^ 1
        sign = tl.where((d & 1) == 0, -1.0, 1.0)
        if HALF:
            col = d >> 1
    else:
        S: tl.constexpr = R // SECTIONS
        j = d  # (the channel within its section)
        if SECTIONS > 1:
            j = d % S
        first = j < S // 2
        partner = tl.where(first, d + S // 2, d - S // 2)
        sign = tl.where(first, -1.0, 1.0)
        if HALF:
            col = tl.where(first, d, d - S // 2)
            if SECTIONS > 1:
                col = (d // S) * (S // 2) + tl.where(first, j, j - S // 2)
    turned = mask
    if R < HEAD_DIM:  # (the channels past R read no table: cos 1 and sin 0, x itself)
        inside = d < R
        partner = tl.where(inside, partner, d)
        col = tl.where(inside, col, 0)
        turned = mask & inside[None, :]
    # The partner may sit in the other head-dim chunk, so it is read again (from cache) rather than shuffled.
    xp = tl.load(base + rows[:, None] * stride_n + (head_off + partner * stride_d)[None, :], mask=mask, other=0.0)
    xp = xp.to(tl.float32)
    if HAS_NORM:
        wp = tl.load(W + partner, mask=partner < HEAD_DIM, other=0.0).to(tl.float32)
        xp = xp * rstd * wp[None, :]
    # with a table shared by every head, the heads of a token read the same row: a program's heads share its lines
    # in cache
    c = tl.load(COS + pos[:, None] * stride_cn + (head * stride_ch + col * stride_cd)[None, :], mask=turned,
                other=1.0).to(tl.float32)
    s = tl.load(SIN + pos[:, None] * stride_sn + (head * stride_sh + col * stride_sd)[None, :], mask=turned,
                other=0.0).to(tl.float32)
    return x * c + (sign[None, :] * xp) * s


@triton.jit
def _load_qk(base, rows, stride_n, stride_d, head_off_a, d_a, head_off_b, d_b, mask_a, mask_b, W, eps, COS, SIN,
             pos0, stride_cn, stride_cd, stride_sn, stride_sd, head_a, head_b, stride_ch, stride_sh,
             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, HEADS: tl.constexpr, BLOCK_DA: tl.constexpr,
             BLOCK_DB: tl.constexpr, SPLIT_D: tl.constexpr, HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr,
             INTERLEAVED: tl.constexpr, EMULATE_BF16: tl.constexpr, ROT_DIM: tl.constexpr = 0,
             SECTIONS: tl.constexpr = 1):
    """A q or k tile (rows x HEADS heads, each head dim as one or two chunks: chunk a's columns at head_off_a + d_a,
    d_a within the head, of the program's head head_a, chunk b's likewise) with its prologue, in the input dtype:
    RMSNorm over each head's dims (Zhang & Sennrich 2019) with weights W, then RoPE (``_rope_chunk``), both in
    float32."""
    x_a = tl.load(base + rows[:, None] * stride_n + (head_off_a + d_a * stride_d)[None, :], mask=mask_a, other=0.0)
    if SPLIT_D:
        x_b = tl.load(base + rows[:, None] * stride_n + (head_off_b + d_b * stride_d)[None, :], mask=mask_b,
                      other=0.0)
    else:
        x_b = x_a
    if HAS_NORM or HAS_ROPE:
        f_a = x_a.to(tl.float32)
        f_b = x_b.to(tl.float32)
        rstd_a = 1.0
        rstd_b = 1.0
        if HAS_NORM:
            sum_sq = _head_sums(f_a * f_a, BLOCK_M, HEADS, BLOCK_DA)
            if SPLIT_D:
                sum_sq += _head_sums(f_b * f_b, BLOCK_M, HEADS, BLOCK_DB)
            rstd = tl.math.rsqrt(sum_sq / HEAD_DIM + eps)
            rstd_a = _head_columns(rstd, BLOCK_M, HEADS, BLOCK_DA)
            f_a = f_a * rstd_a * tl.load(W + d_a, mask=d_a < HEAD_DIM, other=0.0).to(tl.float32)[None, :]
            if SPLIT_D:
                rstd_b = _head_columns(rstd, BLOCK_M, HEADS, BLOCK_DB)
                f_b = f_b * rstd_b * tl.load(W + d_b, mask=d_b < HEAD_DIM, other=0.0).to(tl.float32)[None, :]
        if HAS_ROPE:
            pos = pos0 + rows
            f_a = _rope_chunk(f_a, base, rows, stride_n, stride_d, head_off_a, head_a, d_a, mask_a, rstd_a, W, COS,
                              SIN, pos, stride_cn, stride_cd, stride_sn, stride_sd, stride_ch, stride_sh, HEAD_DIM,
                              HAS_NORM, INTERLEAVED, HAS_ROPE == HALF_TABLES, ROT_DIM, SECTIONS)
            if SPLIT_D:
                f_b = _rope_chunk(f_b, base, rows, stride_n, stride_d, head_off_b, head_b, d_b, mask_b, rstd_b, W,
                                  COS, SIN, pos, stride_cn, stride_cd, stride_sn, stride_sd, stride_ch, stride_sh,
                                  HEAD_DIM, HAS_NORM, INTERLEAVED, HAS_ROPE == HALF_TABLES, ROT_DIM, SECTIONS)
        if EMULATE_BF16:
            x_a = _round_to_bf16(f_a)
            x_b = _round_to_bf16(f_b)
        else:
            x_a = f_a.to(x_a.dtype)
            x_b = f_b.to(x_b.dtype)
    return x_a, x_b


@triton.jit
def _kv_source(X, n_rows, stride_n, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               USE_TMA: tl.constexpr):
    """What a key loop reads one head-dim chunk of K or V from (or ``_load_rows`` q's, with WARP_SPEC): the pointer
    itself, or (USE_TMA) a tensor descriptor over its rows [0, n_rows) x head dim, whose block loads go through
    Hopper's tensor memory accelerator and fill rows and columns past the ends with zeros. The caller checked that
    the head dim is contiguous and that the base and row stride are 16-byte multiples."""
    src = X
    if USE_TMA:
        src = tl.make_tensor_descriptor(X, shape=[tl.maximum(n_rows, 1), HEAD_DIM], strides=[stride_n, 1],
                                        block_shape=[BLOCK_N, BLOCK_D])
    return src


@triton.jit
def _attend_keys(acc_a, acc_b, m_i, l_i, q_a, q_b, K, V, k_start, n_end,
                 stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                 HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
                 SPLIT_D: tl.constexpr, MASK_D: tl.constexpr, MASK_N: tl.constexpr, EMULATE_BF16: tl.constexpr,
                 SCALE_POSITIVE: tl.constexpr, USE_TMA: tl.constexpr, ROWSUM_MMA: tl.constexpr,
                 OVERLAP: tl.constexpr = False, WARP_SPEC: tl.constexpr = False, MB=None, stride_mn=0, mask_shift=0.0,
                 HAS_BIAS: tl.constexpr = False):
    """Keys [k_start, n_end) of one stream (K, V: the head's base pointers), block by block, into the online softmax
    (FlashAttention-2 algorithm 1, base 2); with USE_TMA read through descriptors, one per head-dim chunk.
    MASK_N: the stream may end inside a block. Then the whole blocks still run without the column mask (a select
    per score in a loop the softmax bounds at small head dims) and only the partial last block pays for it, after
    the loop; except with a split head dim (SPLIT_D), where Triton 3.6 miscompiled that block for an H200 (wrong
    output columns, and out-of-range shared-memory addresses with descriptor loads: compute-sanitizer, D 80 with
    97 keys), so there every block takes the mask. OVERLAP: the loop's blocks (all but a partial last one run
    after it) go through ``_attend_overlapped`` when there are two or more. WARP_SPEC: the loop is warp-specialised
    (``_attend_blocks``), and with MASK_N every block takes the mask too: Triton 3.6 does not specialise a loop
    followed by a block of its own (sm_90a: no register split, 4 warps only). HAS_BIAS: the mask at MB
    (``_block_scores``)."""
    SPLIT_N: tl.constexpr = MASK_N and not SPLIT_D and not WARP_SPEC
    k_a = _kv_source(K, n_end, stride_kn, HEAD_DIM, BLOCK_N, BLOCK_DA, USE_TMA)
    v_a = _kv_source(V, n_end, stride_vn, HEAD_DIM, BLOCK_N, BLOCK_DA, USE_TMA)
    k_b = _kv_source(K, n_end, stride_kn, HEAD_DIM, BLOCK_N, BLOCK_DB, USE_TMA and SPLIT_D)
    v_b = _kv_source(V, n_end, stride_vn, HEAD_DIM, BLOCK_N, BLOCK_DB, USE_TMA and SPLIT_D)
    n_whole = n_end
    if SPLIT_N:
        n_whole = k_start + tl.maximum(n_end - k_start, 0) // BLOCK_N * BLOCK_N
    if OVERLAP and n_whole - k_start > BLOCK_N:
        acc_a, acc_b, m_i, l_i = _attend_overlapped(
            acc_a, acc_b, m_i, l_i, q_a, q_b, k_a, v_a, k_b, v_b, k_start, n_whole, stride_kn, stride_kd, stride_vn,
            stride_vd, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, MASK_N and not SPLIT_N,
            EMULATE_BF16, SCALE_POSITIVE, USE_TMA, ROWSUM_MMA,
            MB=MB, stride_mn=stride_mn, mask_shift=mask_shift, HAS_BIAS=HAS_BIAS)
    else:
        acc_a, acc_b, m_i, l_i = _attend_blocks(
            acc_a, acc_b, m_i, l_i, q_a, q_b, k_a, v_a, k_b, v_b, k_start, n_whole, n_end, stride_kn, stride_kd,
            stride_vn, stride_vd, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D,
            MASK_N and not SPLIT_N, EMULATE_BF16, SCALE_POSITIVE, USE_TMA, ROWSUM_MMA, WARP_SPEC, MB=MB,
            stride_mn=stride_mn, mask_shift=mask_shift, HAS_BIAS=HAS_BIAS)
    if SPLIT_N:
        if n_whole < n_end:
            acc_a, acc_b, m_i, l_i = _attend_block(
                acc_a, acc_b, m_i, l_i, q_a, q_b, k_a, v_a, k_b, v_b, n_whole, n_end, stride_kn, stride_kd,
                stride_vn, stride_vd, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, True,
                EMULATE_BF16, SCALE_POSITIVE, USE_TMA, ROWSUM_MMA,
                MB=MB, stride_mn=stride_mn, mask_shift=mask_shift, HAS_BIAS=HAS_BIAS)
    return acc_a, acc_b, m_i, l_i


@triton.jit
def _attend_blocks(acc_a, acc_b, m_i, l_i, q_a, q_b, K, V, KB, VB, k_start, k_end, n_end,
                   stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
                   SPLIT_D: tl.constexpr, MASK_D: tl.constexpr, MASK_N: tl.constexpr, EMULATE_BF16: tl.constexpr,
                   SCALE_POSITIVE: tl.constexpr, USE_TMA: tl.constexpr, ROWSUM_MMA: tl.constexpr,
                   WARP_SPEC: tl.constexpr = False, MB=None, stride_mn=0,
                   mask_shift=0.0, HAS_BIAS: tl.constexpr = False):
    """The key blocks starting in [k_start, k_end), one after another (``_attend_block``; keys end at n_end).
    WARP_SPEC (with USE_TMA, and q read through descriptors too): Triton's warp specialisation of the loop, which on
    Hopper splits the program's warps into a producer warpgroup issuing the descriptor loads and consumer
    warpgroups, each over a share of the query rows, that run the matrix multiplies and the softmax with the
    registers the producer gives up (FlashAttention-3's layout; ``num_warps`` = 4 per warpgroup). Only this branch
    names the loop option, which Tritons before 3.4 lack."""
    if WARP_SPEC:
        for start_n in tl.range(k_start, k_end, BLOCK_N, warp_specialize=True):
            acc_a, acc_b, m_i, l_i = _attend_block(
                acc_a, acc_b, m_i, l_i, q_a, q_b, K, V, KB, VB, start_n, n_end, stride_kn, stride_kd, stride_vn,
                stride_vd, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, MASK_N, EMULATE_BF16,
                SCALE_POSITIVE, USE_TMA, ROWSUM_MMA,
                MB=MB, stride_mn=stride_mn, mask_shift=mask_shift, HAS_BIAS=HAS_BIAS)
    else:
        for start_n in range(k_start, k_end, BLOCK_N):
            acc_a, acc_b, m_i, l_i = _attend_block(
                acc_a, acc_b, m_i, l_i, q_a, q_b, K, V, KB, VB, start_n, n_end, stride_kn, stride_kd, stride_vn,
                stride_vd, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, MASK_N, EMULATE_BF16,
                SCALE_POSITIVE, USE_TMA, ROWSUM_MMA,
                MB=MB, stride_mn=stride_mn, mask_shift=mask_shift, HAS_BIAS=HAS_BIAS)
    return acc_a, acc_b, m_i, l_i


@triton.jit
def _attend_listed(acc_a, acc_b, m_i, l_i, q_a, q_b, K, V, LIST, count, BLOCK_K, n_end,
                   stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr,
                   BLOCK_DB: tl.constexpr, SPLIT_D: tl.constexpr, MASK_D: tl.constexpr, MASK_N: tl.constexpr,
                   EMULATE_BF16: tl.constexpr, SCALE_POSITIVE: tl.constexpr, USE_TMA: tl.constexpr,
                   ROWSUM_MMA: tl.constexpr, BLOCK_Q: tl.constexpr, MB=None, stride_mn=0, mask_shift=0.0,
                   HAS_BIAS: tl.constexpr = False, stride_mt=0, whole=0):
    """Block-sparse attention: the ``count`` key blocks of BLOCK_K keys listed at LIST (ascending), each as
    BLOCK_K / BLOCK_N key blocks of the loop (the launcher chose BLOCK_N to divide BLOCK_K), in one loop over the
    listed blocks' key blocks, so that the pipeliner prefetches across them; the blocks not listed are never read.
    Each entry is 4 x the block's number + which of the tile's two halves of BLOCK_Q rows attend to it (bit 0 the
    first, bit 1 the second; both where BLOCK_M <= BLOCK_Q): where the tile spans two rows of the block mask
    (BLOCK_M = 2 BLOCK_Q), the union of their blocks is listed and a half that does not attend to one has its
    scores there masked (``_block_scores``' row_keep). HAS_BIAS == TILE_MASK (a block mask's partial blocks): each
    entry is three int32, the entry and the tiles of the two halves' elements in that block (MB: each query row's
    row of a tile, the tiles stride_mt apart); the first ``whole`` entries have no partial half (tile 0 in both),
    and run in a loop of their own that reads no tile. Keys end at n_end (every listed block starts before it):
    with MASK_N every block takes the column mask. The key/value sources are made once, over keys [0, n_end)."""
    k_a = _kv_source(K, n_end, stride_kn, HEAD_DIM, BLOCK_N, BLOCK_DA, USE_TMA)
    v_a = _kv_source(V, n_end, stride_vn, HEAD_DIM, BLOCK_N, BLOCK_DA, USE_TMA)
    k_b = _kv_source(K, n_end, stride_kn, HEAD_DIM, BLOCK_N, BLOCK_DB, USE_TMA and SPLIT_D)
    v_b = _kv_source(V, n_end, stride_vn, HEAD_DIM, BLOCK_N, BLOCK_DB, USE_TMA and SPLIT_D)
    if HAS_BIAS == TILE_MASK:
        acc_a, acc_b, m_i, l_i = _attend_list_range(
            acc_a, acc_b, m_i, l_i, q_a, q_b, k_a, v_a, k_b, v_b, LIST, 0, whole, BLOCK_K, n_end, stride_kn,
            stride_kd, stride_vn, stride_vd, qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D,
            MASK_D, MASK_N, EMULATE_BF16, SCALE_POSITIVE, USE_TMA, ROWSUM_MMA, BLOCK_Q, 3)
    else:
        whole = 0
    acc_a, acc_b, m_i, l_i = _attend_list_range(
        acc_a, acc_b, m_i, l_i, q_a, q_b, k_a, v_a, k_b, v_b, LIST, whole, count, BLOCK_K, n_end, stride_kn,
        stride_kd, stride_vn, stride_vd, qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D,
        MASK_N, EMULATE_BF16, SCALE_POSITIVE, USE_TMA, ROWSUM_MMA, BLOCK_Q, 3 if HAS_BIAS == TILE_MASK else 1,
        MB=MB, stride_mn=stride_mn, mask_shift=mask_shift, HAS_BIAS=HAS_BIAS, stride_mt=stride_mt)
    return acc_a, acc_b, m_i, l_i


@triton.jit
def _attend_list_range(acc_a, acc_b, m_i, l_i, q_a, q_b, K, V, KB, VB, LIST, first, last, BLOCK_K, n_end,
                       stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                       HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr,
                       BLOCK_DB: tl.constexpr, SPLIT_D: tl.constexpr, MASK_D: tl.constexpr, MASK_N: tl.constexpr,
                       EMULATE_BF16: tl.constexpr, SCALE_POSITIVE: tl.constexpr, USE_TMA: tl.constexpr,
                       ROWSUM_MMA: tl.constexpr, BLOCK_Q: tl.constexpr, STEP: tl.constexpr, MB=None, stride_mn=0,
                       mask_shift=0.0, HAS_BIAS: tl.constexpr = False, stride_mt=0):
    """Entries [first, last) of ``_attend_listed``'s list (STEP int32 each), in one loop over their key blocks."""
    PAIRED: tl.constexpr = BLOCK_M > BLOCK_Q
    per_block = BLOCK_K // BLOCK_N
    first_half = tl.arange(0, BLOCK_M) < BLOCK_Q
    for i in range(first * per_block, last * per_block):
        listed = i // per_block
        entry = tl.load(LIST + listed * STEP)
        start_n = (entry >> 2) * BLOCK_K + (i - listed * per_block) * BLOCK_N
        row_keep = tl.where(first_half, entry & 1, entry & 2) != 0
        mb = MB
        if HAS_BIAS == TILE_MASK:
            # (the tile's columns start at the block's first key: MB + start_n + rows lands on them)
            tile = tl.where(first_half, tl.load(LIST + listed * 3 + 1), tl.load(LIST + listed * 3 + 2))
            mb = MB + tile.to(tl.int64) * stride_mt - ((entry >> 2) * BLOCK_K).to(tl.int64) * stride_mn
        acc_a, acc_b, m_i, l_i = _attend_block(
            acc_a, acc_b, m_i, l_i, q_a, q_b, K, V, KB, VB, start_n, n_end, stride_kn, stride_kd, stride_vn,
            stride_vd, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, MASK_N, EMULATE_BF16,
            SCALE_POSITIVE, USE_TMA, ROWSUM_MMA, MB=mb, stride_mn=stride_mn, mask_shift=mask_shift,
            HAS_BIAS=HAS_BIAS, row_keep=row_keep, GATED=PAIRED)
    return acc_a, acc_b, m_i, l_i


@triton.jit
def _attend_overlapped(acc_a, acc_b, m_i, l_i, q_a, q_b, K, V, KB, VB, k_start, n_end,
                       stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                       HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr,
                       BLOCK_DB: tl.constexpr, SPLIT_D: tl.constexpr, MASK_D: tl.constexpr, MASK_N: tl.constexpr,
                       EMULATE_BF16: tl.constexpr, SCALE_POSITIVE: tl.constexpr, USE_TMA: tl.constexpr,
                       ROWSUM_MMA: tl.constexpr, MB=None, stride_mn=0, mask_shift=0.0, HAS_BIAS: tl.constexpr = False):
    """Key blocks [k_start, n_end), at least two (with MASK_N every block is masked at n_end), in a rotated order:
    each iteration multiplies the previous block's P by its V, then starts the next block's scores and runs this
    block's softmax while the tensor cores compute them (FlashAttention-3's intra-warpgroup overlap of softmax and
    matmuls). In Triton's terms the scores' dot is "properly async": its result is read only in the next iteration,
    after the P V dot's wait, so no wait separates its issue from the softmax (sm_90a PTX: wgmma, commit, then the
    ex2s). The loop carries the in-flight scores and P in the values' dtype, P as integer bits: a loop-carried float
    P reached the P V matmul through shared memory (32 KiB more at 128 x 128, sm_90a), its bits reach it from
    registers. The first block's scores and softmax, the second's scores and the last two P V products run outside
    the loop. A split head dim gains nothing: Triton 3.6 waits on both chunks' score dots before the softmax (the
    first feeds the second as its accumulator; ``benchmarks/attention_resources.py --overlap``)."""
    last = k_start + (tl.cdiv(n_end - k_start, BLOCK_N) - 1) * BLOCK_N
    s = _block_scores(q_a, q_b, K, KB, k_start, n_end, stride_kn, stride_kd, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_DA,
                      BLOCK_DB, SPLIT_D, MASK_D, MASK_N, EMULATE_BF16, SCALE_POSITIVE, USE_TMA, MB=MB,
                      stride_mn=stride_mn, mask_shift=mask_shift, HAS_BIAS=HAS_BIAS)
    p, alpha, m_i, l_i = _block_softmax(s, m_i, l_i, qk_scale, SCALE_POSITIVE, ROWSUM_MMA, HAS_BIAS)
    p = _p_operand(p, q_a.dtype, EMULATE_BF16)
    p_dtype: tl.constexpr = p.dtype
    p = _as_bits(p)
    s = _block_scores(q_a, q_b, K, KB, k_start + BLOCK_N, n_end, stride_kn, stride_kd, qk_scale, HEAD_DIM, BLOCK_N,
                      BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, MASK_N, EMULATE_BF16, SCALE_POSITIVE, USE_TMA, MB=MB,
                      stride_mn=stride_mn, mask_shift=mask_shift, HAS_BIAS=HAS_BIAS)
    for start_n in range(k_start + 2 * BLOCK_N, last + 1, BLOCK_N):
        acc_a, acc_b, l_i = _block_accumulate(
            acc_a, acc_b, l_i, p.to(p_dtype, bitcast=True), alpha, V, VB, start_n - 2 * BLOCK_N, n_end, stride_vn,
            stride_vd, HEAD_DIM, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, MASK_N, EMULATE_BF16, USE_TMA,
            ROWSUM_MMA)
        s_next = _block_scores(q_a, q_b, K, KB, start_n, n_end, stride_kn, stride_kd, qk_scale, HEAD_DIM, BLOCK_N,
                               BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, MASK_N, EMULATE_BF16, SCALE_POSITIVE, USE_TMA,
                               MB=MB, stride_mn=stride_mn, mask_shift=mask_shift, HAS_BIAS=HAS_BIAS)
        p, alpha, m_i, l_i = _block_softmax(s, m_i, l_i, qk_scale, SCALE_POSITIVE, ROWSUM_MMA, HAS_BIAS)
        p = _as_bits(_p_operand(p, q_a.dtype, EMULATE_BF16))
        s = s_next
    acc_a, acc_b, l_i = _block_accumulate(
        acc_a, acc_b, l_i, p.to(p_dtype, bitcast=True), alpha, V, VB, last - BLOCK_N, n_end, stride_vn, stride_vd,
        HEAD_DIM, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, MASK_N, EMULATE_BF16, USE_TMA, ROWSUM_MMA)
    p, alpha, m_i, l_i = _block_softmax(s, m_i, l_i, qk_scale, SCALE_POSITIVE, ROWSUM_MMA, HAS_BIAS)
    acc_a, acc_b, l_i = _block_accumulate(
        acc_a, acc_b, l_i, p, alpha, V, VB, last, n_end, stride_vn, stride_vd, HEAD_DIM, BLOCK_N, BLOCK_DA, BLOCK_DB,
        SPLIT_D, MASK_D, MASK_N, EMULATE_BF16, USE_TMA, ROWSUM_MMA)
    return acc_a, acc_b, m_i, l_i


@triton.jit
def _as_bits(x):
    """x's bits as integers of its width."""
    if x.dtype.primitive_bitwidth == 16:
        bits = x.to(tl.int16, bitcast=True)
    else:
        bits = x.to(tl.int32, bitcast=True)
    return bits


@triton.jit
def _attend_block(acc_a, acc_b, m_i, l_i, q_a, q_b, K, V, KB, VB, start_n, n_end,
                  stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
                  SPLIT_D: tl.constexpr, MASK_D: tl.constexpr, MASK_N: tl.constexpr, EMULATE_BF16: tl.constexpr,
                  SCALE_POSITIVE: tl.constexpr, USE_TMA: tl.constexpr, ROWSUM_MMA: tl.constexpr, MB=None,
                  stride_mn=0, mask_shift=0.0, HAS_BIAS: tl.constexpr = False, row_keep=None,
                  GATED: tl.constexpr = False):
    """One key/value block into the online softmax (``l_i``: see ``_row_sums``; HAS_BIAS, GATED:
    ``_block_scores``)."""
    s = _block_scores(q_a, q_b, K, KB, start_n, n_end, stride_kn, stride_kd, qk_scale, HEAD_DIM, BLOCK_N, BLOCK_DA,
                      BLOCK_DB, SPLIT_D, MASK_D, MASK_N, EMULATE_BF16, SCALE_POSITIVE, USE_TMA, MB=MB,
                      stride_mn=stride_mn, mask_shift=mask_shift, HAS_BIAS=HAS_BIAS, row_keep=row_keep, GATED=GATED)
    p, alpha, m_new, l_i = _block_softmax(s, m_i, l_i, qk_scale, SCALE_POSITIVE, ROWSUM_MMA, HAS_BIAS or GATED)
    acc_a, acc_b, l_i = _block_accumulate(acc_a, acc_b, l_i, p, alpha, V, VB, start_n, n_end, stride_vn, stride_vd,
                                          HEAD_DIM, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, MASK_N,
                                          EMULATE_BF16, USE_TMA, ROWSUM_MMA)
    return acc_a, acc_b, m_new, l_i


@triton.jit
def _block_rows(start_n, n_end, BLOCK_N: tl.constexpr, MASK_N: tl.constexpr):
    """The key rows of the block at start_n to read. A partial last block (MASK_N) reads its missing rows from the
    last key instead of masking the loads (fewer registers for the pipelined loads: 255 -> 228 per thread with key
    padding at D 64, ptxas sm_90a); those columns get a score of -inf in ``_block_scores``, so they carry zero
    weight."""
    offs_n = tl.arange(0, BLOCK_N)
    if MASK_N:
        rows = tl.minimum(offs_n, n_end - 1 - start_n)
    else:
        rows = offs_n
    return rows


@triton.jit
def _kv_chunk(blk, rows, stride_n, d, stride_d, HEAD_DIM: tl.constexpr, MASK_D: tl.constexpr):
    """Rows ``rows`` x head-dim columns ``d`` of a key or value block. Padded head-dim columns are masked (zeros): a
    mask constant over 8-column groups keeps the loads vectorised and asynchronous, where clamped column indices
    would not."""
    ptrs = blk + rows[:, None] * stride_n + d[None, :] * stride_d
    if MASK_D:
        x = tl.load(ptrs, mask=(d < HEAD_DIM)[None, :], other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _block_scores(q_a, q_b, K, KB, start_n, n_end, stride_kn, stride_kd, qk_scale,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
                  SPLIT_D: tl.constexpr, MASK_D: tl.constexpr, MASK_N: tl.constexpr, EMULATE_BF16: tl.constexpr,
                  SCALE_POSITIVE: tl.constexpr, USE_TMA: tl.constexpr, MB=None, stride_mn=0, mask_shift=0.0,
                  HAS_BIAS: tl.constexpr = False, row_keep=None, GATED: tl.constexpr = False):
    """The scores q k^T of the key block at start_n (times the scale unless SCALE_POSITIVE, where the softmax folds
    it in), -inf past n_end with MASK_N. HAS_BIAS: plus the mask (MB: its row for this batch row and head, indexed
    by key position, stride_mn apart; with ROW_MASK or TILE_MASK one such row per query row, BLOCK_M pointers): a
    float mask's values less ``mask_shift`` (``_mask_top``: a scalar, or a column of one per query row) in float32,
    in the scores' units; a boolean mask's -inf where False. GATED: -inf in the rows where ``row_keep`` is False."""
    offs_n = tl.arange(0, BLOCK_N)
    d_a = tl.arange(0, BLOCK_DA)
    d_b = BLOCK_DA + tl.arange(0, BLOCK_DB)
    rows = _block_rows(start_n, n_end, BLOCK_N, MASK_N)
    if USE_TMA:
        k_a = K.load([start_n, 0])
    else:
        k_blk = K + tl.cast(start_n, tl.int64) * stride_kn
        k_a = _kv_chunk(k_blk, rows, stride_kn, d_a, stride_kd, HEAD_DIM, MASK_D)
    if EMULATE_BF16:
        s = tl.dot(q_a.to(tl.float32), tl.trans(k_a.to(tl.float32)))
    else:
        s = tl.dot(q_a, tl.trans(k_a))
    if SPLIT_D:
        if USE_TMA:
            k_b = KB.load([start_n, BLOCK_DA])
        else:
            k_b = _kv_chunk(k_blk, rows, stride_kn, d_b, stride_kd, HEAD_DIM, MASK_D)
        if EMULATE_BF16:
            s = tl.dot(q_b.to(tl.float32), tl.trans(k_b.to(tl.float32)), s)
        else:
            s = tl.dot(q_b, tl.trans(k_b), s)
    if not SCALE_POSITIVE:
        s = s * qk_scale
    if HAS_BIAS:
        # (rows: a partial block's missing keys read the last key's value, then take -inf below)
        cols = (start_n + rows).to(tl.int64) * stride_mn
        if HAS_BIAS >= ROW_MASK:
            bias = tl.load(MB[:, None] + cols[None, :])
        else:
            bias = tl.load(MB + cols)[None, :]
        if MB.dtype.element_ty == tl.int1:  # a boolean mask: True takes part
            s += tl.where(bias, 0.0, float("-inf"))
        else:
            # in the scores' units: base 2 (log2(e), as LOG2E) where they are scaled; divided by the scale where
            # the softmax folds it in (SCALE_POSITIVE: one multiply-add per score fewer)
            unit = 1.4426950408889634
            if SCALE_POSITIVE:
                unit = unit / qk_scale
            s += (bias.to(tl.float32) - mask_shift) * unit
    if MASK_N:
        s = tl.where(((start_n + offs_n) < n_end)[None, :], s, float("-inf"))
    if GATED:
        s = tl.where(row_keep[:, None], s, float("-inf"))
    return s


@triton.jit
def _block_softmax(s, m_i, l_i, qk_scale, SCALE_POSITIVE: tl.constexpr, ROWSUM_MMA: tl.constexpr,
                   HAS_BIAS: tl.constexpr = False):
    """One block's step of the online softmax: (P in float32, the rescale factor of the old state, the new row
    maxima, the row sums; with ROWSUM_MMA the sums are left to ``_block_accumulate``)."""
    # Every block holds at least one valid key, so m_new is finite and no (-inf) - (-inf) can appear; except with a
    # mask (HAS_BIAS), whose -inf may cover every key a row has seen so far: the row then subtracts 0 instead.
    if SCALE_POSITIVE:
        # max(s) * scale == max(s * scale), so the scale folds into exp2's argument as one fused multiply-add
        # per score (the softmax, not the matmuls, bounds this loop at small head dims)
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
    m_sub = m_new
    if HAS_BIAS:
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
    if SCALE_POSITIVE:
        p = tl.math.exp2(s * qk_scale - m_sub[:, None])
    else:
        p = tl.math.exp2(s - m_sub[:, None])
    alpha = tl.math.exp2(m_i - m_sub)
    if not ROWSUM_MMA:
        l_i = l_i * alpha + tl.sum(p, 1)
    return p, alpha, m_new, l_i


@triton.jit
def _p_operand(p, dtype, EMULATE_BF16: tl.constexpr):
    """P as the P V matmul's operand: in the values' dtype (bf16 values kept in float32 under the interpreter)."""
    if EMULATE_BF16:
        p = _round_to_bf16(p)
    else:
        p = p.to(dtype)
    return p


@triton.jit
def _block_accumulate(acc_a, acc_b, l_i, p, alpha, V, VB, start_n, n_end, stride_vn, stride_vd,
                      HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
                      SPLIT_D: tl.constexpr, MASK_D: tl.constexpr, MASK_N: tl.constexpr, EMULATE_BF16: tl.constexpr,
                      USE_TMA: tl.constexpr, ROWSUM_MMA: tl.constexpr):
    """acc * alpha + P V for the value block at start_n (and with ROWSUM_MMA the row sums as P times ones)."""
    d_a = tl.arange(0, BLOCK_DA)
    d_b = BLOCK_DA + tl.arange(0, BLOCK_DB)
    rows = _block_rows(start_n, n_end, BLOCK_N, MASK_N)
    if USE_TMA:
        v_a = V.load([start_n, 0])
    else:
        v_blk = V + tl.cast(start_n, tl.int64) * stride_vn
        v_a = _kv_chunk(v_blk, rows, stride_vn, d_a, stride_vd, HEAD_DIM, MASK_D)
    p = _p_operand(p, v_a.dtype, EMULATE_BF16)
    if EMULATE_BF16:
        v_a = v_a.to(tl.float32)
    if ROWSUM_MMA:
        l_i = tl.dot(p, tl.full([BLOCK_N, 16], 1.0, p.dtype), l_i * alpha[:, None])
    # the rescaled accumulator goes into the matrix unit as its addend (no separate add)
    acc_a = tl.dot(p, v_a, acc_a * alpha[:, None])
    if SPLIT_D:
        if USE_TMA:
            v_b = VB.load([start_n, BLOCK_DA])
        else:
            v_b = _kv_chunk(v_blk, rows, stride_vn, d_b, stride_vd, HEAD_DIM, MASK_D)
        if EMULATE_BF16:
            v_b = v_b.to(tl.float32)
        acc_b = tl.dot(p, v_b, acc_b * alpha[:, None])
    return acc_a, acc_b, l_i


@triton.jit
def _row_sums(BLOCK_M: tl.constexpr, ROWSUM_MMA: tl.constexpr):
    """The online softmax's row sums, zero: one per row, or with ROWSUM_MMA 16 equal columns per row (the tensor
    cores' smallest output width)."""
    if ROWSUM_MMA:  # (one return: Triton 3.6 types every return of a function alike, taken or not)
        sums = tl.zeros([BLOCK_M, 16], dtype=tl.float32)
    else:
        sums = tl.zeros([BLOCK_M], dtype=tl.float32)
    return sums


@triton.jit
def _query_block(
    Q, O, row_start, row_end, stride_qn, stride_qd, stride_on, stride_od,
    K, V, stride_kn, stride_kd, stride_vn, stride_vd, k_start, k_end,
    K2, V2, stride_k2n, stride_k2d, stride_v2n, stride_v2d, k2_end,
    KN, VN, stride_knn, stride_knd, stride_vnn, stride_vnd, kn_end,
    qk_scale, neg_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr,
    BLOCK_DB: tl.constexpr, SPLIT_D: tl.constexpr, MASK_D: tl.constexpr, EVEN_N: tl.constexpr,
    JOINT_KEYS: tl.constexpr, NEG: tl.constexpr, EMULATE_BF16: tl.constexpr, SCALE_POSITIVE: tl.constexpr,
    USE_TMA: tl.constexpr, ROWSUM_MMA: tl.constexpr, OVERLAP: tl.constexpr, WARP_SPEC: tl.constexpr = False,
    MB=None, MB2=None, stride_mn=0, HAS_BIAS: tl.constexpr = False, LIST=None, count=0, BLOCK_K=0,
    SPARSE: tl.constexpr = False, BLOCK_Q: tl.constexpr = 0, stride_mt=0, whole=0, QN=None, stride_qnn=0,
    stride_qnd=0, NEG_Q: tl.constexpr = False,
):
    """Rows [row_start, row_start + BLOCK_M) of one (batch, head) query stream against every key stream: K/V's,
    then (JOINT_KEYS) K2/V2's, and (NEG) the negative stream's into an output of their own. HAS_BIAS: the mask
    (``_block_scores``) of K's keys at MB, of K2's at MB2 (with ROW_MASK, BLOCK_M pointers each: the rows of this
    block's queries); the negative stream K's too (differential attention: the same tokens). SPARSE: K's keys are
    only the ``count`` blocks of BLOCK_K listed at LIST (``_attend_listed``; with TILE_MASK, MB are the query rows'
    rows of a tile, tiles stride_mt apart, and the first ``whole`` listed blocks have none; a float mask's shift
    from the listed blocks alone). NEG_Q (differential attention): the negative stream
    has queries of its own, these rows of QN (strides stride_qnn, stride_qnd)."""
    mask_shift = 0.0
    zero_rows = None
    if HAS_BIAS and MB.dtype.element_ty != tl.int1:  # (a boolean mask's 0 and -inf need no shift)
        mask_shift = _mask_top(MB, stride_mn, k_start, k_end, BLOCK_M, BLOCK_N, HAS_BIAS, LIST, count, BLOCK_K,
                               BLOCK_Q, SPARSE)
        if JOINT_KEYS:
            mask_shift = tl.maximum(mask_shift, _mask_top(MB2, stride_mn, 0, k2_end, BLOCK_M, BLOCK_N, HAS_BIAS))
        mask_shift = tl.where(mask_shift == float("-inf"), 0.0, mask_shift)
        # A row whose every mask value is at most -1e30 (a padded query under the finfo.min masks of Hugging Face's
        # models) has, in float64 as in SDPA's float32, its scores absorbed into the mask (s + m == m): its weights
        # follow the mask alone (uniform over its largest values). Its query is read as zeros, so that they do here
        # too: a key mask's rows all alike, a mask per query's row by row.
        zero_rows = (tl.reshape(mask_shift, [BLOCK_M]) if HAS_BIAS == ROW_MASK else mask_shift) <= -1e30
    q_a, q_b = _load_rows(Q, row_start, row_end, stride_qn, stride_qd, HEAD_DIM, BLOCK_M, BLOCK_DA, BLOCK_DB,
                          SPLIT_D, WARP_SPEC, zero_rows)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = _row_sums(BLOCK_M, ROWSUM_MMA)
    acc_a = tl.zeros([BLOCK_M, BLOCK_DA], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_M, BLOCK_DB], dtype=tl.float32)
    if SPARSE:
        acc_a, acc_b, m_i, l_i = _attend_listed(
            acc_a, acc_b, m_i, l_i, q_a, q_b, K, V, LIST, count, BLOCK_K, k_end, stride_kn, stride_kd, stride_vn,
            stride_vd, qk_scale, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, not EVEN_N,
            EMULATE_BF16, SCALE_POSITIVE, USE_TMA, ROWSUM_MMA, BLOCK_Q, MB=MB, stride_mn=stride_mn,
            mask_shift=mask_shift, HAS_BIAS=HAS_BIAS, stride_mt=stride_mt, whole=whole)
    else:
        acc_a, acc_b, m_i, l_i = _attend_keys(
            acc_a, acc_b, m_i, l_i, q_a, q_b, K, V,
            k_start, k_end, stride_kn, stride_kd, stride_vn, stride_vd, qk_scale,
            HEAD_DIM, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, not EVEN_N, EMULATE_BF16, SCALE_POSITIVE,
            USE_TMA, ROWSUM_MMA, OVERLAP, WARP_SPEC, MB=MB, stride_mn=stride_mn, mask_shift=mask_shift,
            HAS_BIAS=HAS_BIAS)
    if JOINT_KEYS:
        # The second key stream continues the same online softmax: joint attention without concatenation.
        acc_a, acc_b, m_i, l_i = _attend_keys(
            acc_a, acc_b, m_i, l_i, q_a, q_b, K2, V2,
            0, k2_end, stride_k2n, stride_k2d, stride_v2n, stride_v2d, qk_scale,
            HEAD_DIM, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, not EVEN_N, EMULATE_BF16, SCALE_POSITIVE, USE_TMA,
            ROWSUM_MMA, OVERLAP, MB=MB2, stride_mn=stride_mn, mask_shift=mask_shift, HAS_BIAS=HAS_BIAS)
    # A row with no key to attend to (kv_lens == 0, or every key masked) has l == 0 and acc == 0: it is defined
    # as zero.
    if ROWSUM_MMA:
        l_i = tl.max(l_i, 1)  # its 16 columns are equal
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out_a = acc_a / l_i[:, None]
    out_b = acc_b / l_i[:, None]
    if NEG:
        # The q tile is already in registers: a second online softmax over the negative keys reuses it (or, for
        # differential attention, the same rows of the negative queries replace it). HAS_BIAS (differential
        # attention only: its negative keys are the same tokens): the mask applies to them too, shifted by its top
        # over their range.
        if HAS_BIAS and MB.dtype.element_ty != tl.int1:
            mask_shift = _mask_top(MB, stride_mn, 0, kn_end, BLOCK_M, BLOCK_N, HAS_BIAS)
            mask_shift = tl.where(mask_shift == float("-inf"), 0.0, mask_shift)
            zero_rows = (tl.reshape(mask_shift, [BLOCK_M]) if HAS_BIAS == ROW_MASK else mask_shift) <= -1e30
        if NEG_Q:
            q_a, q_b = _load_rows(QN, row_start, row_end, stride_qnn, stride_qnd, HEAD_DIM, BLOCK_M, BLOCK_DA,
                                  BLOCK_DB, SPLIT_D, zero_rows=zero_rows)
        mn_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        ln_i = _row_sums(BLOCK_M, ROWSUM_MMA)
        accn_a = tl.zeros([BLOCK_M, BLOCK_DA], dtype=tl.float32)
        accn_b = tl.zeros([BLOCK_M, BLOCK_DB], dtype=tl.float32)
        accn_a, accn_b, mn_i, ln_i = _attend_keys(
            accn_a, accn_b, mn_i, ln_i, q_a, q_b, KN, VN,
            0, kn_end, stride_knn, stride_knd, stride_vnn, stride_vnd, qk_scale,
            HEAD_DIM, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, not EVEN_N, EMULATE_BF16, SCALE_POSITIVE, USE_TMA,
            ROWSUM_MMA, OVERLAP, MB=MB, stride_mn=stride_mn, mask_shift=mask_shift, HAS_BIAS=HAS_BIAS)
        if ROWSUM_MMA:
            ln_i = tl.max(ln_i, 1)
        ln_i = tl.where(ln_i == 0.0, 1.0, ln_i)
        out_a -= neg_scale * (accn_a / ln_i[:, None])
        out_b -= neg_scale * (accn_b / ln_i[:, None])
    _store_rows(O, row_start, row_end, stride_on, stride_od, out_a, out_b, HEAD_DIM, BLOCK_M, BLOCK_DA, BLOCK_DB,
                SPLIT_D, MASK_D, EMULATE_BF16)


@triton.jit
def _mask_top(MB, stride_mn, k_start, k_end, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr,
              LIST=None, count=0, BLOCK_K=0, BLOCK_Q: tl.constexpr = 0, LISTED: tl.constexpr = False):
    """The largest value of a float mask over keys [k_start, k_end) (-inf where there is none): of the key mask's
    one row, or (ROW_MASK) of each query row's, as a column. The softmax does not change when every score of a row
    shifts alike: subtracting the row's largest mask value keeps the scores near zero, where float32 still resolves
    them (a prompt whose every token is padding scores s - 10000 per key in diffusers: 1.6e-4 off in float32
    without the shift). LISTED (block-sparse): over the ``count`` key blocks of BLOCK_K listed at LIST alone (the
    keys the scores read; a mask per query: each row over the blocks its half of the tile attends to; a key mask
    over every listed block), so a query block reads no mask value of the blocks it skips."""
    offs = tl.arange(0, BLOCK_N)
    if HAS_BIAS == ROW_MASK and LISTED:
        most = tl.full([BLOCK_M, BLOCK_N], float("-inf"), dtype=tl.float32)
        per_block = BLOCK_K // BLOCK_N
        first_half = tl.arange(0, BLOCK_M) < BLOCK_Q
        for i in range(0, count * per_block):
            listed = i // per_block
            entry = tl.load(LIST + listed)
            keys = (entry >> 2) * BLOCK_K + (i - listed * per_block) * BLOCK_N + offs
            row_keep = tl.where(first_half, entry & 1, entry & 2) != 0
            values = tl.load(MB[:, None] + keys.to(tl.int64)[None, :] * stride_mn,
                             mask=row_keep[:, None] & (keys < k_end)[None, :], other=float("-inf"))
            most = tl.maximum(most, values.to(tl.float32))
        top = tl.max(most, 1)[:, None]
    elif LISTED:
        most = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
        per_block = BLOCK_K // BLOCK_N
        for i in range(0, count * per_block):
            listed = i // per_block
            keys = (tl.load(LIST + listed) >> 2) * BLOCK_K + (i - listed * per_block) * BLOCK_N + offs
            values = tl.load(MB + keys.to(tl.int64) * stride_mn, mask=keys < k_end, other=float("-inf"))
            most = tl.maximum(most, values.to(tl.float32))
        top = tl.max(most, 0)
    elif HAS_BIAS == ROW_MASK:
        most = tl.full([BLOCK_M, BLOCK_N], float("-inf"), dtype=tl.float32)
        for start in range(k_start, k_end, BLOCK_N):
            keys = start + offs
            values = tl.load(MB[:, None] + keys.to(tl.int64)[None, :] * stride_mn, mask=(keys < k_end)[None, :],
                             other=float("-inf"))
            most = tl.maximum(most, values.to(tl.float32))
        top = tl.max(most, 1)[:, None]
    else:
        most = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
        for start in range(k_start, k_end, BLOCK_N):
            keys = start + offs
            values = tl.load(MB + keys.to(tl.int64) * stride_mn, mask=keys < k_end, other=float("-inf"))
            most = tl.maximum(most, values.to(tl.float32))
        top = tl.max(most, 0)
    return top


@triton.jit
def _load_rows(X, row_start, row_end, stride_n, stride_d, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr, SPLIT_D: tl.constexpr,
               DESCRIPTORS: tl.constexpr = False, zero_rows=None):
    """Rows [row_start, row_start + BLOCK_M) of one head (rows from row_end on and padded columns read as zeros),
    as its two head-dim chunks (the second is the first again without SPLIT_D); with DESCRIPTORS through tensor
    descriptors (a contiguous head dim, 16-byte aligned base and row stride: the launcher checked). zero_rows
    (BLOCK_M booleans, or one for every row; one with DESCRIPTORS): rows read as zeros too."""
    if DESCRIPTORS:
        start = row_start
        if zero_rows is not None:  # (from the descriptor's last row on: zeros)
            start = tl.where(zero_rows, tl.maximum(row_end, 1), row_start)
        x_a = _kv_source(X, row_end, stride_n, HEAD_DIM, BLOCK_M, BLOCK_DA, True).load([start, 0])
        x_b = x_a
        if SPLIT_D:
            x_b = _kv_source(X, row_end, stride_n, HEAD_DIM, BLOCK_M, BLOCK_DB, True).load([start, BLOCK_DA])
    else:
        offs_m = tl.arange(0, BLOCK_M)
        d_a = tl.arange(0, BLOCK_DA)
        d_b = BLOCK_DA + tl.arange(0, BLOCK_DB)
        row_mask = (row_start + offs_m) < row_end
        if zero_rows is not None:
            row_mask = tl.where(zero_rows, False, row_mask)
        blk = X + tl.cast(row_start, tl.int64) * stride_n
        x_a = tl.load(blk + offs_m[:, None] * stride_n + d_a[None, :] * stride_d,
                      mask=row_mask[:, None] & (d_a < HEAD_DIM)[None, :], other=0.0)
        x_b = x_a
        if SPLIT_D:
            x_b = tl.load(blk + offs_m[:, None] * stride_n + d_b[None, :] * stride_d,
                          mask=row_mask[:, None] & (d_b < HEAD_DIM)[None, :], other=0.0)
    return x_a, x_b


@triton.jit
def _store_rows(O, row_start, row_end, stride_on, stride_od, out_a, out_b, HEAD_DIM: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr, SPLIT_D: tl.constexpr,
                MASK_D: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """Write output rows [row_start, min(row_start + BLOCK_M, row_end)) of one head in O's dtype."""
    offs_m = tl.arange(0, BLOCK_M)
    d_a = tl.arange(0, BLOCK_DA)
    d_b = BLOCK_DA + tl.arange(0, BLOCK_DB)
    if EMULATE_BF16:
        out_a = _round_to_bf16(out_a)
        out_b = _round_to_bf16(out_b)
    o_blk = O + tl.cast(row_start, tl.int64) * stride_on
    # The store's mask is built here from the row count, not reused from the q load: a 2-D mask made before the
    # key loop would stay live through it (registers).
    rows_left = row_end - row_start
    store_a = offs_m[:, None] < rows_left
    store_b = offs_m[:, None] < rows_left
    if MASK_D:
        store_a = store_a & (d_a < HEAD_DIM)[None, :]
        store_b = store_b & (d_b < HEAD_DIM)[None, :]
    tl.store(o_blk + offs_m[:, None] * stride_on + d_a[None, :] * stride_od, out_a.to(O.dtype.element_ty),
             mask=store_a)
    if SPLIT_D:
        tl.store(o_blk + offs_m[:, None] * stride_on + d_b[None, :] * stride_od, out_b.to(O.dtype.element_ty),
                 mask=store_b)


@triton.jit
def _al(stride_b, stride_h, stride_n, ALIGN: tl.constexpr):
    """One tensor's batch, head and token strides, known to be multiples of ALIGN elements. Strides are never
    negative, so the maximum changes nothing; it gives the hint an operation to sit on (Triton 3.6 drops it on a
    bare kernel argument)."""
    return (tl.multiple_of(tl.maximum(stride_b, 0), ALIGN), tl.multiple_of(tl.maximum(stride_h, 0), ALIGN),
            tl.multiple_of(tl.maximum(stride_n, 0), ALIGN))


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, Q2, K2, V2, O2, KN, VN,
    KV_LENS, NEG_KV_LENS, CU_Q, CU_K, BIAS, BLOCK_COUNTS, BLOCK_LISTS,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_q2b, stride_q2h, stride_q2n, stride_q2d,
    stride_k2b, stride_k2h, stride_k2n, stride_k2d,
    stride_v2b, stride_v2h, stride_v2n, stride_v2d,
    stride_o2b, stride_o2h, stride_o2n, stride_o2d,
    stride_knb, stride_knh, stride_knn, stride_knd,
    stride_vnb, stride_vnh, stride_vnn, stride_vnd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_cb, stride_ch, stride_cm, stride_lb, stride_lh, stride_lm,
    KV_GROUP, Nq, Nk, Nq2, Nk2, Nneg, SEGMENTS, BLOCK_K,
    qk_scale, neg_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr,
    BLOCK_DB: tl.constexpr, SPLIT_D: tl.constexpr, MASK_D: tl.constexpr, EVEN_N: tl.constexpr,
    JOINT: tl.constexpr, NEG: tl.constexpr, VARLEN: tl.constexpr,
    HAS_KV_LENS: tl.constexpr, HAS_NEG_KV_LENS: tl.constexpr, EMULATE_BF16: tl.constexpr,
    SCALE_POSITIVE: tl.constexpr, TMA_OK: tl.constexpr, USE_TMA: tl.constexpr = False, ROW_ALIGN: tl.constexpr = 1,
    ROWSUM_MMA: tl.constexpr = False, OVERLAP: tl.constexpr = False, WS_OK: tl.constexpr = False,
    WARP_SPEC: tl.constexpr = False, JOINED_KV: tl.constexpr = False, HAS_BIAS: tl.constexpr = False,
    SPARSE: tl.constexpr = False, BLOCK_Q: tl.constexpr = 0, NEG_Q: tl.constexpr = False,
):
    """grid = (query blocks [of both streams when JOINT], H, B * segments), run in the order (query block, head,
    batch). The second and third axes take 65535 programs each, so B and H do not share one: temporal attention in
    a video UNet has a batch of videos x latent pixels. See the module docstring.

    Queries and keys arrive with their prologue (norm, RoPE) already applied by ``_qk_prologue``.
    TMA_OK: unused here; whether the launcher found the key/value tensors fit for USE_TMA, read by the autotuner's
    pruner and key. ROW_ALIGN: every batch, head and token stride is a multiple of this many elements (16 bytes;
    the launcher checked). Triton's launcher marks only 16-divisible ints, so without the hint rows of 40 or 72
    elements load one element at a time. ROWSUM_MMA: the softmax's row sums come from the tensor cores, as P times a
    block of ones beside P times V, instead of an add per score (sm_90a, the probe's D 64 loop: 332 -> 298 PTX
    instructions per key block); an experiment, off unless asked for. OVERLAP: each key block's softmax runs while
    the tensor cores compute the next block's scores (``_attend_overlapped``); an experiment, off unless asked for.
    JOINED_KV (with JOINT): K and V hold both streams' keys, joined [stream 1; stream 2] along the tokens (Nk of them;
    key padding counts them as before), so one key loop serves the queries of both streams and K2/V2 go unread.
    WARP_SPEC (with USE_TMA; one key stream: not NEG, and JOINT only with JOINED_KV): q is read through tensor
    descriptors too and the key loop is warp-specialised (``_attend_blocks``). WS_OK: unused here, like TMA_OK;
    whether the launcher found warp specialisation usable (``warp_spec_usable``).
    HAS_BIAS (not with NEG): an attention mask, bool (False masks a score) or float (added to the scores; -inf
    masks), one value per key of the joined sequence [stream 1; stream 2] (the token dimension with packed segments)
    for each batch row and query head (strides stride_mb, stride_mh, stride_mn; 0 where broadcast): a key mask,
    the same for every query (True, 1), or (ROW_MASK) one such row per query of the joined (packed) sequence, rows
    stride_mm apart.
    NEG_Q (with NEG, not JOINT): differential attention (Ye et al. 2024; Stable Audio 3): the negative stream has
    queries of its own, shaped like Q, in Q2's place (strides stride_q2*).
    SPARSE (one query stream and one key stream: not JOINT, NEG or VARLEN): block-sparse attention. The queries and
    keys fall in blocks of BLOCK_Q and BLOCK_K tokens (BLOCK_M divides BLOCK_Q, or is twice it; BLOCK_N divides
    BLOCK_K), and query block r of (batch b, head h) attends only to the BLOCK_COUNTS[b, h, r] key blocks listed at
    BLOCK_LISTS[b, h, r] (ascending, each starting before the batch row's last key; strides stride_c*, stride_l*, 0
    where broadcast; rows from cdiv(Nq, BLOCK_Q) on list the blocks of pairs of query blocks, for tiles of
    2 BLOCK_Q rows; entries as ``_attend_listed`` reads them): the launcher's lists of a boolean block mask
    (``_block_lists``). The other key blocks are never read. With HAS_BIAS == TILE_MASK, BIAS holds the elements
    of the partial blocks: tiles of BLOCK_Q x BLOCK_K booleans, stride_mb apart (rows stride_mm, keys stride_mn),
    tile 0 all True, each list entry names the tile of each half of the query tile, the whole blocks (tile 0 in
    both halves) listed first, and BLOCK_COUNTS holds two counts per row: the whole blocks, and all.
    """
    # Inductor's copy of this kernel types Python float arguments as fp64: without the casts the online-softmax
    # state would turn fp64 inside the key loop, which Triton rejects (loop-carried type change).
    qk_scale = tl.cast(qk_scale, tl.float32)
    neg_scale = tl.cast(neg_scale, tl.float32)
    if ROW_ALIGN > 1:
        A: tl.constexpr = ROW_ALIGN
        stride_qb, stride_qh, stride_qn = _al(stride_qb, stride_qh, stride_qn, A)
        stride_kb, stride_kh, stride_kn = _al(stride_kb, stride_kh, stride_kn, A)
        stride_vb, stride_vh, stride_vn = _al(stride_vb, stride_vh, stride_vn, A)
        stride_ob, stride_oh, stride_on = _al(stride_ob, stride_oh, stride_on, A)
        if JOINT:
            stride_q2b, stride_q2h, stride_q2n = _al(stride_q2b, stride_q2h, stride_q2n, A)
            stride_k2b, stride_k2h, stride_k2n = _al(stride_k2b, stride_k2h, stride_k2n, A)
            stride_v2b, stride_v2h, stride_v2n = _al(stride_v2b, stride_v2h, stride_v2n, A)
            stride_o2b, stride_o2h, stride_o2n = _al(stride_o2b, stride_o2h, stride_o2n, A)
        if NEG:
            stride_knb, stride_knh, stride_knn = _al(stride_knb, stride_knh, stride_knn, A)
            stride_vnb, stride_vnh, stride_vnn = _al(stride_vnb, stride_vnh, stride_vnn, A)
        if NEG_Q:
            stride_q2b, stride_q2h, stride_q2n = _al(stride_q2b, stride_q2h, stride_q2n, A)
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    if VARLEN:
        b = tl.program_id(2) // SEGMENTS
        seg = tl.program_id(2) % SEGMENTS
    else:
        b = tl.program_id(2)
        seg = 0
    hk = h // KV_GROUP  # grouped / multi-query attention: KV head hk serves query heads hk*G .. hk*G + G-1
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    hk64 = hk.to(tl.int64)
    Kh = K + b64 * stride_kb + hk64 * stride_kh
    Vh = V + b64 * stride_vb + hk64 * stride_vh
    K2h = K2 + b64 * stride_k2b + hk64 * stride_k2h
    V2h = V2 + b64 * stride_v2b + hk64 * stride_v2h
    KNh = KN + b64 * stride_knb + hk64 * stride_knh
    VNh = VN + b64 * stride_vnb + hk64 * stride_vnh

    q_start = 0
    q_end = Nq
    k_start = 0
    k_end = Nk
    if VARLEN:
        # Packed segments: this program's rows and keys are one segment of the token dimension.
        q_start = tl.load(CU_Q + seg).to(tl.int32)
        q_end = tl.minimum(tl.load(CU_Q + seg + 1).to(tl.int32), Nq)
        k_start = tl.load(CU_K + seg).to(tl.int32)
        k_end = tl.minimum(tl.load(CU_K + seg + 1).to(tl.int32), Nk)
    k2_end = Nk2
    if HAS_KV_LENS:
        valid = tl.maximum(tl.load(KV_LENS + b * SEGMENTS + seg).to(tl.int32), 0)
        if JOINT:
            # Key padding counts keys of the joined sequence [stream 1; stream 2].
            k2_end = tl.minimum(Nk2, tl.maximum(valid - Nk, 0))
        k_end = tl.minimum(k_end, k_start + valid)
    kn_end = Nneg
    if HAS_NEG_KV_LENS:
        kn_end = tl.minimum(Nneg, tl.maximum(tl.load(NEG_KV_LENS + b).to(tl.int32), 0))

    if JOINT:
        # Query blocks of stream 1, then of stream 2: pick the stream's tensors at run time so that one copy of
        # the block code serves both (half the code to compile).
        blocks_1 = tl.cdiv(Nq, BLOCK_M)
        second = pid_m >= blocks_1
        Qs = tl.where(second, Q2 + b64 * stride_q2b + h64 * stride_q2h, Q + b64 * stride_qb + h64 * stride_qh)
        Os = tl.where(second, O2 + b64 * stride_o2b + h64 * stride_o2h, O + b64 * stride_ob + h64 * stride_oh)
        row_start = tl.where(second, pid_m - blocks_1, pid_m) * BLOCK_M
        row_end = tl.where(second, Nq2, Nq)
        sqn = tl.where(second, stride_q2n, stride_qn)
        sqd = tl.where(second, stride_q2d, stride_qd)
        son = tl.where(second, stride_o2n, stride_on)
        sod = tl.where(second, stride_o2d, stride_od)
    else:
        Qs = Q + b64 * stride_qb + h64 * stride_qh
        Os = O + b64 * stride_ob + h64 * stride_oh
        row_start = q_start + pid_m * BLOCK_M
        row_end = q_end
        sqn = stride_qn
        sqd = stride_qd
        son = stride_on
        sod = stride_od
    if HAS_BIAS == TILE_MASK:
        # each query row's row of the tiles (tile 0's here; stride_mb: from one tile to the next)
        MB = BIAS + ((row_start + tl.arange(0, BLOCK_M)) % BLOCK_Q).to(tl.int64) * stride_mm
    else:
        MB = BIAS + b64 * stride_mb + h64 * stride_mh
    if HAS_BIAS == ROW_MASK:
        # the mask rows of this block's queries (rows past the end read the last one's, and are not stored)
        q_rows = tl.minimum(row_start + tl.arange(0, BLOCK_M), row_end - 1)
        if JOINT:
            q_rows += tl.where(second, Nq, 0)
        MB = MB + q_rows.to(tl.int64) * stride_mm
    LIST = BLOCK_LISTS
    count = 0
    whole = 0
    if SPARSE:
        # this query block's row of the lists: of its block mask row (BLOCK_M divides BLOCK_Q), or of the pair of
        # rows it spans (BLOCK_M = 2 BLOCK_Q), listed after the single rows
        if BLOCK_M > BLOCK_Q:
            r = (tl.cdiv(Nq, BLOCK_Q) + row_start // BLOCK_M).to(tl.int64)
        else:
            r = (row_start // BLOCK_Q).to(tl.int64)
        counts = BLOCK_COUNTS + b64 * stride_cb + h64 * stride_ch + r * stride_cm
        if HAS_BIAS == TILE_MASK:  # (how many of them are whole, then how many in all)
            whole = tl.load(counts)
            count = tl.load(counts + 1)
        else:
            count = tl.load(counts)
        LIST = BLOCK_LISTS + b64 * stride_lb + h64 * stride_lh + r * stride_lm
    if row_start < row_end:
        _query_block(
            Qs, Os, row_start, row_end, sqn, sqd, son, sod,
            Kh, Vh, stride_kn, stride_kd, stride_vn, stride_vd, k_start, k_end,
            K2h, V2h, stride_k2n, stride_k2d, stride_v2n, stride_v2d, k2_end,
            KNh, VNh, stride_knn, stride_knd, stride_vnn, stride_vnd, kn_end,
            qk_scale, neg_scale,
            HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, EVEN_N, JOINT and not JOINED_KV, NEG,
            EMULATE_BF16, SCALE_POSITIVE, USE_TMA, ROWSUM_MMA, OVERLAP, WARP_SPEC,
            MB=MB, MB2=MB + Nk * stride_mn, stride_mn=stride_mn, HAS_BIAS=HAS_BIAS, LIST=LIST, count=count,
            QN=Q2 + b64 * stride_q2b + h64 * stride_q2h, stride_qnn=stride_q2n, stride_qnd=stride_q2d, NEG_Q=NEG_Q,
            BLOCK_K=BLOCK_K, SPARSE=SPARSE, BLOCK_Q=BLOCK_Q, stride_mt=stride_mb, whole=whole)


@triton.jit
def _stream_k_range(p, programs, total):
    """Key-block iterations [first, end) of stream-K program p of ``programs``: an even share of ``total``."""
    return p * total // programs, (p + 1) * total // programs


@triton.jit
def _stream_k_work(Nq, Nk, Nq2, Nk2, BH, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, JOINT: tl.constexpr):
    """(query blocks of stream 1, query blocks, key blocks of stream 1, key blocks per query block, iterations) of a
    stream-K launch: every query block of both streams (JOINT) of every (batch, head), times the key blocks of both
    key streams."""
    blocks_1 = tl.cdiv(Nq, BLOCK_M)
    keys_1 = tl.cdiv(Nk, BLOCK_N)
    blocks_q = blocks_1
    n_blocks = keys_1
    if JOINT:
        blocks_q += tl.cdiv(Nq2, BLOCK_M)
        n_blocks += tl.cdiv(Nk2, BLOCK_N)
    return blocks_1, blocks_q, keys_1, n_blocks, blocks_q.to(tl.int64) * BH * n_blocks


@triton.jit
def _per_iteration(value, it, ALIGN: tl.constexpr):
    """``value`` (a multiple of ALIGN; it >= 0) as a value of loop iteration ``it``. Offset tiles built from a
    loop-invariant stride would be hoisted out of the stream-K work loop by the compiler and stay live through the
    key loop (ptxas sm_90a, D 128, bf16: 128 x 64 x 8 warps 246 registers per thread instead of 217; 128 x 128 x 8
    warps 255 either way, with 4 bytes spilled instead of none; the plain kernel: 160 and 230)."""
    return tl.multiple_of(tl.where(it >= 0, value, 0), ALIGN)


@triton.jit
def _head(X, b64, h64, stride_b, stride_h, ALIGN: tl.constexpr):
    """Head (b, h) of X, its batch and head strides hinted as multiples of ALIGN (see ``_al``)."""
    stride_b, stride_h, _ = _al(stride_b, stride_h, 0, ALIGN)
    return X + b64 * stride_b + h64 * stride_h


@triton.jit
def _stream_rows(pid_m, b64, h64, blocks_1, X, X2, stride_b, stride_h, stride_n, stride_d,
                 stride_2b, stride_2h, stride_2n, stride_2d, Nq, Nq2, it,
                 BLOCK_M: tl.constexpr, JOINT: tl.constexpr, ALIGN: tl.constexpr):
    """Query block ``pid_m`` (stream 1's blocks, then stream 2's with JOINT) of head (b, h) in X (or X2): the head's
    base, the block's first row, the stream's rows, and its row and column strides (``_per_iteration`` values)."""
    base = _head(X, b64, h64, stride_b, stride_h, ALIGN)
    row_start = pid_m * BLOCK_M
    rows = Nq
    row_stride = stride_n
    col_stride = stride_d
    if JOINT:
        second = pid_m >= blocks_1
        base = tl.where(second, _head(X2, b64, h64, stride_2b, stride_2h, ALIGN), base)
        row_start = tl.where(second, pid_m - blocks_1, pid_m) * BLOCK_M
        rows = tl.where(second, Nq2, Nq)
        row_stride = tl.where(second, stride_2n, stride_n)
        col_stride = tl.where(second, stride_2d, stride_d)
    return base, row_start, rows, _per_iteration(row_stride, it, ALIGN), col_stride


@triton.jit
def _attn_fwd_stream_k(
    Q, K, V, O, Q2, K2, V2, O2, WORK,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_q2b, stride_q2h, stride_q2n, stride_q2d,
    stride_k2b, stride_k2h, stride_k2n, stride_k2d,
    stride_v2b, stride_v2h, stride_v2n, stride_v2d,
    stride_o2b, stride_o2h, stride_o2n, stride_o2d,
    H, KV_GROUP, Nq, Nk, Nq2, Nk2, BH, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr,
    BLOCK_DB: tl.constexpr, SPLIT_D: tl.constexpr, MASK_D: tl.constexpr, EVEN_N: tl.constexpr,
    JOINT: tl.constexpr, EMULATE_BF16: tl.constexpr, SCALE_POSITIVE: tl.constexpr, ROW_ALIGN: tl.constexpr = 1,
    USE_TMA: tl.constexpr = False,
):
    """Stream-K attention, plain or joint (no other variant), an experiment: grid = (P,). The work, every query
    block of every (batch, head) times its key blocks, is cut into P equal runs of key-block iterations, one per
    program, instead of one program per query block. With one CTA per SM (the 128 x 128 tile at D 128), one program
    per query block fills whole waves only when the blocks divide evenly: Flux's 864 query blocks make 6.55 waves
    on 132 SMs, and the seventh runs 55% full. A query block one program covers whole is written as the attention
    kernel writes it; one that programs share leaves each part's unnormalised state (accumulator, row maxima, row
    sums; base 2) in WORK, slot 2p for the program's first block and 2p + 1 for its last, for
    ``_attn_stream_k_combine``. Joint key blocks run stream 1's, then stream 2's, as one sequence. USE_TMA: key and
    value blocks through tensor descriptors, made for each work item's head (the single-warpgroup tiles, two CTAs
    per SM, leave Flux's last wave 27% full: 864 query blocks over 264 CTAs)."""
    qk_scale = tl.cast(qk_scale, tl.float32)
    p = tl.program_id(0)
    blocks_1, blocks_q, keys_1, n_blocks, total = _stream_k_work(Nq, Nk, Nq2, Nk2, BH, BLOCK_M, BLOCK_N, JOINT)
    first, end = _stream_k_range(p, tl.num_programs(0), total)
    it = first
    while it < end:
        tile = it // n_blocks
        kb0 = (it - tile * n_blocks).to(tl.int32)
        kb1 = tl.minimum(n_blocks, kb0 + (end - it)).to(tl.int32)
        pid_m = (tile % blocks_q).to(tl.int32)
        bh = (tile // blocks_q).to(tl.int32)
        b64 = (bh // H).to(tl.int64)
        h64 = (bh % H).to(tl.int64)
        hk64 = h64 // KV_GROUP
        Qs, row_start, rows, sqn, sqd = _stream_rows(
            pid_m, b64, h64, blocks_1, Q, Q2, stride_qb, stride_qh, stride_qn, stride_qd, stride_q2b, stride_q2h,
            stride_q2n, stride_q2d, Nq, Nq2, it, BLOCK_M, JOINT, ROW_ALIGN)
        q_a, q_b = _load_rows(Qs, row_start, rows, sqn, sqd, HEAD_DIM, BLOCK_M, BLOCK_DA, BLOCK_DB, SPLIT_D)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc_a = tl.zeros([BLOCK_M, BLOCK_DA], dtype=tl.float32)
        acc_b = tl.zeros([BLOCK_M, BLOCK_DB], dtype=tl.float32)
        # this part's key blocks of stream 1 (an empty range when it starts past them), then of stream 2
        acc_a, acc_b, m_i, l_i = _attend_keys(
            acc_a, acc_b, m_i, l_i, q_a, q_b, _head(K, b64, hk64, stride_kb, stride_kh, ROW_ALIGN),
            _head(V, b64, hk64, stride_vb, stride_vh, ROW_ALIGN), kb0 * BLOCK_N,
            tl.minimum(tl.minimum(kb1, keys_1) * BLOCK_N, Nk),
            _per_iteration(stride_kn, it, ROW_ALIGN), stride_kd, _per_iteration(stride_vn, it, ROW_ALIGN), stride_vd,
            qk_scale, HEAD_DIM, BLOCK_N, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, not EVEN_N, EMULATE_BF16,
            SCALE_POSITIVE, USE_TMA, False)
        if JOINT:
            acc_a, acc_b, m_i, l_i = _attend_keys(
                acc_a, acc_b, m_i, l_i, q_a, q_b, _head(K2, b64, hk64, stride_k2b, stride_k2h, ROW_ALIGN),
                _head(V2, b64, hk64, stride_v2b, stride_v2h, ROW_ALIGN), tl.maximum(kb0 - keys_1, 0) * BLOCK_N,
                tl.minimum(tl.maximum(kb1 - keys_1, 0) * BLOCK_N, Nk2), _per_iteration(stride_k2n, it, ROW_ALIGN),
                stride_k2d, _per_iteration(stride_v2n, it, ROW_ALIGN), stride_v2d, qk_scale, HEAD_DIM, BLOCK_N,
                BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, not EVEN_N, EMULATE_BF16, SCALE_POSITIVE, USE_TMA, False)
        if (kb0 == 0) & (kb1 == n_blocks):
            Os, _, _, son, sod = _stream_rows(
                pid_m, b64, h64, blocks_1, O, O2, stride_ob, stride_oh, stride_on, stride_od, stride_o2b,
                stride_o2h, stride_o2n, stride_o2d, Nq, Nq2, it, BLOCK_M, JOINT, ROW_ALIGN)
            _store_rows(Os, row_start, rows, son, sod, acc_a / l_i[:, None], acc_b / l_i[:, None], HEAD_DIM,
                        BLOCK_M, BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, EMULATE_BF16)
        else:
            slot = WORK + (2 * p + (it != first).to(tl.int32)).to(tl.int64) * _slot_size(BLOCK_M, BLOCK_DA, BLOCK_DB)
            _partial_io(slot, _per_iteration(BLOCK_DA + BLOCK_DB, it, 1), acc_a, acc_b, m_i, l_i, True, BLOCK_M,
                        BLOCK_DA, BLOCK_DB, SPLIT_D)
        it += kb1 - kb0


@triton.jit
def _slot_size(BLOCK_M: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr):
    """Floats per stream-K slot: a BLOCK_M x (BLOCK_DA + BLOCK_DB) accumulator, then the row maxima and sums."""
    return BLOCK_M * (BLOCK_DA + BLOCK_DB + 2)


@triton.jit
def _partial_io(slot, width, acc_a, acc_b, m_i, l_i, STORE: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr, SPLIT_D: tl.constexpr):
    """Store one part's softmax state in a slot (STORE), or load it (returned; the arguments give the shapes).
    width: BLOCK_DA + BLOCK_DB, as a value of the caller's loop iteration (``_per_iteration``)."""
    offs_m = tl.arange(0, BLOCK_M)
    ptr_a = slot + offs_m[:, None] * width + tl.arange(0, BLOCK_DA)[None, :]
    ptr_b = slot + offs_m[:, None] * width + BLOCK_DA + tl.arange(0, BLOCK_DB)[None, :]
    ptr_m = slot + BLOCK_M * width + offs_m
    if STORE:
        tl.store(ptr_a, acc_a)
        if SPLIT_D:
            tl.store(ptr_b, acc_b)
        tl.store(ptr_m, m_i)
        tl.store(ptr_m + BLOCK_M, l_i)
    else:
        acc_a = tl.load(ptr_a)
        if SPLIT_D:
            acc_b = tl.load(ptr_b)
        m_i = tl.load(ptr_m)
        l_i = tl.load(ptr_m + BLOCK_M)
    return acc_a, acc_b, m_i, l_i


@triton.jit
def _attn_stream_k_combine(
    O, O2, WORK, stride_ob, stride_oh, stride_on, stride_od, stride_o2b, stride_o2h, stride_o2n, stride_o2d,
    H, Nq, Nk, Nq2, Nk2, BH,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DA: tl.constexpr,
    BLOCK_DB: tl.constexpr, SPLIT_D: tl.constexpr, MASK_D: tl.constexpr, JOINT: tl.constexpr,
    EMULATE_BF16: tl.constexpr, ROW_ALIGN: tl.constexpr = 1,
):
    """grid = (P,), as ``_attn_fwd_stream_k`` ran: program p finishes the query block whose last key block it
    processed when earlier programs began it (p's first iteration is inside that block's keys). It merges the
    parts' states, m = max m_j, l = sum l_j 2^(m_j - m), acc = sum acc_j 2^(m_j - m), and writes acc / l."""
    p = tl.program_id(0)
    programs = tl.num_programs(0)
    blocks_1, blocks_q, _, n_blocks, total = _stream_k_work(Nq, Nk, Nq2, Nk2, BH, BLOCK_M, BLOCK_N, JOINT)
    first, end = _stream_k_range(p, programs, total)
    tile = first // n_blocks
    tile_first = tile * n_blocks
    if (first < end) & (first > tile_first) & (tile_first + n_blocks <= end):
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc_a = tl.zeros([BLOCK_M, BLOCK_DA], dtype=tl.float32)
        acc_b = tl.zeros([BLOCK_M, BLOCK_DB], dtype=tl.float32)
        # the programs holding the block's key blocks: from the one whose run holds its first (a program's run
        # [first_j, end_j) holds iteration i when j = ((i + 1) P - 1) // total) to p; runs may be empty
        for j in range((((tile_first + 1) * programs - 1) // total).to(tl.int32), p + 1):
            first_j, end_j = _stream_k_range(j, programs, total)
            if first_j < end_j:
                slot = WORK + (2 * j + (first_j < tile_first).to(tl.int32)).to(tl.int64) * \
                    _slot_size(BLOCK_M, BLOCK_DA, BLOCK_DB)
                part_a, part_b, m_j, l_j = _partial_io(slot, BLOCK_DA + BLOCK_DB, acc_a, acc_b, m_i, l_i, False,
                                                       BLOCK_M, BLOCK_DA, BLOCK_DB, SPLIT_D)
                m_new = tl.maximum(m_i, m_j)
                old = tl.math.exp2(m_i - m_new)
                new = tl.math.exp2(m_j - m_new)
                l_i = l_i * old + l_j * new
                acc_a = acc_a * old[:, None] + part_a * new[:, None]
                if SPLIT_D:
                    acc_b = acc_b * old[:, None] + part_b * new[:, None]
                m_i = m_new
        pid_m = (tile % blocks_q).to(tl.int32)
        bh = (tile // blocks_q).to(tl.int32)
        Os, row_start, rows, son, sod = _stream_rows(
            pid_m, (bh // H).to(tl.int64), (bh % H).to(tl.int64), blocks_1, O, O2, stride_ob, stride_oh, stride_on,
            stride_od, stride_o2b, stride_o2h, stride_o2n, stride_o2d, Nq, Nq2, tile, BLOCK_M, JOINT, ROW_ALIGN)
        _store_rows(Os, row_start, rows, son, sod, acc_a / l_i[:, None], acc_b / l_i[:, None], HEAD_DIM, BLOCK_M,
                    BLOCK_DA, BLOCK_DB, SPLIT_D, MASK_D, EMULATE_BF16)


@triton.jit
def _head_dim_columns(HEADS: tl.constexpr, BLOCK_D: tl.constexpr, first):
    """The columns of one head-dim chunk over HEADS heads: (head of each, dim within the head from ``first``)."""
    j = tl.arange(0, HEADS * BLOCK_D)
    if HEADS == 1:
        head = 0
        d = first + j
    else:
        head = j // BLOCK_D
        d = first + j % BLOCK_D
    return head, d


@triton.jit
def _qk_prologue(
    X, Y, W, COS, SIN,
    stride_xb, stride_xh, stride_xn, stride_xd, stride_yb, stride_yh, stride_yn, stride_yd,
    stride_cn, stride_cd, stride_sn, stride_sd, stride_cb, stride_ch, stride_sb, stride_sh,
    N, pos_shift, eps,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
    SPLIT_D: tl.constexpr, HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr, INTERLEAVED: tl.constexpr,
    EMULATE_BF16: tl.constexpr, HEADS: tl.constexpr = 1, ROW_ALIGN: tl.constexpr = 1, ROT_DIM: tl.constexpr = 0,
    ROPE_SECTIONS: tl.constexpr = 1,
):
    """Y = RoPE(RMSNorm(X)) for a query or key tensor, one pass, grid = (row blocks, H / HEADS, B): each program
    takes BLOCK_M tokens of HEADS heads (HEADS divides the head count H), whose RoPE table rows it reads once per
    token from memory (the heads' loads of a row meet in cache). The tables are (rows, D), or per batch row and
    head (stride_cb, stride_ch and stride_sb, stride_sh; 0 where one serves all); with HAS_ROPE = HALF_TABLES,
    D/2 columns; with ROT_DIM, R = ROT_DIM (or R/2) columns turning the first R channels, with ROPE_SECTIONS, in
    sections of their own (``_rope_chunk``).
    ROW_ALIGN: as in ``_attn_fwd_kernel``, for X's and Y's batch, head and token strides."""
    eps = tl.cast(eps, tl.float32)
    if ROW_ALIGN > 1:
        A: tl.constexpr = ROW_ALIGN
        stride_xb, stride_xh, stride_xn = _al(stride_xb, stride_xh, stride_xn, A)
        stride_yb, stride_yh, stride_yn = _al(stride_yb, stride_yh, stride_yn, A)
    pid_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64) * HEADS
    b = tl.program_id(2).to(tl.int64)
    rows = tl.arange(0, BLOCK_M)
    row_start = pid_m * BLOCK_M
    head_a, d_a = _head_dim_columns(HEADS, BLOCK_DA, 0)
    head_b, d_b = _head_dim_columns(HEADS, BLOCK_DB, BLOCK_DA)
    row_mask = (row_start + rows) < N
    mask_a = row_mask[:, None] & (d_a < HEAD_DIM)[None, :]
    mask_b = row_mask[:, None] & (d_b < HEAD_DIM)[None, :]
    x_blk = X + b * stride_xb + h * stride_xh + tl.cast(row_start, tl.int64) * stride_xn
    y_blk = Y + b * stride_yb + h * stride_yh + tl.cast(row_start, tl.int64) * stride_yn
    cos = COS + b * stride_cb + h * stride_ch
    sin = SIN + b * stride_sb + h * stride_sh
    y_a, y_b = _load_qk(x_blk, rows, stride_xn, stride_xd, head_a * stride_xh, d_a, head_b * stride_xh, d_b,
                        mask_a, mask_b, W, eps, cos, sin, row_start + pos_shift, stride_cn, stride_cd, stride_sn,
                        stride_sd, head_a, head_b, stride_ch, stride_sh, HEAD_DIM, BLOCK_M, HEADS, BLOCK_DA, BLOCK_DB,
                        SPLIT_D, HAS_NORM, HAS_ROPE, INTERLEAVED, EMULATE_BF16, ROT_DIM, ROPE_SECTIONS)
    tl.store(y_blk + rows[:, None] * stride_yn + (head_a * stride_yh + d_a * stride_yd)[None, :],
             y_a.to(Y.dtype.element_ty), mask=mask_a)
    if SPLIT_D:
        tl.store(y_blk + rows[:, None] * stride_yn + (head_b * stride_yh + d_b * stride_yd)[None, :],
                 y_b.to(Y.dtype.element_ty), mask=mask_b)


# Hopper/Ampere candidates (BLOCK_M, BLOCK_N, num_warps, num_stages). Configs that do not fit a card's shared
# memory fail to compile and the autotuner skips them; the prune below only spares compile time on large tiles.
_GPU_CONFIGS = [
    (128, 128, 8, 3), (128, 128, 8, 2), (128, 128, 4, 3), (128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 4, 4),
    (64, 128, 4, 3), (64, 64, 4, 3), (64, 64, 4, 4), (64, 32, 4, 2),
]

#: Descriptor-load tiles kept above head dim 64 (up to 128) although one warpgroup holds the whole accumulator
#: (128 x 128 at D 128): two such CTAs share an SM and run out of step. An 8-warp CTA's two warpgroups meet at
#: every key block (2-3 CTA-wide barriers per block in the key loop, Triton 3.6 sm_90a), so both run their softmax
#: at the same time while the tensor cores idle; two single-warpgroup CTAs have no barrier between them, and one's
#: softmax can run under the other's matrix multiplies (what FlashAttention-3's ping-pong schedule arranges). At
#: D 128, 128 x 64 x 2 stages: 255 registers, 96 KiB of shared memory, two CTAs per SM, no local memory in the key
#: loop (its 28 spill bytes are outside it); with pointer loads the same tile spills inside the loop (148 bytes),
#: and 128 x 32 (230 registers) issues half again as many instructions per score
#: (``benchmarks/attention_resources.py --warpgroups``).
_ONE_WARPGROUP_TILES = {(128, 64, 4, 2)}

#: Descriptor-load tiles for head dims up to 64: 64 query rows against 128-key blocks spread each block's fixed
#: work (waits, barriers, the row maxima's shuffles) over twice the scores of the 64 x 64 tile the H200 tuner chose
#: (pointer loads, 3 stages, 4 CTAs per SM), and at 2 stages with descriptors three CTAs fit an SM (154 registers,
#: 72 KiB). Its key loop issues 0.21 warp instructions per score against 0.28 (Triton 3.6 sm_90a; 3.9: 0.22 and
#: 0.30). At head dim 64 the tensor cores need 1/16 cycle per score and an SM issues 4 warp instructions per
#: cycle, so above 0.25 per score the loop is bound by issue before the tensor cores: the 64 x 64 tile is, this one
#: is not.
_WIDE_KEY_BLOCK_TILES = {(64, 128, 4, 2)}

#: Hopper (compute capability 9+) candidates whose key/value blocks arrive through tensor descriptors (the tensor
#: memory accelerator: no per-thread address arithmetic, 162 -> 140 registers per thread at D 128 with 128 x 64 x 8
#: warps, ptxas sm_90a).
_TMA_CONFIGS = [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 4, 3)] + sorted(
    _ONE_WARPGROUP_TILES | _WIDE_KEY_BLOCK_TILES, reverse=True)

#: Descriptor-load tiles whose key loop Triton warp-specialises (WARP_SPEC), tried where ``warp_spec_usable``: 4
#: warps per warpgroup, and Triton 3.6 makes three warpgroups of them for sm_90a, a producer that issues the
#: descriptor loads and two consumers of BLOCK_M / 2 query rows each, raised to 232 registers per thread
#: (setmaxnreg) while the producer gives its registers up: FlashAttention-3's layout. Each tile is kept up to the
#: head dim given: compiled for sm_90a (Triton 3.6 and 3.9), 128 x 128 and 128 x 64 do not spill at head dims 32-160,
#: 256 x 64 spills above 64, and 128 x 128 with 3 stages needs 240 KiB of shared memory at 128 (185 at 96); one CTA
#: per SM (168 registers at launch x 384 threads). Only for 16-bit inputs and calls with one key loop (plain, key
#: padding, packed segments, joint with its keys joined: JOINED_KV): with fp32 (TF32 products), or a joint or
#: negative stream's second loop, Triton's compiler fails (an internal assertion, raised as "PassManager::run
#: failed", which Triton's autotuner does not skip). Nor does one loop over both joint streams take them without
#: joining (Triton 3.6 and 3.9, sm_90a): picking each block's descriptor in an ``if`` leaves the loop unspecialised;
#: loading both and keeping one with ``tl.where`` specialises it, at twice the loads and 416 KiB of shared memory at
#: 128 x 128; an outer loop over the two streams fails in the pass ("value not sliced"). A stream that ends inside a
#: block takes the mask in every block (``_attend_keys``). q must come through descriptors as well: with q loaded
#: through pointers the pass fails (``benchmarks/attention_resources.py --warp-spec``).
_WARP_SPEC_TILES = {(128, 128, 4, 2): 128, (128, 64, 4, 2): 128, (128, 64, 4, 3): 128, (128, 128, 4, 3): 96,
                    (256, 64, 4, 2): 64}

#: the candidates kept for the variants (joint, negative): each variant is its own compile of every
#: candidate, and a full list made an H200 benchmark run spend minutes compiling before it measured anything.
#: The 128 x 128 tile takes 3 stages, the plain kernel's best at D 128. The H200 tuner's timings at Flux's size
#: (N 4608, session 5): plain 0.521 ms with 3 stages, 0.636 with 2; joint (512 + 4096) 0.639 with 2 stages, so it
#: took 64 x 64 x 4 warps at 0.574. The joint kernel's second key loop shares the first one's buffers (sm_90a,
#: joint D 128 at 3 stages: 224 KiB of shared memory as plain, 248 registers, no spills).
_HEAVY_CONFIGS = {(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 8, 3)}
_HEAVY_TMA_CONFIGS = {(128, 64, 8, 3), (128, 128, 8, 3)} | _ONE_WARPGROUP_TILES | _WIDE_KEY_BLOCK_TILES
#: the variants' extra candidates where every key stream is short (cross-attention over up to 128 text tokens):
#: narrow key blocks, which won at 4096 x 77 on the H200 (session 5 tuner: plain 128 x 32 0.0197 ms against
#: 64 x 64 0.0209; key padding 64 x 32 0.0170 against 0.0202); the negative-prompt call, two such streams, had
#: none to try and took 64 x 64 (0.0358)
_SHORT_KEY_CONFIGS = {(128, 32, 4, 4), (64, 32, 4, 2)}
_SHORT_KEYS = 128


def _prune_configs(configs, named_args, **kwargs):
    """Keep tiles whose accumulators fit in registers: BLOCK_M x head dim (twice with a negative stream) under 128
    per thread, and with the BLOCK_M x BLOCK_N scores under 192 (ptxas sm_90a: 128 x 128 over 4 warps spilled
    248 bytes at D 128, 92 at D 80 and 16 at D 64 and 40, and 128 x 64 spilled 156 at D 128), except the
    descriptor-load ``_ONE_WARPGROUP_TILES`` at up to 128 accumulator registers (one accumulator, head dims above
    64), and the ``_WIDE_KEY_BLOCK_TILES`` only up to head dim 64; the variants try a short list (with narrow key
    blocks too where every key stream is short); descriptor loads only where the launcher found them usable
    (``TMA_OK``), and warp-specialised ones (``_WARP_SPEC_TILES``) only where it found that usable (``WS_OK``), for
    one key stream (no joint or negative stream) up to each tile's widest head dim; none whose compile failed for
    this launch (``_UNBUILT``); none whose shared memory (``shared_bytes``, for q's dtype) exceeds q's device's
    (fp32 at head dim 128 on Hopper: 8 of 11 candidates, which would compile only to fail at launch); with a key
    mask, no warp-specialised tile of 128-key blocks (they fail to compile); block-sparse (SPARSE), the tiles
    ``sparse_tile_fits`` takes."""
    args = {**named_args, **kwargs}
    unbuilt = _UNBUILT.get()
    q = args.get("Q")  # (absent where a caller prunes by hand: 16-bit inputs on Hopper)
    size, limit = (2, HOPPER_SHARED) if q is None else (q.element_size(), shared_limit_of(q.device))
    d_total = args["BLOCK_DA"] + (args["BLOCK_DB"] if args["SPLIT_D"] else 0)
    accumulators = 2 if args["NEG"] else 1
    heavy = (args["JOINT"] and not args.get("JOINED_KV", False)) or args["NEG"]  # a second key loop
    # (a key count the caller did not give counts as long)
    keys = max(args.get("Nk", _SHORT_KEYS + 1), args.get("Nk2", 0) if args["JOINT"] else 0,
               args.get("Nneg", 0) if args["NEG"] else 0)
    short_list = _HEAVY_CONFIGS | (_SHORT_KEY_CONFIGS if keys <= _SHORT_KEYS else set())
    kept = []
    for cfg in configs:
        bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
        tma = cfg.kwargs.get("USE_TMA", False)
        threads = cfg.num_warps * 32
        acc_regs = accumulators * bm * d_total / threads
        score_regs = bm * bn / threads
        shape = (bm, bn, cfg.num_warps, cfg.num_stages)
        if id(cfg) in unbuilt or shared_bytes(*shape, args.get("HEAD_DIM", d_total), size) > limit:
            continue
        if args.get("SPARSE", False) and not sparse_tile_fits(args["BLOCK_Q"], args["BLOCK_K"], bm, bn,
                                                                 cfg.kwargs.get("WARP_SPEC", False)):
            continue
        if cfg.kwargs.get("WARP_SPEC", False):
            # (Triton 3.6 fails to specialise the 128-key blocks with a key mask, and every block with a mask per
            # query: "PassManager::run failed")
            bias = args.get("HAS_BIAS", 0)
            if args.get("WS_OK", False) and not heavy and d_total <= _WARP_SPEC_TILES[shape] and \
                    not (bias and bn > 64) and bias != ROW_MASK.value:
                kept.append(cfg)
            continue
        if tma and shape in _ONE_WARPGROUP_TILES:
            # above head dim 64 only: at 64 the tuner's tiles are single-warpgroup already (64 x 64, four CTAs per
            # SM; 128 x 64 x 4 warps lost to it on the H200)
            too_big = accumulators > 1 or not 64 < d_total <= 128
        else:
            too_big = acc_regs >= 128 or acc_regs + score_regs >= 192 or (d_total > 128 and bn > 64) or \
                (tma and shape in _WIDE_KEY_BLOCK_TILES and d_total > 64)  # (one CTA per SM: 144 KiB at D 128)
        if too_big or (tma and not args["TMA_OK"]) or \
                (heavy and shape not in (_HEAVY_TMA_CONFIGS if tma else short_list)):
            continue
        kept.append(cfg)
    if kept:
        return kept
    # Nothing fits (head dim 256: 64 rows over 4 warps hold 128 accumulator registers per thread): the untuned
    # default, 64 x 32 (238 registers, no spills; ptxas sm_90a) or with a negative stream 32 x 32. A 32-row tile
    # for one accumulator would compile to the Ampere matrix instructions (mma.sync) instead of wgmma.
    bm, bn, warps, stages = default_config(args.get("HEAD_DIM", d_total), heavy, args["NEG"], size, limit)
    if args.get("SPARSE", False):
        bm, bn = math.gcd(bm, args["BLOCK_Q"]), math.gcd(bn, args["BLOCK_K"])
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)]


def sparse_tile_fits(block_q: int, block_k: int, block_m: int, block_n: int, warp_spec: bool = False) -> bool:
    """Whether a tile runs block-sparse attention over blocks of block_q queries and block_k keys: its rows inside one
    row of the block mask or spanning two (the kernel lists their blocks' union and masks the half that does not
    attend to one: 128-row tiles over NABLA's 64 x 64 blocks), its key blocks inside one block; not
    warp-specialised (the listed loop is not)."""
    return not warp_spec and (block_q % block_m == 0 or block_m == 2 * block_q) and block_k % block_n == 0


#: ids of the candidates whose compile failed for the launch the autotuner is timing (``attention_forward``'s tuned
#: launch sets it around the autotuner's call): ``_prune_configs`` leaves them out
_UNBUILT = contextvars.ContextVar("pydiff_attention_unbuilt", default=frozenset())
_WIDEST_BLOCK_N = max(bn for _, bn, _, _ in _GPU_CONFIGS + _TMA_CONFIGS + [*_WARP_SPEC_TILES])
#: the most query rows of a tile the block-sparse loop takes (no warp-specialised tile)
_WIDEST_BLOCK_M = max(bm for bm, _, _, _ in _GPU_CONFIGS + _TMA_CONFIGS)
_AUTOTUNE_KEY = ["Nq", "Nk", "Nq2", "Nk2", "Nneg", "HEAD_DIM", "SPLIT_D", "JOINT", "JOINED_KV", "NEG", "VARLEN",
                 "HAS_BIAS", "TMA_OK", "WS_OK", "SPARSE", "BLOCK_Q", "BLOCK_K", "NEG_Q"]
_attn_fwd_autotuned = triton.autotune(
    configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in
             _GPU_CONFIGS]
    + [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "USE_TMA": True}, num_warps=w, num_stages=s)
       for bm, bn, w, s in _TMA_CONFIGS]
    + [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "USE_TMA": True, "WARP_SPEC": True}, num_warps=w, num_stages=s)
       for bm, bn, w, s in _WARP_SPEC_TILES],
    key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _prune_configs},
)(_attn_fwd_kernel)


#: the shared memory one program may take on an H100 or H200 (Triton's ``max_shared_mem``: 227 KiB)
HOPPER_SHARED = 232448
#: programs along a CUDA grid's second and third axes (the first takes 2**31 - 1): the kernels put the heads on the
#: second and the batch (times the segments of packed sequences) on the third
GRID_AXIS_LIMIT = 65535


def default_config(head_dim: int, heavy: bool, negative: bool = False, element_size: int = 2,
                   shared_limit: int = HOPPER_SHARED):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) used without autotuning (PYDIFF_ATTENTION_AUTOTUNE=0).

    heavy: a joint or negative stream (a second key loop, and with a negative stream a second accumulator).
    Head dim 128 takes the tile the autotuner chose at Flux's and 16k-token video's shapes on an H200 (10% and 6%
    faster than 128 x 64 there). Where that tile's shared memory (``shared_bytes``, inputs of ``element_size``
    bytes) exceeds ``shared_limit`` (``shared_limit_of`` the device), the first that fits of fewer stages, then
    narrower key and query blocks: fp32 at head dim 128 takes 448 KiB at 128 x 128 over 3 stages, an A100 allows
    163 KiB per program and a consumer card 99 KiB."""
    if head_dim > 128:
        tile = (32, 32, 4, 2) if negative else (64, 32, 4, 2)
    elif heavy:
        tile = 128, 64, 8, 2
    elif head_dim <= 64:
        tile = 128, 64, 4, 3
    else:
        tile = (128, 128, 8, 3) if head_dim_blocks(head_dim) == (128, 16, False) else (128, 64, 8, 3)
    bm, bn, warps, stages = tile
    for tile in (tile, (bm, bn, warps, 2), (bm, min(bn, 64), warps, 2), (64, min(bn, 64), 4, 2), (64, 32, 4, 2),
                 (32, 32, 4, 2), (32, 16, 4, 1)):
        if shared_bytes(*tile, head_dim, element_size) <= shared_limit:
            break
    return tile


def shared_bytes(block_m: int, block_n: int, num_warps: int, num_stages: int, head_dim: int,
                 element_size: int) -> int:
    """Shared memory of the attention kernel at a tile: the key and value blocks of each pipeline stage and the
    query block, over the head dim as the kernel holds it (``head_dim_blocks``). Exact for the tiles the tests
    compile (sm_90a, Triton 3.6 and 3.9); an upper bound at 32 x 32, where the products are not wgmma."""
    block_da, block_db, split_d = head_dim_blocks(head_dim)
    return (2 * num_stages * block_n + block_m) * (block_da + (block_db if split_d else 0)) * element_size


@functools.lru_cache(maxsize=None)
def shared_limit_of(device) -> int:
    """The shared memory one program may take on ``device`` (Triton's driver); Hopper's off CUDA (the interpreter has
    no limit)."""
    if device.type != "cuda":
        return HOPPER_SHARED
    driver = triton.runtime.driver.active
    index = device.index if device.index is not None else driver.get_current_device()
    return driver.utils.get_device_properties(index)["max_shared_mem"]


def default_use_tma(head_dim: int):
    """Without autotuning: tensor-descriptor loads (where usable: None) for head dims padded to a wider block,
    where pointer loads were 3.2x slower at D 40 on an H200 (0.586 vs 0.183 ms, 128 x 64 tiles, the autotuner's
    timings; they were scalar and unpipelined then, before ROW_ALIGN); pointer loads (False) elsewhere, where they
    were 1-7% faster."""
    block_da, block_db, split_d = head_dim_blocks(head_dim)
    return None if block_da + (block_db if split_d else 0) != head_dim else False


def head_dim_blocks(head_dim: int):
    """(BLOCK_DA, BLOCK_DB, SPLIT_D): the head dim as one power of two, or two when that saves matmul work.

    tl.dot needs K >= 16, so chunks are at least 16 wide: 80 -> 64 + 16, 96 -> 64 + 32, 160 -> 128 + 32;
    40 -> 64 and 72 -> 128 (no partly masked second chunk, see below); 100 -> 128.
    """
    padded = max(16, _pow2(head_dim))
    first = max(16, 1 << (head_dim.bit_length() - 1))
    if first >= head_dim:
        return padded, 16, False
    second = max(16, _pow2(head_dim - first))
    # Split only where the two chunks cover the head dim exactly: a split whose second chunk is partly masked
    # (40 -> 32 + 16) gave wrong rows in 16-bit on an H200 with Triton 3.6 (fine in the interpreter), so those
    # head dims take one padded chunk.
    if first + second == head_dim and first + second < padded:
        return first, second, True
    return padded, 16, False


def tma_usable(tensors) -> bool:
    """Whether these key/value tensors can be read through device-side tensor descriptors: CUDA tensors where
    ``descriptors_on`` their device, a contiguous head dim, and a base address and every other stride that are
    multiples of 16 bytes (the tensor memory accelerator's rules). False while tracing (fake tensors have no
    addresses)."""
    if not tensors[0].is_cuda or not descriptors_on(tensors[0].device):  # (the caller checked: one device)
        return False
    try:
        return descriptor_layouts_ok(tensors)
    except Exception:  # noqa: BLE001 - a fake or functional tensor under tracing has no address
        return False


def descriptors_on(device) -> bool:
    """Whether kernels on ``device`` may read through tensor descriptors: Triton's interpreter (CPU) always; a CUDA
    device of compute capability 9 or newer with a Triton that has them, outside tracing, unless
    ``PYDIFF_ATTENTION_TMA=0``."""
    import torch

    from pydiff.ops.backend import env_switch

    if device.type == "cpu":
        return True
    return _HAS_DESCRIPTORS and not torch.compiler.is_compiling() and env_switch("PYDIFF_ATTENTION_TMA") and \
        _capability(device) >= 9


def _capability(device) -> int:
    """The compute capability major of a CUDA device (``_CAPABILITY``); 0 for another device."""
    major = _CAPABILITY.get(device)
    if major is None:
        import torch

        major = _CAPABILITY[device] = torch.cuda.get_device_capability(device)[0] if device.type == "cuda" else 0
    return major


def warp_spec_usable(q) -> bool:
    """Whether the autotuner may try warp-specialised tiles (``_WARP_SPEC_TILES``) for a call whose key/value
    tensors passed ``tma_usable``: asked for with ``PYDIFF_ATTENTION_WARP_SPEC=1`` (off by default until a GPU run has
    checked them), a Hopper GPU (compute capability 9; Blackwell's warp specialisation is another compiler path), a
    Triton with warp-specialised loops, and a 16-bit q fit for a tensor descriptor (fp32's TF32 products fail to
    compile)."""
    import torch

    from pydiff.ops.backend import env_switch

    if not _HAS_WARP_SPEC or not env_switch("PYDIFF_ATTENTION_WARP_SPEC", default=False) or \
            torch.compiler.is_compiling():  # (fake tensors under tracing have no addresses)
        return False
    return _capability(q.device) == 9 and q.element_size() == 2 and \
        descriptor_layout_ok(q.data_ptr(), q.stride(), q.element_size())


def descriptor_layout_ok(address: int, strides, element_size: int) -> bool:
    """The tensor memory accelerator's layout rules for one tensor: unit stride along the last dim, and the base
    address and every other stride (in bytes) multiples of 16."""
    return strides[-1] == 1 and address % 16 == 0 and all((st * element_size) % 16 == 0 for st in strides[:-1])


def descriptor_layouts_ok(tensors) -> bool:
    """``descriptor_layout_ok`` of every tensor (its address, strides and element size)."""
    return all(descriptor_layout_ok(t.data_ptr(), t.stride(), t.element_size()) for t in tensors)


#: compute capability major per device (torch's lookup costs microseconds on every launch)
_CAPABILITY = {}
_HAS_DESCRIPTORS = hasattr(tl, "make_tensor_descriptor")
_HAS_WARP_SPEC = "warp_specialize" in inspect.signature(tl.range).parameters


def _scratch(size: int, alignment: int, stream):
    """Triton's global scratch (device-side tensor descriptors are written there) from torch's caching allocator,
    so it is stream-ordered and captured into CUDA graphs like any other allocation."""
    import torch

    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_scratch_allocator():
    """Install ``_scratch`` as Triton's allocator unless the caller has set one of their own."""
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_scratch)


def _dims(t, bnhd: bool):
    """(B, H, N, D) sizes and strides of a tensor in either layout, as ints (symbolic sizes under torch.compile are
    specialised: tile choices and the grid depend on them)."""
    b, x, y, d = t.shape
    sb, sx, sy, sd = t.stride()
    if bnhd:
        return [int(b), int(y), int(x), int(d)], [int(sb), int(sy), int(sx), int(sd)]
    return [int(b), int(x), int(y), int(d)], [int(sb), int(sx), int(sy), int(sd)]


def _pow2(n: int) -> int:
    """The smallest power of two >= n (plain Python: triton.next_power_of_2 costs microseconds per call on the
    launch path)."""
    return 1 << max(n - 1, 0).bit_length()


def interpreter_blocks(max_rows: int, max_keys: int):
    """One large fixed tile under the Triton interpreter, where every program instance costs about a millisecond."""
    block_m = min(128, max(16, _pow2(max_rows)))
    block_n = min(128, max(16, _pow2(max_keys)))
    return block_m, block_n


def attention_forward(kernel, q, k, v, out, *, bnhd=False, scale, joint=None, negative=None, negative_scale=1.0,
                      kv_lens=None, negative_kv_lens=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0,
                      rope=None, rope_interleaved=True, q_norm_weight=None, k_norm_weight=None,
                      joint_q_norm_weight=None, joint_k_norm_weight=None, norm_eps=1e-6,
                      block_m=None, block_n=None, num_warps=4, num_stages=2, use_tma=False, prologue_kernel=None,
                      tuned=None, rowsum_mma=False, stream_k=None, overlap=False, prologue_heads=1,
                      warp_spec=False, join_keys=None, attn_mask=None, key_rope=None, block_mask=None,
                      block_size=(0, 0), block_tiles=None, rope_dims=0, rope_sections=1, lists_kernel=None,
                      block_lists=None):
    """Launch ``kernel`` (the autotuned kernel, the plain one with ``block_m``/``block_n``, or either through
    ``torch.library.wrap_triton``). All arguments were checked by the caller.

    joint: (q2, k2, v2, out2); negative: (k_neg, v_neg), or (q_neg, k_neg, v_neg) for differential attention (the
    negative stream's own queries, through q's prologue; not with joint); rope: (cos, sin) tables (rows, D);
    key_rope: the keys' own tables (then ``rope`` turns q alone).
    bnhd: tensors are (B, N, H, D) instead of (B, H, N, D); outputs use the same layout as inputs.
    use_tma: with ``block_m``, key/value loads through tensor descriptors (Hopper; the autotuned kernel tries them
    itself where ``tma_usable``); None: where ``tma_usable``.
    tuned: (tuner, plain kernel) for eager launches of the autotuned ``kernel``: the first launch of each
    specialisation goes through the tuner (Triton's ``Autotuner``, as bound), its candidate tiles compiled at once
    first (``plans.precompile``; one whose compile failed is left out, with a warning); later ones launch the plain
    kernel with the tile it chose, skipping the tuner's per-call key work (the autotuner builds its cache key from
    67 run-time arguments on every call). The choice is also kept on disk (``plans.store_choice``, unless
    ``PYDIFF_TUNING_CACHE=0``): a later process's first launch of the specialisation, on a GPU of the same name,
    with this file and Triton's version unchanged, launches the stored tile without compiling or timing the others.
    prologue_kernel: ``_qk_prologue`` as the caller launches it (wrapped for torch.library); None: this module's.
    lists_kernel: ``_block_lists_kernel`` likewise.
    rowsum_mma: the kernel's ROWSUM_MMA experiment, with ``block_m`` (the benchmark and the tests time and check it).
    overlap: the kernel's OVERLAP experiment (each block's softmax while the next block's scores are computed,
    ``_attend_overlapped``), with ``block_m``, every variant, with or without ``rowsum_mma``; not with
    ``stream_k``.
    stream_k: the stream-K experiment over this many programs (``_attn_fwd_stream_k``; a GPU's SM count times the
    CTAs of the tile one SM holds), with ``block_m`` and pointer or descriptor loads (``use_tma``), for plain and
    joint attention (the benchmark and the tests).
    When q or k has a norm or RoPE, each such tensor first gets it in one pass of its own (``_qk_prologue``).
    prologue_heads: heads per program of those passes, a power of two dividing the head count of every tensor they
    prologue (an experiment: a program's heads share the RoPE table rows they read; 16 / prologue_heads tokens per
    program on a GPU, so each program holds as many elements as with one head).
    warp_spec: with ``block_m`` and descriptor loads, the kernel's WARP_SPEC (q through descriptors too, the key loop
    warp-specialised; ``_WARP_SPEC_TILES``), with one key stream (no negative, and joint only with its keys
    joined; the tests and the benchmark; the autotuned kernel tries it itself where ``warp_spec_usable``).
    join_keys: a joint call's keys and values joined into one tensor each first, [stream 1; stream 2] along the
    tokens, so that one key loop serves both query streams (the kernel's JOINED_KV): the keys' prologue writes them
    there (a pass it makes anyway), the values are copied (one more pass over them). None: where the call has a
    key prologue (norm or RoPE), no negative stream, and warp specialisation may be used (``warp_spec`` given, or
    the autotuned kernel where ``warp_spec_usable`` finds both query streams fit, after their prologue): Triton's
    warp specialisation takes one key loop only.
    attn_mask: an attention mask, bool (True: the score takes part) or float (added to the scores), read by the
    kernel as given (no conversion pass): sizes broadcastable to (B, H, queries, keys), the queries and keys of the
    joined sequence with ``joint``; a key mask where the query size is 1 (or its stride 0); with ``negative`` for
    differential attention alone (its negative keys are the same tokens: the mask applies to both streams); not
    with ``stream_k``.
    block_mask, block_size = (block_q, block_k): block-sparse attention (the kernel's SPARSE): a boolean mask
    broadcastable to (B, H, ceil(N_q / block_q), ceil(N_k / block_k)), True where a block of queries attends to a
    block of keys;
    the kernel reads only the listed key blocks (``_block_lists``). block_m must divide block_q and block_n
    block_k (the autotuner keeps such tiles). One query and one key stream: not with ``joint``, ``negative``,
    ``cu_seqlens_q``, ``stream_k``, ``overlap`` or ``warp_spec``.
    rope_dims: partial rotary, the tables turning only each head's first rope_dims channels (0: all).
    rope_sections: halves turned within that many equal sections of the turned channels (Allegro's), not pairs.
    block_tiles = (tile_ids, tiles): the elements of the block mask's partial blocks (the kernel's TILE_MASK; not
    with attn_mask): tiles (T, block_q, block_k) bool, tile 0 all True, and tile_ids, int32 broadcastable like
    block_mask, the tile of each block (0: the whole block).
    block_lists = (counts, lists): the lists ``_block_lists`` would make with tiles, given instead of block_mask (a
    neighborhood's, made once without a dense mask: ``pydiff.neighborhood``), with block_size and block_tiles (whose
    tile_ids are then None: the lists carry them); lists (1, 1, rows, entries, 3), contiguous along the entries.
    Trusted as made: their blocks and tiles are not range-checked.
    """
    import torch

    negative_q = None
    if negative is not None and len(negative) == 3:
        negative_q, negative = negative[0], tuple(negative[1:])
        if joint is not None:
            raise ValueError("negative=(q_neg, k_neg, v_neg), differential attention: one query stream (not with "
                             "joint=)")
    if _switch_reader()() != _UNSET:
        # (a bad value named before anything launches: the launcher reads them after the prologue)
        from pydiff.ops.backend import env_switch

        for name, default in _SWITCHES:
            env_switch(name, default)
    (batch, heads, _, _), _ = _dims(q, bnhd)
    segments = int(cu_seqlens_q.shape[0]) - 1 if cu_seqlens_q is not None else 1
    if heads > GRID_AXIS_LIMIT or batch * segments > GRID_AXIS_LIMIT:
        raise ValueError(f"q has {heads} heads and a batch of {batch} x {segments} segments (cu_seqlens_q); the "
                         f"Triton kernel takes at most {GRID_AXIS_LIMIT} heads and {GRID_AXIS_LIMIT} batch x segments "
                         f"(a CUDA grid's second and third axes)")
    if rowsum_mma and block_m is None:
        raise ValueError("rowsum_mma: an experiment for a fixed tile (block_m, block_n), not for the autotuner")
    if overlap and (block_m is None or stream_k is not None):
        raise ValueError("overlap: an experiment for a fixed tile (block_m, block_n) and one program per query block "
                         "(not with stream_k)")
    if stream_k is not None:
        if block_m is None or rowsum_mma:
            raise ValueError("stream_k: an experiment for a fixed tile (block_m, block_n) with row sums by adds")
        if negative is not None or any(t is not None for t in (kv_lens, negative_kv_lens, cu_seqlens_q, attn_mask)):
            raise ValueError("stream_k: plain and joint attention only (no negative, kv_lens, cu_seqlens or "
                             "attn_mask)")
        if stream_k < 1:
            raise ValueError(f"stream_k must be >= 1 programs, got {stream_k}")
    if block_lists is not None and block_mask is not None:
        raise ValueError("block_lists are given in place of block_mask, not with it")
    sparse = block_mask is not None or block_lists is not None
    if sparse:
        block_q, block_k = block_size
        if joint is not None or negative is not None or cu_seqlens_q is not None or stream_k is not None or \
                overlap or warp_spec:
            raise ValueError("block_mask: one query and one key stream (not with joint, negative or cu_seqlens_q), "
                             "and not with the stream_k, overlap or warp_spec experiments")
        if block_m is not None and not sparse_tile_fits(block_q, block_k, block_m, block_n):
            raise ValueError(f"block_mask: the tile ({block_m}, {block_n}) must divide the mask's blocks "
                             f"({block_q}, {block_k}), or its rows span two")
    keys_rope = rope if key_rope is None else key_rope  # (the tables that turn the keys)
    has_prologue = rope is not None or keys_rope is not None or any(
        w is not None for w in (q_norm_weight, k_norm_weight, joint_q_norm_weight, joint_k_norm_weight))
    # (a mask per query: Triton 3.6 fails to warp-specialise its key loop, "PassManager::run failed")
    mask_strides = _mask_strides(attn_mask)
    row_mask = mask_strides[2] != 0
    tile_ids = None
    if block_tiles is not None:
        if not sparse or attn_mask is not None:
            raise ValueError("block_tiles: with block_mask, and not with attn_mask (the kernel reads the tiles in its "
                             "place)")
        tile_ids, attn_mask = block_tiles  # (the lists clamp the ids to the tiles: none reads past them)
        mask_strides = [attn_mask.stride(0), 0, attn_mask.stride(1), attn_mask.stride(2)]
    if join_keys is None:
        # one key loop where warp specialisation is asked for, or may be for the autotuner (decided after the queries'
        # prologue: from the queries as the kernel reads them), and where a key prologue writes the keys anyway
        wanted = joint is not None and negative is None and stream_k is None and not row_mask and \
            (keys_rope is not None or k_norm_weight is not None or joint_k_norm_weight is not None)
        join_keys = wanted and (True if warp_spec else None if block_m is None else False)
    elif join_keys and (joint is None or stream_k is not None):
        raise ValueError("join_keys: for joint attention (joint=...), not with stream_k")
    if warp_spec:
        if block_m is None or rowsum_mma or overlap or stream_k is not None:
            raise ValueError("warp_spec: for a fixed tile (block_m, block_n), not with rowsum_mma, overlap or "
                             "stream_k")
        if row_mask:
            raise ValueError("warp_spec: not with a mask per query (attn_mask with a query dimension; Triton 3.6 "
                             "fails to compile it); a key mask is fine")
        if (joint is not None and not join_keys) or negative is not None:
            # (a second key loop fails inside Triton's compiler)
            raise ValueError("warp_spec: one key stream only (no negative, and joint only with join_keys=True)")
        if q.is_cuda and q.element_size() > 2:  # (the interpreter compiles nothing: fp32 checks the path there)
            raise ValueError(f"warp_spec: 16-bit inputs only on a GPU, got {q.dtype} (Triton's warp specialisation "
                             f"fails to compile TF32 matrix multiplies)")
        if use_tma is False:
            raise ValueError(_WARP_SPEC_NEEDS_TMA)
        # q (and the joint q) are read through descriptors too, as the kernel gets them: where a prologue applies,
        # a new tensor shaped like it (the same strides where it is dense, as torch.empty_like makes them)
        for name, x, weight in (("q", q, q_norm_weight),
                                ("joint q", joint[0] if joint is not None else None, joint_q_norm_weight)):
            fresh = x is not None and (rope is not None or weight is not None)
            if x is not None and not descriptor_layout_ok(0 if fresh else x.data_ptr(), _strides_read(x, fresh),
                                                          x.element_size()):
                raise ValueError(f"warp_spec: {name} is read through a tensor descriptor too, which needs a contiguous "
                                 f"head dim and a 16-byte aligned address and strides; got strides "
                                 f"{_strides_read(x, fresh)}" + (" (its prologue's output)" if fresh else ""))
    if use_tma or warp_spec:
        # (the experiments' descriptor loads, judged before anything launches on the key/value tensors the kernel
        # will read, which a prologue or the key join write anew; use_tma None takes them on a GPU only)
        if block_m is None:
            raise ValueError("use_tma: for a fixed tile (block_m, block_n); the autotuned kernel tries descriptor "
                             "loads itself")
        if (use_tma is None and not q.is_cuda) or not descriptors_on(q.device) or not all(
                descriptor_layout_ok(*read) for read in _kv_read(k, v, joint, negative, bnhd, keys_rope,
                                                                 k_norm_weight, joint_k_norm_weight, join_keys,
                                                                 has_prologue)):
            raise ValueError(_USE_TMA_UNFIT if use_tma else _WARP_SPEC_NEEDS_TMA)
    prepare = prepare_k = queries_ws = None  # (queries_ws: warp_spec_usable of the query streams, asked once)
    if has_prologue:
        if prologue_heads != 1:  # (the experiment's check, off the default path)
            prologued = [q, k] + ([joint[0], joint[1]] if joint is not None else []) + \
                ([negative[0]] if negative is not None else [])
            head_counts = sorted({_dims(t, bnhd)[0][1] for t in prologued})
            if prologue_heads < 1 or prologue_heads & (prologue_heads - 1) or \
                    any(n % prologue_heads for n in head_counts):
                raise ValueError(f"prologue_heads must be a power of two dividing every prologued tensor's head "
                                 f"count {head_counts}, got {prologue_heads}")
        def preparer(tables):
            return _preparer(prologue_kernel if prologue_kernel is not None else _qk_prologue, bnhd, tables,
                             rope_interleaved, norm_eps, q.device.type == "cpu" and q.dtype == torch.bfloat16,
                             prologue_heads, rope_dims, rope_sections)

        prepare = preparer(rope)
        prepare_k = prepare if key_rope is None else preparer(key_rope)  # (the keys' tables where they have own)
        n_q, n_k = _dims(q, bnhd)[0][2], _dims(k, bnhd)[0][2]
        # RoPE rows follow the joined sequence [stream 1; stream 2]; negative keys start at row 0
        if negative is not None:
            negative = (prepare_k(negative[0], k_norm_weight, 0), negative[1])
        q = prepare(q, q_norm_weight, 0)
        if negative_q is not None:
            negative_q = prepare(negative_q, q_norm_weight, 0)
        if joint is not None:
            joint = (prepare(joint[0], joint_q_norm_weight, n_q), *joint[1:])
        if join_keys is None:
            join_keys = queries_ws = warp_spec_usable(q) and warp_spec_usable(joint[0])
        if not join_keys:
            k = prepare_k(k, k_norm_weight, 0)
            if joint is not None:
                joint = (joint[0], prepare_k(joint[1], joint_k_norm_weight, n_k), *joint[2:])
    if join_keys:
        k, v = _joined_keys(prepare_k, bnhd, (k, k_norm_weight), (joint[1], joint_k_norm_weight), v, joint[2])
        joint = (joint[0], k, v, joint[3])

    # Eager calls of a signature seen before launch its compiled kernel directly (``plans``); not the stream-K
    # experiment, which launches its own two kernels (the plain kernel's plan of the same tile is not its work).
    varlen = cu_seqlens_q is not None
    if varlen and cu_seqlens_k is None:
        cu_seqlens_k = cu_seqlens_q
    optional = (kv_lens, negative_kv_lens, cu_seqlens_q, cu_seqlens_k, attn_mask)
    block_q, block_k, lists = 0, 0, (None, None)
    if block_lists is not None:
        block_q, block_k = block_size
        lists = tuple(block_lists)
    elif block_mask is not None:
        block_q, block_k = block_size
        lists = _block_lists(block_mask, block_q, block_k, kv_lens, tile_ids, lists_kernel,
                             0 if tile_ids is None else attn_mask.shape[0])
    tensors = _leading_tensors(q, k, v, out, joint, negative, *optional, *lists, negative_q=negative_q)
    q2, k2, v2, out2, k_neg, v_neg = tensors[4:10]
    plan_key = None
    if plans.ENABLED and stream_k is None and type(q) is torch.Tensor and \
            (block_m is not None or tuned is not None):
        present = (q, k, v, out, *(joint or ()), *(negative or ()), negative_q, *optional, *lists)
        plan_key = (plans.unwrapped(kernel), bnhd, float(scale), float(negative_scale), max_seqlen_q, block_q,
                    block_k, block_m, block_n, num_warps, num_stages, use_tma, rowsum_mma, overlap, warp_spec,
                    join_keys, joint is not None, negative is not None, os.environ.get("PYDIFF_ATTENTION_TMA"),
                    os.environ.get("PYDIFF_ATTENTION_WARP_SPEC"),
                    *(None if t is None else plans.tensor_key(t) for t in present))
        if plans.run(plan_key, tensors):
            return

    (batch, heads, n_q, head_dim), sq = _dims(q, bnhd)
    (_, kv_heads, n_k, _), sk = _dims(k, bnhd)
    _, sv = _dims(v, bnhd)
    _, so = _dims(out, bnhd)
    if joint is not None:
        (_, _, n_q2, _), sq2 = _dims(q2, bnhd)
        (_, _, n_k2, _), sk2 = _dims(k2, bnhd)
        _, sv2 = _dims(v2, bnhd)
        _, so2 = _dims(out2, bnhd)
    else:
        n_q2 = n_k2 = 0
        sq2 = sk2 = sv2 = so2 = [0, 0, 0, 0]
        if negative_q is not None:  # (the negative stream's queries, in the second stream's place)
            _, sq2 = _dims(negative_q, bnhd)
    if negative is not None:
        (_, _, n_neg, _), skn = _dims(k_neg, bnhd)
        _, svn = _dims(v_neg, bnhd)
    else:
        n_neg = 0
        skn = svn = [0, 0, 0, 0]
    block_da, block_db, split_d = head_dim_blocks(head_dim)
    mask_d = (block_da + (block_db if split_d else 0)) != head_dim

    def grid(meta):
        # (ceil divisions inline: triton.cdiv is a jit function, microseconds per call from Python)
        bm = meta["BLOCK_M"]
        if joint is not None:
            blocks = -(-n_q // bm) - (-n_q2 // bm)
        elif varlen:
            blocks = -(-max_seqlen_q // bm)
        else:
            blocks = -(-n_q // bm)
        return (blocks, heads, batch * segments)

    stream_strides = [*sq, *sk, *sv, *so, *sq2, *sk2, *sv2, *so2, *skn, *svn]
    strides = stream_strides + mask_strides + [0 if t is None or t.shape[i] == 1 else t.stride(i)
                                               for t in lists for i in range(3)]
    args = [
        *tensors, *strides,
        heads // kv_heads, n_q, n_k, n_q2, n_k2, n_neg, segments, block_k,
        float(scale) * LOG2E, float(negative_scale),
    ]
    flags = dict(
        HEAD_DIM=head_dim, BLOCK_DA=block_da, BLOCK_DB=block_db, SPLIT_D=split_d, MASK_D=mask_d,
        JOINT=joint is not None, JOINED_KV=bool(join_keys), NEG=negative is not None, VARLEN=varlen,
        HAS_KV_LENS=kv_lens is not None, HAS_NEG_KV_LENS=negative_kv_lens is not None,
        HAS_BIAS=0 if attn_mask is None else TILE_MASK.value if block_tiles is not None else ROW_MASK.value
        if row_mask else 1, SCALE_POSITIVE=scale > 0,
        SPARSE=sparse, BLOCK_Q=block_q, NEG_Q=negative_q is not None,
        # Triton's interpreter (CPU tensors) multiplies bf16 operands as raw 16-bit integers in tl.dot and
        # truncates bf16 casts: there, bf16 values go through the dots as (exact) fp32, as a tensor core forms
        # the products, and every rounding to bf16 is done to nearest even by hand.
        EMULATE_BF16=q.device.type == "cpu" and q.dtype == torch.bfloat16,
    )
    # EVEN_N: every key stream is a whole number of key blocks, so the key loop needs no column mask. Decided here
    # (not by a triton.heuristics wrapper, which torch.library.wrap_triton does not accept) against the block in
    # use, or against the largest autotune candidate, whose multiples every smaller power-of-two block divides.
    lengths = [n_k] + ([n_k2] if joint is not None else []) + ([n_neg] if negative is not None else [])
    widest = block_n if block_n is not None else _WIDEST_BLOCK_N
    flags["EVEN_N"] = not (varlen or kv_lens is not None or negative_kv_lens is not None) and \
        all(n % widest == 0 for n in lengths)
    flags["ROW_ALIGN"] = _row_align(q.element_size(), stream_strides)
    kv = [k, v] + ([k2, v2] if joint is not None else []) + ([k_neg, v_neg] if negative is not None else [])
    usable = tma_usable(kv)
    flags["TMA_OK"] = block_m is None and usable
    flags["WS_OK"] = flags["TMA_OK"] and (queries_ws if queries_ws is not None else
                                          warp_spec_usable(q) and (joint is None or warp_spec_usable(q2)))
    if use_tma is None:
        use_tma = usable
    if warp_spec and not use_tma:  # (judged before the prologue too, on the tensors it was to write)
        raise ValueError(_WARP_SPEC_NEEDS_TMA)
    # descriptor loads need Triton's allocator, which is per thread (a context variable): planned launches set it too
    before = _ensure_scratch_allocator if flags["TMA_OK"] or (use_tma and q.is_cuda) else None
    if before is not None:
        before()
    if stream_k is not None:
        work = torch.empty(2 * stream_k * block_m * (block_da + block_db + 2), device=q.device, dtype=torch.float32)
        shape = {name: flags[name] for name in ("HEAD_DIM", "BLOCK_DA", "BLOCK_DB", "SPLIT_D", "MASK_D", "JOINT",
                                                "EMULATE_BF16", "ROW_ALIGN")}
        shape.update(BLOCK_M=block_m, BLOCK_N=block_n, **plans.launch_options(_attn_fwd_stream_k))
        sizes = [heads, n_q, n_k, n_q2, n_k2, batch * heads]
        _attn_fwd_stream_k[(stream_k,)](
            *tensors[:8], work, *strides[:32], heads, heads // kv_heads, *sizes[1:], float(scale) * LOG2E,
            EVEN_N=flags["EVEN_N"], SCALE_POSITIVE=flags["SCALE_POSITIVE"], USE_TMA=bool(use_tma),
            num_warps=num_warps, num_stages=num_stages, **shape)
        # (the merge holds two parts' BLOCK_M x D float32 accumulators: at 128 x 128 over 4 warps it spilled 380
        # bytes per thread, over 8 none; ptxas sm_90a)
        _attn_stream_k_combine[(stream_k,)](out, out2, work, *so, *so2, *sizes, num_warps=max(num_warps, 8),
                                            **shape)
        return
    if block_m is not None:
        flags.update(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages, USE_TMA=use_tma,
                     ROWSUM_MMA=bool(rowsum_mma), OVERLAP=bool(overlap), WARP_SPEC=bool(warp_spec))
    flags.update(plans.launch_options(kernel))
    if block_m is not None or tuned is None:
        plans.launch(kernel, grid, args, flags, plan_key, len(tensors), before, writes=_WRITES)
        return
    # The tuner's own key (shapes, the head-dim split, the variant flags, dtypes) is a subset of this one.
    specialisation = (n_q, n_k, n_q2, n_k2, n_neg, segments, block_k, *flags.values(),
                      *(t.dtype for t in tensors))
    key = (*specialisation, q.device)
    choice = _TUNED.get(key)
    if choice is None:
        if _capturing(q):  # (the tuner times its candidates, and a first launch loads its kernel: neither captures)
            raise RuntimeError("pydiff.attention: the first call of each signature (shapes, dtypes, layout, variant) "
                               "chooses its tile and loads its kernel, which cannot happen while a CUDA graph is "
                               "being captured; make the same call once before capturing (a warm-up, as "
                               "torch.cuda.graphs asks)")
        tuner, plain = tuned
        candidates = _prune_configs(tuner.configs, dict(zip(tuner.arg_names, args)), **flags)
        stored = repr((_source_digest(), triton.__version__, _device_name(q.device), specialisation))
        choice = plans.stored_choice(stored)
        if choice not in [config.all_kwargs() for config in candidates]:  # (None, or a tile no longer offered)
            # the tuner's candidates compile at once, then it times those that compiled
            failed = plans.precompile(plain, grid, args, flags, candidates)
            for config, error in failed:
                warnings.warn(f"pydiff attention: autotune candidate {config} failed to compile and is skipped: "
                              f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[-1]}",
                              RuntimeWarning)
            token = _UNBUILT.set(frozenset(id(config) for config, _ in failed))
            try:
                kernel[grid](*args, **flags)
            finally:
                _UNBUILT.reset(token)
            plans.unplanned(tensors)
            _TUNED[key] = tuner.best_config.all_kwargs()
            plans.store_choice(stored, _TUNED[key])
            return
        _TUNED[key] = choice
    plans.launch(tuned[1], grid, args, {**flags, **choice}, plan_key, len(tensors), before, writes=_WRITES)


#: the on/off environment settings the launcher reads, with their defaults (``pydiff.ops.backend.env_switch``)
_SWITCHES = (("PYDIFF_ATTENTION_TMA", True), ("PYDIFF_ATTENTION_WARP_SPEC", False), ("PYDIFF_TUNING_CACHE", True))
_UNSET = (None,) * len(_SWITCHES)


@functools.lru_cache(maxsize=None)
def _switch_reader():
    """Reads the raw values of ``_SWITCHES`` at once (``environment_reader``: a tuple, None where unset)."""
    from pydiff.ops.backend import environment_reader

    return environment_reader(*(name for name, _ in _SWITCHES))


_WARP_SPEC_NEEDS_TMA = "warp_spec: needs descriptor loads (use_tma True, or None where the key/value tensors fit them)"


def _capturing(q) -> bool:
    """Whether a CUDA graph is being captured on the current stream of q's device."""
    import torch

    return q.is_cuda and torch.cuda.is_current_stream_capturing()


def _strides_read(x, fresh: bool) -> tuple:
    """The strides of the tensor the kernel reads for ``x``: x's own, or with ``fresh`` (a prologue writes a new
    tensor for it) those ``torch.empty_like(x)`` gives."""
    import torch

    return tuple(torch.empty_like(x, device="meta").stride() if fresh else x.stride())


_USE_TMA_UNFIT = ("use_tma: the key/value tensors need compute capability 9+, a contiguous head dim and 16-byte "
                  "aligned addresses and strides")


def _kv_read(k, v, joint, negative, bnhd, rope, k_norm_weight, joint_k_norm_weight, join_keys, has_prologue):
    """(address, strides, element size) of each key/value tensor the kernel will read, known before the prologue
    and the key join (``_joined_keys``) write new ones: those are fresh allocations, aligned, so address 0 stands
    for them. joint: (q2, k2, v2, out2); negative: (k_neg, v_neg)."""
    import torch

    def read(x, strides=None):
        return (0 if strides is not None else x.data_ptr(), tuple(x.stride() if strides is None else strides),
                x.element_size())

    def keys(x, weight):  # a key prologue writes them anew where it has a norm or RoPE
        return read(x, _strides_read(x, True)) if rope is not None or weight is not None else read(x)

    if join_keys:
        axis = 1 if bnhd else 2
        meta = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta") for t in (k, joint[1], v,
                                                                                                   joint[2])]
        joined_k = torch.cat(meta[:2], axis)
        if has_prologue:  # (written by the prologue into a new tensor)
            joined_k = joined_k.contiguous()
        streams = [read(k, joined_k.stride()), read(v, torch.cat(meta[2:], axis).stride())]
    else:
        streams = [keys(k, k_norm_weight), read(v)]
        if joint is not None:
            streams += [keys(joint[1], joint_k_norm_weight), read(joint[2])]
    if negative is not None:
        streams += [keys(negative[0], k_norm_weight), read(negative[1])]
    return streams


def _joined_keys(prepare, bnhd, k, k2, v, v2):
    """(keys, values) of a joint call joined [stream 1; stream 2] along the tokens (``attention_forward``'s
    join_keys): k and k2, each (tensor, norm weight), through their prologue (``prepare``, RoPE rows of stream 2
    from stream 1's length on) into the joined keys, or copied there without one; v and v2 copied."""
    import torch

    axis = 1 if bnhd else 2
    (k, weight), (k2, weight2) = k, k2
    if prepare is None:
        return torch.cat([k, k2], axis), torch.cat([v, v2], axis)
    n_k, n_k2 = k.shape[axis], k2.shape[axis]
    keys = k.new_empty([*k.shape[:axis], n_k + n_k2, *k.shape[axis + 1:]])
    prepare(k, weight, 0, out=keys.narrow(axis, 0, n_k))
    prepare(k2, weight2, n_k, out=keys.narrow(axis, n_k, n_k2))
    return keys, torch.cat([v, v2], axis)


#: the attention kernel's tensor arguments it writes: O and O2 (``_leading_tensors``)
_WRITES = (3, 7)


def _leading_tensors(q, k, v, out, joint, negative, kv_lens, negative_kv_lens, cu_seqlens_q, cu_seqlens_k,
                     attn_mask, block_counts=None, block_lists=None, negative_q=None):
    """The attention kernel's 17 tensor arguments, in order: the streams (q, k, v, out; q2, k2, v2, out2 from
    ``joint``; k_neg, v_neg from ``negative``), then the lengths, offsets, mask and block lists; q or the first
    stream's tensors stand in for what the call does not have (the kernel's flags say it is absent). negative_q
    (differential attention, no joint stream) takes q2's place."""
    q2, k2, v2, out2 = joint if joint is not None else (q if negative_q is None else negative_q, k, v, out)
    k_neg, v_neg = negative if negative is not None else (k, v)
    return (q, k, v, out, q2, k2, v2, out2, k_neg, v_neg, *(q if t is None else t for t in (
        kv_lens, negative_kv_lens, cu_seqlens_q, cu_seqlens_k, attn_mask, block_counts, block_lists)))


@triton.jit
def _block_lists_kernel(MASK, IDS, LENS, COUNTS, LISTS,
                        stride_mb, stride_mh, stride_mr, stride_mc, stride_ib, stride_ih, stride_ir, stride_ic,
                        stride_cb, stride_ch, stride_cr, stride_lb, stride_lh, stride_lr, rows, cols, block_k,
                        tile_count, PAIRS: tl.constexpr, HAS_IDS: tl.constexpr, HAS_LENS: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    """One row of ``_block_lists``' counts and lists per program, grid = (rows of the lists, H, B): the key blocks
    its query block attends to (or, a row r >= ``rows`` with PAIRS, its pair of query blocks 2 (r - rows) and the
    next), BLOCK_C columns of the block mask at a time, their entries written in order at the places a running
    count and a prefix sum give them. HAS_IDS: two passes, the whole blocks' entries, then the partial ones' (the
    ids clamped to [0, tile_count): none reads past the tiles)."""
    r = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    first = r
    second = r
    if PAIRS:
        first = tl.where(r >= rows, 2 * (r - rows), r)
        second = tl.where(r >= rows, first + 1, r)
    keys = cols * block_k
    if HAS_LENS:  # (blocks starting at or past the row's last key are left out)
        keys = tl.load(LENS + b).to(tl.int32)
    keys_b = tl.where(second < rows, keys, 0)  # (an odd last query block pairs with none)
    mask_a = MASK + b * stride_mb + h * stride_mh + first.to(tl.int64) * stride_mr
    mask_b = MASK + b * stride_mb + h * stride_mh + second.to(tl.int64) * stride_mr
    ids_a = IDS + b * stride_ib + h * stride_ih + first.to(tl.int64) * stride_ir
    ids_b = IDS + b * stride_ib + h * stride_ih + second.to(tl.int64) * stride_ir
    out = LISTS + b * stride_lb + h * stride_lh + r.to(tl.int64) * stride_lr
    counts = COUNTS + b * stride_cb + h * stride_ch + r.to(tl.int64) * stride_cr
    STEP: tl.constexpr = 3 if HAS_IDS else 1
    count = tl.full((), 0, tl.int32)
    for part in tl.static_range(2 if HAS_IDS else 1):  # (with tiles: the whole blocks first, then the partial)
        for start in range(0, cols, BLOCK_C):
            c = start + tl.arange(0, BLOCK_C)
            a = tl.load(mask_a + c * stride_mc, mask=(c < cols) & (c * block_k < keys), other=0) != 0
            z = tl.load(mask_b + c * stride_mc, mask=(c < cols) & (c * block_k < keys_b), other=0) != 0
            bits = a.to(tl.int32) + 2 * z.to(tl.int32)
            take = bits > 0
            if HAS_IDS:
                tile_a = tl.load(ids_a + c * stride_ic, mask=a, other=0).to(tl.int32)
                tile_b = tl.load(ids_b + c * stride_ic, mask=z, other=0).to(tl.int32)
                tile_a = tl.minimum(tl.maximum(tile_a, 0), tile_count - 1)
                tile_b = tl.minimum(tl.maximum(tile_b, 0), tile_count - 1)
                partial = (tile_a != 0) | (tile_b != 0)
                if part == 0:
                    take = take & ~partial
                else:
                    take = take & partial
            place = out + (count + tl.cumsum(take.to(tl.int32), 0) - 1).to(tl.int64) * STEP
            tl.store(place, c * 4 + bits, mask=take)
            if HAS_IDS:
                tl.store(place + 1, tile_a, mask=take)
                tl.store(place + 2, tile_b, mask=take)
            count += tl.sum(take.to(tl.int32), 0)
        if HAS_IDS and part == 0:
            tl.store(counts, count)
    tl.store(counts + STEP // 3, count)  # (all of them: the second of two counts with tiles)


def _block_lists(mask, block_q: int, block_k: int, kv_lens, tile_ids=None, kernel=None, tile_count=0):
    """(counts, lists) of a block mask (bool, broadcastable to (B, H, query blocks, key blocks)) as the kernel's
    SPARSE reads them: for each query block, how many key blocks it attends to and those blocks, ascending, as
    int32 (1, H), (B, 1) or (B, H) x rows [x key blocks] (entries past a row's count unwritten). Each entry is 4 x
    the block's number + 3. Where tiles of 2 x block_q rows fit the kernel (block_q 64: 128-row tiles over NABLA's
    blocks), rows for each pair of query blocks follow, listing the union of the pair's blocks, their entries' bits
    0 and 1 saying whether the first and the second query block attend to it. With key padding, blocks starting at
    or past a batch row's last key are left out (then the lists are per batch row). tile_ids (int32, broadcastable
    like the mask: each block's tile of elements, ``TILE_MASK``, clamped to the ``tile_count`` tiles): each entry
    becomes three, the entry and the tiles of the first and the second query block in it (0, a whole block, where
    one does not attend); the entries with tile 0 in both come first (each part ascending), and counts holds two
    per row, those and all. One launch of ``_block_lists_kernel`` (``kernel``: as the caller launches it, wrapped
    for torch.library; None: this module's), planned like the attention's: no host reads, and a repeated call
    replays it."""
    import torch

    kernel = _block_lists_kernel if kernel is None else kernel
    inputs = [mask] + ([tile_ids] if tile_ids is not None else [])
    shape = torch.broadcast_shapes(*((1,) * (4 - t.dim()) + tuple(t.shape) for t in inputs))
    batch = max(shape[0], 1 if kv_lens is None else kv_lens.shape[0])
    heads, rows, cols = shape[1:]
    pairs = 2 * block_q <= _WIDEST_BLOCK_M
    total = rows + (rows + 1) // 2 if pairs else rows
    extra = (2,) if tile_ids is not None else ()
    counts = torch.empty(batch, heads, total, *extra, dtype=torch.int32, device=mask.device)
    lists = torch.empty(batch, heads, total, cols, *((3,) if extra else ()), dtype=torch.int32, device=mask.device)
    tensors = (mask, mask if tile_ids is None else tile_ids, mask if kv_lens is None else kv_lens, counts, lists)
    plan_key = None
    if plans.ENABLED and type(mask) is torch.Tensor:
        plan_key = (plans.unwrapped(kernel), block_k, tile_count, pairs, tile_ids is not None, kv_lens is not None,
                    *(plans.tensor_key(t) for t in tensors))
        if plans.run(plan_key, tensors):
            return counts, lists

    def strides(t):  # (of its (B, H, rows, key blocks) broadcast: 0 along the dims it spreads over)
        sizes, steps = (1,) * (4 - t.dim()) + tuple(t.shape), (0,) * (4 - t.dim()) + t.stride()
        return [0 if size == 1 else step for size, step in zip(sizes, steps)]

    args = [*tensors, *strides(mask), *strides(tensors[1]), *counts.stride()[:3], *lists.stride()[:3], rows, cols,
            block_k, tile_count]
    flags = dict(PAIRS=pairs, HAS_IDS=tile_ids is not None, HAS_LENS=kv_lens is not None,
                 BLOCK_C=min(max(triton.next_power_of_2(cols), 16), 1024), num_warps=4,
                 **plans.launch_options(kernel))
    plans.launch(kernel, (total, heads, batch), args, flags, plan_key, len(tensors), writes=(3, 4))
    return counts, lists


def _mask_strides(attn_mask) -> list:
    """The mask's batch, head, query and key strides as the kernel takes them: 0 where a size-1 dimension (or one
    the mask lacks: it broadcasts like ``F.scaled_dot_product_attention``'s) serves every batch row, head or query.
    A query stride of 0 makes it a key mask (an expanded key mask too)."""
    if attn_mask is None:
        return [0, 0, 0, 0]
    lead = 4 - attn_mask.dim()
    sizes, strides = (1,) * lead + tuple(attn_mask.shape), (0,) * lead + attn_mask.stride()
    return [0 if size == 1 else stride for size, stride in zip(sizes, strides)]


def _row_align(element_size: int, strides) -> int:
    """The kernels' ROW_ALIGN: 16 bytes of elements (the widest load per thread) when every batch, head and token
    stride in ``strides`` (four per tensor, head dim last, which is not hinted) is a multiple of it, else 1."""
    align = 16 // element_size
    return align if all(st % align == 0 for i, st in enumerate(strides) if i % 4 != 3) else 1


#: tile the autotuner chose, per launch specialisation (see ``attention_forward``'s ``tuned``); also kept on disk
#: (``plans.store_choice``) under the specialisation, this file's digest, Triton's version and the GPU's name
_TUNED = {}


@functools.lru_cache(maxsize=None)
def _source_digest() -> str:
    """The sha256 of this file: the kernels, the candidate tiles and the pruner, so that an edit to any of them
    retires the choices kept on disk."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=None)
def _device_name(device) -> str:
    """What a tuned choice is kept for: the GPU's name and compute capability (the device type elsewhere)."""
    import torch

    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} sm_{major}{minor}"


def prologue_rows(heads_per_program: int) -> int:
    """Tokens per program of the QK prologue on a GPU: 16 rows x D elements over its heads, so that the tile, its RoPE
    partner, cos and sin stay in registers however many heads a program takes."""
    return max(1, 16 // heads_per_program)


def _rope_strides(cos, sin) -> list:
    """The prologue's table strides: token and dim of cos, of sin; then batch and head of cos, of sin (0 where one
    table serves every batch row or head: (rows, D) tables, or the size-1 dims of (B, rows, H, D) ones)."""
    rows, outer = [], []
    for t in (cos, sin):
        four = t.dim() == 4
        rows += [t.stride(1 if four else 0), t.stride(-1)]
        outer += [0 if not four or t.shape[i] == 1 else t.stride(i) for i in (0, 2)]
    return [int(x) for x in rows + outer]


def _preparer(kernel, bnhd, rope, rope_interleaved, norm_eps, emulate_bf16, heads_per_program=1, rope_dims=0,
              rope_sections=1):
    """``prepare(x, weight, pos_shift, out=None)`` -> a new q or k tensor (or ``out``, shaped like x) with the norm
    (when ``weight`` is given) and RoPE (when ``rope`` is given, rows from ``pos_shift`` on; over the first
    ``rope_dims`` channels, 0: all; by halves within ``rope_sections`` sections of them) applied,
    ``heads_per_program`` heads per program (a power of two dividing x's); when neither applies, x itself (or x
    copied into ``out``)."""
    import torch

    def prepare(x, weight, pos_shift, out=None):
        if (weight is None and rope is None) or x.numel() == 0:  # (nothing to do: an empty stream has no rows)
            return x if out is None else out.copy_(x)
        y = torch.empty_like(x) if out is None else out
        cos, sin = rope if rope is not None else (x, x)
        # the weights in their own dtype (a half-precision model's): the kernel widens them as it loads them
        tensors = (x, y, weight.contiguous() if weight is not None else x, cos, sin)
        plan_key = None
        if plans.ENABLED and type(x) is torch.Tensor:
            plan_key = (plans.unwrapped(kernel), bnhd, pos_shift, float(norm_eps), bool(rope_interleaved),
                        weight is not None, rope is not None, heads_per_program, rope_dims, rope_sections,
                        *(plans.tensor_key(t) for t in tensors))
            if plans.run(plan_key, tensors):
                return y
        (batch, heads, n, head_dim), sx = _dims(x, bnhd)
        _, sy = _dims(y, bnhd)
        block_da, block_db, split_d = head_dim_blocks(head_dim)
        rope_strides = _rope_strides(cos, sin) if rope is not None else [0] * 8
        block_m = prologue_rows(heads_per_program) if x.is_cuda else interpreter_blocks(n, 1)[0]
        flags = dict(HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_DA=block_da, BLOCK_DB=block_db, SPLIT_D=split_d,
                     HAS_NORM=weight is not None, HAS_ROPE=0 if rope is None else
                     HALF_TABLES.value if 2 * cos.shape[-1] == (rope_dims or head_dim) else 1,
                     INTERLEAVED=bool(rope_interleaved), EMULATE_BF16=emulate_bf16, HEADS=heads_per_program,
                     **({"ROT_DIM": rope_dims} if 0 < rope_dims < head_dim else {}),
                     **({"ROPE_SECTIONS": rope_sections} if rope_sections > 1 else {}),
                     ROW_ALIGN=_row_align(x.element_size(), sx + sy), num_warps=4, **plans.launch_options(kernel))
        args = [*tensors, *sx, *sy, *rope_strides, n, pos_shift, float(norm_eps)]
        plans.launch(kernel, (-(-n // block_m), heads // heads_per_program, batch), args, flags, plan_key,
                     len(tensors), writes=(1,))
        return y

    return prepare
