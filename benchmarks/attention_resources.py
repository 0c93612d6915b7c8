"""Registers and spills of the attention kernels per tile and variant, compiled for sm_90a without a GPU.

    python3 benchmarks/attention_resources.py            # a table: variant, head dim, tile, registers, spill bytes
                                                         # (the QK prologue's last, per heads per program)
    python3 benchmarks/attention_resources.py --candidates   # every autotune candidate of every variant builds?
    python3 benchmarks/attention_resources.py --probe    # the Hopper probe's softmax variants: work per key block
    python3 benchmarks/attention_resources.py --overlap  # the OVERLAP experiment: softmax issued under the MMAs?
    python3 benchmarks/attention_resources.py --warpgroups   # warpgroups, CTAs per SM, barriers, instructions per score
    python3 benchmarks/attention_resources.py --cycles   # SM cycles per score: issue, exp2 units, tensor cores
    python3 benchmarks/attention_resources.py --warp-spec    # the warp-specialised tiles: warpgroups, register split
    python3 benchmarks/attention_resources.py --gpu-cases  # every fixed-tile launch of the GPU tests builds?
    python3 benchmarks/attention_resources.py --random-candidates  # every tuner tile of 40 random cases builds?
    python3 benchmarks/attention_resources.py --waves benchmarks/results/<run>/attention.json
        # the tuner's measured candidates of a GPU run against the waves of CTAs each launches

Triton compiles the kernel for a Hopper target on any machine; the PTX then goes through the CUDA toolkit's
``ptxas -v`` (the resource report a GPU run would give). A newer Triton may emit a PTX version newer than the
installed ptxas knows; the version line is lowered to the toolkit's own, which these kernels' instructions satisfy.
Watch the spills (a tile that spills streams registers through local memory on every key block), the async
copies (none means the key loop is not software-pipelined) and the PTX instructions per key block (the loop body's
length). The compile is specialised the way Triton's launcher specialises contiguous, 16-byte aligned tensors;
without that, loads stay scalar and the numbers are meaningless.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU target, not for the interpreter

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import tile_label  # noqa: E402
from kernels import attention as A  # noqa: E402

POINTERS = {"Q", "K", "V", "O", "Q2", "K2", "V2", "O2", "KN", "VN", "X", "Y", "W"}
INT_POINTERS = {"KV_LENS", "NEG_KV_LENS", "CU_Q", "CU_K", "BLOCK_COUNTS", "BLOCK_LISTS"}
FLOAT_POINTERS = {"WORK", "COS", "SIN", "BIAS"}
FLOATS = {"qk_scale", "neg_scale", "eps"}
#: (name, head dim, (BLOCK_M, BLOCK_N, warps, stages), flags beyond the plain kernel's)
CASES = [
    ("plain", 128, (128, 64, 8, 3), {}), ("plain", 128, (128, 128, 8, 3), {}), ("plain", 64, (128, 64, 4, 3), {}),
    ("plain", 64, (128, 128, 8, 3), {}), ("plain", 40, (128, 64, 4, 3), {}), ("plain", 80, (128, 64, 8, 3), {}),
    ("plain", 160, (64, 32, 4, 2), {}), ("plain", 256, (64, 32, 4, 2), {}),
    ("plain, partial key blocks (SD3)", 64, (128, 64, 4, 3), {"EVEN_N": False}),
    ("key padding", 64, (128, 64, 4, 3), {"HAS_KV_LENS": True, "EVEN_N": False}),
    ("packed segments", 64, (128, 64, 4, 3), {"VARLEN": True, "EVEN_N": False}),
    ("joint", 128, (128, 128, 8, 3), {"JOINT": True}), ("negative", 64, (128, 64, 8, 3), {"NEG": True}),
    ("plain", 64, (64, 64, 4, 3), {}), ("plain, row sums by MMA", 64, (64, 64, 4, 3), {"ROWSUM_MMA": True}),
    ("plain, row sums by MMA", 64, (128, 64, 4, 3), {"ROWSUM_MMA": True}),
    ("plain, row sums by MMA", 128, (128, 128, 8, 3), {"ROWSUM_MMA": True}),
    ("negative, row sums by MMA", 64, (128, 64, 8, 3), {"NEG": True, "ROWSUM_MMA": True}),
    # (a mask's key stride of 1, as Triton's launcher specialises it)
    ("key mask (float32)", 64, (128, 64, 4, 3), {"HAS_BIAS": True, "EVEN_N": False, "stride_mn": 1}),
    ("key mask (float32)", 64, (128, 64, 8, 3), {"HAS_BIAS": True, "EVEN_N": False, "stride_mn": 1}),
    ("key mask (float32)", 72, (128, 64, 8, 3), {"HAS_BIAS": True, "EVEN_N": False, "stride_mn": 1}),
    ("mask per query (float32)", 64, (128, 64, 4, 3), {"HAS_BIAS": 2, "EVEN_N": False, "stride_mn": 1}),
    ("mask per query (float32)", 64, (128, 64, 8, 3), {"HAS_BIAS": 2, "EVEN_N": False, "stride_mn": 1}),
    ("mask per query (float32)", 128, (128, 64, 8, 3), {"HAS_BIAS": 2, "EVEN_N": False, "stride_mn": 1}),
    ("plain, partial key blocks", 64, (128, 64, 8, 3), {"EVEN_N": False}),
    ("plain, partial key blocks", 72, (128, 64, 8, 3), {"EVEN_N": False}),
    ("block-sparse, 64-row blocks", 64, (64, 64, 4, 3), {"SPARSE": True, "BLOCK_Q": 64}),
    ("block-sparse, 64-row blocks", 128, (128, 64, 8, 3), {"SPARSE": True, "BLOCK_Q": 64}),
    ("block-sparse, 128-row blocks", 128, (128, 64, 8, 3), {"SPARSE": True, "BLOCK_Q": 128}),
    ("block-sparse, partial-block tiles", 128, (64, 64, 4, 3),
     {"SPARSE": True, "BLOCK_Q": 64, "HAS_BIAS": 3, "BIAS": "*i1", "stride_mn": 1}),
    ("block-sparse, partial-block tiles", 128, (128, 64, 8, 3),
     {"SPARSE": True, "BLOCK_Q": 64, "HAS_BIAS": 3, "BIAS": "*i1", "stride_mn": 1}),
    # neighborhood attention (pydiff.neighborhood: block lists of 128-query blocks over 64-key grid tiles, the
    # partial ones through boolean tiles; LTX-2's decoder, head dim 64)
    ("neighborhood (block lists, 128 x 64 tiles)", 64, (128, 64, 8, 3),
     {"SPARSE": True, "BLOCK_Q": 128, "HAS_BIAS": 3, "BIAS": "*i1", "stride_mn": 1}),
    ("neighborhood (block lists, 128 x 64 tiles)", 64, (64, 64, 4, 3),
     {"SPARSE": True, "BLOCK_Q": 128, "HAS_BIAS": 3, "BIAS": "*i1", "stride_mn": 1}),
    # differential attention (the negative stream's own queries), and under a key mask of both streams (Stable
    # Audio 3's cross-attention: its context mask, boolean)
    ("differential", 64, (128, 64, 8, 3), {"NEG": True, "NEG_Q": True, "EVEN_N": False}),
    ("differential, key mask (bool)", 64, (128, 64, 8, 3),
     {"NEG": True, "NEG_Q": True, "EVEN_N": False, "HAS_BIAS": True, "BIAS": "*i1", "stride_mn": 1}),
]


def key_loop(ptx: str) -> list:
    """The PTX instructions of one key block: the shortest basic block holding a matrix multiply (the key loop's
    body; a partial last block handled after the loop is longer, and runs once)."""
    bodies = []
    for body in re.split(r"\n\$L__BB\d+_\d+:", ptx)[1:]:
        if "wgmma.mma_async" in body or "mma.sync" in body:
            lines = [line.strip() for line in body.splitlines()]
            bodies.append([line for line in lines if line and not line.startswith("//") and not line.endswith(":")
                           and line not in ("{", "}")])
    return min(bodies, key=len) if bodies else []


def key_loop_instructions(ptx: str) -> int:
    """PTX instructions per key block (``key_loop``)."""
    return len(key_loop(ptx))


def ptxas_report(ptx: str, arch: str = "sm_90a") -> tuple:
    """(registers, spill-store bytes, async copies, key-loop instructions) from ptxas -v and the PTX (cp.async, or
    the tensor memory accelerator's cp.async.bulk.tensor: the key loop is software-pipelined)."""
    ptxas = shutil.which("ptxas") or "/usr/local/cuda/bin/ptxas"
    version = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout
    release = re.search(r"release (\d+)\.(\d+)", version)
    if release:  # lower the PTX ISA version to the one this ptxas reads (CUDA 13.x -> 9.x)
        ptx = re.sub(r"\.version \d+\.\d+", f".version {int(release[1]) - 4}.{release[2]}", ptx, count=1)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    out = subprocess.run([ptxas, f"-arch={arch}", "-v", f.name, "-o", os.devnull], capture_output=True, text=True)
    os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", out.stderr)
    spill = re.search(r"(\d+) bytes spill stores", out.stderr)
    if regs is None:
        raise RuntimeError(f"ptxas failed: {out.stderr.strip()[-300:]}")
    copies = ptx.count("cp.async.cg") + ptx.count("cp.async.bulk.tensor")
    return int(regs[1]), int(spill[1]) if spill else 0, copies, key_loop_instructions(ptx)


def compile_attention(head_dim: int, tile, flags, module=None, info: dict = None) -> tuple:
    """(registers, spill bytes, async copies, key-loop instructions) of one specialisation; tile = (BLOCK_M,
    BLOCK_N, warps, stages[, key/value loads through tensor descriptors[, the key loop warp-specialised]]); ``info``
    (a dict) receives its shared memory and PTX (``compile_ptx``)."""
    bm, bn, warps, stages = tile[:4]
    module = module or A
    const = dict(_head_dim_constants(head_dim, module), BLOCK_M=bm, BLOCK_N=bn, EVEN_N=True, JOINT=False, NEG=False,
                 VARLEN=False, HAS_KV_LENS=False, HAS_NEG_KV_LENS=False, HAS_BIAS=False, SCALE_POSITIVE=True,
                 TMA_OK=True, WS_OK=False, USE_TMA=len(tile) > 4 and tile[4], ROWSUM_MMA=False, OVERLAP=False,
                 WARP_SPEC=len(tile) > 5 and tile[5], JOINED_KV=False, SPARSE=False, BLOCK_Q=0)
    const.update(flags)
    return compile_specialised(module._attn_fwd_kernel, head_dim, const, warps, stages, info)


#: (head dim, tile, joint) of the stream-K experiment's report rows (a fifth tile entry: descriptor loads)
STREAM_K_CASES = [(128, (128, 128, 8, 3), False), (128, (128, 128, 8, 3), True), (128, (128, 64, 8, 3), False),
                  (64, (128, 64, 4, 3), False), (80, (128, 64, 8, 3), False), (128, (128, 64, 4, 2, True), False),
                  (128, (128, 64, 4, 2, True), True)]


def compile_stream_k(fn, head_dim: int, tile, joint: bool = False) -> tuple:
    """``compile_attention``'s figures for the stream-K kernels (``_attn_fwd_stream_k``, or its combine pass with
    the warps the launcher gives it, at least 8, and one stage), plain or joint attention; tile as
    ``compile_attention`` takes it."""
    bm, bn, warps, stages = tile[:4]
    warps = warps if fn is A._attn_fwd_stream_k else max(warps, 8)
    const = dict(_head_dim_constants(head_dim, A), BLOCK_M=bm, BLOCK_N=bn, JOINT=joint, EVEN_N=True,
                 SCALE_POSITIVE=True, USE_TMA=len(tile) > 4 and tile[4])
    return compile_specialised(fn, head_dim, const, warps, stages if fn is A._attn_fwd_stream_k else 1)


def _head_dim_constants(head_dim: int, module) -> dict:
    """The head-dim constexprs the launchers pass for bf16 (no bf16 emulation: that is the CPU interpreter's), with
    the row-alignment hint of rows of 8k elements."""
    da, db, split = module.head_dim_blocks(head_dim)
    return dict(HEAD_DIM=head_dim, BLOCK_DA=da, BLOCK_DB=db, SPLIT_D=split,
                MASK_D=(da + (db if split else 0)) != head_dim, EMULATE_BF16=False,
                ROW_ALIGN=8 if head_dim % 8 == 0 else 1)


def compile_specialised(fn, head_dim: int, const: dict, warps: int, stages: int, info: dict = None) -> tuple:
    """``ptxas_report`` of ``fn`` with these constexprs (those ``fn`` does not take are left out: older kernel copies
    lack some), specialised the way Triton's launcher specialises contiguous (B, H, N, D) bf16 tensors at production
    sizes: head-dim strides of 1, 16-divisible pointers, batch and head strides, and token strides (= D) only when D
    is 16-divisible. Without these the loads stay scalar and the key loop is not pipelined."""
    const = {name: value for name, value in const.items() if name in fn.arg_names}
    # (a pointer's type given among them, e.g. "BIAS": "*i1" for a boolean mask)
    types = {name: const.pop(name) for name in list(const) if isinstance(const[name], str) and const[name][0] == "*"}
    const.update({name: 1 for name in fn.arg_names if name.startswith("stride_") and name.endswith("d")})
    signature = {name: types[name] if name in types else "constexpr" if name in const else
                 "*bf16" if name in POINTERS else
                 "*i32" if name in INT_POINTERS else "*fp32" if name in FLOAT_POINTERS else
                 "fp32" if name in FLOATS else "i32" for name in fn.arg_names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
               if name not in const and (signature[name].startswith("*") or
                                         (name.startswith("stride_") and (head_dim % 16 == 0 or name[-1] != "n")))}
    return ptxas_report(compile_ptx(fn, signature, const, aligned, warps, stages, info))


def compile_ptx(fn, signature: dict, const: dict, aligned: dict, warps: int, stages: int, info: dict = None) -> str:
    """The PTX of ``fn`` for sm_90 with these argument types, constexprs (name -> value) and 16-divisible
    arguments, with multiply-add contraction as the launches pin it; ``info`` (a dict) receives the kernel's
    shared memory in bytes ("shared"), the PTX ("ptx"), the machine code ("cubin") and the warps it launches with
    ("warps": a warp-specialised kernel's warpgroups together)."""
    source = ASTSource(fn=fn, signature=signature, attrs=aligned,
                       constexprs={(fn.arg_names.index(k),): v for k, v in const.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": warps, "num_stages": stages, "enable_fp_fusion": True})
    if info is not None:
        info.update(shared=compiled.metadata.shared, ptx=compiled.asm["ptx"], cubin=compiled.asm["cubin"],
                    warps=compiled.metadata.num_warps)
    return compiled.asm["ptx"]


#: (head dim, heads per program) of the QK prologue's report rows (RMSNorm and interleaved RoPE, Flux's)
PROLOGUE_CASES = [(128, 1), (128, 4), (128, 8), (64, 1), (64, 8), (80, 1), (80, 8)]


def compile_prologue(head_dim: int, heads: int) -> tuple:
    """``compile_attention``'s figures for the QK prologue (``_qk_prologue``) with RMSNorm and interleaved RoPE,
    ``heads`` heads per program over the rows its launcher gives them on a GPU (``prologue_rows``), 4 warps."""
    const = dict(_head_dim_constants(head_dim, A), BLOCK_M=A.prologue_rows(heads), HEADS=heads, HAS_NORM=True,
                 HAS_ROPE=True, INTERLEAVED=True)
    return compile_specialised(A._qk_prologue, head_dim, const, 4, 1)


#: (name, head dim, flags[, key counts the pruner sees]): the specialisations the benchmark and the diffusers
#: models launch
VARIANTS = [("plain", 128, {}), ("plain", 64, {}), ("plain", 40, {}), ("plain", 80, {}),
            ("plain, partial key blocks", 64, {"EVEN_N": False}),
            ("key padding", 64, {"HAS_KV_LENS": True, "EVEN_N": False}),
            ("packed segments", 64, {"VARLEN": True, "EVEN_N": False}),
            ("joint", 64, {"JOINT": True, "EVEN_N": False}), ("joint", 128, {"JOINT": True}),
            ("joint, keys joined", 128, {"JOINT": True, "JOINED_KV": True, "EVEN_N": False}),
            ("negative", 64, {"NEG": True, "EVEN_N": False}),
            ("negative, 77 text keys", 64, {"NEG": True, "EVEN_N": False}, {"Nk": 77, "Nneg": 77}),
            ("neighborhood (block lists)", 64, {"SPARSE": True, "BLOCK_Q": 128, "BLOCK_K": 64, "HAS_BIAS": 3,
                                                "BIAS": "*i1", "stride_mn": 1})]


def candidates() -> int:
    """Compile every autotune candidate the pruner keeps for each variant (a candidate that fails to build with an
    error the autotuner does not catch would end a tuning run). Returns the number of failures."""
    import time

    failures = 0
    print("| variant | D | candidate | registers | spill bytes | compile s |\n|---|---|---|---|---|---|")
    for name, head_dim, flags, *keys in VARIANTS:
        da, db, split = A.head_dim_blocks(head_dim)
        args = {"BLOCK_DA": da, "BLOCK_DB": db, "SPLIT_D": split, "JOINT": False, "NEG": False, "TMA_OK": True,
                "WS_OK": True, "EVEN_N": True, **flags, **(keys[0] if keys else {})}
        for cfg in A._prune_configs(A._attn_fwd_autotuned.configs, args):
            kw = cfg.kwargs
            tile = (kw["BLOCK_M"], kw["BLOCK_N"], cfg.num_warps, cfg.num_stages, kw.get("USE_TMA", False),
                    kw.get("WARP_SPEC", False))
            label = tile_label(tile)
            start = time.perf_counter()
            try:
                regs, spill, _, _ = compile_attention(head_dim, tile, flags)
                cells = [str(regs), str(spill)]
            except Exception as exc:  # noqa: BLE001 - report every failing candidate, then exit non-zero
                failures += 1
                cells = [f"FAILED {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:100]}", "-"]
            print(f"| {name} | {head_dim} | {label} | " + " | ".join(cells) +
                  f" | {time.perf_counter() - start:.1f} |", flush=True)
    return failures


def probe_softmax_variants() -> None:
    """The Hopper probe's kernel (benchmarks/attention_hopper_probe.py) with each exp2 split and with the row sums on
    the tensor cores: registers, spills, PTX per key block, and its special-function (ex2), FMA and add instructions
    per thread; then from the machine code of its key loop (``sass_key_loop``) the SM cycles per score each unit
    needs, against the tensor cores' (``_score_cycles``)."""
    from benchmarks import attention_hopper_probe as P

    fn = P._probe_attn
    print("| D | tile | softmax | registers | spill bytes | PTX per key block | ex2 | fma | add | SM cycles per score: "
          "issue | special-function unit | tensor cores |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d, bm, bn, warps in ((64, 128, 64, 8), (128, 128, 128, 8)):
        for poly, rowsum in ((0, False), (2, False), (4, False), (0, True)):
            const = dict(D=d, BLOCK_M=bm, BLOCK_N=bn, WS=False, POLY=poly, ROWSUM_MMA=rowsum)
            signature = {name: "constexpr" if name in const else "*bf16" if name in "QKVO" else
                         "fp32" if name == "qk_scale" else "i32" for name in fn.arg_names}
            aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
                       if name in ("Q", "K", "V", "O", "N", "ROWS")}
            info = {}
            ptx = compile_ptx(fn, signature, const, aligned, warps, 3, info)
            regs, spill, _, _ = ptxas_report(ptx)
            loop = key_loop(ptx)
            ex2, fma, add = (sum(line.startswith(op) for line in loop) for op in ("ex2.approx", "fma.rn", "add.f32"))
            issue, special, tensor = _score_cycles(sass_key_loop(info["cubin"]), bm * bn, warps, d)
            variant = "row sums by MMA" if rowsum else "all ex2" if poly == 0 else f"1 exp2 in {poly} by polynomial"
            print(f"| {d} | {bm}x{bn} w{warps} | {variant} | {regs} | {spill} | {len(loop)} | {ex2} | {fma} | {add} | "
                  f"{issue:.4f} | {special:.4f} | {tensor:.4f} |", flush=True)


def _score_cycles(loop: list, scores: int, warps: int, head_dim: int) -> tuple:
    """Cycles of one Hopper SM per score of a key loop (``sass_key_loop``'s instructions; ``scores`` per key block,
    ``warps`` running it): to issue its instructions (four schedulers, one warp instruction a cycle each), to
    compute its exp2s on the special-function units (``MUFU``: 16 lanes a cycle), and for the tensor cores to do
    the score's 2 x head_dim multiply-adds (2048 bf16 a cycle: 989 TFLOP/s dense over 132 SMs at 1.83 GHz)."""
    per_score = warps / scores
    special = sum("MUFU" in op for op in loop) * per_score * 32 / 16
    return len(loop) * per_score / 4, special, 2 * head_dim / 2048


def softmax_under_mma(ptx: str) -> int:
    """exp2s (``ex2.approx``) issued, in PTX order, after a group of matrix multiplies was committed and before any
    wait on it: the softmax running while the tensor cores work (the OVERLAP experiment's point; zero when every
    multiply is waited on before the softmax reads the scores)."""
    pending, count = False, 0
    for line in ptx.splitlines():
        op = line.strip()
        if op.startswith("wgmma.commit_group"):
            pending = True
        elif op.startswith("wgmma.wait_group"):
            pending = False
        elif op.startswith("ex2.approx"):
            count += pending
    return count


#: (name, head dim, tile, flags) of the OVERLAP experiment's report: the tiles the GPU benchmark times it at, and
#: the 128 x 128 tile at head dim 128 with 3 stages, whose overlapped loop needs more shared memory than an SM has
OVERLAP_CASES = [("plain", 128, (128, 128, 8, 2, True), {}), ("plain", 128, (128, 128, 8, 3, True), {}),
                 ("plain", 128, (128, 64, 8, 3), {}), ("plain", 128, (64, 64, 4, 2, True), {}),
                 ("plain", 64, (64, 64, 4, 3), {}), ("plain, partial key blocks (SD3)", 64, (64, 64, 4, 2),
                                                    {"EVEN_N": False}),
                 ("plain, row sums by MMA", 64, (64, 64, 4, 3), {"ROWSUM_MMA": True}),
                 ("joint", 128, (128, 128, 8, 2, True), {"JOINT": True}),
                 ("joint", 128, (128, 64, 8, 3), {"JOINT": True}),
                 ("negative", 64, (64, 64, 4, 2), {"NEG": True, "EVEN_N": False}),
                 ("split head dim", 80, (128, 64, 8, 3), {"EVEN_N": False})]


def overlap_report() -> None:
    """The OVERLAP experiment (``_attend_overlapped``) against the plain key loop at the same tile: registers,
    spills, CTAs one Hopper SM holds (``ctas_per_sm``), and the exp2s issued while a matrix multiply is in flight
    (``softmax_under_mma``)."""
    print("| variant | D | tile | registers | spill bytes | CTAs/SM | ex2 under MMA | with OVERLAP: registers | "
          "spill bytes | CTAs/SM | ex2 under MMA |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for name, head_dim, tile, flags in OVERLAP_CASES:
        cells = []
        for overlap in (False, True):
            info = {}
            regs, spill, _, _ = compile_attention(head_dim, tile, {**flags, "OVERLAP": overlap}, info=info)
            cells += [str(regs), str(spill), str(ctas_per_sm(regs, info["shared"], tile[2])),
                      str(softmax_under_mma(info["ptx"]))]
        print(f"| {name} | {head_dim} | {tile_label(tile)} | " + " | ".join(cells) + " |", flush=True)


def sass_key_loop(cubin: bytes) -> list:
    """The machine instructions (SASS, through the ``nvdisasm`` Triton ships) of the key loop: the shortest span from
    a label back to a branch to it that holds a matrix multiply (``HGMMA``) and the softmax's ``MUFU.EX2``s (the
    spans of barrier-wait retries, placed after the function, branch back into the loop and run past its end)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        lines = subprocess.run([str(tool), "-c", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    lines = lines.splitlines()
    labels = {line.strip()[:-1]: i for i, line in enumerate(lines) if re.fullmatch(r"\.L_x_\d+:", line.strip())}
    loops = []
    for i, line in enumerate(lines):
        target = re.search(r"BRA\s+`\((\.L_x_\d+)\)", line)
        if target and labels.get(target[1], i) < i:
            body = [op for op in lines[labels[target[1]]:i + 1] if re.search(r"/\*[0-9a-f]{4}\*/", op)]
            if any("HGMMA" in op for op in body) and sum("MUFU.EX2" in op for op in body) >= 16:
                loops.append(body)
    return min(loops, key=len) if loops else []


#: (name, head dim, tile, flags) of the warpgroup report: head dim 128's tiles of two warpgroups per CTA (the H200
#: tuner's choices: 128 x 128 x 3 stages plain, 64 x 64 for the joint call) against the single-warpgroup tiles, of
#: which two CTAs share an SM; head dim 64's 64 x 64 (the H200 tuner's choice) against 64 x 128 with descriptors
WARPGROUP_CASES = [("plain", 128, (128, 128, 8, 3), {}), ("plain", 128, (128, 128, 8, 3, True), {}),
                   ("plain", 128, (128, 64, 8, 3), {}), ("plain", 128, (64, 64, 4, 3), {}),
                   ("plain", 128, (128, 64, 4, 2, True), {}), ("plain", 128, (128, 64, 4, 2), {}),
                   ("plain", 128, (128, 32, 4, 3, True), {}),
                   ("plain, partial key blocks", 128, (128, 64, 4, 2, True), {"EVEN_N": False}),
                   ("joint", 128, (128, 128, 8, 3, True), {"JOINT": True}),
                   ("joint", 128, (64, 64, 4, 3), {"JOINT": True}),
                   ("joint", 128, (128, 64, 4, 2, True), {"JOINT": True}),
                   ("plain", 64, (64, 64, 4, 3), {}), ("plain", 64, (64, 64, 4, 4), {}),
                   ("plain", 64, (64, 128, 4, 3), {}), ("plain", 64, (64, 128, 4, 2, True), {}),
                   ("plain, partial key blocks (SD3)", 64, (64, 128, 4, 2, True), {"EVEN_N": False}),
                   ("joint", 64, (64, 128, 4, 2, True), {"JOINT": True, "EVEN_N": False}),
                   ("negative", 64, (64, 128, 4, 2, True), {"NEG": True, "EVEN_N": False})]


def warpgroup_figures(head_dim: int, tile, flags) -> tuple:
    """(warpgroups (4 warps) per CTA, CTAs one Hopper SM holds, registers, spill bytes, local-memory accesses in the
    key loop's machine code (spills inside the loop), its CTA-wide barriers (``BAR.SYNC``: a CTA's warpgroups meet
    there every key block, so they run their softmax at the same time), its instructions per score and warp (what
    the SM's four schedulers issue per score of the tile, against the tensor cores' 1/8 cycle per score at head dim
    128)) of one specialisation."""
    info = {}
    regs, spill, _, _ = compile_attention(head_dim, tile, flags, info=info)
    loop = sass_key_loop(info["cubin"])
    bm, bn, warps = tile[:3]
    return (warps // 4, ctas_per_sm(regs, info["shared"], warps), regs, spill,
            sum(bool(re.search(r"\b(LDL|STL)\b", op)) for op in loop), sum("BAR.SYNC" in op for op in loop),
            warps * len(loop) / (bm * bn))


def warpgroup_report() -> None:
    """``warpgroup_figures`` of ``WARPGROUP_CASES``."""
    print("| variant | D | tile | warpgroups per CTA | CTAs/SM | registers | spill bytes | local memory ops in the key "
          "loop | CTA barriers per key block | instructions per score |\n|---|---|---|---|---|---|---|---|---|---|")
    for name, head_dim, tile, flags in WARPGROUP_CASES:
        *counts, per_score = warpgroup_figures(head_dim, tile, flags)
        print(f"| {name} | {head_dim} | {tile_label(tile)} | " + " | ".join(map(str, counts))
              + f" | {per_score:.3f} |", flush=True)


#: (head dim, tile) of the cycle report: at head dim 64 the H200 tuner's 64 x 64 and 128 x 64 x 8 warps with pointer
#: loads, the wide-key descriptor tile, the warp-specialised tiles; at 128 its 128 x 128 x 8 warps with pointer and
#: descriptor loads, the single-warpgroup descriptor tile, the warp-specialised tiles
CYCLE_CASES = [(64, (64, 64, 4, 3)), (64, (128, 64, 8, 3)), (64, (64, 128, 4, 2, True)),
               (64, (128, 64, 4, 2, True, True)), (64, (128, 128, 4, 2, True, True)),
               (64, (256, 64, 4, 2, True, True)), (128, (128, 128, 8, 3)), (128, (128, 128, 8, 3, True)),
               (128, (128, 64, 4, 2, True)), (128, (128, 64, 4, 2, True, True)), (128, (128, 128, 4, 2, True, True))]


def cycle_report() -> None:
    """Plain attention's key loop at ``CYCLE_CASES``, compiled for sm_90a: the SM cycles per score each unit needs
    (``_score_cycles``; in a warp-specialised kernel the two consumer warpgroups run the loop), against the tensor
    cores'. Where issue or the special-function unit needs more, no overlap can reach the tensor cores' rate."""
    print("| D | tile | registers | spill bytes | SASS per key block and warp | SM cycles per score: issue | "
          "special-function unit | tensor cores |\n|---|---|---|---|---|---|---|---|")
    for head_dim, tile in CYCLE_CASES:
        info = {}
        regs, spill, _, _ = compile_attention(head_dim, tile, {}, info=info)
        loop = sass_key_loop(info["cubin"])
        warps = tile[2] * (2 if len(tile) > 5 and tile[5] else 1)
        cycles = _score_cycles(loop, tile[0] * tile[1], warps, head_dim)
        print(f"| {head_dim} | {tile_label(tile)} | {regs} | {spill} | {len(loop)} | "
              + " | ".join(f"{c:.4f}" for c in cycles) + " |", flush=True)


#: head dims of the warp-specialised report (``_WARP_SPEC_TILES``): SD1.5's 40 and 80, SD3's and SDXL's 64, Flux's
#: 128, and 160 beyond the tuner's range
WARP_SPEC_HEAD_DIMS = [32, 40, 64, 80, 96, 128, 160]


#: the warp-specialised report's variants beyond plain attention over whole key blocks (every key block masked)
WARP_SPEC_VARIANTS = [("partial key blocks", {"EVEN_N": False}),
                      ("key padding", {"EVEN_N": False, "HAS_KV_LENS": True}),
                      ("packed segments", {"EVEN_N": False, "VARLEN": True}),
                      ("joint, keys joined", {"EVEN_N": False, "JOINT": True, "JOINED_KV": True})]


def warp_spec_report() -> None:
    """Each warp-specialised tile (``_WARP_SPEC_TILES``) compiled for sm_90a, plain attention over whole key blocks
    at ``WARP_SPEC_HEAD_DIMS`` and the ``WARP_SPEC_VARIANTS`` at head dims 64 and 128: the warpgroups it launches,
    the registers per thread at launch, the register counts its warpgroups move to (``setmaxnreg``: none means the
    loop was not specialised), spill bytes, shared memory and CTAs per SM. A negative stream, and a joint one with
    its own keys, are left out: their second key loop fails inside Triton's compiler (an internal assertion, raised
    as a RuntimeError); a joint call with its keys joined (JOINED_KV) is in."""
    print("| variant | D | tile | warpgroups | registers at launch | setmaxnreg to | spill bytes | shared KiB | "
          "CTAs/SM |\n|---|---|---|---|---|---|---|---|---|")
    cases = [("plain", head_dim, {}) for head_dim in WARP_SPEC_HEAD_DIMS] + \
        [(name, head_dim, flags) for name, flags in WARP_SPEC_VARIANTS for head_dim in (64, 128)]
    for name, head_dim, flags in cases:
        for bm, bn, warps, stages in A._WARP_SPEC_TILES:
            info = {}
            tile = (bm, bn, warps, stages, True, True)
            regs, spill, _, _ = compile_attention(head_dim, tile, flags, info=info)
            targets = sorted({int(n) for n in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", info["ptx"])})
            print(f"| {name} | {head_dim} | {tile_label(tile)} | {info['warps'] // 4} | {regs} | "
                  f"{', '.join(map(str, targets)) or 'none'} | {spill} | {info['shared'] / 1024:.0f} | "
                  f"{ctas_per_sm(regs, info['shared'], info['warps'])} |", flush=True)


def gpu_cases(lists=None) -> int:
    """Compile, through the launcher and a stub CUDA driver (sm_90), every launch of the GPU tests that run the kernel
    at fixed tiles (the tests' ``GPU_LAUNCHES``: the descriptor stage's default tiles with descriptor loads, the
    tuner's extra descriptor tiles and the warp-specialised tiles, whose warps are reported: 12, three warpgroups, or
    the tile is not specialised; then row sums by MMA, stream-K, the prologue over head groups, the overlap, the
    random cases' untuned launch), or ``lists(tests module)``'s. Descriptor loads where the GPU would use them
    (``use_tma=None`` where the layouts fit); bf16 as fp16, since CPU tensors in bf16 take the interpreter's fp32
    emulation. A tile whose shared memory exceeds Hopper's fails to load (Triton's OutOfResources). Returns the
    failures: a launch that does not build fails its GPU test, and in the descriptor stage turns descriptor loads off
    for the rest of the GPU suite."""
    import time

    import torch

    from benchmarks.stub_driver import stub_cuda_driver

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_attention as T

    def fp16(t):
        if isinstance(t, tuple):
            return tuple(map(fp16, t))
        return T.moved(t, dtype=torch.float16) if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 else t

    failures = 0
    print("| test | case | launch | warps | compile s |\n|---|---|---|---|---|")
    with stub_cuda_driver() as stub:
        for test, cases, launches in (lists or (lambda T: T.GPU_LAUNCHES))(T):
            for case in cases:
                q, k, v, kw = T._on_device(case, "cpu")
                q, k, v = fp16(q), fp16(k), fp16(v)
                kw = {name: fp16(value) for name, value in kw.items()}
                kv = [k, v] + list(kw.get("joint", ())[1:3]) + list(kw.get("negative", ()))
                fits = A.descriptor_layouts_ok(kv)
                for launch in launches(case):
                    label = ", ".join(f"{name} {value}" for name, value in launch.items())
                    if launch.get("use_tma") and not fits:
                        print(f"| {test} | {case.name} | {label} | skipped: the GPU test skips these layouts | - |")
                        continue
                    start = time.perf_counter()
                    try:
                        T.run_kernel(q, k, v, kw, **{**launch, "use_tma": fits if launch.get("use_tma") is None
                                                     else launch["use_tma"]})
                        built = stub.compiled[-1][1].num_warps
                        cell = str(built)
                        failures += launch.get("warp_spec", False) and built != 3 * launch["warps"]
                    except Exception as exc:  # noqa: BLE001 - report every failing launch, then exit non-zero
                        failures += 1
                        cell = f"FAILED {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:100]}"
                    print(f"| {test} | {case.name} | {label} | {cell} | {time.perf_counter() - start:.1f} |",
                          flush=True)
    return failures


def random_candidates(count: int = 40) -> int:
    """``gpu_cases`` over the tests' ``tuner_launches`` of the first ``count`` random cases (the tests'
    ``random_case``: fp32 and odd head dims included), as their first tuned call on Hopper compiles them. Returns the
    failures."""
    return gpu_cases(lambda T: [("autotuner candidates", [T.random_case(seed)[0] for seed in range(count)],
                                 T.tuner_launches)])


#: Hopper's per-SM limits (H100 / H200 SXM): registers, shared memory (and what each CTA reserves of it), warps
_SM_REGISTERS, _SM_SHARED, _CTA_RESERVED_SHARED, _SM_WARPS = 65536, 233472, 1024, 64


def ctas_per_sm(registers: int, shared: int, warps: int) -> int:
    """How many CTAs of a kernel one Hopper SM holds at once: registers are allocated per warp in units of 256,
    shared memory per CTA plus 1 KiB the hardware reserves."""
    per_warp = -(-registers * 32 // 256) * 256
    return max(0, min(_SM_REGISTERS // (per_warp * warps), _SM_SHARED // (shared + _CTA_RESERVED_SHARED),
                      _SM_WARPS // warps, 32))


def waves(results: str, sms: int = 132) -> None:
    """How the autotuner's measured time of every candidate tile (a GPU run's attention.json, plain shapes) relates
    to the waves of CTAs it launches: tiles (query blocks x batch x heads), CTAs per SM (this compile's registers
    and shared memory), waves of ``sms`` SMs, the share of the whole waves launched that holds work, and the time
    per key block of one wave (a candidate whose time is set by the number of waves, not the tiles, shows the same
    figure at every size)."""
    import json

    rows = json.loads(Path(results).read_text())["areas"]["attention"]["rows"]
    print("| shape | tile | tiles | CTAs/SM | waves | waves / whole waves | tuner ms | TFLOP/s | us per key block "
          "and wave |\n|---|---|---|---|---|---|---|---|---|")
    seen = set()
    for row in rows:
        shape = re.fullmatch(r"B(\d+) H(\d+) N(\d+)x(\d+) D(\d+)", row.get("shape", ""))
        if not shape or not row.get("tile_ms") or row["shape"] in seen:
            continue
        seen.add(row["shape"])
        b, h, n_q, n_k, d = map(int, shape.groups())
        for label, ms in sorted(row["tile_ms"].items(), key=lambda item: item[1]):
            bm, bn, warps, stages = map(int, re.match(r"(\d+)x(\d+) w(\d+) s(\d+)", label).groups())
            info = {}
            regs, _, _, _ = compile_attention(d, (bm, bn, warps, stages, " tma" in label, label.endswith(" ws")),
                                              {"EVEN_N": n_k % bn == 0}, info=info)
            per_sm = ctas_per_sm(regs, info["shared"], info["warps"])
            tiles = b * h * -(-n_q // bm)
            count = tiles / (per_sm * sms)
            rounds = -(-tiles // (per_sm * sms))
            key_blocks = -(-n_k // bn)
            print(f"| {row['shape']} | {label} | {tiles} | {per_sm} | {count:.2f} | {count / rounds:.0%} | {ms:.4f} | "
                  f"{4 * b * h * n_q * n_k * d / ms / 1e9:.0f} | {ms * 1e3 / rounds / key_blocks:.3f} |", flush=True)


#: the reports by command-line flag (see the module docstring)
REPORTS = {"--candidates": candidates, "--probe": probe_softmax_variants, "--overlap": overlap_report,
           "--warpgroups": warpgroup_report, "--cycles": cycle_report, "--warp-spec": warp_spec_report,
           "--gpu-cases": gpu_cases, "--random-candidates": random_candidates}


def main() -> int:
    if "--waves" in sys.argv[1:]:
        args = sys.argv[sys.argv.index("--waves") + 1:]
        if not args:
            raise SystemExit("usage: attention_resources.py --waves RESULTS/attention.json [SMS]")
        waves(args[0], int(args[1]) if len(args) > 1 else 132)
        return 0
    for flag, report in REPORTS.items():
        if flag in sys.argv[1:]:
            return 1 if report() else 0  # (the checks return their failures, the tables None)
    print("| variant | D | tile (M x N, warps, stages) | registers | spill bytes | async copies | PTX per key block |"
          "\n|---|---|---|---|---|---|---|")
    for name, head_dim, tile, flags in CASES:
        regs, spill, copies, loop = compile_attention(head_dim, tile, flags)
        print(f"| {name} | {head_dim} | {tile[0]}x{tile[1]} w{tile[2]} s{tile[3]} | {regs} | {spill} | {copies} | "
              f"{loop} |", flush=True)
    for head_dim, tile, joint in STREAM_K_CASES:
        for name, fn in (("stream-K experiment", A._attn_fwd_stream_k), ("its combine pass", A._attn_stream_k_combine)):
            name = name + (", joint" if joint else "")
            regs, spill, copies, loop = compile_stream_k(fn, head_dim, tile, joint)
            print(f"| {name} | {head_dim} | {tile_label(tile)} | {regs} | {spill} | {copies} | {loop} |", flush=True)
    for head_dim, heads in PROLOGUE_CASES:
        regs, spill, _, _ = compile_prologue(head_dim, heads)
        print(f"| QK prologue, {heads} head{'s' if heads > 1 else ''} per program | {head_dim} | "
              f"{A.prologue_rows(heads)} rows x {heads} w4 | {regs} | {spill} | - | - |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
