"""Neighborhood attention (``pydiff.neighborhood``): the tiled layout's block lists against the windows' mask, the
attention against a float64 reference (SDPA under the dense window mask), the op's checks of block lists."""

import math

import pytest
import torch
import torch.nn.functional as F

import pydiff
from pydiff.attention import attention
from pydiff.neighborhood import TILE_TOKENS, _tilings, _work, choose_tile, neighborhood_attention, neighborhood_layout
from pydiff.ops import native
from pydiff.reference.attention import (neighborhood_mask_mod, neighborhood_mask_reference, rms_norm_reference,
                                       rope_reference)

CPU = torch.device("cpu")
needs_interpreter = pytest.mark.skipif(native.triton_why_not(CPU) is not None,
                                       reason=f"Triton on CPU: {native.triton_why_not(CPU)}")
BACKENDS = ["torch", pytest.param("triton", marks=needs_interpreter)]

#: (grid, kernel_size): odd sizes, even windows, windows as wide as their grid, 1-, 2- and 3-D
GRIDS = [((5, 9, 13), (3, 5, 7)), ((300,), (17,)), ((11, 10), (7, 3)), ((3, 17, 20), (3, 7, 7)), ((7,), (7,)),
         ((2, 6, 33), (2, 4, 6)), ((1, 1, 1), (1, 1, 1))]


def layout_mask(layout) -> torch.Tensor:
    """The elements the layout's block lists keep, over its slots: (slots, slots) bool, each listed block's tile
    placed where it lies (entries past a row's count ignored); also checks each entry's form."""
    blocks = layout.blocks
    counts, lists, tiles = blocks.counts[0, 0], blocks.lists[0, 0], blocks.tiles
    block_q, block_k = blocks.block_size
    mask = torch.zeros(layout.tokens, layout.tokens, dtype=torch.bool)
    for row in range(counts.shape[0]):
        whole, total = counts[row].tolist()
        assert 0 <= whole <= total <= lists.shape[1]
        for index, (entry, tile, same) in enumerate(lists[row, :total].tolist()):
            assert entry & 3 == 3 and tile == same and (tile == 0) == (index < whole) and 0 <= tile < len(tiles)
            column = entry >> 2
            mask[row * block_q:(row + 1) * block_q, column * block_k:(column + 1) * block_k] |= tiles[tile]
    return mask


@pytest.mark.parametrize("grid,kernel_size", GRIDS, ids=[f"{g}-{k}" for g, k in GRIDS])
def test_layout_lists_keep_the_windows(grid, kernel_size):
    """Over every tiling: the listed blocks' tiles, in grid order, are the windows' mask; the padding slots keep
    nothing and are kept by none; order and slots are inverse; tile 0 is a whole block, and no tile is empty."""
    reference = neighborhood_mask_reference(grid, kernel_size)
    tilings = list(_tilings(len(grid)))
    for tile in tilings if len(tilings) <= 12 else tilings[::5] + [choose_tile(grid, kernel_size)]:
        layout = neighborhood_layout(grid, kernel_size, tile=tile)
        mask = layout_mask(layout)
        assert torch.equal(mask[layout.slots][:, layout.slots], reference), tile
        padding = torch.ones(layout.tokens, dtype=torch.bool)
        padding[layout.slots] = False
        assert not mask[padding].any() and not mask[:, padding].any()
        assert torch.equal(layout.order[layout.slots], torch.arange(math.prod(grid)))
        tiles = layout.blocks.tiles
        assert tiles[0].all() and tiles[1:].flatten(1).any(1).all()
        assert layout.tokens % 128 == 0 and layout.tokens >= math.prod(grid)


