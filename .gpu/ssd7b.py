"""SSD backward variants of session 6 (issue 4, helper ssd7b), on top of bwd6 (the bf16 default): ds_split (dS as
bf16 hi / lo planes), dcb16 (dCB buffer in bf16), bwd_ftz (ex2.approx.ftz decay tiles in dCB / dx), cbb16, dCB at
8 warps (see chunk.py SWEEP_CONFIGS "bwd7 ..."; the fused reverse state kernel, two dCB heads per iteration and
dcb_r1 were removed in session 9).

Run from the repo root with PYTHONPATH=/tmp/site:$PWD (see ssd7b.sh), $OUT writable. Budget: SSD7B_S seconds
(default 110) from the start of this process; every phase checks what is left and stops cleanly.

    python3 .gpu/ssd7b.py --warm I N   # compile variants I, I+N, ... (B1 T4096 fwd+bwd)
    python3 .gpu/ssd7b.py              # check, time (eager, then CUDA graph), profile, long shapes

Shape: bf16, H32 P64 N128 G1, chunk 256, dt_softplus, D and dt_bias (bench_ssd.make). Per variant:
(1) relative error against the fp64 chunked reference at B1 T4096 (y, final states, every gradient), and
for the first N_EXTRA variants with z and initial_states too (dz, dinitial_states): bf16 tolerance 1e-2
forward / 2e-2 gradients, NaN fails; (2) relative difference from the default at B8 T8192 of the same; a
variant failing either is not timed; (3) timing, interleaved rounds, medians: fwd+bwd and backward-only
(retain_graph), eager do_bench; (4) host-free: forward + backward (the internal scan_forward / scan_backward, no
autograd, every input made before capture) replayed from a CUDA graph; (5) per-kernel CUDA time (torch.profiler)
of one fwd+bwd; (6) if time is left, B2 T32768 / B1 T131072 (default and the best variant, eager and graph).
"""
import statistics
import sys
import time

T_START = time.time()

import torch  # noqa: E402

import ssdkit as kit  # noqa: E402
from ssdkit import bench, bs, chunk, left, make, sync, use  # noqa: E402

DRY, DEV, DT, HEADS = kit.setup("SSD7B", 110, T_START)  # SSD7B_DRY=1: a CPU dry run (see ssdkit)
# (session 9 removed "bwd7 fb ds", "bwd7 h2 w8", "bwd7 fb", "bwd7 r1": their options lost here, session 6)
VARIANTS = kit.variants(["default", "bwd7 ds dcb16 ftz", "bwd7 cbb16", "bwd7 ds dcb16 ftz w8",
                         "bwd7 ftz", "bwd7 ds dcb16", "bwd7 ds", "bwd7 dcb16", "bwd7 dcb w8", "bwd7 ds64"])
N_EXTRA = 3  # the first N_EXTRA variants are also checked with z and initial_states (dz, dinitial_states)
SHAPE, LONG = kit.SHAPE, kit.LONG
say = kit.say


def warm(i, n):
    kit.warm(VARIANTS[i::n], VARIANTS[:N_EXTRA])


def timing(names, b, T, rounds=3):
    """Interleaved eager rounds, medians of do_bench medians (ms): fwd+bwd and backward only."""
    fb, bwd = kit.fb_bwd_fns(b, T)
    print(f"timing B{b} T{T}: variant | fwd+bwd eager | bwd eager (ms, median of rounds so far)", flush=True)

    def measure(r, name, rr):
        rr["fb"].append(bench(fb))
        rr["bwd"].append(bench(bwd))

    return kit.interleaved(names, ("fb", "bwd"), rounds, measure, say)


def graph_times(names, b, T, reps=4):
    """Host-free fwd+bwd (ms): the internal scan_forward (keep=True) + scan_backward of one variant, `reps` calls
    captured in one CUDA graph after a warm call; all inputs (dy included) exist before capture, the kernels'
    own buffers come from the graph's pool. Median of 5 replays / reps. Also the forward alone (no grad path)."""
    t = make(b, T, grad=False)
    A, B, C = t["A"].float(), t["B"], t["C"]
    g = torch.Generator(device=DEV).manual_seed(3)
    dy = torch.randn(b, T, HEADS, bs.P, generator=g, device=DEV).to(DT)
    res = {}

    def step():
        y, final, hin, ypre, lay = chunk.scan_forward(t["x"], t["dt"], A, B, C, t["D"], None, t["dt_bias"], None,
                                                      None, None, bs.Q, True, 0.0, float("inf"), True)
        chunk.scan_backward(dy, None, t["x"], t["dt"], A, B, C, t["D"], None, t["dt_bias"], None, None, None, bs.Q,
                            True, 0.0, float("inf"), hin, ypre, final, lay)

    print(f"graph B{b} T{T}: variant | fwd+bwd host-free ms", flush=True)
    for name in names:
        if left() < 8:
            break
        use(name)
        try:
            if DRY:
                res[name] = bench(step)
            else:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    step()
                torch.cuda.current_stream().wait_stream(s)
                sync()
                gr = torch.cuda.CUDAGraph()
                with torch.cuda.graph(gr):
                    for _ in range(reps):
                        step()
                sync()
                ts = []
                for _ in range(5):
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    gr.replay()
                    e1.record()
                    sync()
                    ts.append(e0.elapsed_time(e1) / reps)
                del gr
                res[name] = statistics.median(ts)
            print(f"  {name} | {res[name]:.3f}", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"  {name}: graph FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
            res[name] = float("nan")
            if not DRY:
                break  # a failed capture may leave the context unusable: stop the graph phase
    chunk.CFG_OVERRIDE.clear()
    return res


def main():
    kit.header(say)
    good = kit.checked(VARIANTS, N_EXTRA, bitwise=True)
    res = timing(good, *SHAPE)
    ranked = sorted((n for n in good if n != "default" and res[n]["fb"] == res[n]["fb"]), key=lambda n: res[n]["fb"])
    print(f"[{time.time() - T_START:.0f}s] summary B{SHAPE[0]} T{SHAPE[1]} eager (ms: fwd+bwd / bwd):", flush=True)
    if "default" not in good:
        print("default failed its checks: nothing to compare against", flush=True)
        return
    for n in ["default"] + ranked:
        r = res[n]
        print(f"| {n} | {r['fb']:.3f} | {r['bwd']:.3f} |", flush=True)
    gres = graph_times(["default"] + ranked, *SHAPE)
    kit.profile_fb(["default"] + ranked[:3], *SHAPE, top=14)
    if ranked and left() > 20:
        best = ranked[0]
        for b, T in LONG:
            if left() < 15:
                break
            timing(["default", best], b, T, rounds=2)
            graph_times(["default", best], b, T, reps=2)
    print(f"[{time.time() - T_START:.0f}s] graph B{SHAPE[0]} T{SHAPE[1]}: "
          + "; ".join(f"{n} {v:.3f}" for n, v in gres.items()), flush=True)
    print(f"done at {time.time() - T_START:.0f}s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--warm":
        warm(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
