"""Per-kernel GPU time of one batch-1 decode step of the 300m preset (bf16), eager and from CUDA graphs.

    python bench/profile_decode.py [--prompt 1024] [--steps 20]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_generation import DecodeLoop, get_model  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    from torch.profiler import ProfilerActivity, profile

    model = get_model()
    for graph in (False, True):
        loop = DecodeLoop(model, args.prompt, graph=graph)
        for _ in range(5):
            loop.step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.steps):
            loop.step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / args.steps * 1e3
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                loop.step()
            torch.cuda.synchronize()
        rows, total = [], 0.0
        for ev in prof.key_averages():
            tt = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
            if tt > 0:
                rows.append((tt / args.steps, ev.count / args.steps, ev.key[:90]))
                total += tt / args.steps
        print(f"--- {'graph' if graph else 'eager'} decode, prompt {args.prompt}: wall {wall:.3f} ms/token, "
              f"GPU kernel time {total / 1e3:.3f} ms/token, {sum(r[1] for r in rows):.0f} kernels/token")
        for us, cnt, key in sorted(rows, reverse=True)[:18]:
            print(f"{us:9.1f} us  x{cnt:<5.1f} {key}")


if __name__ == "__main__":
    main()
