"""Compact lines for the rows `bench_model.py sweep` prints (one JSON object per line)."""
import json
import sys

_LABEL = {"slabs": "g"}  # the others by their first letter

for line in sys.stdin:
    if not line.lstrip().startswith("{"):  # plain lines (a script's own prints) pass through
        print(line.rstrip())
        continue
    try:
        r = json.loads(line)
        v = (("fused" if r.get("fused_norms") else "unfused") + (f"+compile:{r.get('compile')}" if r.get("compile") else "")
             + ("+ckpt_mlp" if r.get("ckpt") == "mlp" else "")
             + "".join(f" {_LABEL.get(k, k[0])}{r.get(k) if isinstance(r.get(k), float) and 0 < r.get(k) < 1 else int(bool(r.get(k)))}"
                       for k in ("swiglu", "mlp_re", "conv_re", "normh", "inproj_re", "slabs") if k in r))
        it = r["item"]
        if it == "check":
            verdict = "PASS" if r["ok"] else "FAIL"
            print(f"check 300m 1x2048 bf16 ({v}): loss rel err {r['loss_rel_err']:.2e} (tol 1e-2), "
                  f"grad rel err {r['grad_rel_err']:.2e} (tol 2e-2) -> {verdict}  [{r['wall_s']} s]")
        elif it.startswith("profile"):
            print(f"{it} ({v}): {r['total_kernel_ms']} ms kernel time [{r['wall_s']} s]")
            print("   " + "; ".join(f"{c} {ms:.1f}" for c, ms in r["categories"].items()))
            for n, c, ms in r["top"]:
                print(f"   {ms:7.2f} ms {c:4d}x {n}")
        elif r.get("status") == "error":
            print(f"{it:9s} {v:24s} ERROR {r.get('error')}  [{r['wall_s']} s]")
        else:
            tps = r.get("tokens_per_s")
            print(f"{it:9s} {v:24s} {r['status']:4s} {tps / 1e3 if tps else 0:6.1f}k tok/s  "
                  f"{r.get('peak_mem_gib', '-')} GiB  step {r.get('step_ms', '-')} ms (host {r.get('host_ms', '-')})  "
                  f"warm-up {r.get('warmup_s', r.get('capture_s', '-'))} s  [{r['wall_s']} s]")
    except Exception as e:  # noqa: BLE001 - never break the pipe: the bench would die with it
        print(f"(unparsed: {line.strip()[:200]} / {e})")
    sys.stdout.flush()
