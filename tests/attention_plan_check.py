"""Launch plans against Triton's own launch, and the compile options of every pydiff Triton kernel, on a host
without a GPU (run by test_attention_plans.py).

The kernels compile for sm_90 through ``benchmarks.stub_driver``, which records what each launch would pass to
the GPU. For every case: the first call goes through Triton's JIT and leaves a plan; the second launches the plan
and must pass the same grid, compiled kernel and arguments; a call that differs in anything the kernel is
specialised on (a scalar, alignment, a stride, a variant) must not reuse it. Every kernel (attention, its prologue,
the sampler step, the moments) must be compiled with multiply-add contraction although Triton's default is set
off here. Needs a process without TRITON_INTERPRET. Prints one line per case, and one for the compile options.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from unittest import mock

# Triton's default without multiply-add contraction (3.10's): the kernels must pin it on themselves
os.environ["TRITON_DEFAULT_FP_FUSION"] = "0"
# the checks of the tuner count its compiles: no choice an earlier run kept on disk (check_tuning_store turns it on)
os.environ["PYDIFF_TUNING_CACHE"] = "0"

import torch  # noqa: E402
import triton  # noqa: E402

from benchmarks.stub_driver import stub_cuda_driver  # noqa: E402
from pydiff.kernels import attention as ka  # noqa: E402
from pydiff.kernels import plans  # noqa: E402
from pydiff.kernels import lincomb, moments  # noqa: E402
from pydiff.kernels.lincomb import lincomb_forward  # noqa: E402
from pydiff.kernels.moments import pair_moments_forward  # noqa: E402

torch.manual_seed(0)
BF16, F16 = torch.bfloat16, torch.float16


def _bhnd(b, h, n, d, dtype=BF16):
    return torch.randn(b, h, n, d, dtype=dtype)


def _same_launch(a, b, label):
    (grid_a, fn_a, args_a), (grid_b, fn_b, args_b) = a, b
    assert grid_a == grid_b and fn_a == fn_b, f"{label}: grid/kernel {grid_a}/{fn_a} vs {grid_b}/{fn_b}"
    assert len(args_a) == len(args_b), f"{label}: {len(args_a)} vs {len(args_b)} arguments"
    for i, (x, y) in enumerate(zip(args_a, args_b)):
        if isinstance(x, torch.Tensor):
            # prologue outputs are new tensors on every call; everything the kernel specialises on must match
            same = isinstance(y, torch.Tensor) and plans.tensor_key(x)[:4] == plans.tensor_key(y)[:4]
        else:
            same = type(x) is type(y) and x == y
        assert same, f"{label}: argument {i} differs: {x!r} vs {y!r}"


class _JitCounter:
    """Counts launches that go through Triton's JIT (``JITFunction.run``) of the given kernels."""

    def __init__(self, *kernels):
        self.count = 0
        for kernel in kernels:
            run = kernel.run

            def counted(*args, _run=run, **kwargs):
                self.count += 1
                return _run(*args, **kwargs)

            kernel.run = counted


def check(name, call, launches, jit, changed=()):
    """``call()`` twice: the second must be all plans, equal launch for launch; each of ``changed`` (calls that
    differ in one specialisation) must go through the JIT again."""
    launches.clear()
    jit.count = 0
    call()
    first, jit_launches = list(launches), jit.count
    # (launches of one specialisation within the call, like the q and k prologues of equal shapes, share a plan)
    assert 0 < jit_launches <= len(first), f"{name}: {jit_launches} JIT launches for {len(first)} launches"
    count = len(plans.CACHE)
    launches.clear()
    call()
    second = list(launches)
    assert jit.count == jit_launches, f"{name}: the repeated call went through Triton's JIT"
    assert len(plans.CACHE) == count and len(second) == len(first), f"{name}: {len(second)} vs {len(first)} launches"
    for i, (a, b) in enumerate(zip(first, second)):
        _same_launch(a, b, f"{name}, launch {i}")
    for label, other in changed:
        launches.clear()
        before = jit.count
        other()
        assert jit.count > before, f"{name}: '{label}' reused a plan made for another specialisation"
    print(f"ok {name}: {len(first)} launches, {len(changed)} specialisation changes", flush=True)


