"""What the SSD GPU scripts (.gpu/ssd6.py, ssd7b.py, ssd7f.py) share: the run settings read from the script's
environment prefix, the inputs (bench_ssd.make, optionally z and initial_states), the public call, gradients, the
fp64 reference check, the relative difference, timers and the per-kernel profile rows.

A script calls `setup(PREFIX, default_budget, t_start)` once, before it uses anything else here: PREFIX_S is the
budget in seconds from t_start, PREFIX_DRY=1 a CPU dry run of the script's logic (TRITON_INTERPRET=1 set by the
caller, fp16, two heads, wall-clock timer). The settings are this module's globals (DRY, DEV, DT, HEADS, BUDGET,
and the shapes: REF_T the reference check's length at B1, SHAPE the timed B / T, LONG the long shapes).
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402

import bench_ssd as bs  # noqa: E402
from hybridna_kernels import ssd_scan  # noqa: E402
from hybridna_kernels.ssd import chunk  # noqa: E402
from hybridna_kernels.ssd.naive import ssd_chunked_ref  # noqa: E402

LEAVES = ("x", "dt", "A", "B", "C", "D", "dt_bias")
T_START = time.time()
BUDGET = 100.0
DRY = False
DEV = "cuda"
DT = torch.bfloat16
HEADS = bs.H
PREFIX = ""
REF_T = 4096
SHAPE = (8, 8192)
LONG = [(2, 32768), (1, 131072)]


def setup(prefix, budget, t_start):
    """Reads PREFIX_S (default `budget`) and PREFIX_DRY; returns DRY, DEV, DT, HEADS for the script's own use."""
    global PREFIX, T_START, BUDGET, DRY, DEV, DT, HEADS, REF_T, SHAPE, LONG
    PREFIX, T_START = prefix, t_start
    BUDGET = float(os.environ.get(f"{prefix}_S", str(budget)))
    DRY = os.environ.get(f"{prefix}_DRY") == "1"
    DEV = "cpu" if DRY else "cuda"
    DT = torch.float16 if DRY else torch.bfloat16
    HEADS = 2 if DRY else bs.H
    REF_T = 512 if DRY else 4096
    SHAPE = (1, 512) if DRY else (8, 8192)
    LONG = [(1, 1024)] if DRY else [(2, 32768), (1, 131072)]
    return DRY, DEV, DT, HEADS


def variants(names):
    """The variants to run: `names`, or PREFIX_VARIANTS (comma-separated) where set."""
    return os.environ[f"{PREFIX}_VARIANTS"].split(",") if os.environ.get(f"{PREFIX}_VARIANTS") else names


def say(s):
    print(s, flush=True)


def left():
    return BUDGET - (time.time() - T_START)


def sync():
    if not DRY:
        torch.cuda.synchronize()


def bench(fn, graph=False, rep=40, graph_rep=25):
    """do_bench median (ms), or do_bench_cudagraph's with graph; a dry run times one call by the wall clock and
    has no CUDA graph (raises)."""
    if DRY:
        if graph:
            raise RuntimeError("no CUDA graph on CPU")
        t0 = time.time()
        fn()
        return (time.time() - t0) * 1e3
    if graph:
        return triton.testing.do_bench_cudagraph(fn, rep=graph_rep, return_mode="median")
    return triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median")


def use(name, strict=True):
    """Selects sweep config `name` (strict=False: an unknown name selects the defaults)."""
    chunk.CFG_OVERRIDE.clear()
    chunk.CFG_OVERRIDE.update(chunk.SWEEP_CONFIGS[name] if strict else chunk.SWEEP_CONFIGS.get(name, {}))


def call(t, final=True):
    return ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=bs.Q, D=t["D"], dt_bias=t["dt_bias"],
                    dt_softplus=True, z=t.get("z"), initial_states=t.get("init"), return_final_states=final)


def make(b, T, extra=False, grad=True):
    t = bs.make(b, T, dtype=DT, device=DEV, requires_grad=False, heads=HEADS)
    if extra:
        g = torch.Generator(device=DEV).manual_seed(1)
        t["z"] = torch.randn(b, T, HEADS, bs.P, generator=g, device=DEV).to(DT)
        t["init"] = torch.randn(b, HEADS, bs.P, bs.N, generator=g, device=DEV) * 0.5
    for v in t.values():
        v.requires_grad_(grad)
    return t


def grads(t, outs, dys):
    keys = [k for k in t if t[k].requires_grad]
    g = torch.autograd.grad(outs, [t[k] for k in keys], dys)
    return {"d" + k: v for k, v in zip(keys, g)}


