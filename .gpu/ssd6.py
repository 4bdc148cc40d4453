"""SSD backward variants of session 5 (issue 4): dx_lean, state_bf16, register caps of dx / dCB.

Run from the repo root with PYTHONPATH=/tmp/site:$PWD (see ssd6.sh), $OUT writable. Budget: SSD6_S seconds
(default 100) from the start of this process; every phase checks what is left and stops cleanly.

    python3 .gpu/ssd6.py --warm I N   # compile variants I, I+N, ... (B1 T4096 fwd+bwd + no-grad fwd)
    python3 .gpu/ssd6.py              # check, time, profile

Shape: bf16, H32 P64 N128 G1, chunk 256, dt_softplus, D and dt_bias (bench_ssd.make). Per variant:
(1) relative error against the fp64 chunked reference at B1 T4096 (y, final states, every gradient), and
for the first N_EXTRA variants with z and initial_states too (dz, dinitial_states): bf16 tolerance 1e-2
forward / 2e-2 gradients, NaN fails; (2) relative difference from the default at B8 T8192 of the same; a
variant failing either is not timed; (3) timing, interleaved rounds, medians: fwd+bwd and backward-only
(retain_graph), eager do_bench and CUDA graph; (4) per-kernel CUDA time (torch.profiler) of one fwd+bwd;
(5) if time is left, B2 T32768 / B1 T131072.
"""
import os
import sys
import time

T_START = time.time()

import torch  # noqa: E402

import ssdkit as kit  # noqa: E402
from ssdkit import bench, call, left  # noqa: E402

DRY = kit.setup("SSD6", 100, T_START)[0]  # SSD6_DRY=1: a CPU dry run (see ssdkit)
# (session 9 removed "bwd6 pf", "lean sb2 w8", "dcb pf", "dcb w8", "dcb pf w8", "lean sb2 mr168", "dcb mr168": they
# lost here, session 5)
VARIANTS = kit.variants(["default", "bwd6 w8x", "bwd6", "bwd6 sb3", "lean mr168", "lean", "lean bj128 w8"])
N_EXTRA = 4  # the first N_EXTRA variants are also checked with z and initial_states (dz, dinitial_states)
SHAPE, LONG = kit.SHAPE, kit.LONG
say = kit.say


def warm(i, n):
    def nograd_default(name, t):
        if name == "default":
            with torch.no_grad():
                call(t)

    kit.warm(VARIANTS[i::n], VARIANTS[:N_EXTRA], nograd_default)


# Session 5's call: capturing autograd.grad through do_bench_cudagraph failed ("operation failed due to a previous
# error during capture") and left the RNG in capture state, so the profile after it failed too. Off by default.
GRAPH = os.environ.get("SSD6_GRAPH", "0") == "1"


def timing(names, b, T, rounds=3, graph=GRAPH):
    """Interleaved rounds, medians of do_bench medians (ms); the CUDA-graph numbers from round 1 only."""
    fb, bwd = kit.fb_bwd_fns(b, T)
    print(f"timing B{b} T{T}: variant | fwd+bwd eager | bwd eager | fwd+bwd graph | bwd graph (ms, median "
          f"of rounds)", flush=True)

    def measure(r, name, rr):
        rr["fb"].append(bench(fb))
        rr["bwd"].append(bench(bwd))
        if graph and r == min(1, rounds - 1):  # host-free numbers drift little: one round (GPU time)
            for key, f in (("fb_g", fb), ("bwd_g", bwd)):
                try:
                    rr[key].append(bench(f, graph=True))
                except Exception as e:  # noqa: BLE001 - graph capture may not work with autograd here
                    rr[key].append(float("nan"))
                    if name == names[0]:
                        print(f"  graph {key} {name}: {type(e).__name__}: {str(e)[:120]}", flush=True)

    return kit.interleaved(names, ("fb", "bwd", "fb_g", "bwd_g"), rounds, measure, say)


def main():
    kit.header(say)
    good = kit.checked(VARIANTS, N_EXTRA)
    res = timing(good, *SHAPE)
    ranked = sorted((n for n in good if n != "default" and res[n]["fb"] == res[n]["fb"]), key=lambda n: res[n]["fb"])
    print(f"[{time.time() - T_START:.0f}s] summary B{SHAPE[0]} T{SHAPE[1]} (ms: fwd+bwd eager / bwd eager / "
          f"fwd+bwd graph / bwd graph):", flush=True)
    for n in ["default"] + ranked:
        r = res[n]
        print(f"| {n} | {r['fb']:.3f} | {r['bwd']:.3f} | {r['fb_g']:.3f} | {r['bwd_g']:.3f} |", flush=True)
    kit.profile_fb(["default"] + ranked[:4], *SHAPE, top=12)
    if ranked and left() > 20:
        best = ranked[0]
        for b, T in LONG:
            if left() < 15:
                break
            timing(["default", best], b, T, rounds=2, graph=False)
    print(f"done at {time.time() - T_START:.0f}s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--warm":
        warm(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