def test_layout_lists_keep_the_windows_random():
    """Random grids (1 to 3 dims, sizes 1 to 40), windows (1 to the grid's size, odd and even) and tilings: the
    lists keep exactly the windows' mask."""
    gen = torch.Generator().manual_seed(14)
    for _ in range(24):
        dims = int(torch.randint(1, 4, (), generator=gen))
        grid = tuple(int(n) for n in torch.randint(1, 41 if dims < 3 else 13, (dims,), generator=gen))
        kernel_size = tuple(int(torch.randint(1, n + 1, (), generator=gen)) for n in grid)
        tilings = list(_tilings(dims))
        tile = tilings[int(torch.randint(0, len(tilings), (), generator=gen))]
        layout = neighborhood_layout(grid, kernel_size, tile=tile)
        mask = layout_mask(layout)
        assert torch.equal(mask[layout.slots][:, layout.slots], neighborhood_mask_reference(grid, kernel_size)), \
            (grid, kernel_size, tile)


def test_window_mask_mod_under_flex():
    """``neighborhood_mask_mod`` as flex attention evaluates it (``create_mask``: vmapped over scalar indices, as
    the GPU benchmark's BlockMask is built) gives the reference's mask, and, worked out per token, LTX-2's windows:
    token (1, 0, 4) of a 3 x 2 x 5 grid with 3 x 1 x 3 windows keeps frames 0-2, its own row, columns 2-4."""
    from torch.nn.attention.flex_attention import create_mask

    grid, kernel_size = (3, 2, 5), (3, 1, 3)
    mask = create_mask(neighborhood_mask_mod(grid, kernel_size), None, None, 30, 30, device="cpu")[0, 0]
    assert torch.equal(mask, neighborhood_mask_reference(grid, kernel_size))
    kept = {(int(j) // 10, int(j) // 5 % 2, int(j) % 5) for j in mask[1 * 10 + 0 * 5 + 4].nonzero()}
    assert kept == {(t, 0, w) for t in range(3) for w in (2, 3, 4)}


def test_choose_tile_makes_least_work():
    """The chosen tiling lists the fewest blocks of every tiling (each built), as its per-dimension count says."""
    grid, kernel_size = (6, 13, 21), (3, 5, 7)
    listed = {}
    for tile in _tilings(3):
        layout = neighborhood_layout(grid, kernel_size, tile=tile)
        listed[tile] = int(layout.blocks.counts[..., 1].sum())
        extents = [t * (2 if i == tile[1] else 1) for i, t in enumerate(tile[0])]
        assert listed[tile] == math.prod(_work(n, w, e, t) for n, w, e, t in zip(grid, kernel_size, extents, tile[0]))
    assert listed[choose_tile(grid, kernel_size)] == min(listed.values())


def test_layout_at_a_production_grid_has_no_dense_structure():
    """LTX-2's decoder at 121 frames of 512 x 768 (stage 4's grid, 72 x 64 x 96, windows 3 x 5 x 5): the lists and
    tiles take well under a dense block mask's bytes (one per query block and key block), made in one build."""
    layout = neighborhood_layout((72, 64, 96), (3, 5, 5))
    blocks = layout.blocks
    made = sum(t.numel() * t.element_size() for t in (blocks.counts, blocks.lists, blocks.tiles))
    dense = (layout.tokens // blocks.block_size[0]) * (layout.tokens // blocks.block_size[1])
    assert made < dense / 2
    assert int(blocks.counts[..., 1].max()) * TILE_TOKENS < 0.01 * layout.tokens


def _reference(q, k, v, kernel_size, scale=None, rope=None, norms=None, eps=1e-6):
    """Float64 neighborhood attention: the norm and RoPE, then SDPA under the dense window mask."""
    grid = q.shape[1:-2]
    q, k, v = (t.flatten(1, -3).transpose(1, 2).double() for t in (q, k, v))
    if norms is not None:
        q, k = (rms_norm_reference(t, w.double(), eps) for t, w in zip((q, k), norms))
    if rope is not None:
        q, k = (rope_reference(t, *(r.double() for r in rope), True) for t in (q, k))
    k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], 1) for t in (k, v))
    scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    out = torch.softmax(scores.masked_fill(~neighborhood_mask_reference(grid, kernel_size), -math.inf), -1) @ v
    return out.transpose(1, 2).reshape(q.shape[0], *grid, q.shape[1], q.shape[-1])