def fwd_bwd(t):
    """One forward (with final states) + backward with random output gradients (compiles both)."""
    y, fin = call(t)
    grads(t, (y, fin), (torch.randn_like(y), torch.randn_like(fin)))


def rel(a, r):
    a, r = a.double(), r.double()
    return ((a - r).norm() / r.norm().clamp_min(1e-30)).item()


def output_grads(b, T):
    """The gradients of y and the final states used against the default (seed 2)."""
    g = torch.Generator(device=DEV).manual_seed(2)
    dy = torch.randn(b, T, HEADS, bs.P, generator=g, device=DEV).to(DT)
    dfin = torch.randn(b, HEADS, bs.P, bs.N, generator=g, device=DEV)
    return dy, dfin


def ref_errors(names, extra, T, say, reserve=5, nograd=False):
    """fp64 chunked reference at B1 T (extra: with z and initial_states too); per variant the relative error of
    y, the final states and every gradient (nograd: also y / final states of a no-grad forward), printed by
    `say`; bf16 tolerance 1e-2 forward / 2e-2 gradients, NaN fails. Returns {name: passed}."""
    t = make(1, T, extra=extra)
    t64 = {k: v.detach().double().requires_grad_(True) for k, v in t.items()}
    y_r, fin_r = ssd_chunked_ref(t64["x"], t64["dt"], t64["A"], t64["B"], t64["C"], chunk_size=bs.Q, D=t64["D"],
                                 dt_bias=t64["dt_bias"], dt_softplus=True, z=t64.get("z"),
                                 initial_states=t64.get("init"), return_final_states=True)
    dy, dfin = torch.randn_like(y_r), torch.randn_like(fin_r)
    g_r = grads(t64, (y_r, fin_r), (dy, dfin))
    ok = {}
    for name in names:
        if left() < reserve:
            say(f"{name}: not checked (budget)")
            continue
        use(name)
        try:
            y, fin = call(t)
            g = grads(t, (y, fin), (dy.to(y.dtype), dfin.float()))
            errs = {"y": rel(y, y_r), "final": rel(fin, fin_r)}
            if nograd:
                with torch.no_grad():
                    y0, fin0 = call(t)
                errs.update({"y_nog": rel(y0, y_r), "fin_nog": rel(fin0, fin_r)})
            errs.update({k: rel(g[k], g_r[k]) for k in g_r})
            bad = [k for k, e in errs.items() if not e < (2e-2 if k.startswith("d") else 1e-2)]
            worst = max((k for k in errs if k.startswith("d")), key=errs.get)
            say(f"ref B1 T{T}{' +z +init' if extra else ''} | {name} | y {errs['y']:.1e} final {errs['final']:.1e}"
                + (f" nograd y {errs['y_nog']:.1e} final {errs['fin_nog']:.1e} |" if nograd else "")
                + f" worst {worst} {errs[worst]:.1e} | "
                + " ".join(f"{k} {v:.1e}" for k, v in errs.items() if k.startswith("d"))
                + (f" | FAIL {bad}" if bad else " | ok"))
            ok[name] = not bad
        except Exception as e:  # noqa: BLE001
            say(f"ref | {name} | FAILED {type(e).__name__}: {str(e)[:300]}")
            ok[name] = False
    return ok


def vs_default(names, b, T, bitwise=False):
    """Relative difference of y, the final states and every gradient from the first of `names` (the default) at
    B b T T (bitwise: says where all are bitwise equal); NaN fails. Returns {name: passed} (not the first's)."""
    t = make(b, T)
    dy, dfin = output_grads(b, T)
    base = None
    ok = {}
    for name in names:
        if left() < 5:
            break
        use(name)
        try:
            y, fin = call(t)
            out = {"y": y.detach(), "final": fin.detach(), **grads(t, (y, fin), (dy, dfin))}
            del y, fin
            if base is None:
                base = out
                continue
            d = {k: rel(out[k], base[k]) for k in base}
            nan = [k for k, v in out.items() if not torch.isfinite(v).all()]
            same = bitwise and all(torch.equal(out[k], base[k]) for k in base)
            say(f"vs default B{b} T{T} | {name} | " + " ".join(f"{k} {v:.1e}" for k, v in d.items())
                + (" | bitwise equal" if same else "") + (f" | NaN in {nan}" if nan else ""))
            ok[name] = not nan
        except Exception as e:  # noqa: BLE001
            say(f"vs default | {name} | FAILED {type(e).__name__}: {str(e)[:300]}")
            ok[name] = False
    return ok