@contextlib.contextmanager
def _launch_hook(hook):
    """``hook`` set as Triton's launch-enter hook for the block, as a profiler (Proton) sets one."""
    try:
        from triton import knobs
        runtime = knobs.runtime
    except ImportError:  # Triton < 3.4 keeps the hooks on CompiledKernel
        from triton.compiler.compiler import CompiledKernel as runtime
    chain = runtime.launch_enter_hook
    if hasattr(chain, "add"):  # a chain of hooks (Triton 3.5+)
        chain.add(hook)
        try:
            yield
        finally:
            chain.remove(hook)
    else:
        runtime.launch_enter_hook = hook
        try:
            yield
        finally:
            runtime.launch_enter_hook = chain


def check_launch_hooks(name, call, launches, kernel_names):
    """A planned call (``call``, already made once, launching kernels named ``kernel_names``) launches without
    Triton's runner while no launch hook is set, and through it, calling the hook for every launch, while one is."""
    from triton.compiler.compiler import CompiledKernel

    with mock.patch.object(CompiledKernel, "__getitem__", autospec=True,
                           side_effect=CompiledKernel.__getitem__) as runner:
        launches.clear()
        call()
        direct = runner.call_count
        assert len(launches) == len(kernel_names), f"{name}: {len(launches)} launches"
        seen = []
        with _launch_hook(seen.append):
            launches.clear()
            call()
    assert direct == 0 or plans._knobs is None, f"{name}: {direct} launches went through Triton's runner"
    assert runner.call_count - direct == len(launches) == len(kernel_names), \
        f"{name}: {runner.call_count - direct} of {len(launches)} launches through the runner with a hook set"
    seen_names = [metadata.get()["name"] for metadata in seen]
    assert seen_names == list(kernel_names), f"{name}: the hook saw {seen_names}, expected {list(kernel_names)}"
    print(f"ok launch hooks ({name}): {len(launches)} launches without Triton's runner, each seen by a hook set "
          "later", flush=True)


def _forced(backend, call):
    """``call()`` with ``backend`` forced (``pydiff.use_backend``)."""
    from pydiff import use_backend

    with use_backend(backend):
        return call()


def _wiring(launches):
    """Which tensor arguments of a call's launches share memory: (launch, slot) pairs grouped by address."""
    groups = {}
    for i, (_, _, args) in enumerate(launches):
        for slot, a in enumerate(args):
            if isinstance(a, torch.Tensor):
                groups.setdefault(a.data_ptr(), []).append((i, slot))
    return sorted(groups.values())


