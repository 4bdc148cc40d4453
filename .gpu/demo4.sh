#!/bin/bash
# Issue 8's last point (branch demo4): the GPU demo trains faster and further than the CPU's (CPU, 2 idle cores:
# training 47.5 s for 300 x 16x128 = 614k tokens, ~12k tokens/s, held-out 3.254 -> 1.963 bits/base).
# <= 110 s on an H100 with a cold Triton cache. Run from the repo root with $OUT and PYTHONPATH set.
#  1) `python -m hybridna.demo` end to end with its GPU defaults (150 steps of 32x512 = 2.46M tokens, RC
#     augmentation 0.5, CUDA graph replay of forward+backward, best-validation weights kept); cold cache.
#  2) the same with --no-cuda-graph, 40 steps: eager tokens/s, to decide the cuda_graph default (warm cache).
#  3) beside 2) (the host has 16 cores; both are host-bound), in one process, as long as time is left: batch /
#     lr / RC / weight-decay / steps variants of step 1's training (best held-out bits/base and its step, last,
#     tokens/s), to decide the GPU defaults. 2)'s eager tokens/s may read a little low for sharing the GPU.
# (no expandable_segments: the tiny model needs none, and it is one less thing under CUDA graph capture)
O=${OUT:-/tmp}; date -u +%T
echo "== 1) GPU demo, defaults, cold Triton cache"
timeout 85 python3 -m hybridna.demo --out /tmp/demo4_a --no-progress > $O/demo_a.txt 2>&1; echo "rc=$?" >> $O/demo_a.txt
grep -v -E "^      [ACGT]{20,}" $O/demo_a.txt | tail -40
echo "t=$SECONDS s"
if [ $SECONDS -lt 88 ]; then
  ( timeout $((104 - SECONDS)) python3 -m hybridna.demo --out /tmp/demo4_b --no-progress --no-cuda-graph --steps 40 \
    --val-every 40 --sample-len 20 > $O/demo_b.txt 2>&1; echo "rc=$?" >> $O/demo_b.txt ) &
fi
echo "== 3) variants (one process; micro x seq lr rc wd steps: best bpb @ step, last bpb, tokens/s, graph)"
if [ $SECONDS -lt 92 ]; then
  timeout $((106 - SECONDS)) python3 - <<'EOF' 2>&1 | grep -v -i warn | tail -14
import contextlib, io, time
from hybridna.data import LAMBDA_GENOME, build_store
from hybridna.train.pretrain import TrainConfig, train
store = str(build_store([LAMBDA_GENOME], "/tmp/demo4_v/lambda.zarr", species="lambda", overwrite=True, progress=False))
runs = [  # micro, lr, rc, wd, steps
    (64, 3e-3, 0.5, 0.1, 150), (32, 6e-3, 0.5, 0.1, 150), (32, 3e-3, 0.0, 0.1, 150), (16, 3e-3, 0.5, 0.1, 150),
    (64, 6e-3, 0.5, 0.1, 300), (32, 3e-3, 0.5, 1.0, 150), (128, 3e-3, 0.5, 0.1, 150),
]
for micro, lr, rc, wd, steps in runs:
    t = time.perf_counter()
    cfg = TrainConfig(model="tiny", data=[store], out="/tmp/demo4_v/run", steps=steps, seq_len=512, micro_batch=micro,
                      lr=lr, min_lr=lr / 10, warmup_steps=max(1, min(30, steps // 10)), weight_decay=wd, rc_prob=rc,
                      val_frac=0.05, val_windows=32, val_every=10, log_every=10, save_every=steps, keep_checkpoints=1,
                      device="cuda", eval_at_start=False, keep_best=True, cuda_graph=True, progress=False, plot=False)
    with contextlib.redirect_stdout(io.StringIO()):
        res = train(cfg)
    tm, b = res["timing"], res["best"]
    print(f"{micro}x512 lr {lr:g} rc {rc:g} wd {wd:g} {steps} steps ({tm['tokens'] / 1e6:.2f}M tok): best {b['val_bpb']:.4f} "
          f"@ {b['step']}, last {res['val'][-1]['val_bpb']:.4f}, {tm['tokens_per_s']:,.0f} tok/s "
          f"(steady {tm['steady_tokens_per_s'] or 0:,.0f}), graph {int(tm['cuda_graph'])}, {time.perf_counter() - t:.1f} s",
          flush=True)
EOF
fi
wait
echo "== 2) eager (no CUDA graph), 40 steps, warm cache, beside 3)"
[ -f $O/demo_b.txt ] && grep -E "^      (trained|throughput)|^SUMMARY|CUDA graph off|Error|rc=" $O/demo_b.txt | tail -8
echo "total $SECONDS s"; date -u +%T
