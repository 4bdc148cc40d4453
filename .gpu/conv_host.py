"""Host cost of causal_conv1d calls on the GPU: per-call wall time (no sync, tiny shape: host-bound),
a cProfile of fwd+bwd, and the fwd+bwd at B8 D2304 L8192 W4 by CUDA events vs the kernel sum (profiler)."""
import cProfile, pstats, time, io
import torch, triton.testing
from hybridna_kernels.conv1d import causal_conv1d

def mk(B, D, L, W=4):
    x = torch.randn(B, L, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
    w = (torch.randn(D, W, device="cuda") / 2).to(torch.bfloat16).requires_grad_()
    b = torch.randn(D, device="cuda", dtype=torch.bfloat16).requires_grad_()
    return x, w, b, torch.randn_like(x)

x, w, b, gy = mk(1, 64, 128)
fwd = lambda: causal_conv1d(x, w, b, activation="silu")
fb = lambda: torch.autograd.grad(fwd(), (x, w, b), gy)
for name, f in [("fwd", lambda: causal_conv1d(x.detach(), w.detach(), b.detach(), activation="silu")), ("fwd_autograd", fwd), ("fwd+bwd", fb)]:
    for _ in range(50): f()
    torch.cuda.synchronize(); t = time.perf_counter(); n = 500
    for _ in range(n): f()
    t1 = time.perf_counter(); torch.cuda.synchronize()
    print(f"host {name}: {(t1 - t) / n * 1e6:.1f} us/call")
pr = cProfile.Profile(); pr.enable()
for _ in range(300): fb()
pr.disable(); torch.cuda.synchronize()
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(14); print("\n".join(s.getvalue().splitlines()[6:28]))
x, w, b, gy = mk(8, 2304, 8192)
fwd = lambda: causal_conv1d(x, w, b, activation="silu")
fb = lambda: torch.autograd.grad(fwd(), (x, w, b), gy)
for name, f in [("fwd", fwd), ("fwd+bwd", fb)]:
    print(f"B8 L8192 {name}: do_bench median {triton.testing.do_bench(f, return_mode='median'):.4f} ms")
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CUDA]) as p:
    for _ in range(20): fb()
    torch.cuda.synchronize()
tot = 0
for e in p.key_averages():
    if e.device_time_total > 0:
        print(f"  {e.key[:60]:60s} {e.device_time_total / 20 / 1e3:.4f} ms/iter x{e.count // 20}"); tot += e.device_time_total / 20 / 1e3
print(f"  kernel sum {tot:.4f} ms/iter")
# whole-model host cost: 300m bf16 forward at B1 L1024 (host-bound: ~47 ms in the bench)
from hybridna import HybriDNA, HybriDNAConfig
with torch.device("cuda"):
    m = HybriDNA(HybriDNAConfig.preset("300m")).to(torch.bfloat16).eval()
ids = torch.randint(5, 9, (1, 1024), device="cuda")
with torch.no_grad():
    for _ in range(3): m(ids)
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): m(ids)
    t1 = time.perf_counter(); torch.cuda.synchronize(); t2 = time.perf_counter()
    print(f"300m fwd L1024: host {(t1 - t) / 10 * 1e3:.2f} ms/call, wall {(t2 - t) / 10 * 1e3:.2f} ms/call")
    pr = cProfile.Profile(); pr.enable()
    for _ in range(5): m(ids)
    pr.disable(); torch.cuda.synchronize()
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25); print("\n".join(s.getvalue().splitlines()[6:40]))
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("cumtime").print_stats(30); print("\n".join(s.getvalue().splitlines()[6:45]))
