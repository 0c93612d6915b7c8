"""A small class-conditional Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers", arXiv:2212.09748): patch embedding, adaLN-Zero blocks, optional 2D rotary embeddings."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from pydiff.attention import attention as pydiff_attention
from pydiff.reference.attention import rope_reference

from .config import require_positive_ints


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Architecture of a DiT; `num_classes` is the number of real classes, label `num_classes` is the null class."""

    sample_size: int = 16
    in_channels: int = 1
    patch_size: int = 2
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10
    rope: bool = False
    frequency_embedding_size: int = 256
    #: a guidance-scale input (as FLUX.1-dev's): `model(x, t, y=labels, guidance=w)`, for guidance-distilled students
    guidance_embed: bool = False

    def __post_init__(self):
        require_positive_ints(self, ("sample_size", "in_channels", "patch_size", "width", "depth", "num_heads",
                                     "num_classes", "frequency_embedding_size"))
        if self.sample_size % self.patch_size:
            raise ValueError(f"DiTConfig.sample_size ({self.sample_size}) must be a multiple of patch_size "
                             f"({self.patch_size})")
        if self.width % self.num_heads:
            raise ValueError(f"DiTConfig.width ({self.width}) must be a multiple of num_heads ({self.num_heads})")
        head_dim = self.width // self.num_heads
        if self.rope and head_dim % 4:
            raise ValueError(f"DiTConfig.rope needs a head dim divisible by 4 (two axes x cos/sin pairs), "
                             f"got {head_dim}")
        if self.width % 4:
            raise ValueError(f"DiTConfig.width must be divisible by 4 for the 2D sin-cos embedding, got {self.width}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"DiTConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Non-causal attention on (B, H, N, D), with interleaved rotary tables `rope` applied to q and k:
    `pydiff.attention` (RoPE fused) for inference, torch SDPA when training or in float64 (the reference)."""
    # pydiff.attention is an inference kernel: no backward, and fp16/bf16/fp32 only.
    if q.dtype == torch.float64 or (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad
                                                                 or v.requires_grad)):
        if rope is not None:
            q, k = (rope_reference(x, *rope, interleaved=True) for x in (q, k))
        return F.scaled_dot_product_attention(q, k, v)
    if rope is None:
        return pydiff_attention(q, k, v)
    return pydiff_attention(q, k, v, rope=rope, rope_interleaved=True)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) of (possibly fractional) timesteps, as in DDPM/DiT: [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding (grid*grid, dim), row-major tokens: half the channels per axis."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, rows.flatten()), _sincos_1d(dim // 2, cols.flatten())], dim=1)
    return emb.float()


def rope_2d_tables(head_dim: int, grid: int, theta: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial 2D rotary tables (Su et al. 2021, arXiv:2104.09864, per axis as in Flux): cos, sin of shape
    (grid*grid, head_dim) for row-major tokens, interleaved pairs (2i, 2i+1); the first half of the pairs rotates
    with the token's row, the second half with its column."""
    quarter = head_dim // 4
    # theta 100 rather than 10000: positions only reach grid-1 (a handful), so low frequencies would be wasted.
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    angles = torch.cat([rows.flatten().double()[:, None] * freqs, cols.flatten().double()[:, None] * freqs], dim=1)
    angles = angles.repeat_interleave(2, dim=1)  # one value per element of each (2i, 2i+1) pair
    return angles.cos().float(), angles.sin().float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class SelfAttention(nn.Module):
    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, rope)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning: the modulation is zero-initialised, so the block starts
    as the identity."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x, c, rope):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN(c).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a), rope)
        return x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class DiT(nn.Module):
    """Class-conditional DiT predicting epsilon: `model(x, t, y=labels)`.

    x: (B, in_channels, sample_size, sample_size); t: diffusers-style train timesteps 0..999 as a scalar or (B,)
    tensor (fractional allowed); y: int64 (B,) labels, `num_classes` (or y=None) being the null class used for
    classifier-free guidance; guidance: the guidance scale as a float or (B,) tensor, required exactly when
    ``config.guidance_embed`` (embedded like a timestep, x1000 as FLUX.1-dev does, and added to the conditioning;
    its last layer starts at zero, so a model made from one without it starts equal to it). Returns the epsilon
    prediction, same shape and dtype as x.
    `scheduler_config` is the diffusers-format noise-schedule config the model was trained with.
    """

    def __init__(self, config: DiTConfig | None = None, scheduler_config: dict | None = None):
        super().__init__()
        self.config = config = config or DiTConfig()
        self.scheduler_config = dict(scheduler_config or {})
        grid = config.sample_size // config.patch_size
        self.patch_embed = nn.Conv2d(config.in_channels, config.width, config.patch_size, stride=config.patch_size)
        self.t_embed = nn.Sequential(
            nn.Linear(config.frequency_embedding_size, config.width), nn.SiLU(), nn.Linear(config.width, config.width)
        )
        self.y_embed = nn.Embedding(config.num_classes + 1, config.width)
        if config.guidance_embed:
            self.g_embed = nn.Sequential(nn.Linear(config.frequency_embedding_size, config.width), nn.SiLU(),
                                         nn.Linear(config.width, config.width))
        self.blocks = nn.ModuleList(
            DiTBlock(config.width, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm_out = nn.LayerNorm(config.width, elementwise_affine=False, eps=1e-6)
        self.adaLN_out = nn.Sequential(nn.SiLU(), nn.Linear(config.width, 2 * config.width))
        self.out = nn.Linear(config.width, config.patch_size**2 * config.in_channels)
        # Fixed tables are not learned, so they are non-persistent: the weight file holds only parameters.
        if config.rope:
            cos, sin = rope_2d_tables(config.width // config.num_heads, grid)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            self.register_buffer("pos_embed", sincos_pos_embed_2d(config.width, grid), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT initialisation: Xavier linears, N(0, 0.02) timestep MLP, N(0, 1) labels, zero adaLN and output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.flatten(1))
        nn.init.zeros_(self.patch_embed.bias)
        # Unit-scale label embeddings (DiT uses std 0.02): Adam moves each entry by ~lr per step, so a small
        # init keeps the class signal far below the timestep embedding's for the first thousands of steps.
        nn.init.normal_(self.y_embed.weight, std=1.0)
        for layer in (self.t_embed[0], self.t_embed[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.config.guidance_embed:
            nn.init.normal_(self.g_embed[0].weight, std=0.02)
            nn.init.zeros_(self.g_embed[2].weight)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN[-1].weight)
            nn.init.zeros_(block.adaLN[-1].bias)
        for layer in (self.adaLN_out[-1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def sampling_kwargs(self, labels: torch.Tensor, guidance_scale: float) -> dict:
        """``pydiff.sample``'s guidance_scale, cond and uncond for class ``labels`` (B,) at a guidance scale:
        classifier-free guidance against the null class, or for a guidance-embedded model (a guidance-distilled
        student) one call a step with the scale as its input."""
        if self.config.guidance_embed:
            scale = torch.full(labels.shape, float(guidance_scale), device=labels.device)
            return {"guidance_scale": 1.0, "cond": {"y": labels, "guidance": scale}, "uncond": None}
        return {"guidance_scale": guidance_scale, "cond": {"y": labels},
                "uncond": {"y": torch.full_like(labels, self.config.num_classes)}}

    def _check_guidance(self, guidance, x: torch.Tensor) -> torch.Tensor | None:
        if not self.config.guidance_embed:
            if guidance is not None:
                raise ValueError("guidance must be None: this DiT has no guidance embedding (DiTConfig.guidance_embed)")
            return None
        if guidance is None:
            raise ValueError("guidance (the guidance scale, a float or (B,) tensor) is required: this DiT embeds it")
        guidance = torch.as_tensor(guidance, device=x.device)
        if not guidance.is_floating_point() and guidance.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"guidance must be a number or a float tensor, got {guidance.dtype}")
        if guidance.dim() == 0:
            guidance = guidance.expand(x.shape[0])
        elif guidance.shape != (x.shape[0],):
            raise ValueError(f"guidance must be a scalar or have shape ({x.shape[0]},), got {tuple(guidance.shape)}")
        return guidance

    def _check_inputs(self, x: torch.Tensor, t, y) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}"
                            + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
        expected = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(batch)
        elif t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
        if y is None:
            y = torch.full((batch,), cfg.num_classes, dtype=torch.int64, device=x.device)
        elif not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"y must be an int64 tensor of class labels, got "
                            f"{y.dtype if isinstance(y, torch.Tensor) else type(y).__name__}")
        elif y.shape != (batch,):
            raise ValueError(f"y must have shape ({batch},), got {tuple(y.shape)}")
        return t, y

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None, guidance=None) -> torch.Tensor:
        t, y = self._check_inputs(x, t, y)
        guidance = self._check_guidance(guidance, x)
        cfg = self.config
        param = self.patch_embed.weight
        h = self.patch_embed(x.to(param.dtype)).flatten(2).transpose(1, 2)  # (B, N, width), row-major patches
        rope = None
        if cfg.rope:
            rope = (self.rope_cos, self.rope_sin)
        else:
            h = h + self.pos_embed
        c = self.t_embed(timestep_embedding(t, cfg.frequency_embedding_size).to(param.dtype)) + self.y_embed(y)
        if guidance is not None:
            c = c + self.g_embed(timestep_embedding(guidance * 1000, cfg.frequency_embedding_size).to(param.dtype))
        for block in self.blocks:
            h = block(h, c, rope)
        shift, scale = self.adaLN_out(c).chunk(2, dim=1)
        h = self.out(modulate(self.norm_out(h), shift, scale))  # (B, N, p*p*C)
        return self._unpatchify(h).to(x.dtype)

    def _unpatchify(self, h: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        p, grid = cfg.patch_size, cfg.sample_size // cfg.patch_size
        h = h.view(h.shape[0], grid, grid, p, p, cfg.in_channels)
        return h.permute(0, 5, 1, 3, 2, 4).reshape(h.shape[0], cfg.in_channels, cfg.sample_size, cfg.sample_size)