def check_calls(launches):
    """Call plans (``pydiff.attention``'s ``_CALLS``): a repeated eager call launches without running the op's body
    (no checks, no launcher), passing what the body passed with new outputs and intermediates, wired alike (the
    QK prologue's output is what the attention launch reads); a call that differs in a checked argument or a switch
    runs the body again, and a bad one still gets its error. Calls a replay could get wrong run the body every time:
    one tensor passed twice, a norm weight the body copies (strided)."""
    import importlib
    from unittest import mock

    module = importlib.import_module("pydiff.attention")
    module.bind_gpu_kernels()  # what a CUDA machine does at import; CPU tensors take the CUDA route below
    from pydiff.neighborhood import neighborhood_layout

    body = module._run
    ran = []
    route = mock.patch.object(module.backends, "select", lambda device: ("triton", module._attention_triton_cuda))
    with route, mock.patch.object(module, "_run", lambda call: ran.append(1) or body(call)), \
            mock.patch.dict(os.environ, {"PYDIFF_ATTENTION_AUTOTUNE": "0"}):
        q, k, v = _bhnd(2, 3, 97, 64), _bhnd(2, 3, 77, 64), _bhnd(2, 3, 77, 64)
        lens = torch.tensor([77, 30], dtype=torch.int32)
        blocks = torch.rand(2, 3, 2, 2, generator=torch.Generator().manual_seed(3)) > 0.4
        k_neg, v_neg = _bhnd(2, 3, 50, 64), _bhnd(2, 3, 50, 64)
        attention = module.attention
        # Flux-like: (B, N, H, D) streams, per-stream QK norm, RoPE over the joined sequence (4 prologue launches)
        image, text = [torch.randn(1, 40, 2, 64, dtype=BF16) for _ in range(3)], [torch.randn(1, 8, 2, 64, dtype=BF16)
                                                                                 for _ in range(3)]
        rope = (torch.rand(48, 64), torch.rand(48, 64))
        weights = [torch.rand(64, dtype=BF16) + 0.5 for _ in range(4)]
        strided = torch.rand(128, dtype=BF16)[::2]
        # neighborhood attention over a 3 x 5 x 9 grid: its block lists made before, read as given (no lists launch)
        hood = neighborhood_layout((3, 5, 9), (3, 3, 5))
        hood_qkv = [torch.randn(1, hood.tokens, 2, 64, dtype=BF16) for _ in range(3)]
        hood_rope = (torch.rand(hood.tokens, 32), torch.rand(hood.tokens, 32))

        def flux(k_weight=weights[1]):
            return list(attention(*image, layout="bnhd", joint=tuple(text), rope=rope, q_norm_weight=weights[0],
                                  k_norm_weight=k_weight, joint_q_norm_weight=weights[2],
                                  joint_k_norm_weight=weights[3]))

        cases = [
            ("plain", lambda: [attention(q, k, v)], [
                ("scale", lambda: attention(q, k, v, 0.2)),
                ("k strides", lambda: attention(q, k.transpose(1, 2).contiguous().transpose(1, 2), v)),
                ("kv_lens", lambda: attention(q, k, v, kv_lens=lens)),
                ("descriptor switch", lambda: mock.patch.dict(os.environ, {"PYDIFF_ATTENTION_TMA": "0"})(
                    lambda: attention(q, k, v))()),
                ("warp-specialisation switch", lambda: mock.patch.dict(
                    os.environ, {"PYDIFF_ATTENTION_WARP_SPEC": "1"})(lambda: attention(q, k, v))()),
                ("tuner switch", lambda: mock.patch.dict(os.environ, {"PYDIFF_ATTENTION_AUTOTUNE": "off"})(
                    lambda: attention(q, k, v))()),
                ("PYDIFF_BACKEND", lambda: mock.patch.dict(os.environ, {"PYDIFF_BACKEND": "triton"})(
                    lambda: attention(q, k, v))()),
                ("use_backend", lambda: _forced("triton", lambda: attention(q, k, v))),
            ]),
            ("joint + negative", lambda: list(attention(q, k, v, joint=(q[:, :, :20], k[:, :, :9], v[:, :, :9]),
                                                        negative=(k_neg, v_neg), negative_scale=0.5)), []),
            ("joint + QK norm + RoPE", flux, [("RoPE pairing", lambda: attention(
                *image, layout="bnhd", joint=tuple(text), rope=rope, rope_interleaved=False,
                q_norm_weight=weights[0]))]),
            # block-sparse calls: the lists' launch, then the attention's reading them (NABLA-like blocks with
            # key padding; causal attention, its blocks and diagonal tiles)
            ("block-sparse", lambda: [attention(q, k, v, block_mask=blocks, block_size=64, kv_lens=lens)], [
                ("block size", lambda: attention(q, k, v, block_mask=blocks[..., :1], block_size=(64, 128))),
            ]),
            ("causal", lambda: [attention(q, k[:, :, :40], v[:, :, :40], causal=True)], []),
            ("neighborhood", lambda: [attention(*hood_qkv, layout="bnhd", block_lists=hood.blocks, rope=hood_rope,
                                                q_norm_weight=weights[0])], []),
        ]
        for name, call, changed in cases:
            launches.clear()
            ran.clear()
            first_out = call()
            first = list(launches)
            launches.clear()
            second_out = call()
            second = list(launches)
            assert len(ran) == 1, f"call plan {name}: the repeated call ran the op's body"
            assert len(first) == len(second) > 0, f"call plan {name}: {len(first)} / {len(second)} launches"
            for i, (a, b) in enumerate(zip(first, second)):
                _same_launch(a, b, f"call plan {name}, launch {i}")
            assert _wiring(first) == _wiring(second), f"call plan {name}: launches wired differently"
            assert all(a.data_ptr() != b.data_ptr() for a, b in zip(first_out, second_out)), f"{name}: outputs reused"
            for label, other in changed:
                before = len(ran)
                other()
                assert len(ran) == before + 1, f"call plan {name}: '{label}' skipped the op's body"
        for name, call in [("one tensor passed twice", lambda: attention(k, k, v)),
                           ("a strided norm weight", lambda: flux(strided))]:
            before = len(ran)
            call()
            call()
            assert len(ran) == before + 2, f"call plan: {name} was replayed"
        try:
            attention(q, k.to(torch.float16), v)
        except TypeError as error:
            assert "k has dtype" in str(error), error
        else:
            raise AssertionError("call plan: a k of another dtype was launched")
    print(f"ok call plans: {len(cases)} cases, repeated calls skip the op's body, 2 cases a replay could get "
          "wrong run it", flush=True)
    # torch.library.triton_op finds the kernels an op launches by reading its source and the functions it calls by
    # name (Inductor and export need them): from the op's body, through the shared body, to the CUDA launcher
    try:
        from torch._library.triton import get_inner_triton_kernels
    except ImportError:
        print("ok triton_op kernel discovery: not in this torch", flush=True)
        return
    found = {id(kernel) for kernel in get_inner_triton_kernels(module._attention_op)}
    expected = {id(ka._attn_fwd_autotuned), id(ka._attn_fwd_kernel), id(ka._qk_prologue), id(ka._block_lists_kernel)}
    assert found == expected, f"triton_op finds {len(found & expected)} of the op's {len(expected)} kernels"
    print(f"ok triton_op kernel discovery: the op's {len(expected)} kernels", flush=True)