def checked(variants, n_extra, bitwise=False):
    """The backward scripts' checks of the variants that are sweep configs: against the fp64 reference at B1 REF_T
    (the first n_extra also with z and initial_states), then against the default at SHAPE (vs_default); says which
    are timed. Returns those that passed both (the default: unless it failed the reference)."""
    names = [n for n in variants if n in chunk.SWEEP_CONFIGS]
    ok_ref = ref_errors(names, False, REF_T, say)
    for n, v in ref_errors(names[:n_extra], True, REF_T, say).items():
        ok_ref[n] = ok_ref.get(n, False) and v
    ok_def = vs_default(names, *SHAPE, bitwise=bitwise)
    good = [n for n in names if ok_ref.get(n) and ok_def.get(n, n == "default")]
    say(f"[{time.time() - T_START:.0f}s] timed: {good}; not timed: {[n for n in names if n not in good]}")
    return good


def warm(names, extra, also=None):
    """Compiles each variant of `names` (a warm-up worker's share): forward + backward at B1 REF_T, also with z and
    initial_states for those in `extra`, then also(name, t) where given (t: the plain inputs); a line per variant."""
    t = make(1, REF_T, extra=False)
    te = make(1, REF_T, extra=True)
    for name in names:
        use(name)
        try:
            for tt in ((t, te) if name in extra else (t,)):
                fwd_bwd(tt)
            if also is not None:
                also(name, t)
            sync()
            say(f"warm {name}: ok {time.time() - T_START:.1f}s")
        except Exception as e:  # noqa: BLE001 - reported by the main process too
            say(f"warm {name}: {type(e).__name__}: {str(e)[:200]}")


def fb_bwd_fns(b, T):
    """fwd+bwd and backward-only callables as bench_ssd times them (y only, no final states)."""
    t = make(b, T)
    y = call(t, final=False)
    dy = torch.randn_like(y)
    leaves = [t[k] for k in LEAVES]

    def fb():
        torch.autograd.grad(call(t, final=False), leaves, dy)

    def bwd():
        torch.autograd.grad(y, leaves, dy, retain_graph=True)

    return fb, bwd


def medians(rr):
    return {k: (statistics.median(v) if v else float("nan")) for k, v in rr.items()}


def interleaved(names, keys, rounds, measure, say, reserve=8):
    """Interleaved timing rounds: in each, per variant (while more than `reserve` seconds are left) use(name),
    then measure(r, name, rr) appends to the lists rr[key] (ms); a row "round r | name | medians so far" (keys in
    order). Returns {name: {key: median over rounds}}; the defaults are selected again at the end."""
    res = {n: {k: [] for k in keys} for n in names}
    for r in range(rounds):
        for name in names:
            if left() < reserve:
                break
            use(name)
            rr = res[name]
            try:
                measure(r, name, rr)
            except Exception as e:  # noqa: BLE001
                say(f"  {name}: FAILED {type(e).__name__}: {str(e)[:200]}")
            med = medians(rr)
            say(f"  round {r} | {name} | " + " | ".join(f"{med[k]:.3f}" for k in keys))
    chunk.CFG_OVERRIDE.clear()
    return {n: medians(rr) for n, rr in res.items()}


def kernel_rows(prof, width=28):
    """(ms, calls, kernel name cut to `width`) per profiled kernel (CPU ops in a dry run), longest first."""
    rows = []
    for ev in prof.key_averages():
        ms = (ev.self_cpu_time_total if DRY else
              (getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0))) / 1e3
        if ms > 0:
            rows.append((ms, ev.count, ev.key.split("(")[0].replace("_kernel", "")[:width]))
    rows.sort(reverse=True)
    return rows


def profile_fb(names, b, T, top):
    """Per variant the CUDA time of each kernel (torch.profiler) in one fwd+bwd, the `top` longest."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    fb, _ = fb_bwd_fns(b, T)
    for name in names:
        if left() < 6:
            break
        use(name)
        fb()
        sync()
        with tprofile(activities=[ProfilerActivity.CPU if DRY else ProfilerActivity.CUDA]) as prof:
            fb()
            sync()
        rows = kernel_rows(prof)
        print(f"profile B{b} T{T} fwd+bwd | {name} | total {sum(r[0] for r in rows):.3f} ms: "
              + "; ".join(f"{k} {ms:.3f}" + (f" x{c}" if c > 1 else "") for ms, c, k in rows[:top]), flush=True)
    chunk.CFG_OVERRIDE.clear()


def header(say):
    """The device, versions, budget and (GPU) the copy bandwidth."""
    say(f"{'cpu (dry run)' if DRY else torch.cuda.get_device_name()} torch {torch.__version__} "
        f"triton {triton.__version__} budget {BUDGET:.0f}s")
    if not DRY:
        say(f"copy bandwidth {bs.measure_copy_gbs():.0f} GB/s")
