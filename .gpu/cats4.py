"""Issue 10: GRAD_SLABS (the split pieces' gradients written into one buffer, no backward cats) old vs new,
300m preset at 1 x 32768, ONE process (bench_model.sweep: warm-up / autotuning row first, then slabs=0 / 1
rows alternated; step time, host time, peak GiB per row), then one profiled step per variant: calls and
device time of CatArrayBatchedCopy (the cats of torch.split's backward), of all copy / cast / fill kernels,
and the total kernel time. Rows print as they finish. Run from the repo root (PYTHONPATH set by the caller)."""
import os
import sys
import time

sys.path.insert(0, "bench")
import torch  # noqa: E402

import bench_model as bm  # noqa: E402
import hybridna.model as hm  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
SHAPE = os.environ.get("CATS4_SHAPE", "1x32768")
t0 = time.perf_counter()
print(f"# {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, torch {torch.__version__}, "
      f"GRAD_SLABS default {int(hm.GRAD_SLABS)}", flush=True)
bm.sweep([SHAPE, "slabs=0", SHAPE, "slabs=1", SHAPE, "slabs=0", SHAPE, "slabs=1", SHAPE], rounds=3,
         log=os.path.join(OUT, "cats4_steps.jsonl"))
b, L = (int(v) for v in SHAPE.split("x"))
for slabs in (False, True):
    hm.GRAD_SLABS = slabs
    sm = bm.profile_train_step("hybrid", b, L, os.path.join(OUT, f"prof_slabs{int(slabs)}"), warmup=1, top=100000)
    cat = [k for k in sm["top_kernels"] if "CatArrayBatchedCopy" in k["name"]]
    copies = sm["categories"].get("copy / cast / fill", {}).get("ms", 0.0)
    print(f"profile slabs={int(slabs)} {SHAPE}: kernel time {sm['total_kernel_ms']:.1f} ms; CatArrayBatchedCopy "
          f"{sum(k['calls'] for k in cat)} calls {sum(k['ms'] for k in cat):.2f} ms; copy/cast/fill {copies:.2f} ms; "
          f"loss {sm['loss']:.4f}", flush=True)
    for k in sm["top_kernels"]:
        if k["category"] == "copy / cast / fill" and k["ms"] >= 0.05:
            print(f"   {k['ms']:7.2f} ms {k['calls']:4d}x {k['name'][:120]}")
    bm.release_cuda_memory()
print(f"# total {time.perf_counter() - t0:.0f} s", flush=True)