def check_diffusers_models():
    """The diffusers models with pydiff's processors (the tiny UNet, SD3 and Flux of test_attention_diffusers.py):
    a repeated forward replays every attention call (call plans), the first having run the op's body once per
    signature. A processor that hands the op new signatures each step (a weight copied per call, say) would make
    every call pay the op's checks and launcher."""
    import importlib
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import test_attention_diffusers as models

    from pydiff.integrations.diffusers import set_attention_backend

    module = importlib.import_module("pydiff.attention")
    module.bind_gpu_kernels()
    body, ran, calls = module._run, [], []
    route = mock.patch.object(module.backends, "select", lambda device: ("triton", module._attention_triton_cuda))
    counted = mock.patch.object(module, "_eager", side_effect=module._eager)
    gen = torch.Generator().manual_seed(1)
    unet, sd3, flux = models.tiny_unet(), models.tiny_sd3("rms_norm"), models.tiny_flux()
    sample, context = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 7, 24, generator=gen)
    latents, text, pooled = (torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 9, 32, generator=gen),
                             torch.randn(2, 24, generator=gen))
    flux_inputs = models._flux_inputs(6)
    forwards = [("UNet2DCondition", unet, lambda: unet(sample, torch.tensor([10, 500]), encoder_hidden_states=context)),
                ("SD3", sd3, lambda: sd3(latents, text, pooled, torch.tensor([0.3, 0.8]))),
                ("Flux", flux, lambda: flux(**flux_inputs))]
    with stub_cuda_driver(), route, counted as eager, torch.no_grad(), \
            mock.patch.object(module, "_run", lambda call: ran.append(1) or body(call)), \
            mock.patch.dict(os.environ, {"PYDIFF_ATTENTION_AUTOTUNE": "0"}):
        for name, model, forward in forwards:
            assert set_attention_backend(model) > 0, name
            for step in range(2):
                ran.clear()
                eager.reset_mock()
                forward()
                calls.append(eager.call_count)
                assert eager.call_count > 0, f"{name}: no eager attention call"
                assert (len(ran) > 0) if step == 0 else (len(ran) == 0), \
                    f"{name}, forward {step}: the op's body ran {len(ran)} times in {eager.call_count} calls"
    print(f"ok diffusers models: the second forward replays all {sum(calls[1::2])} attention calls of "
          f"{', '.join(name for name, _, _ in forwards)}", flush=True)


@contextlib.contextmanager
def _compiling_threads(kernel):
    """For the block: a list of the thread names that Triton's compiler (cache hits included) ran on for ``kernel``."""
    from triton import knobs

    names = []

    def listener(*, src, **_):
        if getattr(src, "fn", None) is kernel:
            names.append(threading.current_thread().name)

    with mock.patch.object(knobs.compilation, "listener", listener):
        yield names


