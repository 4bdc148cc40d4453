"""Session 6: the one GPU test failure of the first call, test_gpu_full_shapes[B2-Lq4096-Lk4096-H16:4-D64-causal-bf16]
(DKDV_FAST's domain): relative error of o, dq, dk, dv against float64 for the default (DKDV_FAST) and the old
dk/dv config, at B1 / B2, bf16 / fp16, seeds 0 and 1, and the default's dk/dv against the old config's (bf16)."""
import sys, torch
sys.path.insert(0, "tests")
from helpers import rel_err
from hybridna_kernels.attention import flash, flash_attention
from hybridna_kernels.attention.naive import attention_ref
OLD = flash.parse_variant("tma=fwd,dq;dq_delta=1;dkdv=32,128,4,3")
for B in (2, 1):
    for dt in (torch.bfloat16, torch.float16):
        for seed in (0, 1):
            g = torch.Generator().manual_seed(seed)
            q, k, v = (torch.randn(B, 4096, H, 64, generator=g).cuda().to(dt) for H in (16, 4, 4))
            do = torch.randn(B, 4096, 16, 64, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).cuda()
            qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
            o_ref = attention_ref(qd, kd, vd, causal=True)
            refs = torch.autograd.grad(o_ref, (qd, kd, vd), do)
            del o_ref
            res = {}
            for name, var in (("default", {}), ("old", OLD)):
                flash.VARIANT = var
                qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
                o = flash_attention(qq, kk, vv, causal=True)
                gr = torch.autograd.grad(o, (qq, kk, vv), do.to(dt))
                res[name] = gr
                errs = [rel_err(r, x) for r, x in zip(refs, gr)]
                nan = [int(torch.isnan(x).sum()) for x in gr]
                print(f"B{B} {str(dt)[6:]} seed{seed} {name:8s} dq {errs[0]:.2e} dk {errs[1]:.2e} dv {errs[2]:.2e} nan {nan}", flush=True)
            d = [rel_err(a.float(), b.float()) for a, b in zip(res["old"], res["default"])]
            print(f"   default vs old: dq {d[0]:.2e} dk {d[1]:.2e} dv {d[2]:.2e}", flush=True)
            flash.VARIANT = {}
            del refs, qd, kd, vd; torch.cuda.empty_cache()
