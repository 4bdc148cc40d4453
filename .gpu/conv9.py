"""conv1d (issue 3) conv9: wave quantisation of the row forward and the streams backward at B8 D2304 L8192 W4 bf16
SiLU channel-last, default vs wave-sized forward grids (config key UNEVEN, conv._time_programs), even-chunk controls
and backward variants (the masked walk, R4: 4 rows a step).

Offline count (sm_90, Triton 3.6): forward rows BD256 2 warps 80 registers -> 12 resident programs per SM, grid
64 x 9 x 8 = 4608 = 2.91 waves of 1584 on 132 SMs; backward streams (default) 4 warps 80 registers -> 6 per SM,
grid 8 x 36 x 8 = 2304 = 2.91 waves of 792. This script re-reads each variant's registers from the compiled kernel
and asks the driver for its occupancy (cuOccupancyMaxActiveBlocksPerMultiprocessor), then sizes the UNEVEN grids
from that. (The streams backward's UNEVEN grids, timed in session 8 as slower than the default, were removed in
session 9: bench/RESULTS.md.)

In order: device, copy bandwidth; every kernel compiled in threads; occupancy and waves per variant; each variant
checked against fp64 on the first 256 channels (forward y; backward dx, dweight, dbias) and run twice (bitwise
equal); then forward alone and backward alone timed per variant, interleaved rounds (do_bench median, eager, and
do_bench_cudagraph, host-free), one row per measurement as it is taken, medians; then forward + backward through
autograd (eager and graph) for default, the best forward, the best backward and both; then W8 and B1 L131072 W4
forward (default vs one-wave UNEVEN). Stops cleanly at CONV9_S seconds (default 95).
CONV9_DRY=1 (with TRITON_INTERPRET=1): CPU dry run of the logic at a tiny shape with fake timers."""
import ctypes
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

T0 = time.time()
BUDGET = float(os.environ.get("CONV9_S", "95"))
sys.path.insert(0, "bench")
import torch  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402
from bench_conv1d import make_inputs, _slice_ref_grads  # noqa: E402
from conftest import measure_copy_gbs  # noqa: E402  (bench/conftest.py, first on sys.path)
from helpers import tol  # noqa: E402
from hybridna_kernels.conv1d import conv, causal_conv1d, causal_conv1d_ref  # noqa: E402
from hybridna_kernels.utils import cdiv  # noqa: E402


def left():
    return BUDGET - (time.time() - T0)


def say(*a):
    print(*a, f"[{time.time() - T0:.0f} s]", flush=True)


B, D, L, W = 8, 2304, 8192, 4
DRY = bool(os.environ.get("CONV9_DRY"))
# do_bench: ~rep ms of calls after 10 ms warm-up, median; do_bench_cudagraph: 10 replays of a graph of ~rep ms of
# calls, median of the 10
bench = lambda fn: triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")  # noqa: E731
gbench = lambda fn: triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median")  # noqa: E731
if DRY:  # CPU dry run (TRITON_INTERPRET=1): tiny shape, fake timers
    B, D, L = 2, 64, 300
    bench = gbench = lambda fn: (fn(), 1.0)[1]  # noqa: E731
    torch.cuda.get_device_name = lambda: "cpu (dry run)"
    torch.cuda.synchronize = lambda: None
    _mc = measure_copy_gbs
    measure_copy_gbs = lambda: _mc(n=1 << 20, device="cpu", timer=lambda fn: (fn(), 1.0)[1])  # noqa: E731
DEV = "cpu" if DRY else "cuda"
SMS = 2 if DRY else torch.cuda.get_device_properties(0).multi_processor_count

DEFF = dict(KIND="rows", BD=256, num_warps=2, R=8, CH=128)  # the W <= 4 channel-last forward default
DEFB = dict(conv.BWD_STREAMS_DEFAULT)
# name: (config or None = default, waves for UNEVEN (NP from the measured occupancy) or None, predicted occupancy)
FWD = {
    "default": (None, None, 12),
    "u1": (dict(DEFF, UNEVEN=True), 1, 12),  # one full wave: 22 programs along time (372-373 rows)
    "u2": (dict(DEFF, UNEVEN=True), 2, 12),  # two full waves: 44 (186-187 rows)
    "ch512": (dict(DEFF, CH=512), None, 12),  # even chunks, 1152 programs: one wave at 73% of the slots
}
BWD = {
    "default": (None, None, 6),
    "ch1024": (dict(DEFB, CH=1024), None, 6),  # 576 programs: one wave at 73% of the slots (same kernel)
    "notail": (dict(DEFB, TAIL=False, EVEN=False), None, 6),  # control: the masked walk on the default grid
    "ch512": (dict(DEFB, CH=512), None, 6),  # 1152 programs: 1.45 waves (predicted worse)
    "r4": (dict(DEFB, R=4), None, 6),  # session 8: 4 rows a step (R=8 is the most the row loaders take)
}
names_f = [n for n in os.environ.get("CONV9_FWD", ",".join(FWD)).split(",") if n]
names_b = [n for n in os.environ.get("CONV9_BWD", ",".join(BWD)).split(",") if n]