def check_parallel_compile():
    """The first tuned launch of a signature compiles each candidate the tuner keeps on ``plans.precompile``'s
    threads, and the tuner, timing them, compiles none itself; with ``PYDIFF_COMPILE_THREADS=1`` each compiles on the
    calling thread inside the tuner, as Triton does. (The tuner's first three tiles, to keep the compiles few.)"""
    from triton.runtime import _async_compile  # noqa: F401  (the mode precompile needs: Triton 3.5+)

    tuner, plain = ka._attn_fwd_autotuned, ka._attn_fwd_kernel
    kept = []
    precompile = plans.precompile

    def counted(kernel, grid, args, flags, configs):
        kept.append(len(configs))
        return precompile(kernel, grid, args, flags, configs)

    with _compiling_threads(plain) as threads, mock.patch.object(plans, "precompile", counted), \
            mock.patch.object(tuner, "configs", tuner.configs[:3]), \
            mock.patch.dict(os.environ, {"PYDIFF_COMPILE_THREADS": ""}):
        # head dims no other check compiles, each a specialisation of its own
        for setting, head_dim in (("2", 32), ("1", 48)):
            os.environ["PYDIFF_COMPILE_THREADS"] = setting
            q, k, v = _bhnd(1, 2, 97, head_dim), _bhnd(1, 2, 77, head_dim), _bhnd(1, 2, 77, head_dim)
            threads.clear()
            kept.clear()
            ka.attention_forward(tuner, q, k, v, torch.empty_like(q), scale=0.125, tuned=(tuner, plain))
            pool = [name for name in threads if name.startswith("pydiff-compile")]
            label = f"D{head_dim}, {setting} threads"
            assert len(kept) == 1 and kept[0] >= 2, f"{label}: precompile given {kept} candidates"
            assert len(threads) == kept[0], f"{label}: {len(threads)} compiles for {kept[0]} candidates"
            assert len(pool) == (len(threads) if setting == "2" else 0), \
                f"{label}: {len(pool)} of {len(threads)} compiles on the pool's threads ({threads})"
    print("ok parallel compile: the tuner's candidates compile on 2 threads before it times them, on the caller "
          "with 1", flush=True)


def check_tuning_store(stub):
    """The tuner's choice kept on disk (``plans.store_choice``): after the first tuned launch of a signature, a new
    process's first launch (the launcher's, the tuner's and Triton's in-memory state cleared) compiles the stored tile
    alone and launches it, without precompiling or timing the others; with PYDIFF_TUNING_CACHE=0 it tunes again. (The
    tuner's first three tiles, at check_parallel_compile's D 32 signature, whose compiles Triton's cache holds.)"""
    import uuid

    tuner, plain = ka._attn_fwd_autotuned, ka._attn_fwd_kernel
    precompiled = []
    precompile = plans.precompile
    digest = f"plan check {uuid.uuid4()}"  # (a key no earlier run stored)
    q, k, v = _bhnd(1, 2, 97, 32), _bhnd(1, 2, 77, 32), _bhnd(1, 2, 77, 32)

    def first_launch():
        ka._TUNED.clear()
        plans.CACHE.clear()
        tuner.cache.clear()
        plain.device_caches.clear()
        compiled = len(stub.compiled)
        ka.attention_forward(tuner, q, k, v, torch.empty_like(q), scale=0.125, tuned=(tuner, plain))
        return len(stub.compiled) - compiled

    with mock.patch.object(plans, "precompile", lambda *a: precompiled.append(len(a[4])) or precompile(*a)), \
            mock.patch.object(tuner, "configs", tuner.configs[:3]), \
            mock.patch.object(ka, "_source_digest", lambda: digest), \
            mock.patch.dict(os.environ, {"PYDIFF_TUNING_CACHE": "1"}):
        first_launch()
        choice = dict(next(iter(ka._TUNED.values())))
        assert precompiled == [3], f"the first tuned launch precompiled {precompiled}"
        loaded = first_launch()
        assert precompiled == [3] and loaded == 1, f"stored choice: precompiled {precompiled[1:]}, {loaded} compiles"
        assert list(ka._TUNED.values()) == [choice], f"stored {choice}, launched {ka._TUNED}"
        with mock.patch.dict(os.environ, {"PYDIFF_TUNING_CACHE": "0"}):
            first_launch()
        assert precompiled == [3, 3], f"with the store off: precompiled {precompiled[1:]}"
    print(f"ok tuning store: a new process launches the stored tile ({choice['BLOCK_M']} x {choice['BLOCK_N']}), "
          f"one compile, no tuning", flush=True)


