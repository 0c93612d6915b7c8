"""Launching pydiff's Triton kernels: the compile options every launch pins, launch plans for eager calls, and
compiling an autotuner's candidates at once.

A launch through Triton's JIT binds and specialises every parameter of the kernel on every call (69 us per call for
the 82-parameter attention kernel on a 2-core host with Triton 3.6). A plan remembers, per call signature (the
caller's key: ``tensor_key`` of every tensor, the scalars, the launch config), the compiled kernel Triton's JIT
returned, the grid and every argument after the leading tensors; a later call with the same key launches the
compiled kernel directly, in about 4 us. Plans need Triton 3.3+, whose compiled kernels take every parameter,
constexprs included (older ones take the others only).

A caller may also record every launch a call of its own makes (``recording``) and replay those plans later with
``launch_plan`` (``pydiff.attention``'s call plans skip its checks and launcher that way). A plan knows which of its
leading tensors the kernel writes, so a recording can tell outputs made for the call from inputs.

``precompile`` compiles an autotuner's candidates for a launch at once, on threads, before the autotuner times them,
and reports those whose compile failed; inside ``compile_only``, launches compile that way instead of running.

``stored_choice`` and ``store_choice`` keep an autotuner's choice on disk, in Triton's cache directory, so that a
later process launches the chosen tile at once instead of compiling and timing every candidate again.
"""

import contextlib
import contextvars
import hashlib
import json
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import triton
from triton.runtime import driver
from triton.runtime.cache import get_cache_manager
from triton.runtime.jit import KernelInterface

try:
    from triton import knobs as _knobs
except ImportError:  # Triton < 3.4 keeps the launch hooks on CompiledKernel: plans launch through Triton's runner
    _knobs = None
try:
    from triton.runtime import _async_compile
except ImportError:  # older Triton: an autotuner compiles its candidates one by one as it times them
    _async_compile = None

#: key -> (compiled kernel, grid, arguments after the tensors, callable to run before each launch or None, indices
#: of the leading tensors the kernel writes); the oldest plan goes when a new one would make more than MAX_PLANS (keys
#: also hold scalars such as the scale)
CACHE = {}
MAX_PLANS = 1024
ENABLED = tuple(int(part) for part in triton.__version__.split(".")[:2]) >= (3, 3)
_INSERT = threading.Lock()
_RECORDER = threading.local()
#: inside ``compile_only``: ``launch`` compiles instead of running
_COMPILE_ONLY = contextvars.ContextVar("pydiff_compile_only", default=False)


def tensor_key(t):
    """What a launch specialises on for one tensor argument: sizes, strides, dtype, device and alignment (Triton
    marks 16-byte aligned pointers, and descriptor loads need them)."""
    return t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16


def launch_options(kernel) -> dict:
    """Compile options every launch pins instead of taking Triton's defaults, for a Triton kernel launched directly
    (a tracer's wrapper, ``torch.library.wrap_triton``, accepts only the launch options it knows): multiply-add
    contraction, which the kernels' arithmetic is written for (Triton 3.9 warns that 3.10 turns it off by default)."""
    return {"enable_fp_fusion": True} if isinstance(kernel, KernelInterface) else {}


def unwrapped(kernel):
    """The Triton kernel inside ``torch.library.wrap_triton``'s wrapper (made anew on every call), else ``kernel``."""
    inner = None if isinstance(kernel, KernelInterface) else getattr(kernel, "kernel", None)
    return kernel if inner is None else inner


@contextlib.contextmanager
def recording():
    """Collect the launches this thread makes inside the block, as a list of (plan, leading tensors); a launch made
    without a plan (through Triton's JIT, or ``unplanned``) appears with plan None."""
    outer = getattr(_RECORDER, "launches", None)
    launches = _RECORDER.launches = []
    try:
        yield launches
    finally:
        _RECORDER.launches = outer


def unplanned(tensors) -> None:
    """Tell a recording that a launch was made without a plan (it cannot be replayed)."""
    _record(None, tensors)


def _record(plan, tensors) -> None:
    launches = getattr(_RECORDER, "launches", None)
    if launches is not None:
        launches.append((plan, tuple(tensors)))


def run(key, tensors):
    """Launch the plan remembered under ``key`` with these leading tensor arguments; the plan, or None when there is
    none or inside ``compile_only`` (nothing launched)."""
    plan = None if _COMPILE_ONLY.get() else CACHE.get(key)
    if plan is not None:
        launch_plan(plan, tensors)
        _record(plan, tensors)
    return plan


