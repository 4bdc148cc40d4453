"""SSD forward variants of session 6 (issue 4, helper ssd7f): state_chain, register caps (scan_hp: removed).

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
import sys
import time

T_START = time.time()

import torch  # noqa: E402

import ssdkit as kit  # noqa: E402
from ssdkit import LEAVES, bs, call, chunk, grads, left, make, rel, sync  # noqa: E402

DRY, DEV, DT, HEADS = kit.setup("SSD7F", 100, T_START)  # SSD7F_DRY=1: a CPU dry run (see ssdkit)
VARIANTS = kit.variants(["default", "chain", "chain mr128", "chain n64 w4",  # (scan_hp, chain_hp: removed)
                         # session 6 helper scan7 (the scan kernel's instruction count / registers; .gpu/scan7.sh times
                         # only these and the default)
                         "scan7 e2 ftz mr128", "scan7 e2 split ftz mr128", "scan7 e2 split ftz",
                         "scan7 split ftz mr128", "scan7 r1 mr128", "scan7 ftz mr128", "scan7 bm128 w8 split ftz mr128",
                         "scan7 r1 ftz mr128", "scan7 split mr128", "scan7 split ftz", "scan7 bm128 w8"])
SHAPES = [(1, 512), (1, 1024), (1, 2048)] if DRY else [(8, 8192), (2, 32768), (1, 131072)]  # the third if time is left
REF_T = kit.REF_T


def log(s):
    print(f"[{time.time() - T_START:5.1f}s] {s}", flush=True)


def bench(fn, graph=False):
    if DRY and graph:
        return float("nan")
    return kit.bench(fn, graph, rep=30, graph_rep=20)


def use(name):
    kit.use(name, strict=False)


def warm(i, n):
    t = make(1, REF_T)
    te = make(1, REF_T, extra=True)
    for name in VARIANTS[i::n]:
        use(name)
        try:
            for tt in (t, te):
                kit.fwd_bwd(tt)
                with torch.no_grad():
                    call(tt)
            sync()
            log(f"warm {name}: ok")
        except Exception as e:  # noqa: BLE001 - reported by the main process too
            log(f"warm {name}: {type(e).__name__}: {str(e)[:200]}")


def vs_default(names, b, T):
    t = make(b, T)
    dy, dfin = kit.output_grads(b, T)
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
    fwd, fb = fns(b, T)
    log(f"timing B{b} T{T}: variant | fwd no-grad eager | fwd no-grad graph | fwd+bwd eager (ms, medians so far)")

    def measure(r, name, rr):
        rr["fwd"].append(bench(fwd))
        rr["fwd_g"].append(bench(fwd, graph=True))
        rr["fb"].append(bench(fb))

    return kit.interleaved(names, ("fwd", "fwd_g", "fb"), rounds, measure, log, reserve=6)


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
            rows = kit.kernel_rows(prof, width=26)
            log(f"profile B{b} T{T} fwd {'grad' if grad else 'no-grad'} | {name} | total "
                f"{sum(r[0] for r in rows):.3f} ms: " + "; ".join(f"{k} {ms:.3f}" + (f" x{c}" if c > 1 else "")
                                                             for ms, c, k in rows[:8]))
    chunk.CFG_OVERRIDE.clear()


def main():
    kit.header(log)
    names = [n for n in VARIANTS if n == "default" or n in chunk.SWEEP_CONFIGS]
    ok_ref = kit.ref_errors(names, False, REF_T, log, reserve=10, nograd=True)
    for n, v in kit.ref_errors(names, True, REF_T, log, reserve=10, nograd=True).items():
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
