"""``pydiff.neighborhood``: neighborhood attention (NATTEN's na1d / na2d / na3d) as block-sparse attention.

    out = neighborhood_attention(q, k, v, kernel_size=(3, 7, 7))    # q, k, v: (B, T, H, W, heads, D)

Each token of a grid (L; H x W; T x H x W) attends to the ``kernel_size`` window around it, centred where it fits
and shifted inward at the borders so that it always holds kernel_size tokens (NATTEN's windows, and LTX-2's
diffusion decoder's). The tokens are laid out tile by tile (``NeighborhoodLayout``): each key block of 64 tokens is
a tile of the grid (4 x 4 x 4, 1 x 8 x 8, ...: whichever makes the least work for this grid and window), each
query block of 128 two neighbouring ones, so that a query block's windows fall in few key blocks. The kernel reads
only those (``pydiff.attention.BlockLists``, made here directly: no dense mask, nor a dense block mask, whose
N^2 / 8192 entries alone take gigabytes at 3M tokens), the partial ones through tiles of elements; a tile is the
product of one pattern per grid dimension, so the distinct tiles are few (made once per grid, window and device).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from .attention import LIST_BLOCK_Q, BlockLists, attention

#: tokens per key block (a tile of the grid); a query block holds two neighbouring tiles (LIST_BLOCK_Q tokens)
TILE_TOKENS = 64


@dataclass(frozen=True)
class NeighborhoodLayout:
    """Neighborhood attention over one grid and window, tile by tile.

    grid, kernel_size: the grid's sizes and the window's (each <= its grid size); tile: the key block's tile of the
    grid (its sizes' product TILE_TOKENS), a query block two of them along dim ``split``; order (tokens,) int64: the
    grid token (row-major) each slot of the tiled layout holds (padding slots, where the grid is not a whole number
    of query tiles, hold token 0 and attend to nothing); slots (N,) int64: each grid token's slot; blocks: the
    pattern for ``attention(..., block_lists=)`` over the tiled layout."""

    grid: Tuple[int, ...]
    kernel_size: Tuple[int, ...]
    tile: Tuple[int, ...]
    split: int
    order: torch.Tensor
    slots: torch.Tensor
    blocks: BlockLists

    @property
    def tokens(self) -> int:
        """Slots of the tiled layout (the grid's tokens and the padding)."""
        return self.order.shape[0]

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """x with its grid tokens (row-major along ``dim``) in the tiled layout's slots."""
        return x.index_select(dim, self.order)

    def scatter(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """x in the tiled layout's slots (along ``dim``) back in grid order, the padding dropped."""
        return x.index_select(dim, self.slots)


def _windows(n: int, kernel: int, extent_q: int, extent_k: int):
    """One grid dimension of n positions in query tiles of extent_q and key tiles of extent_k (extent_q a multiple
    of it), as many query tiles as cover n, the last ones past n where n is not a whole number of them: for each
    query tile, the key tiles its queries' windows reach (first[q] + j, j < reach; those past the query tiles' end
    or reaching nothing are not ``valid``), and which elements: (tiles_q, reach, extent_q, extent_k) bool, a query
    position keeping a key position where the key lies in its window (a window of ``kernel`` positions centred on
    it, shifted inward at the borders); positions past n keep nothing and are kept by none."""
    tiles_q = -(-n // extent_q)
    tiles_k = tiles_q * extent_q // extent_k
    queries = torch.arange(tiles_q * extent_q).view(tiles_q, extent_q)
    start = (queries - kernel // 2).clamp(0, n - kernel)
    last = torch.minimum(start + kernel - 1, torch.tensor(n - 1))
    first = start[:, 0] // extent_k
    reach = int((last[:, -1] // extent_k - first).max()) + 1
    tile = first[:, None] + torch.arange(reach)
    keys = tile[:, :, None] * extent_k + torch.arange(extent_k)                     # (tiles_q, reach, extent_k)
    kept = (keys[:, :, None, :] >= start[:, None, :, None]) & (keys[:, :, None, :] <= last[:, None, :, None]) & \
        (queries < n)[:, None, :, None]
    valid = (tile < tiles_k) & kept.flatten(2).any(2)
    return tile, valid, kept


@functools.lru_cache(maxsize=256)
def _work(n: int, kernel: int, extent_q: int, extent_k: int) -> int:
    """(query tile, key tile) pairs of one dimension that keep anything: a layout's listed blocks are their product
    over the dimensions."""
    return int(_windows(n, kernel, extent_q, extent_k)[1].sum())


def _tilings(dims: int):
    """Every tile of TILE_TOKENS tokens in ``dims`` dimensions (sizes powers of two) and each dim a query block may
    double it along."""
    exponent = int(math.log2(TILE_TOKENS))
    for sizes in itertools.product(range(exponent + 1), repeat=dims):
        if sum(sizes) == exponent:
            for split in range(dims):
                yield tuple(2 ** s for s in sizes), split


def choose_tile(grid: Sequence[int], kernel_size: Sequence[int]) -> Tuple[Tuple[int, ...], int]:
    """(tile, split) for ``neighborhood_layout``: the tiling whose listed key blocks are fewest (each is a
    LIST_BLOCK_Q x TILE_TOKENS tile of work), then whose padding is least."""
    def cost(candidate):
        tile, split = candidate
        extents = [t * (2 if i == split else 1) for i, t in enumerate(tile)]
        blocks = math.prod(_work(n, w, e, t) for n, w, e, t in zip(grid, kernel_size, extents, tile))
        return blocks, math.prod(-(-n // e) * e for n, e in zip(grid, extents))
    return min(_tilings(len(grid)), key=cost)


def _check_grid(grid, kernel_size) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(grid, kernel_size) as tuples, checked; an int kernel_size is that window along every dim."""
    grid = tuple(grid)
    kernel_size = (kernel_size,) * len(grid) if isinstance(kernel_size, int) else tuple(kernel_size)
    if not 1 <= len(grid) <= 3 or any(not isinstance(n, int) or n < 1 for n in grid):
        raise ValueError(f"grid must be 1 to 3 sizes >= 1 (L; H, W; T, H, W), got {grid}")
    if len(kernel_size) != len(grid) or any(not isinstance(w, int) or not 1 <= w <= n
                                            for w, n in zip(kernel_size, grid)):
        raise ValueError(f"kernel_size must be {len(grid)} sizes, each >= 1 and at most its grid size {grid} (the "
                         f"window always holds kernel_size tokens), got {kernel_size}")
    return grid, kernel_size


@torch.compiler.disable  # (host work on sizes, cached: torch.compile calls it as it is, a graph break)
def neighborhood_layout(grid: Sequence[int], kernel_size: Sequence[int], device=None,
                        tile: Optional[Tuple[Sequence[int], int]] = None) -> NeighborhoodLayout:
    """The tiled layout and block pattern of neighborhood attention over ``grid`` with windows of ``kernel_size``
    (``NeighborhoodLayout``), on ``device``; tile: (tile sizes, split dim) instead of ``choose_tile``'s. Made once
    per grid, window, tile and device (cached: one host-side build, then no host work per call; made before a
    compiled or captured region, the layout keeps it whole: ``neighborhood_attention(..., layout=)``)."""
    grid, kernel_size = _check_grid(grid, kernel_size)
    if tile is None:
        tile = choose_tile(grid, kernel_size)
    sizes, split = tuple(int(t) for t in tile[0]), int(tile[1])
    if len(sizes) != len(grid) or math.prod(sizes) != TILE_TOKENS or not 0 <= split < len(grid):
        raise ValueError(f"tile must be ({len(grid)} sizes of product {TILE_TOKENS}, split dim < {len(grid)}), got "
                         f"{tile}")
    return _layout(grid, kernel_size, sizes, split, torch.device("cpu" if device is None else device))


@functools.lru_cache(maxsize=16)
def _layout(grid, kernel_size, tile, split, device) -> NeighborhoodLayout:
    dims = len(grid)
    extents = tuple(t * (2 if i == split else 1) for i, t in enumerate(tile))
    tiles_q = tuple(-(-n // e) for n, e in zip(grid, extents))
    # the slots: query tiles row-major; in each, its two key tiles; in each, row-major
    local = torch.tensor(list(itertools.product(*(range(t) for t in tile))))               # (64, dims)
    halves = torch.zeros(2, dims, dtype=torch.long)
    halves[1, split] = tile[split]
    within = (halves[:, None, :] + local[None]).flatten(0, 1)                               # (128, dims)
    corners = torch.tensor(list(itertools.product(*(range(q) for q in tiles_q)))) * torch.tensor(extents)
    coords = (corners[:, None, :] + within[None]).flatten(0, 1)                             # (slots, dims)
    inside = (coords < torch.tensor(grid)).all(1)
    token = (coords * torch.tensor([math.prod(grid[i + 1:]) for i in range(dims)])).sum(1)
    order = torch.where(inside, token, 0)
    slots = torch.empty(math.prod(grid), dtype=torch.long)
    slots[token[inside]] = torch.nonzero(inside)[:, 0]

    # per dimension: the key tiles each query tile reaches, which keep anything, and their element patterns
    tile_index, valid, full, pattern, patterns = [], [], [], [], []
    for i in range(dims):
        reached, kept_any, kept = _windows(grid[i], kernel_size[i], extents[i], tile[i])
        unique, ids = torch.unique(kept.flatten(2).flatten(0, 1), dim=0, return_inverse=True)
        unique = unique.view(-1, extents[i], tile[i])
        shape = [1] * (2 * dims)
        shape[i], shape[dims + i] = reached.shape
        tile_index.append(reached.view(shape))
        valid.append(kept_any.view(shape))
        full.append(unique.flatten(1).all(1)[ids].view(shape))
        pattern.append(ids.view(shape))
        patterns.append(unique)
    listed = functools.reduce(torch.logical_and, valid)
    whole = functools.reduce(torch.logical_and, full)
    # a key tile's block: its query tile's slot (row-major over the query tiles) times two, plus its half
    block = 0
    for i in range(dims):
        block = block * tiles_q[i] + (tile_index[i] // 2 if i == split else tile_index[i])
    block = 2 * block + tile_index[split] % 2
    combo = 0
    for i in range(dims):
        combo = combo * len(patterns[i]) + pattern[i]
    # (each of these spans every axis: the query tiles' and the reach's of every dimension)
    rows, reach = math.prod(tiles_q), math.prod(listed.shape[dims:])
    listed, whole, block, combo = (t.reshape(rows, reach) for t in (listed, whole, block, combo))
    # the partial blocks' tiles: one per distinct combination of the dimensions' patterns
    partial = listed & ~whole
    used, tile_of = torch.unique(combo[partial], return_inverse=True)
    ids = torch.zeros(rows, reach, dtype=torch.long)
    ids[partial] = tile_of + 1
    tiles = torch.ones(len(used) + 1, 2 * TILE_TOKENS, TILE_TOKENS, dtype=torch.bool)
    rest = used.clone()
    for i in reversed(range(dims)):
        u = rest % len(patterns[i])
        rest //= len(patterns[i])
        tiles[1:] &= patterns[i][u][:, within[:, i]][:, :, local[:, i]]
    # each row: the whole blocks, then the partial ones
    rank = torch.where(listed, torch.where(whole, 0, 1), 2)
    ordered = torch.sort(rank, dim=1, stable=True).indices
    width = max(int(listed.sum(1).max()), 1)
    ordered = ordered[:, :width]
    tile_ids = ids.gather(1, ordered)
    entries = torch.stack([4 * block.gather(1, ordered) + 3, tile_ids, tile_ids], -1)
    entries = torch.where(listed.gather(1, ordered)[..., None], entries, 0).to(torch.int32)
    counts = torch.stack([(listed & whole).sum(1), listed.sum(1)], -1).to(torch.int32)
    block_lists = BlockLists(counts.view(1, 1, rows, 2).to(device), entries.view(1, 1, rows, width, 3).to(device),
                             tiles.to(device), (LIST_BLOCK_Q, TILE_TOKENS))
    return NeighborhoodLayout(grid, kernel_size, tile, split, order.to(device), slots.to(device), block_lists)


def neighborhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: Sequence[int],
                           scale: Optional[float] = None, *, rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                           layout: Optional[NeighborhoodLayout] = None, **kwargs) -> torch.Tensor:
    """Neighborhood attention (NATTEN's na1d / na2d / na3d, non-causal, no dilation): q, k, v (B, *grid, H, D), grid 1
    to 3 sizes (k, v may have fewer heads: grouped-query), each query attending to the ``kernel_size`` window around it
    (one size per grid dim, or an int for all; ``neighborhood_layout``). ``rope``: (cos, sin) tables with a row per grid
    token (row-major), as ``attention`` takes them; other keywords (``q_norm_weight``, ``k_norm_weight``, ``norm_eps``,
    ``rope_interleaved``, ``rope_dims``, ...) pass to ``attention``. ``layout``: the grid's layout, made before
    (``neighborhood_layout``; else made here, a graph break under torch.compile). Returns (B, *grid, H, D). The tokens
    are gathered into the tiled layout (one pass per tensor) and the output scattered back: callers that project the
    tokens themselves gather before their projections instead (``NeighborhoodLayout.gather``), once for q, k and v."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or not 4 <= t.dim() <= 6:
            raise ValueError(f"{name} must be (B, *grid, H, D) with a grid of 1 to 3 sizes, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    grid = tuple(q.shape[1:-2])
    if tuple(k.shape[1:-2]) != grid or tuple(v.shape[1:-2]) != grid:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have q's grid {grid} (q {tuple(q.shape)})")
    if layout is None:
        layout = neighborhood_layout(grid, kernel_size, q.device)
    elif (layout.grid, layout.kernel_size) != _check_grid(grid, kernel_size):
        raise ValueError(f"layout is for grid {layout.grid} and kernel_size {layout.kernel_size}, not q's grid {grid} "
                         f"and kernel_size {kernel_size}")
    flat = [layout.gather(t.flatten(1, -3)) for t in (q, k, v)]
    if rope is not None:
        if not isinstance(rope, (tuple, list)) or len(rope) != 2 or \
                any(not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != layout.slots.shape[0]
                    for t in rope):
            raise ValueError(f"rope must be (cos, sin) tables of {layout.slots.shape[0]} rows (one per grid token), "
                             f"got {[tuple(t.shape) if isinstance(t, torch.Tensor) else t for t in rope]}")
        kwargs["rope"] = tuple(layout.gather(t, 0) for t in rope)
    out = attention(*flat, scale, layout="bnhd", block_lists=layout.blocks, **kwargs)
    return layout.scatter(out).view(q.shape)


__all__ = ["NeighborhoodLayout", "TILE_TOKENS", "choose_tile", "neighborhood_attention", "neighborhood_layout"]