def launch_plan(plan, tensors) -> None:
    """Launch a plan (``run``'s, or one a caller kept) with these leading tensor arguments."""
    compiled, grid, tail, before, _ = plan
    if before is not None:
        before()
    stream = driver.active.get_current_stream(tensors[0].device.index)
    if _knobs is not None and _no_launch_hooks(_knobs.runtime):
        # what Triton's runner passes its launcher when no hook is set, without the runner's per-launch work (a
        # closure, the launch metadata and two more passes over the ~80 arguments): 4-5 us of a 22 us planned call
        # on a 2-core host
        compiled.run(*grid, stream, compiled.function, compiled.packed_metadata, None, None, None, *tensors, *tail)
    else:
        compiled[grid](*tensors, *tail, stream=stream)


def _no_launch_hooks(runtime) -> bool:
    """Whether no launch hook is set (a profiler such as Proton sets them): each is None, or an empty chain of
    hooks (Triton 3.5+)."""
    enter, leave = runtime.launch_enter_hook, runtime.launch_exit_hook  # (one test each: a third of a loop's time)
    return (enter is None or not getattr(enter, "calls", True)) and (leave is None or not getattr(leave, "calls", True))


def compile_threads() -> int:
    """Threads ``precompile`` uses: ``PYDIFF_COMPILE_THREADS``, else the CPUs this process may run on (1: none)."""
    setting = os.environ.get("PYDIFF_COMPILE_THREADS", "").strip()
    if setting:
        if not setting.isdigit():
            raise ValueError(f"PYDIFF_COMPILE_THREADS must be a whole number of threads, got {setting!r}")
        return int(setting)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def _compiles_at_once(threads: int):
    """Triton's own asynchronous compile mode for the block, on a pool of ``threads`` threads (the compiler releases
    the GIL in its passes, and ptxas is a process of its own): a JIT warm-up in the block starts its compile and
    returns, and the block ends when every compile has. A compile that fails is dropped (the kernel's next launch
    compiles it again and raises as usual). Yields whether the mode is on: not with under 2 threads, without the mode
    (older Triton) or while another such mode is active."""
    if threads < 2 or _async_compile is None or _async_compile.active_mode.get() is not None:
        yield False
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="pydiff-compile") as pool:
        try:
            mode = _async_compile.AsyncCompileMode(pool, ignore_errors=True)
        except TypeError:  # (a version whose mode would raise the first error instead of dropping it)
            mode = None
        if mode is None:
            yield False
            return
        with mode:
            yield True


def precompile(kernel, grid, args, flags, configs) -> list:
    """Compile the JIT ``kernel`` for each of an autotuner's candidate ``configs`` at this launch (``args``,
    ``flags``: what the autotuner is then called with), all at once (``_compiles_at_once`` on ``compile_threads()``
    threads), so that the autotuner finds every candidate compiled when it times them instead of compiling them one
    after another. Returns (config, error) of each candidate whose compile raised, for the caller to keep from the
    autotuner (which skips only the compile errors it knows, such as running out of shared memory, and passes others
    on to the caller, a compiler pass's RuntimeError among them); empty where compiles cannot run at once, and the
    autotuner then compiles each candidate itself, as Triton does."""
    with _compiles_at_once(min(compile_threads(), len(configs))) as at_once:
        if not at_once:
            return []
        # a warm-up in the mode returns a handle on its compile's future (which Triton 3.9 drops once the mode has
        # ended), or a kernel its caches held
        started = [(config, getattr(kernel.warmup(*args, grid=grid, **flags, **config.all_kwargs()), "future", None))
                   for config in configs]
    return [(config, future.exception()) for config, future in started
            if future is not None and future.exception() is not None]


@contextlib.contextmanager
def compile_only():
    """For a benchmark about to time many launches of different kernels one by one: inside the block, ``launch``
    compiles each kernel instead of running it, all at once (``_compiles_at_once`` on ``compile_threads()``
    threads), and ``run`` launches no plan; the block ends when every compile has. What those launches would write
    is left unwritten. Launches made otherwise (a kernel launched directly) run as usual, after their compile.
    Yields whether compiles run at once; where they cannot, launches run as usual."""
    with _compiles_at_once(compile_threads()) as at_once:
        token = _COMPILE_ONLY.set(at_once)
        try:
            yield at_once
        finally:
            _COMPILE_ONLY.reset(token)


def compiling_only() -> bool:
    """Whether this is inside ``compile_only`` with compiles at once (launches compile and do not run)."""
    return _COMPILE_ONLY.get()