def pairs_of(cfg, b, d):
    return b * cdiv(d, cfg["BD"])


def sized(cfg, waves, occ, b, d):
    """cfg with NP set for `waves` whole waves of `occ` resident programs per SM at batch b, dim d."""
    if cfg is None or waves is None:
        return cfg
    return dict(cfg, NP=max(1, waves * SMS * occ // pairs_of(cfg, b, d)))


cfgs_f = {n: sized(FWD[n][0], FWD[n][1], FWD[n][2], B, D) for n in names_f}
cfgs_b = {n: sized(BWD[n][0], BWD[n][1], BWD[n][2], B, D) for n in names_b}

x, w, b = make_inputs(B, D, L, W, torch.bfloat16)
gy = torch.randn_like(x)  # channel-last like x
nb = x.numel() * x.element_size()
gbs = measure_copy_gbs()
FL = {"fwd": 2 * nb / gbs / 1e6, "bwd": 3 * nb / gbs / 1e6, "fwd+bwd": 5 * nb / gbs / 1e6}
say(f"{torch.cuda.get_device_name()} ({SMS} SMs) triton {triton.__version__} torch {torch.__version__}; copy {gbs:.0f} "
    f"GB/s (1 GiB d2d); floors (bytes / copy bw): fwd {FL['fwd']:.4f} bwd {FL['bwd']:.4f} fwd+bwd {FL['fwd+bwd']:.4f} ms")


def fwd_call(cfg, xx=None, ww=None, bb=None):
    return conv.causal_conv1d_fwd(x if xx is None else xx, w if ww is None else ww, b if bb is None else bb, "silu",
                                  config=cfg)[0]


def bwd_call(cfg):
    return conv.causal_conv1d_bwd(x, w, b, "silu", None, None, gy, None, False, config=cfg)[:3]


# compile every kernel in threads (mostly ptxas subprocesses); W8 forward kernels for the records at the end
xw8, ww8, bw8 = make_inputs(B, D, 64, 8, torch.bfloat16)
W8U = dict(KIND="rows", BD=128, num_warps=2, R=8, CH=128, UNEVEN=True)  # the W > 4 default's tiles
jobs = {f"fwd:{n}": (fwd_call, c) for n, c in cfgs_f.items()}
jobs.update({f"bwd:{n}": (bwd_call, c) for n, c in cfgs_b.items()})
jobs["fwd:W8"] = (lambda c: fwd_call(c, xw8, ww8, bw8), None)
jobs["fwd:W8u"] = (lambda c: fwd_call(c, xw8, ww8, bw8), dict(W8U, NP=37))  # CH not a multiple of 16, like NP 116
with ThreadPoolExecutor(1 if DRY else 10) as ex:  # the interpreter is not thread-safe
    futs = {n: ex.submit(f, c) for n, (f, c) in jobs.items()}
    for n, fu in futs.items():
        try:
            fu.result()
        except Exception as e:  # reported again by the checks below
            say(f"compile {n}: {type(e).__name__}: {str(e)[:200]}")
torch.cuda.synchronize()
say("compiled")

# occupancy: each variant's compiled kernel (captured from JITFunction.run), registers, and the driver's count
CAP = []


def _wrap(fn):
    orig = fn.run

    def run(*a, **k):
        kern = orig(*a, **k)
        CAP.append(kern)
        return kern
    fn.run = run


try:
    _wrap(conv._conv1d_fwd_rows_kernel)
    _wrap(conv._conv1d_bwd_streams_kernel)
except Exception as e:  # the interpreter's kernels (dry run)
    say(f"no kernel capture: {type(e).__name__}: {e}")
try:
    _cu = ctypes.CDLL("libcuda.so.1")
except OSError:
    _cu = None


def occupancy(kern, nw):
    """(registers, spills, programs per SM by the driver, by the register count) of a compiled kernel."""
    regs = getattr(kern, "n_regs", None)
    spills = getattr(kern, "n_spills", None)
    by_regs = None
    if regs:
        per_warp = cdiv(regs * 32, 256) * 256
        by_regs = min(4 * (16384 // per_warp) // nw, 32, 64 // nw)  # 4 sub-partitions of 16384 registers
    drv = None
    if _cu is not None and getattr(kern, "function", None):
        n = ctypes.c_int()
        if _cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(ctypes.byref(n), ctypes.c_void_p(kern.function),
                                                          ctypes.c_int(nw * 32),
                                                          ctypes.c_size_t(kern.metadata.shared)) == 0:
            drv = n.value
    return regs, spills, drv, by_regs


def grid_of(kind, cfg, b, d, ll):
    """Programs of the launch the launcher makes for cfg (None: the default) at (b, d, ll)."""
    xx = torch.empty(b, d, ll, device="meta").transpose(1, 2).contiguous().transpose(1, 2)
    c = cfg or (DEFF if kind == "fwd" else DEFB)
    ns = c.get("NS", 1) if kind == "bwd" else 1
    if c.get("UNEVEN"):
        n_t = conv._time_programs(xx, c, pairs_of(c, b, d), SMS)
    else:
        n_t = cdiv(cdiv(ll, c["CH"]), ns)  # (no _rows_chunk halving at these shapes)
    return n_t * pairs_of(c, b, d), n_t, c.get("num_warps", 1)


say("| kind | variant | programs (along time) | regs | spills | per SM (driver / regs) | waves |")
for kind, cfgs, table, call in (("fwd", cfgs_f, FWD, fwd_call), ("bwd", cfgs_b, BWD, bwd_call)):
    for n in list(cfgs):
        try:
            CAP.clear()
            call(cfgs[n])
            torch.cuda.synchronize()
            kern = CAP[-1] if CAP else None
            progs, n_t, nw = grid_of(kind, cfgs[n], B, D, L)
            regs, spills, drv, by_regs = occupancy(kern, nw) if kern is not None else (None, None, None, None)
            occ = drv or by_regs or table[n][2]
            if table[n][1] is not None and occ != table[n][2]:  # resize the one-wave grids to the real occupancy
                cfgs[n] = sized(table[n][0], table[n][1], occ, B, D)
                progs, n_t, nw = grid_of(kind, cfgs[n], B, D, L)
            say(f"| {kind} | {n} | {progs} ({n_t}) | {regs} | {spills} | {drv} / {by_regs} | "
                f"{progs / (SMS * occ):.2f} |")
        except Exception as e:
            say(f"| {kind} | {n} | occupancy FAILED {type(e).__name__}: {str(e)[:200]} |")

# fp64 check at the timed shape (first 256 channels), twice (determinism)
n_ref = min(256, D)
refs = _slice_ref_grads(x, w, b, gy, n_ref)
yref = causal_conv1d_ref(x[:, :n_ref].double(), w[:n_ref].double(), b[:n_ref].double(), "silu")


def rel(o, r):
    return ((o.double() - r).norm() / r.norm()).item()


ok = {}
for n in names_f:
    try:
        y1, y2 = fwd_call(cfgs_f[n]), fwd_call(cfgs_f[n])
        ey, det = rel(y1[:, :n_ref], yref), torch.equal(y1, y2)
        ok["fwd", n] = ey <= tol(torch.bfloat16, "fwd") and det
        say(f"check fwd {n}: y {ey:.1e} det {det}{'' if ok['fwd', n] else ' FAIL'}")
    except Exception as e:
        ok["fwd", n] = False
        say(f"check fwd {n}: FAILED {type(e).__name__}: {str(e)[:300]}")
for n in names_b:
    try:
        g1, g2 = bwd_call(cfgs_b[n]), bwd_call(cfgs_b[n])
        eg = [rel(g[:, :n_ref] if g.dim() == 3 else g[:n_ref], r) for g, r in zip(g1, refs)]
        det = all(torch.equal(p, q) for p, q in zip(g1, g2))
        ok["bwd", n] = max(eg) <= tol(torch.bfloat16, "grad") and det
        say(f"check bwd {n}: dx {eg[0]:.1e} dw {eg[1]:.1e} db {eg[2]:.1e} det {det}{'' if ok['bwd', n] else ' FAIL'}")
    except Exception as e:
        ok["bwd", n] = False
        say(f"check bwd {n}: FAILED {type(e).__name__}: {str(e)[:300]}")


def med(v):
    v = sorted(v)
    return v[len(v) // 2] if v else float("nan")


def frac(kind, ms):
    return FL[kind] / ms


# forward alone and backward alone, interleaved rounds
res = {}
say("| round | kind | variant | eager ms | graph ms | of copy (graph) |")
todo = [("fwd", n) for n in names_f if ok.get(("fwd", n))] + [("bwd", n) for n in names_b if ok.get(("bwd", n))]
rnd = 0
while todo and rnd < int(os.environ.get("CONV9_ROUNDS", "4")) and left() > 30:
    rnd += 1
    for kind, n in todo:
        if left() < 25:
            break
        c = (cfgs_f if kind == "fwd" else cfgs_b)[n]
        f = (lambda: fwd_call(c)) if kind == "fwd" else (lambda: bwd_call(c))
        e, g = bench(f), gbench(f)
        res.setdefault((kind, n), ([], []))
        res[kind, n][0].append(e)
        res[kind, n][1].append(g)
        say(f"| {rnd} | {kind} | {n} | {e:.4f} | {g:.4f} | {frac(kind, g):.3f} |")
for kind in ("fwd", "bwd"):
    say(f"medians {kind}: " + "; ".join(f"{n} {med(v[0]):.4f} / graph {med(v[1]):.4f} ({frac(kind, med(v[1])):.3f})"
                                        for (k, n), v in res.items() if k == kind))


def best(kind):
    """The variant (not the default) with the lowest graph median, or None."""
    c = [(med(v[1]), n) for (k, n), v in res.items() if k == kind and n != "default"]
    return min(c)[1] if c else None


# forward + backward through autograd: default, best forward, best backward, both
xg, wg, bg = (t.detach().clone().requires_grad_() for t in (x, w, b))


def fb():
    return torch.autograd.grad(causal_conv1d(xg, wg, bg, activation="silu"), (xg, wg, bg), gy)


bf_, bb_ = best("fwd"), best("bwd")
combos = {"default": ("default", "default")}
for fn_, bn_ in ((bf_, "default"), ("default", bb_), (bf_, bb_)):
    if fn_ and bn_:
        combos.setdefault(f"f:{fn_} b:{bn_}", (fn_, bn_))
res2 = {}
say("| round | fwd+bwd (autograd) | eager ms | graph ms | of copy (graph) |")
rnd = 0
while len(combos) > 1 and rnd < 3 and left() > 10:
    rnd += 1
    for cn, (fn_, bn_) in combos.items():
        if left() < 8:
            break
        conv.FWD_CONFIG_OVERRIDE, conv.BWD_CONFIG_OVERRIDE = cfgs_f[fn_], cfgs_b[bn_]
        try:
            if rnd == 1 and cn != "default":  # through autograd once against the fp64 gradients
                eg = max(rel(g[:, :n_ref] if g.dim() == 3 else g[:n_ref], r) for g, r in zip(fb(), refs))
                if eg > tol(torch.bfloat16, "grad"):
                    say(f"{cn}: autograd check FAIL {eg:.1e}")
                    continue
            e, g = bench(fb), gbench(fb)
        finally:
            conv.FWD_CONFIG_OVERRIDE = conv.BWD_CONFIG_OVERRIDE = None
        res2.setdefault(cn, ([], []))
        res2[cn][0].append(e)
        res2[cn][1].append(g)
        say(f"| {rnd} | {cn} | {e:.4f} | {g:.4f} | {frac('fwd+bwd', g):.3f} |")
say("medians fwd+bwd: " + "; ".join(f"{n} {med(v[0]):.4f} / graph {med(v[1]):.4f} ({frac('fwd+bwd', med(v[1])):.3f})"
                                    for n, v in res2.items()))

# forward records: W8 and B1 L131072 W4, default vs one full wave of UNEVEN programs (occupancy of that kernel)
for (bb, ll, ww) in ((8, L, 8), (1, 16 * L, 4)):
    if left() < 5:
        say(f"stop: budget (forward B{bb} L{ll} W{ww} not run)")
        break
    if DRY:
        ll = min(ll, 600)
    xf, wf, bf = make_inputs(bb, D, ll, ww, torch.bfloat16, seed=1)
    yr = causal_conv1d_ref(xf[:, :n_ref].double(), wf[:n_ref].double(), bf[:n_ref].double(), "silu")
    nbf = xf.numel() * xf.element_size()
    base = dict(DEFF) if ww <= 4 else dict(W8U, UNEVEN=False)
    CAP.clear()
    fwd_call(dict(base, UNEVEN=True, NP=37), xf, wf, bf)
    o = occupancy(CAP[-1], 2) if CAP and CAP[-1] is not None else (None,) * 4
    occ = o[2] or o[3] or 12
    vs = {"default": None, f"u1 (occ {occ})": sized(dict(base, UNEVEN=True), 1, occ, bb, D)}
    for vn, c in vs.items():
        if left() < 3:
            break
        e = rel(fwd_call(c, xf, wf, bf)[:, :n_ref], yr)
        ms = bench(lambda: fwd_call(c, xf, wf, bf))
        say(f"forward B{bb} D{D} L{ll} W{ww} {vn}: {ms:.4f} ms, {2 * nbf / ms / 1e6 / gbs:.3f} of copy, y err {e:.1e}"
            f"{'' if e <= tol(torch.bfloat16, 'fwd') else ' FAIL'}")
    del xf, wf, bf
say("done")