def check_failed_candidates():
    """A candidate whose compile fails inside Triton's compiler (a RuntimeError, which Triton's autotuner passes on
    to the caller) is reported by ``plans.precompile`` and kept from the tuner, with a warning naming it: the call
    runs on the candidates that compiled. The failing candidate, which the pruner keeps once warp specialisation is
    made usable here: a warp-specialised tile whose keys and values load through pointers (Triton's pass fails)."""
    import warnings

    tuner, plain = ka._attn_fwd_autotuned, ka._attn_fwd_kernel
    good = tuner.configs[0]
    bad = triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "WARP_SPEC": True}, num_warps=4, num_stages=2)
    q, k, v = _bhnd(1, 2, 97, 64), _bhnd(1, 2, 128, 64), _bhnd(1, 2, 128, 64)
    with mock.patch.object(tuner, "configs", [good, bad]), mock.patch.object(ka, "tma_usable", lambda kv: True), \
            mock.patch.object(ka, "warp_spec_usable", lambda q: True), \
            mock.patch.dict(os.environ, {"PYDIFF_COMPILE_THREADS": "2"}), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ka.attention_forward(tuner, q, k, v, torch.empty_like(q), scale=0.125, tuned=(tuner, plain))
    skipped = [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)]
    assert len(skipped) == 1 and "WARP_SPEC: True" in skipped[0] and "failed to compile" in skipped[0], skipped
    assert tuner.best_config is good, f"the tuner chose {tuner.best_config}"
    print(f"ok failed candidates: one that failed to compile ({skipped[0].split(': ')[-1][:60]}) was kept from the "
          f"tuner", flush=True)


def check_compile_only(launches):
    """Inside ``plans.compile_only`` fixed-tile launches compile on its threads and nothing runs (no launch reaches
    the driver, no plan is made); after it the same launches run what was compiled, compiling nothing."""
    plain = ka._attn_fwd_kernel
    q, k, v = _bhnd(1, 2, 97, 32), _bhnd(1, 2, 77, 32), _bhnd(1, 2, 77, 32)
    out = torch.empty_like(q)
    tiles = [(64, 32, 4, 2), (64, 64, 4, 3)]  # (tiles no other check compiles at head dim 32)

    def run_all():
        for bm, bn, warps, stages in tiles:
            ka.attention_forward(plain, q, k, v, out, scale=0.125, block_m=bm, block_n=bn, num_warps=warps,
                                 num_stages=stages)

    with _compiling_threads(plain) as threads, mock.patch.dict(os.environ, {"PYDIFF_COMPILE_THREADS": "2"}):
        launches.clear()
        plans_before = len(plans.CACHE)
        with plans.compile_only() as at_once:
            assert at_once and plans.compiling_only(), "compile_only: compiles not at once"
            run_all()
        assert not plans.compiling_only()
        pool = [name for name in threads if name.startswith("pydiff-compile")]
        assert len(threads) == len(tiles) == len(pool), f"compile_only: {threads} compiles for {len(tiles)} tiles"
        assert not launches and len(plans.CACHE) == plans_before, \
            f"compile_only: {len(launches)} launches ran, {len(plans.CACHE) - plans_before} plans made"
        threads.clear()
        run_all()
        assert len(launches) == len(tiles) and not threads, \
            f"after compile_only: {len(launches)} launches, {len(threads)} compiles"
    print(f"ok compile only: {len(tiles)} tiles compiled on 2 threads without running, then launched without "
          f"compiling", flush=True)


