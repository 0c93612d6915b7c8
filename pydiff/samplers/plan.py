"""Sampler plans: per-stage linear maps written symbolically, compiled once into ``pydiff::lincomb`` tables.

A sampler's step is linear in the tensors it touches (the sample, the model output(s), the solver history and the
noise), up to one clamped intermediate (the x0 prediction when sample clipping is on). Samplers write each stage
with `Lin` values -- sums of named tensors with float64 coefficients, e.g. ``x * (s_next / s) + d * (1 - s_next / s)``
-- and `compile_plan` turns the stages into one float64 table per distinct wiring, so the sampling loop only
indexes ``table[row]`` (a device view, never a host sync) and calls lincomb once per stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..ops.linear import MAX_INPUTS, MAX_OUTPUTS

#: the clamped intermediate of lincomb (row 0); usable in outputs, never an input tensor
INTERMEDIATE = "d"
#: inputs every stage may read, in the column order of the tables (history slots go between them and "noise")
LEADING_INPUTS = ("x", "cond", "uncond")
NOISE = "noise"


class Lin:
    """A linear combination of named tensors: ``sum_k coef_k * tensor_k`` with float64 coefficients."""

    __slots__ = ("terms",)

    def __init__(self, terms: Optional[Mapping[str, float]] = None, **named: float):
        self.terms: Dict[str, float] = {}
        for source in (terms or {}, named):
            for name, coef in source.items():
                self.terms[name] = self.terms.get(name, 0.0) + float(coef)

    @classmethod
    def of(cls, name: str) -> "Lin":
        return cls({name: 1.0})

    def __add__(self, other) -> "Lin":
        if isinstance(other, (int, float)) and other == 0:
            return self
        if not isinstance(other, Lin):
            return NotImplemented
        out = Lin(self.terms)
        for name, coef in other.terms.items():
            out.terms[name] = out.terms.get(name, 0.0) + coef
        return out

    __radd__ = __add__

    def __neg__(self) -> "Lin":
        return Lin({k: -v for k, v in self.terms.items()})

    def __sub__(self, other) -> "Lin":
        return self + (-other)

    def __rsub__(self, other) -> "Lin":
        return (-self) + other

    def __mul__(self, scale) -> "Lin":
        if isinstance(scale, Lin):
            return NotImplemented
        scale = float(scale)
        return Lin({k: v * scale for k, v in self.terms.items()})

    __rmul__ = __mul__

    def __truediv__(self, scale) -> "Lin":
        return self * (1.0 / float(scale))

    def coef(self, name: str) -> float:
        return self.terms.get(name, 0.0)

    def names(self) -> List[str]:
        """Names with a non-zero coefficient (zero terms cost a read and are dropped)."""
        return [k for k, v in self.terms.items() if v != 0.0]

    def substitute(self, name: str, value: "Lin") -> "Lin":
        """Replace tensor ``name`` by the combination ``value``."""
        if name not in self.terms:
            return self
        coef = self.terms[name]
        rest = Lin({k: v for k, v in self.terms.items() if k != name})
        return rest + value * coef

    def __repr__(self) -> str:
        return " + ".join(f"{v:.6g}*{k}" for k, v in self.terms.items()) or "0"


@dataclass
class Stage:
    """One model evaluation and the fused update after it, written in the sampler's own sample space.

    t: the timestep passed to the model; c_in: the model sees ``c_in * x``; intermediate: lincomb's row 0 (clamped
    when the plan clamps); outputs: new values by slot name ("x" is the next sample); carry: slots kept from before
    the stage under a new name (e.g. a history shift {"D2": "D1"}); draw_noise: whether the stage consumes one
    standard-normal draw (kept even when its coefficient is zero so random streams line up with diffusers).
    """

    t: float
    c_in: float
    outputs: Dict[str, Lin]
    intermediate: Optional[Lin] = None
    carry: Dict[str, str] = field(default_factory=dict)
    draw_noise: bool = False
    #: names of outputs that are only returned to a caller (e.g. pred_original_sample), not kept as state
    extras: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Wiring:
    """The tensor slots one lincomb call reads and writes."""

    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]


@dataclass
class Plan:
    """A compiled sampler run: per stage its wiring, a row of that wiring's coefficient table and the model time.

    tables[k]: float64 (rows, 1, n_out+1, n_in+1) for wirings[k]; stage i uses tables[kind[i]][row[i]].
    """

    wirings: List[Wiring]
    tables: List[torch.Tensor]
    kind: List[int]
    row: List[int]
    timesteps: torch.Tensor  # float64 (stages,)
    carry: List[Dict[str, str]]
    draw_noise: List[bool]
    clamp: float
    init_scale: float  # the loop's first state is noise * init_scale
    extras: List[Tuple[str, ...]]
    #: per stage, the scale the model input gets from the sample (all 1 for a model-space plan)
    c_in: List[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.kind)

    def to(self, device: torch.device) -> "Plan":
        """The same plan with its tables on ``device`` (copied once; each step then indexes a view)."""
        return Plan(self.wirings, [t.to(device) for t in self.tables], self.kind, self.row,
                    self.timesteps.to(device), self.carry, self.draw_noise, self.clamp, self.init_scale, self.extras,
                    self.c_in)

    def stage_coefs(self, i: int) -> torch.Tensor:
        """The (1, n_out+1, n_in+1) coefficients of stage i: a view, no copy and no sync."""
        return self.tables[self.kind[i]][self.row[i]]


def _ordered_inputs(names: Sequence[str]) -> Tuple[str, ...]:
    """Column order: x, cond, uncond, history slots (first use order), noise."""
    names = list(dict.fromkeys(names))
    head = [n for n in LEADING_INPUTS if n in names]
    tail = [NOISE] if NOISE in names else []
    middle = [n for n in names if n not in LEADING_INPUTS and n != NOISE]
    return tuple(head + middle + tail)


def to_model_space(stages: List[Stage]) -> List[Stage]:
    """Rewrite stages so the loop's "x" slot holds the model input ``c_in * x`` instead of the sample.

    The model then reads the state directly (no per-step scaling pass); the last stage writes the sample itself.
    Only "x" changes space: history slots keep whatever the sampler stored in them.
    """
    out = []
    for i, st in enumerate(stages):
        x_sample = Lin(x=1.0 / st.c_in)  # the sample, in terms of the model-space state
        next_scale = stages[i + 1].c_in if i + 1 < len(stages) else 1.0
        outputs = {}
        for name, lin in st.outputs.items():
            lin = lin.substitute("x", x_sample)
            outputs[name] = lin * next_scale if name == "x" else lin
        inter = st.intermediate.substitute("x", x_sample) if st.intermediate is not None else None
        out.append(Stage(st.t, 1.0, outputs, inter, dict(st.carry), st.draw_noise, st.extras))
    return out


def compile_plan(stages: List[Stage], clamp: float = 0.0, init_scale: float = 1.0,
                 drop: Sequence[str] = (), c_in: Optional[Sequence[float]] = None) -> Plan:
    """Group stages by wiring and build one float64 coefficient table per wiring (host, once per run).

    drop: output names to leave out (e.g. extras nobody asked for).
    """
    if not stages:
        raise ValueError("a sampler plan needs at least one stage")
    wirings: List[Wiring] = []
    rows: List[List[torch.Tensor]] = []
    kind, row = [], []
    for i, st in enumerate(stages):
        outputs = {k: v for k, v in st.outputs.items() if k not in drop}
        if "x" not in outputs:
            raise ValueError(f"stage {i} writes no next sample 'x'")
        inter = st.intermediate if st.intermediate is not None else Lin()
        if "x" in st.carry.values():
            raise ValueError(f"stage {i} carries 'x'; write it as an output so it keeps the sample's space")
        if st.intermediate is None and any(INTERMEDIATE in lin.names() for lin in outputs.values()):
            raise ValueError(f"stage {i} uses the intermediate 'd' but defines none")
        if INTERMEDIATE in inter.terms:
            raise ValueError(f"stage {i}: the intermediate cannot depend on itself")
        used = inter.names() + [n for lin in outputs.values() for n in lin.names() if n != INTERMEDIATE]
        if not used:
            used = ["x"]  # lincomb needs one input even for a constant-zero stage
        inputs = _ordered_inputs(used)
        names_out = tuple(outputs)
        if len(inputs) > MAX_INPUTS or len(names_out) > MAX_OUTPUTS:
            raise ValueError(f"stage {i} reads {len(inputs)} and writes {len(names_out)} tensors; lincomb takes at "
                             f"most {MAX_INPUTS} and {MAX_OUTPUTS}")
        n_in = len(inputs)
        coefs = torch.zeros(len(names_out) + 1, n_in + 1, dtype=torch.float64)
        for j, name in enumerate(inputs):
            coefs[0, j] = inter.coef(name)
            for o, lin in enumerate(outputs.values()):
                coefs[1 + o, j] = lin.coef(name)
        for o, lin in enumerate(outputs.values()):
            coefs[1 + o, n_in] = lin.coef(INTERMEDIATE)
        if not torch.isfinite(coefs).all():
            raise ValueError(f"stage {i} has non-finite coefficients: {coefs.tolist()}")
        wiring = Wiring(inputs, names_out)
        if wiring not in wirings:
            wirings.append(wiring)
            rows.append([])
        k = wirings.index(wiring)
        kind.append(k)
        row.append(len(rows[k]))
        rows[k].append(coefs)
    tables = [torch.stack(r)[:, None] for r in rows]
    timesteps = torch.tensor([st.t for st in stages], dtype=torch.float64)
    if not math.isfinite(clamp):
        raise ValueError(f"clamp must be finite, got {clamp}")
    return Plan(wirings, tables, kind, row, timesteps, [dict(st.carry) for st in stages],
                [st.draw_noise for st in stages], float(clamp), float(init_scale),
                [tuple(e for e in st.extras if e not in drop) for st in stages],
                list(c_in) if c_in is not None else [st.c_in for st in stages])