def _inputs(grid, heads, kv_heads, dim, dtype, seed, strided=False):
    gen = torch.Generator().manual_seed(seed)
    if strided:  # (q, k, v as views of one fused projection: strided along the heads)
        fused = torch.randn(2, *grid, heads + 2 * kv_heads, dim, generator=gen).to(dtype)
        return fused[..., :heads, :], fused[..., heads:heads + kv_heads, :], fused[..., heads + kv_heads:, :]
    return (torch.randn(2, *grid, h, dim, generator=gen).to(dtype) for h in (heads, kv_heads, kv_heads))


CASES = [((5, 9, 13), (3, 5, 7), 2, 1, 32, False), ((300,), (17,), 2, 2, 40, True), ((11, 10), (7, 3), 3, 3, 16, False),
         ((3, 6, 9), (3, 3, 3), 4, 2, 24, True)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("grid,kernel_size,heads,kv_heads,dim,strided", CASES,
                         ids=[f"{c[0]}-{c[1]}-gqa{c[2] // c[3]}" for c in CASES])
def test_neighborhood_attention_matches_reference(backend, dtype, grid, kernel_size, heads, kv_heads, dim, strided):
    """Random inputs, odd grids, grouped heads, strided views: float32 within 1e-5 of float64, float16 and bfloat16
    within twice PyTorch's own error in that precision (SDPA under the dense mask) plus 1e-3."""
    q, k, v = _inputs(grid, heads, kv_heads, dim, dtype, seed=len(grid) * 7 + dim)
    ref = _reference(q, k, v, kernel_size)
    with pydiff.use_backend(backend):
        out = neighborhood_attention(q, k, v, kernel_size)
    assert out.shape == q.shape and out.dtype == dtype
    err = (out.double() - ref).abs().max().item()
    if dtype == torch.float32:
        assert err <= 1e-5 * ref.abs().max().item(), err
    else:
        mask = neighborhood_mask_reference(grid, kernel_size)
        qq, kk, vv = (t.flatten(1, -3).transpose(1, 2) for t in (q, k, v))
        kk, vv = (t.repeat_interleave(heads // kv_heads, 1) for t in (kk, vv))
        torch_out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask).transpose(1, 2).reshape(q.shape)
        assert err <= 2 * (torch_out.double() - ref).abs().max().item() + 1e-3, err


@pytest.mark.parametrize("backend", BACKENDS)
def test_neighborhood_attention_with_norms_and_rope(backend):
    """The QK RMSNorms and interleaved RoPE (one angle per pair, a row per grid token) in the prologue, a scale."""
    grid, kernel_size, dim = (4, 6, 7), (3, 3, 5), 32
    q, k, v = _inputs(grid, 2, 2, dim, torch.float32, seed=3, strided=True)
    gen = torch.Generator().manual_seed(4)
    angles = torch.rand(math.prod(grid), dim // 2, generator=gen) * 6
    # (one pair of tables for both: in about one run of three under pytest, torch 2.13's float32 cos on CPU gave
    # this (168, 16) table 1.5e-4 off on one call and exact on the next)
    tables = (angles.cos(), angles.sin())
    norms = tuple(torch.rand(dim, generator=gen) + 0.5 for _ in range(2))
    ref = _reference(q, k, v, kernel_size, scale=0.3, rope=tables, norms=norms)
    with pydiff.use_backend(backend):
        out = neighborhood_attention(q, k, v, kernel_size, 0.3, rope=tables, q_norm_weight=norms[0],
                                     k_norm_weight=norms[1])
    assert (out.double() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_neighborhood_errors():
    q = torch.randn(1, 4, 5, 6, 2, 16)
    with pytest.raises(ValueError, match=r"kernel_size must be 3 sizes, each >= 1 and at most its grid size"):
        neighborhood_attention(q, q, q, (3, 7, 3))
    with pytest.raises(ValueError, match=r"kernel_size must be 3 sizes"):
        neighborhood_attention(q, q, q, (3, 3))
    with pytest.raises(ValueError, match=r"kernel_size must be 3 sizes, each >= 1 and at most its grid size"):
        neighborhood_attention(q, q, q, 5)  # (an int: that window along every dim, here wider than the grid's 4)
    torch.testing.assert_close(neighborhood_attention(q, q, q, 3), neighborhood_attention(q, q, q, (3, 3, 3)))
    with pytest.raises(ValueError, match=r"must have q's grid"):
        neighborhood_attention(q, q[:, :3], q, (3, 3, 3))
    with pytest.raises(ValueError, match=r"must be \(B, \*grid, H, D\)"):
        neighborhood_attention(q[0, 0, 0], q[0, 0, 0], q[0, 0, 0], (3,))
    with pytest.raises(ValueError, match=r"grid must be 1 to 3 sizes"):
        neighborhood_layout((2, 2, 2, 2), (1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"tile must be \(3 sizes of product 64"):
        neighborhood_layout((4, 5, 6), (3, 3, 3), tile=((4, 4, 2), 0))
    with pytest.raises(ValueError, match=r"rope must be \(cos, sin\) tables of 120 rows"):
        neighborhood_attention(q, q, q, (3, 3, 3), rope=(torch.ones(7, 8), torch.ones(7, 8)))


def _lists_call(layout, q, **changes):
    """``torch.ops.pydiff.attention``'s arguments for a call over ``layout``'s lists (bnhd q, k, v), some replaced."""
    blocks = layout.blocks
    args = dict(block_size_q=blocks.block_size[0], block_size_k=blocks.block_size[1], block_tiles=blocks.tiles,
                block_counts=blocks.counts, block_lists=blocks.lists)
    args.update(changes)
    return (q, q, q, 0.25, "bnhd", None, None, None, 0, None, None, None, None, None, 1.0, None, None, None, True,
            None, None, None, None, 1e-6, args.pop("attn_mask", None)), args


def test_block_lists_checks():
    """Bad block lists are errors naming what was expected, before anything runs."""
    layout = neighborhood_layout((4, 5, 6), (3, 3, 3))
    q = layout.gather(torch.randn(1, 120, 2, 16))
    blocks = layout.blocks
    with pytest.raises(TypeError, match=r"block_lists must be a pydiff.attention.BlockLists"):
        attention(q, q, q, layout="bnhd", block_lists=(blocks.counts, blocks.lists))
    with pytest.raises(ValueError, match=r"block_lists cannot be combined with block_mask"):
        attention(q, q, q, layout="bnhd", block_lists=blocks, causal=True)
    op = torch.ops.pydiff.attention.default
    bad = [
        (dict(block_counts=blocks.counts[..., :1]), r"block_lists' counts must be an int32 tensor of 4 dims"),
        (dict(block_lists=blocks.lists.long()), r"block_lists' lists must be an int32 tensor of 5 dims"),
        (dict(block_lists=blocks.lists[:, :, :1]), r"\(1, 1, \d+ query blocks, \.\.\., 3\)"),
        (dict(block_lists=blocks.lists.expand(2, 1, -1, -1, -1)), r"the same for every batch row and head"),
        (dict(block_lists=blocks.lists.transpose(-1, -2).contiguous().transpose(-1, -2)),
         r"block_lists' entries must be contiguous"),
        (dict(block_tiles=blocks.tiles[:, :64]), r"with block_lists, block_tiles must be \(None, tiles\)"),
        (dict(block_tiles=None), r"with block_lists, block_tiles must be \(None, tiles\)"),
        (dict(block_tile_ids=torch.zeros(1, dtype=torch.int32)), r"with block_lists, block_tiles must be \(None"),
        (dict(block_size_q=64), r"block_lists need query blocks of a multiple of 128"),
        (dict(block_mask=torch.ones(1, 1, 1, 1, dtype=torch.bool)), r"in place of block_mask, not with it"),
        (dict(attn_mask=torch.ones(256, 256, dtype=torch.bool)), r"block_tiles cannot be combined with attn_mask"),
    ]
    for change, message in bad:
        args, kwargs = _lists_call(layout, q, **change)
        with pytest.raises((TypeError, ValueError), match=message):
            op(*args, **kwargs)
    args, kwargs = _lists_call(layout, q)
    with pytest.raises(ValueError, match=r"block_lists cannot be combined with kv_lens"):
        op(*args[:5], torch.tensor([100], dtype=torch.int32), *args[6:], **kwargs)
    with pytest.raises(ValueError, match=r"block_lists cannot be combined with joint="):
        op(*args[:9], q, q, q, *args[12:], **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_lists_opcheck_and_compile(backend):
    """opcheck (schema, fake) of a call with block lists, and ``neighborhood_attention`` under torch.compile
    (fullgraph: the layout made before, its lists and tiles tensors of the graph) equal to eager."""
    layout = neighborhood_layout((3, 6, 9), (3, 3, 5))
    gen = torch.Generator().manual_seed(12)
    q, k, v = (layout.gather(torch.randn(1, 162, 2, 16, generator=gen)) for _ in range(3))
    args, kwargs = _lists_call(layout, q)
    with pydiff.use_backend(backend):
        torch.library.opcheck(torch.ops.pydiff.attention.default, (q, k, v, *args[3:]), kwargs)
        x = torch.randn(1, 3, 6, 9, 2, 16, generator=gen)
        eager = neighborhood_attention(x * 2, x, x, (3, 3, 5))
        torch._dynamo.reset()
        compiled = torch.compile(lambda x: neighborhood_attention(x * 2, x, x, (3, 3, 5), layout=layout),
                                 fullgraph=True, backend="aot_eager")(x)
        torch.testing.assert_close(compiled, eager)
        # without a layout: made by the function torch.compile leaves to run as it is
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(lambda x: neighborhood_attention(x * 2, x, x, (3, 3, 5)),
                                                 backend="aot_eager")(x), eager)
    with pytest.raises(ValueError, match=r"layout is for grid \(3, 6, 9\) and kernel_size \(3, 3, 5\), not"):
        neighborhood_attention(x, x, x, (3, 3, 3), layout=layout)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("grid,kernel_size,heads", [((6, 32, 48), (3, 7, 7), 4), ((9, 24, 24), (9, 11, 11), 2)],
                         ids=["stage-2", "denoising"])
def test_gpu_neighborhood_attention(cuda_device, dtype, grid, kernel_size, heads):
    """On the GPU (the tuned kernel over the block lists): grids and windows of LTX-2's decoder stages (head dim 64),
    within twice PyTorch's own error in that precision (SDPA under the dense window mask) plus 1e-3 of the
    float64 reference."""
    gen = torch.Generator(device=cuda_device).manual_seed(13)
    q, k, v = (torch.randn(1, *grid, heads, 64, generator=gen, device=cuda_device).to(dtype) for _ in range(3))
    out = neighborhood_attention(q, k, v, kernel_size)
    mask = neighborhood_mask_reference(grid, kernel_size, cuda_device)
    flat = [t.flatten(1, -3).transpose(1, 2) for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*(t.double() for t in flat), attn_mask=mask).transpose(1, 2)
    torch_out = F.scaled_dot_product_attention(*flat, attn_mask=mask).transpose(1, 2)
    err = (out.flatten(1, -3).double() - ref).abs().max().item()
    assert err <= 2 * (torch_out.double() - ref).abs().max().item() + 1e-3, err