def main():
    kernel, prologue = ka._attn_fwd_kernel, ka._qk_prologue
    with stub_cuda_driver() as stub:
        check_parallel_compile()
        check_tuning_store(stub)
        check_failed_candidates()
        check_compile_only(stub.launches)
        launches = stub.launches
        jit = _JitCounter(kernel, prologue)
        blocks = dict(block_m=64, block_n=64, num_warps=4, num_stages=2, use_tma=False)

        def run(q, k, v, out=None, **kw):
            ka.attention_forward(kernel, q, k, v, torch.empty_like(q) if out is None else out, prologue_kernel=prologue,
                                 **{**blocks, "scale": 0.125, **kw})

        # plain (B, H, N, D), SDXL cross-attention-like
        q, k, v = _bhnd(2, 3, 97, 64), _bhnd(2, 3, 77, 64), _bhnd(2, 3, 77, 64)
        out = torch.empty_like(q)
        # k's sizes and strides two bytes past a 16-byte boundary: only the alignment differs
        shifted = torch.randn(k.numel() + 8, dtype=BF16)[1:1 + k.numel()].view_as(k)
        check("plain", lambda: run(q, k, v, out), launches, jit, changed=[
            ("scale", lambda: run(q, k, v, out, scale=0.2)),
            ("k misaligned", lambda: run(q, shifted, v, out)),
            ("kv_lens", lambda: run(q, k, v, out, kv_lens=torch.tensor([77, 30], dtype=torch.int32))),
            ("key block", lambda: run(q, k, v, out, block_n=32)),
        ])
        check_launch_hooks("plain", lambda: run(q, k, v, out), launches, ["_attn_fwd_kernel"])
        # the stream-K experiment at the same tile runs its own two kernels, not the plain call's plan
        launches.clear()
        run(q, k, v, out, stream_k=3)
        grids = [grid for grid, _, _ in launches]
        assert grids == [(3, 1, 1)] * 2, f"stream-K: launched {grids} (the plain call's plan?)"
        print("ok stream-K after a plain call of its tile: its own kernels", flush=True)

        # key/value blocks through tensor descriptors (the Hopper path; the stub compiles it for sm_90)
        check("descriptor loads", lambda: run(q, k, v, out, use_tma=True), launches, jit)
        # the warp-specialised key loop, over whole key blocks and with key padding (every block masked): Triton makes
        # three warpgroups of the 4 warps asked for, a producer loading through descriptors and two consumers, whose
        # registers it raises (setmaxnreg); fp16, since CPU tensors in bf16 take the interpreter's fp32 emulation
        qh, kh, vh = _bhnd(2, 3, 97, 64, F16), _bhnd(2, 3, 128, 64, F16), _bhnd(2, 3, 128, 64, F16)
        outh = torch.empty_like(qh)
        specialised = dict(block_m=128, use_tma=True, warp_spec=True)
        padded = torch.tensor([128, 50], dtype=torch.int32)
        for label, call in (("warp-specialised", lambda: run(qh, kh, vh, outh, **specialised)),
                            ("warp-specialised, key padding", lambda: run(qh, kh, vh, outh, kv_lens=padded,
                                                                          **specialised))):
            check(label, call, launches, jit)
            name, metadata = stub.compiled[-1]
            assert name == "_attn_fwd_kernel" and metadata.num_warps == 12, \
                f"{label}: {name} compiled with {metadata.num_warps} warps, not 3 warpgroups"
            assert "setmaxnreg" in plans.CACHE[next(reversed(plans.CACHE))][0].asm["ptx"], \
                f"{label}: its compiled kernel reallocates no registers"

        # (B, N, H, D) at head dim 40 (padded to 64, rows 80 bytes: the ROW_ALIGN hint)
        qb, kb, vb = (torch.randn(1, 333, 4, 40, dtype=torch.float16) for _ in range(3))
        check("bnhd D40 fp16", lambda: run(qb, kb, vb, bnhd=True), launches, jit, changed=[
            ("token stride", lambda: run(qb, torch.randn(1, 333, 5, 40, dtype=torch.float16)[:, :, :4], vb,
                                         bnhd=True)),
        ])

        # Flux-like joint attention with QK norm and RoPE: four prologue launches and the attention launch
        d = 128
        qi, ki, vi = (torch.randn(1, 160, 2, d, dtype=BF16) for _ in range(3))
        qt, kt, vt = (torch.randn(1, 24, 2, d, dtype=BF16) for _ in range(3))
        cos, sin = torch.rand(184, d), torch.rand(184, d)
        weights = [torch.rand(d) + 0.5 for _ in range(4)]

        def flux(interleaved=True):
            out_t = torch.empty_like(qt)
            run(qi, ki, vi, bnhd=True, joint=(qt, kt, vt, out_t), rope=(cos, sin), rope_interleaved=interleaved,
                q_norm_weight=weights[0], k_norm_weight=weights[1], joint_q_norm_weight=weights[2],
                joint_k_norm_weight=weights[3])

        check("joint + norm + RoPE", flux, launches, jit, changed=[("RoPE pairing", lambda: flux(False))])
        check_launch_hooks("joint + norm + RoPE", flux, launches, ["_qk_prologue"] * 4 + ["_attn_fwd_kernel"])
        # the same, warp-specialised: the key prologue writes both streams' keys into one tensor (join_keys), so one
        # specialised key loop serves both query streams
        qi16, ki16, vi16, qt16, kt16, vt16 = (t.to(F16) for t in (qi, ki, vi, qt, kt, vt))

        def flux_specialised():
            run(qi16, ki16, vi16, bnhd=True, joint=(qt16, kt16, vt16, torch.empty_like(qt16)), rope=(cos, sin),
                q_norm_weight=weights[0], k_norm_weight=weights[1], joint_q_norm_weight=weights[2],
                joint_k_norm_weight=weights[3], **specialised)

        check("joint + norm + RoPE, keys joined, warp-specialised", flux_specialised, launches, jit)
        name, metadata = stub.compiled[-1]
        assert name == "_attn_fwd_kernel" and metadata.num_warps == 12, \
            f"joint, keys joined: {name} compiled with {metadata.num_warps} warps, not 3 warpgroups"

        # negative-prompt attention with key padding on both key sets
        kn, vn = _bhnd(2, 3, 50, 64), _bhnd(2, 3, 50, 64)
        lens, neg_lens = torch.tensor([77, 41], dtype=torch.int32), torch.tensor([50, 9], dtype=torch.int32)
        check("negative + kv_lens", lambda: run(q, k, v, out, negative=(kn, vn), negative_scale=0.5, kv_lens=lens,
                                                 negative_kv_lens=neg_lens), launches, jit, changed=[
            ("negative scale", lambda: run(q, k, v, out, negative=(kn, vn), negative_scale=0.25, kv_lens=lens,
                                           negative_kv_lens=neg_lens)),
        ])

        # packed segments
        cu = torch.tensor([0, 40, 97], dtype=torch.int32)
        check("segments", lambda: run(q, q, q, out, cu_seqlens_q=cu, max_seqlen_q=57), launches, jit, changed=[
            ("max segment", lambda: run(q, q, q, out, cu_seqlens_q=cu, max_seqlen_q=97)),
        ])
        # the block lists of a block-sparse call: the tile count and the key block are plain arguments the plan
        # holds (not in any tensor's key), so another must not reuse it
        block_mask = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(5)) > 0.4
        ids = torch.randint(0, 3, (4, 5), dtype=torch.int32, generator=torch.Generator().manual_seed(6))
        lists_jit = _JitCounter(ka._block_lists_kernel)
        check("block lists", lambda: ka._block_lists(block_mask, 64, 32, None, ids, None, 3), launches, lists_jit,
              changed=[("tile count", lambda: ka._block_lists(block_mask, 64, 32, None, ids, None, 2)),
                       ("key block", lambda: ka._block_lists(block_mask, 64, 64, None, ids, None, 3))])
        check_calls(launches)
        # the sampler-step and moments kernels, compiled the same way
        x = [torch.randn(3, 1000) for _ in range(3)]
        lincomb_forward(lincomb._lincomb_kernel, x[:2], [x[2]], torch.rand(1, 2, 3, dtype=torch.float64), 3, 1000,
                        0.0)
        pair_moments_forward(moments._pair_moments_kernel, x[0], x[1], torch.zeros(3, 5, dtype=torch.float64), 3,
                             1000)
    names = sorted({name for name, _ in stub.compiled})
    unfused = [name for name, metadata in stub.compiled if not metadata.enable_fp_fusion]
    assert not unfused, f"compiled without multiply-add contraction: {unfused}"
    assert {"_lincomb_kernel", "_pair_moments_kernel", "_qk_prologue", "_attn_fwd_kernel",
            "_block_lists_kernel"} <= set(names), names
    print(f"ok multiply-add contraction in all {len(stub.compiled)} compiled kernels ({', '.join(names)})",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(check_diffusers_models() if sys.argv[1:] == ["--diffusers"] else main())
