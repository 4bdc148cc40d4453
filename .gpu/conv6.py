"""conv1d (issue 3) session 5: forward + backward at B8 D2304 L8192 W4 bf16 SiLU channel-last, default vs variants.

Variants are (forward config, backward config) pairs set as conv.FWD_CONFIG_OVERRIDE / BWD_CONFIG_OVERRIDE, so the
public autograd path (the issue's figure) uses them. In order: copy bandwidth; every variant compiled in threads;
each checked against fp64 on the first 256 channels (y, dx, dweight, dbias through autograd; a failing variant is
marked and not timed) and for determinism; then fwd+bwd timed interleaved over rounds (do_bench median, eager, and
do_bench_cudagraph, host-free), one row per variant and round as measured, medians at the end; then the host cost
per fwd+bwd call (tiny shape, no sync) per variant and a cProfile of the default; then W8 and B1 L131072 W4 forward
for the record. Stops cleanly at CONV6_S seconds (default 55). CONV6_VARIANTS=default,reset narrows.
CONV6_DRY=1 (with TRITON_INTERPRET=1): CPU dry run of the logic at a tiny shape with fake timers."""
import cProfile
import io
import os
import pstats
import sys
import time
from concurrent.futures import ThreadPoolExecutor

T0 = time.time()
BUDGET = float(os.environ.get("CONV6_S", "55"))
sys.path.insert(0, "bench")
import torch  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402
from bench_conv1d import make_inputs, _slice_ref_grads  # noqa: E402
from conftest import measure_copy_gbs  # noqa: E402  (bench/conftest.py, first on sys.path)
from helpers import tol  # noqa: E402
from hybridna_kernels.conv1d import conv, causal_conv1d, causal_conv1d_ref  # noqa: E402


def left():
    return BUDGET - (time.time() - T0)


def say(*a):
    print(*a, f"[{time.time() - T0:.0f} s]", flush=True)


B, D, L, W = 8, 2304, 8192, 4
DRY = bool(os.environ.get("CONV6_DRY"))
if DRY:  # CPU dry run (TRITON_INTERPRET=1): tiny shape, fake timers
    B, D, L = 2, 64, 300
    triton.testing.do_bench = triton.testing.do_bench_cudagraph = lambda fn, return_mode=None: (fn(), 1.0)[1]
    torch.cuda.get_device_name = lambda: "cpu (dry run)"
    torch.cuda.synchronize = lambda: None
    _mc = measure_copy_gbs
    measure_copy_gbs = lambda: _mc(n=1 << 20, device="cpu", timer=lambda fn: (fn(), 1.0)[1])  # noqa: E731
DEFB = dict(conv.BWD_STREAMS_DEFAULT)
DEFF = dict(KIND="rows", BD=256, num_warps=2, R=8, CH=128)  # the W <= 4 channel-last forward default
VARIANTS = {  # name: (forward config or None = default, backward config or None = default)
    "default": (None, None),
    "reset": (None, dict(DEFB, RESET=True)),  # no per-call torch.zeros of the arrival counters (no memset)
    "reset_fch256": (dict(DEFF, CH=256), dict(DEFB, RESET=True)),  # forward: half the halo rows per program
    "reset_fpf": (dict(DEFF, PF=True), dict(DEFB, RESET=True)),  # forward: prefetch the next step's rows
    "reset_ns2ch512": (None, dict(DEFB, NS=2, num_warps=2, CH=512, RESET=True)),  # same programs, 2 warps each
}
CHECK_ONLY = {"rows_helper": (None, dict(KIND="rows", BD=128, num_warps=2, R=8, CH=128, PF=False, FUSE=2, RESET=True))}
names = [n for n in os.environ.get("CONV6_VARIANTS", ",".join(VARIANTS)).split(",") if n]

x, w, b = make_inputs(B, D, L, W, torch.bfloat16)
gy = torch.randn_like(x)  # channel-last like x
nb = x.numel() * x.element_size()
gbs = measure_copy_gbs()
say(f"{torch.cuda.get_device_name()} triton {triton.__version__} torch {torch.__version__}; copy {gbs:.0f} GB/s; "
    f"floors: fwd {2 * nb / gbs / 1e6:.4f} bwd {3 * nb / gbs / 1e6:.4f} fwd+bwd {5 * nb / gbs / 1e6:.4f} ms")
xg, wg, bg = (t.detach().clone().requires_grad_() for t in (x, w, b))


