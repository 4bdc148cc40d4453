"""SSD forward variants of session 6 (issue 4, helper ssd7f): state_chain, scan_hp, register caps.

Run from the repo root with PYTHONPATH=/tmp/site:$PWD (see ssd7f.sh), $OUT writable. Budget: SSD7F_S seconds
(default 100) from the start of this process; every phase checks what is left and stops cleanly.

    python3 .gpu/ssd7f.py --warm I N   # compile variants I, I+N, ... (B1 T4096: fwd+bwd, +z +init, no-grad fwd)
    python3 .gpu/ssd7f.py              # check, time, profile

Shape: bf16, H32 P64 N128 G1, chunk 256, dt_softplus, D and dt_bias (bench_ssd.make). Per variant:
(1) relative error against the fp64 chunked reference at B1 T4096: y, final states and every gradient, plain
and with z + initial_states, and y / final states of the no-grad forward (bf16 tolerance 1e-2 forward / 2e-2
gradients, NaN fails); (2) difference from the default at B8 T8192 (no-grad y / final; with grad y / final /
gradients; "=" where bitwise equal: both variants keep the default's arithmetic); a variant failing (1) or
with NaN in (2) is not timed; (3) timing, interleaved rounds, medians: no-grad forward eager (do_bench of the
public call) and CUDA graph (inputs made before capture), fwd+bwd eager, at B8 T8192 then B2 T32768;
(4) per-kernel CUDA time (torch.profiler) of one no-grad forward and one with-grad forward.
"""
import os
import statistics
import sys
import time