def remember(cache: dict, key, value) -> None:
    """``cache[key] = value``, the oldest entry going first when the cache would hold more than ``MAX_PLANS``."""
    with _INSERT:  # lookups need no lock; evicting while another thread inserts would
        while len(cache) >= MAX_PLANS:
            del cache[next(iter(cache))]
        cache[key] = value


def launch(kernel, grid, args, flags, key, leading: int, before=None, writes=()):
    """``kernel[grid](*args, **flags)``; with a ``key``, remember the launch as a plan (for ``run`` with the first
    ``leading`` arguments, the tensors) when Triton's JIT returned its compiled kernel (not under the interpreter or
    a tracer). before: what each planned launch must run first (the launch itself ran it already); writes: the
    indices of the leading tensors the kernel writes. Returns the plan, or None when none was made (and inside
    ``compile_only``, where the kernel compiles and does not run)."""
    if _COMPILE_ONLY.get():
        kernel.warmup(*args, grid=grid, **flags)
        return None
    compiled = kernel[grid](*args, **flags)
    plan = _plan(compiled, kernel, grid, args, flags, leading, before, writes) if key is not None else None
    if plan is not None:
        remember(CACHE, key, plan)
    _record(plan, args[:leading])
    return plan


def _plan(compiled, kernel, grid, args, flags, leading, before, writes):
    """The plan of a launch that returned ``compiled``, or None where its arguments cannot be replayed."""
    if not hasattr(compiled, "packed_metadata"):
        return None
    fn = unwrapped(kernel)
    values = {**dict(zip(fn.arg_names, args)), **flags}
    # the compiled kernel must take every parameter (its signature lists the constexprs too), and each must be known
    if len(getattr(getattr(compiled, "src", None), "signature", ())) != len(fn.params) or \
            any(p.name not in values and not p.has_default for p in fn.params):
        return None
    full = [values[p.name] if p.name in values else p.default for p in fn.params]
    dims = tuple(grid(values) if callable(grid) else grid)
    return compiled, dims + (1,) * (3 - len(dims)), tuple(full[leading:]), before, tuple(writes)


#: the file a tuned choice is kept in, in a directory of Triton's cache of its own per key (so processes storing
#: different keys never write one file)
_CHOICE_FILE = "pydiff-tuned-choice.json"


def tuning_store_enabled() -> bool:
    """Whether autotuners' choices are kept on disk and read back (``PYDIFF_TUNING_CACHE``, default on)."""
    from pydiff.ops.backend import env_switch

    return env_switch("PYDIFF_TUNING_CACHE")


def tuning_store_place() -> str:
    """Where ``store_choice`` keeps the choices (Triton's cache directory), or that it is off."""
    if not tuning_store_enabled():
        return "off (PYDIFF_TUNING_CACHE=0)"
    if _knobs is not None:
        return _knobs.cache.dir
    from triton.runtime.cache import default_cache_dir  # (Triton < 3.4)

    return default_cache_dir()


def _choice_cache(key: str):
    return get_cache_manager(hashlib.sha256(key.encode()).hexdigest())


def stored_choice(key: str):
    """The choice (a dict of a config's ``all_kwargs``) that ``store_choice`` kept under ``key``, a string naming
    everything the choice depends on (the kernel's source, Triton's version, the GPU, the call's specialisation);
    None when none is kept, the store is off, or the file does not hold one for this key."""
    if not tuning_store_enabled():
        return None
    try:
        path = _choice_cache(key).get_file(_CHOICE_FILE)
        if path is None:
            return None
        with open(path) as f:
            entry = json.load(f)
    except (OSError, RuntimeError, ValueError):  # (no cache directory, or a damaged file: the caller tunes again)
        return None
    choice = entry.get("choice") if isinstance(entry, dict) and entry.get("key") == key else None
    return choice if isinstance(choice, dict) else None


def store_choice(key: str, choice: dict) -> None:
    """Keep ``choice`` under ``key`` (see ``stored_choice``), replacing what was kept there (Triton's cache writes
    a temporary file and renames it); a directory that cannot be written is reported with a warning, and the
    choice then lives in this process only."""
    if not tuning_store_enabled():
        return
    try:
        _choice_cache(key).put(json.dumps({"key": key, "choice": choice}), _CHOICE_FILE, binary=False)
    except (OSError, RuntimeError) as error:  # (Triton's cache raises RuntimeError when it has no directory)
        warnings.warn(f"pydiff: the tuned choice could not be kept on disk ({error}); set TRITON_CACHE_DIR to a "
                      f"writable directory, or PYDIFF_TUNING_CACHE=0", RuntimeWarning)