def use(v):
    conv.FWD_CONFIG_OVERRIDE, conv.BWD_CONFIG_OVERRIDE = v


def fb():
    return torch.autograd.grad(causal_conv1d(xg, wg, bg, activation="silu"), (xg, wg, bg), gy)


def run_variant(v, f=fb):
    use(v)
    try:
        return f()
    finally:
        use((None, None))


# compile every variant (forward + backward) in threads: the compiles are mostly ptxas subprocesses
allv = dict(VARIANTS, **CHECK_ONLY)
bcfgs = {tuple(sorted((allv[n][1] or DEFB).items())): n for n in names + list(CHECK_ONLY)}
fcfgs = {tuple(sorted(allv[n][0].items())): n for n in names if allv[n][0] is not None}
xw8, ww8, bw8 = make_inputs(B, D, 64, 8, torch.bfloat16)  # the W8 forward record's kernel (same specialisation)
with ThreadPoolExecutor(1 if DRY else 8) as ex:  # the interpreter is not thread-safe
    futs = {"bwd:" + n: ex.submit(conv.causal_conv1d_bwd, x, w, b, "silu", None, None, gy, None, False, dict(k))
            for k, n in bcfgs.items()}
    futs.update({"fwd:" + n: ex.submit(conv.causal_conv1d_fwd, x, w, b, "silu", config=dict(k)) for k, n in fcfgs.items()})
    futs["fwd:default"] = ex.submit(conv.causal_conv1d_fwd, x, w, b, "silu")
    futs["fwd:W8"] = ex.submit(conv.causal_conv1d_fwd, xw8, ww8, bw8, "silu")
    for n, fu in futs.items():
        try:
            fu.result()
        except Exception as e:  # reported again by the check below
            say(f"compile {n}: {type(e).__name__}: {str(e)[:200]}")
torch.cuda.synchronize()
say("compiled")

# fp64 check at the timed shape (first 256 channels) through the public autograd path, twice (determinism)
n_ref = min(256, D)
refs = _slice_ref_grads(x, w, b, gy, n_ref)
yref = causal_conv1d_ref(x[:, :n_ref].double(), w[:n_ref].double(), b[:n_ref].double(), "silu")


def rel(o, r):
    return ((o.double() - r).norm() / r.norm()).item()


ok = {}
for n in names + list(CHECK_ONLY):
    try:
        y = run_variant(allv[n], lambda: causal_conv1d(x, w, b, activation="silu"))
        g1, g2 = run_variant(allv[n]), run_variant(allv[n])
        ey = rel(y[:, :n_ref], yref)
        eg = [rel(g[:, :n_ref] if g.dim() == 3 else g[:n_ref], r) for g, r in zip(g1, refs)]
        det = all(torch.equal(p, q) for p, q in zip(g1, g2))
        ok[n] = ey <= tol(torch.bfloat16, "fwd") and max(eg) <= tol(torch.bfloat16, "grad") and det
        say(f"check {n}: y {ey:.1e} dx {eg[0]:.1e} dw {eg[1]:.1e} db {eg[2]:.1e} det {det}{'' if ok[n] else ' FAIL'}")
    except Exception as e:
        ok[n] = False
        say(f"check {n}: FAILED {type(e).__name__}: {str(e)[:300]}")

# interleaved rounds: fwd+bwd eager (do_bench) and from a CUDA graph; medians at the end
timed = [n for n in names if ok.get(n)]
res = {n: ([], []) for n in timed}
say("| round | variant | fwd+bwd ms | fwd+bwd graph ms | of copy (graph) |")
rnd = 0
while timed and rnd < int(os.environ.get("CONV6_ROUNDS", "6")) and left() > 14:
    rnd += 1
    for n in timed:
        if left() < 12:
            break
        use(allv[n])
        try:
            e = triton.testing.do_bench(fb, return_mode="median")
            g = triton.testing.do_bench_cudagraph(fb, return_mode="median")
        finally:
            use((None, None))
        res[n][0].append(e)
        res[n][1].append(g)
        say(f"| {rnd} | {n} | {e:.4f} | {g:.4f} | {5 * nb / g / 1e6 / gbs:.3f} |")