T_START = time.time()
BUDGET = float(os.environ.get("SSD7F_S", "100"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import torch  # noqa: E402
import triton.testing  # noqa: E402

import bench_ssd as bs  # noqa: E402
from hybridna_kernels import ssd_scan  # noqa: E402
from hybridna_kernels.ssd import chunk  # noqa: E402
from hybridna_kernels.ssd.naive import ssd_chunked_ref  # noqa: E402

VARIANTS = ["default", "chain", "chain h2 w16", "scan hp2 w8", "scan hp4 w8", "chain h2 w16 hp2 w8",
            "chain h2 w16 hp4 w8", "chain hp2 w8", "chain mr128", "chain n64 w4", "scan hp2 mr168", "scan hp4 w16",
            "chain h2 w8"]
if os.environ.get("SSD7F_VARIANTS"):
    VARIANTS = os.environ["SSD7F_VARIANTS"].split(",")
LEAVES = ("x", "dt", "A", "B", "C", "D", "dt_bias")
# SSD7F_DRY=1: a CPU dry run of the script's logic (TRITON_INTERPRET=1, fp16, tiny shapes, wall-clock timer)
DRY = os.environ.get("SSD7F_DRY") == "1"
DEV = "cpu" if DRY else "cuda"
DT = torch.float16 if DRY else torch.bfloat16
SHAPES = [(1, 512), (1, 1024), (1, 2048)] if DRY else [(8, 8192), (2, 32768), (1, 131072)]  # the third if time is left
REF_T = 512 if DRY else 4096
HEADS = 2 if DRY else bs.H


def left():
    return BUDGET - (time.time() - T_START)


def log(s):
    print(f"[{time.time() - T_START:5.1f}s] {s}", flush=True)


def sync():
    if not DRY:
        torch.cuda.synchronize()


def bench(fn, graph=False):
    if DRY:
        if graph:
            return float("nan")
        t0 = time.time()
        fn()
        return (time.time() - t0) * 1e3
    if graph:
        return triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median")
    return triton.testing.do_bench(fn, warmup=10, rep=30, return_mode="median")


def use(name):
    chunk.CFG_OVERRIDE.clear()
    chunk.CFG_OVERRIDE.update(chunk.SWEEP_CONFIGS.get(name, {}))


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


def rel(a, r):
    a, r = a.double(), r.double()
    return ((a - r).norm() / r.norm().clamp_min(1e-30)).item()


def warm(i, n):
    t = make(1, REF_T)
    te = make(1, REF_T, extra=True)
    for name in VARIANTS[i::n]:
        use(name)
        try:
            for tt in (t, te):
                y, fin = call(tt)
                grads(tt, (y, fin), (torch.randn_like(y), torch.randn_like(fin)))
                with torch.no_grad():
                    call(tt)
            sync()
            log(f"warm {name}: ok")
        except Exception as e:  # noqa: BLE001 - reported by the main process too
            log(f"warm {name}: {type(e).__name__}: {str(e)[:200]}")


def ref_errors(names, extra):
    """fp64 chunked reference at B1 T4096 (extra: with z and initial_states); errors per variant."""
    t = make(1, REF_T, extra=extra)
    t64 = {k: v.detach().double().requires_grad_(True) for k, v in t.items()}
    y_r, fin_r = ssd_chunked_ref(t64["x"], t64["dt"], t64["A"], t64["B"], t64["C"], chunk_size=bs.Q, D=t64["D"],
                                 dt_bias=t64["dt_bias"], dt_softplus=True, z=t64.get("z"),
                                 initial_states=t64.get("init"), return_final_states=True)
    dy, dfin = torch.randn_like(y_r), torch.randn_like(fin_r)
    g_r = grads(t64, (y_r, fin_r), (dy, dfin))
    ok = {}
    for name in names:
        if left() < 10:
            log(f"{name}: not checked (budget)")
            continue
        use(name)
        try:
            y, fin = call(t)
            g = grads(t, (y, fin), (dy.to(y.dtype), dfin.float()))
            with torch.no_grad():
                y0, fin0 = call(t)
            errs = {"y": rel(y, y_r), "final": rel(fin, fin_r), "y_nog": rel(y0, y_r), "fin_nog": rel(fin0, fin_r)}
            errs.update({k: rel(g[k], g_r[k]) for k in g_r})
            bad = [k for k, e in errs.items() if not e < (2e-2 if k.startswith("d") else 1e-2)]
            worst = max((k for k in errs if k.startswith("d")), key=errs.get)
            log(f"ref B1 T{REF_T}{' +z +init' if extra else ''} | {name} | y {errs['y']:.1e} final {errs['final']:.1e}"
                f" nograd y {errs['y_nog']:.1e} final {errs['fin_nog']:.1e} | worst {worst} {errs[worst]:.1e} | "
                + " ".join(f"{k} {v:.1e}" for k, v in errs.items() if k.startswith("d"))
                + (f" | FAIL {bad}" if bad else " | ok"))
            ok[name] = not bad
        except Exception as e:  # noqa: BLE001
            log(f"ref | {name} | FAILED {type(e).__name__}: {str(e)[:300]}")
            ok[name] = False
    return ok


def vs_default(names, b, T):
    t = make(b, T)
    g = torch.Generator(device=DEV).manual_seed(2)
    dy = torch.randn(b, T, HEADS, bs.P, generator=g, device=DEV).to(DT)
    dfin = torch.randn(b, HEADS, bs.P, bs.N, generator=g, device=DEV)
    base = None
    ok = {}
    for name in names:
        if left() < 10:
            break
        use(name)
        try:
            with torch.no_grad():
                y0, fin0 = call(t)
            y, fin = call(t)
            out = {"y_nog": y0, "fin_nog": fin0, "y": y.detach(), "final": fin.detach(),
                   **grads(t, (y, fin), (dy, dfin))}
            del y, fin
            if base is None:
                base = out
                ok[name] = True
                continue
            d = {k: ("=" if torch.equal(out[k], base[k]) else f"{rel(out[k], base[k]):.1e}") for k in base}
            nan = [k for k, v in out.items() if not torch.isfinite(v).all()]
            log(f"vs default B{b} T{T} | {name} | " + " ".join(f"{k} {v}" for k, v in d.items())
                + (f" | NaN in {nan}" if nan else ""))
            ok[name] = not nan
        except Exception as e:  # noqa: BLE001
            log(f"vs default | {name} | FAILED {type(e).__name__}: {str(e)[:300]}")
            ok[name] = False
    return ok


def fns(b, T):
    """no-grad forward (eager and graph-safe: inputs made here, before any capture) and fwd+bwd (y only)."""
    t = make(b, T)
    tn = {k: v.detach() for k, v in t.items()}
    dy = torch.randn(b, T, HEADS, bs.P, device=DEV).to(DT)
    leaves = [t[k] for k in LEAVES]

    def fwd():
        with torch.no_grad():
            call(tn, final=False)

    def fb():
        torch.autograd.grad(call(t, final=False), leaves, dy)

    return fwd, fb


def timing(names, b, T, rounds=3):
    """Interleaved rounds; per variant the median over rounds of do_bench medians (ms)."""
    res = {n: {"fwd": [], "fwd_g": [], "fb": []} for n in names}
    fwd, fb = fns(b, T)
    log(f"timing B{b} T{T}: variant | fwd no-grad eager | fwd no-grad graph | fwd+bwd eager (ms, medians so far)")
    for r in range(rounds):
        for name in names:
            if left() < 6:
                break
            use(name)
            rr = res[name]
            try:
                rr["fwd"].append(bench(fwd))
                rr["fwd_g"].append(bench(fwd, graph=True))
                rr["fb"].append(bench(fb))
            except Exception as e:  # noqa: BLE001
                log(f"  {name}: FAILED {type(e).__name__}: {str(e)[:200]}")
            med = {k: (statistics.median(v) if v else float("nan")) for k, v in rr.items()}
            log(f"  round {r} | {name} | {med['fwd']:.3f} | {med['fwd_g']:.3f} | {med['fb']:.3f}")
    chunk.CFG_OVERRIDE.clear()
    return {n: {k: (statistics.median(v) if v else float("nan")) for k, v in rr.items()} for n, rr in res.items()}


def profile(names, b, T):
    from torch.profiler import ProfilerActivity, profile as tprofile

    t = make(b, T)
    tn = {k: v.detach() for k, v in t.items()}
    for name in names:
        for grad in (False, True):
            if left() < 5:
                return
            use(name)
            tt = t if grad else tn
            with torch.set_grad_enabled(grad):
                call(tt, final=False)
                sync()
                with tprofile(activities=[ProfilerActivity.CPU if DRY else ProfilerActivity.CUDA]) as prof:
                    call(tt, final=False)
                    sync()
            rows = []
            for ev in prof.key_averages():
                ms = (ev.self_cpu_time_total if DRY else
                      (getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0))) / 1e3
                if ms > 0:
                    rows.append((ms, ev.count, ev.key.split("(")[0].replace("_kernel", "")[:26]))
            rows.sort(reverse=True)
            log(f"profile B{b} T{T} fwd {'grad' if grad else 'no-grad'} | {name} | total "
                f"{sum(r[0] for r in rows):.3f} ms: " + "; ".join(f"{k} {ms:.3f}" + (f" x{c}" if c > 1 else "")
                                                             for ms, c, k in rows[:8]))
    chunk.CFG_OVERRIDE.clear()


def main():
    log(f"{'cpu (dry run)' if DRY else torch.cuda.get_device_name()} torch {torch.__version__} "
        f"triton {triton.__version__} budget {BUDGET:.0f}s")
    if not DRY:
        log(f"copy bandwidth {bs.measure_copy_gbs():.0f} GB/s")
    names = [n for n in VARIANTS if n == "default" or n in chunk.SWEEP_CONFIGS]
    ok_ref = ref_errors(names, False)
    for n, v in ref_errors(names, True).items():
        ok_ref[n] = ok_ref.get(n, False) and v
    ok_def = vs_default(names, *SHAPES[0])
    good = [n for n in names if ok_ref.get(n) and ok_def.get(n)]
    log(f"timed: {good}; not timed: {[n for n in names if n not in good]}")
    allres = {}
    for i, (b, T) in enumerate(SHAPES):
        if left() < 15 + 10 * (i == 2):
            break
        allres[(b, T)] = res = timing(good, b, T, rounds=3 if i == 0 else 2)
        ranked = sorted((n for n in good if n != "default" and res[n]["fwd"] == res[n]["fwd"]),
                        key=lambda n: res[n]["fwd"])
        log(f"summary B{b} T{T} (ms: fwd no-grad eager / graph / fwd+bwd eager; issue: fwd <= "
            f"{ {8192: 0.95, 32768: 0.98}.get(T, 2.2)}, fwd+bwd <= {4.0 if T <= 32768 else 8.4}):")
        for n in ["default"] + ranked:
            r = res[n]
            print(f"| {n} | {r['fwd']:.3f} | {r['fwd_g']:.3f} | {r['fb']:.3f} |", flush=True)
        if i == 0:
            good = ["default"] + ranked[:5]  # the best five go on to B2 T32768, the best two to B1 T131072
            good3 = ["default"] + ranked[:2]
        elif i == 1:
            good = good3
    res = allres.get(SHAPES[0])
    if res:
        ranked = sorted((n for n in res if n != "default" and res[n]["fwd"] == res[n]["fwd"]),
                        key=lambda n: res[n]["fwd"])
        profile(["default"] + ranked[:3], *SHAPES[0])
    log("done")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--warm":
        warm(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