def med(v):
    v = sorted(v)
    return v[len(v) // 2] if v else float("nan")


say("medians: " + "; ".join(f"{n} {med(res[n][0]):.4f} / graph {med(res[n][1]):.4f} ms ({len(res[n][0])} rounds)"
                            for n in timed))

# host cost per fwd+bwd call: tiny shape, 300 calls without sync (host-bound), per variant
if left() > 9:
    xs, ws, bs = (t.detach().clone().requires_grad_() for t in make_inputs(1, 64, 128, W, torch.bfloat16))
    gs = torch.randn_like(xs)
    NH = 3 if DRY else 300

    def tiny():
        return torch.autograd.grad(causal_conv1d(xs, ws, bs, activation="silu"), (xs, ws, bs), gs)

    def host_us():
        """Host time per tiny() call in us: warm-up calls, then NH calls without a sync in between."""
        for _ in range(3 if DRY else 30):
            tiny()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(NH):
            tiny()
        h = (time.perf_counter() - t) / NH * 1e6
        torch.cuda.synchronize()
        return h

    for n in [m for m in ("default", "reset") if ok.get(m)]:
        use(allv[n])
        try:
            h = host_us()
        finally:
            use((None, None))
        say(f"host {n}: {h:.1f} us per fwd+bwd call (B1 D64 L128, {NH} calls, no sync)")
    if left() > 7:
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(NH):
            tiny()
        pr.disable()
        torch.cuda.synchronize()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(14)
        print("\n".join(ln[:150] for ln in s.getvalue().splitlines()[6:24]), flush=True)

# forward records: W8 and B1 L131072 W4 (defaults), checked on 256 channels first
for (bb, ll, ww) in ((8, L, 8), (1, 16 * L, 4)):
    if left() < 5:
        say(f"stop: budget (forward B{bb} L{ll} W{ww} not run)")
        break
    if DRY:
        ll = min(ll, 600)
    xf, wf, bf = make_inputs(bb, D, ll, ww, torch.bfloat16, seed=1)
    fwd = lambda: causal_conv1d(xf, wf, bf, activation="silu")  # noqa: E731
    e = rel(fwd()[:, :n_ref], causal_conv1d_ref(xf[:, :n_ref].double(), wf[:n_ref].double(), bf[:n_ref].double(), "silu"))
    ms = triton.testing.do_bench(fwd, return_mode="median")
    nbf = xf.numel() * xf.element_size()
    say(f"forward B{bb} D{D} L{ll} W{ww}: {ms:.4f} ms, {2 * nbf / ms / 1e6 / gbs:.3f} of copy, y err {e:.1e}"
        f"{'' if e <= tol(torch.bfloat16, 'fwd') else ' FAIL'}")
    del xf, wf, bf

# FAST_LAUNCH (direct launcher calls after the first launch per key), last: a wrong launch could end the process.
# Bitwise equal to the normal launch (aligned inputs and a misaligned x), then host cost and fwd+bwd timing.
if ok.get("reset") and left() > 3:
    conv.FAST_LAUNCH = False
    use(allv["reset"])
    try:
        ref_g = fb()
        xm = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)[1:].view(B, L, D).transpose(1, 2)
        xm.copy_(x)
        xm.requires_grad_()
        fbm = lambda: torch.autograd.grad(causal_conv1d(xm, wg, bg, activation="silu"), (xm, wg, bg), gy)  # noqa: E731
        ref_m = fbm()
        conv.FAST_LAUNCH = True
        same = all(all(torch.equal(p, q) for p, q in zip(ref_g, fb())) for _ in range(3))
        same_m = all(all(torch.equal(p, q) for p, q in zip(ref_m, fbm())) for _ in range(2))
        torch.cuda.synchronize()
        say(f"fast launch: bitwise equal to the normal launch: aligned {same}, misaligned x {same_m}; "
            f"{len(conv._LAUNCH_CACHE)} cached launches")
        del xm, ref_m
        if same and same_m:
            if left() > 2 and "host_us" in globals():
                h = host_us()
                say(f"host reset + fast launch: {h:.1f} us per fwd+bwd call (B1 D64 L128, {NH} calls, no sync)")
            for _ in range(2):
                if left() < 1.5:
                    break
                for fl in (False, True):
                    conv.FAST_LAUNCH = fl
                    e = triton.testing.do_bench(fb, return_mode="median")
                    say(f"| fl | reset{' + fast launch' if fl else ''} | {e:.4f} | - | - |")
    except Exception as e:
        say(f"fast launch: FAILED {type(e).__name__}: {str(e)[:300]}")
    finally:
        conv.FAST_LAUNCH = False
        use((None, None))
say("done")
