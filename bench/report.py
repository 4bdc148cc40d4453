"""Turn pytest-benchmark JSON into markdown tables and plots.

    python bench/report.py out.json [more.json ...] [--plots DIR] [--out REPORT.md] [--profile P.json ...]

Inputs are --benchmark-json files or bench_model.py's HYBRIDNA_BENCH_LOG (.jsonl, one row per line).

Tables: the model training step (bench_model.py rows: tokens/s, peak GiB, status, hybrid vs
Transformer side by side with ratios), the kernels-vs-reference step check, and every other benchmark
(median ms and the rates its extra_info holds). Plots (PNG, matplotlib Agg), one pair per tokens-per-step
value that has at least two context lengths: training throughput and peak memory against context
length, hybrid vs Transformer, checkpointing off (solid) / on (dashed), out-of-memory shapes as x.
`--profile` adds the by-category and top-kernel tables of `bench_model.py profile` JSON files.
When the same benchmark appears in several files, the last file wins.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

MODEL_BENCH = "model_train_step"
CHECK_BENCH = "model_step_check"
MODEL_ORDER = {"hybrid": 0, "transformer": 1}


def load(paths) -> list[dict]:
    """Rows {name, fullname, group, median_ms, extra} from pytest-benchmark JSON files."""
    rows: dict[str, dict] = {}
    for path in paths:
        with open(path) as f:
            if str(path).endswith(".jsonl"):  # bench_model.py's HYBRIDNA_BENCH_LOG: one benchmark per line
                data = dict(benchmarks=[json.loads(line) for line in f if line.strip()])
            else:
                data = json.load(f)
        if "benchmarks" not in data:
            raise ValueError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' key)")
        machine = data.get("machine_info", {})
        for b in data["benchmarks"]:
            stats = b.get("stats") or {}
            med = stats.get("median")
            rows[b.get("fullname", b["name"])] = dict(
                name=b["name"], fullname=b.get("fullname", b["name"]), group=b.get("group"),
                median_ms=None if med is None else med * 1e3, extra=dict(b.get("extra_info") or {}),
                datetime=data.get("datetime"), node=machine.get("node"))
    return list(rows.values())


# ---- formatting -----------------------------------------------------------------------------------

def fmt_tokens(v) -> str:
    if v is None:
        return "-"
    return f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}"


def fmt_ctx(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def fmt_num(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.2e}"
    return str(v)


def _md(header: list[str], body: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
    return "\n".join(out)


# ---- model rows -----------------------------------------------------------------------------------

def model_rows(rows) -> list[dict]:
    """The training-step rows, flattened and sorted by tokens per step, context, model, checkpointing."""
    out = []
    for r in rows:
        e = r["extra"]
        if e.get("bench") != MODEL_BENCH:
            continue
        status = e.get("status", "ok")
        out.append(dict(model=e.get("model"), preset=e.get("preset"), batch=int(e["batch"]), seqlen=int(e["seqlen"]),
                        tokens=int(e.get("tokens_per_step", e["batch"] * e["seqlen"])), ckpt=bool(e.get("checkpointing")),
                        status=status, tokens_per_s=e.get("tokens_per_s") if status == "ok" else None,
                        step_ms=e.get("step_ms") if status == "ok" else None,
                        peak_gib=e.get("peak_mem_gib") if status == "ok" else None,
                        reserved_gib=e.get("peak_reserved_gib") if status == "ok" else None,
                        tflops=e.get("model_tflops") if status == "ok" else None,
                        frac_of_matmul=e.get("frac_of_matmul") if status == "ok" else None,
                        device=e.get("device"), device_mem_gib=e.get("device_mem_gib")))
    out.sort(key=lambda m: (m["tokens"], m["seqlen"], MODEL_ORDER.get(m["model"], 9), m["ckpt"]))
    return out


def model_table(mrows) -> str:
    body = [[m["model"], "on" if m["ckpt"] else "off", f"{m['batch']} x {m['seqlen']}", m["tokens"],
             fmt_tokens(m["tokens_per_s"]), fmt_num(m["peak_gib"], 1), fmt_num(m["reserved_gib"], 1),
             fmt_num(m["step_ms"], 1), fmt_num(m["tflops"], 1), fmt_num(m["frac_of_matmul"], 2),
             "out of memory" if m["status"] == "oom" else m["status"]] for m in mrows]
    return _md(["model", "ckpt", "batch x seqlen", "tokens/step", "tokens/s", "peak GiB", "reserved GiB",
                "step ms", "model TFLOP/s", "of matmul", "status"], body)


def comparison_table(mrows) -> str:
    """Hybrid against Transformer at each (shape, checkpointing) where either ran."""
    by = defaultdict(dict)
    for m in mrows:
        by[(m["tokens"], m["seqlen"], m["batch"], m["ckpt"])][m["model"]] = m
    body = []
    for (tokens, seqlen, batch, ckpt), d in by.items():
        h, t = d.get("hybrid"), d.get("transformer")

        def cell(m, key, f):
            if m is None:
                return "-"
            return "OOM" if m["status"] == "oom" else f(m[key])

        ratio = ("-" if not (h and t and h["tokens_per_s"] and t["tokens_per_s"])
                 else f"{h['tokens_per_s'] / t['tokens_per_s']:.2f}x")
        mem_ratio = ("-" if not (h and t and h["peak_gib"] and t["peak_gib"])
                     else f"{h['peak_gib'] / t['peak_gib']:.2f}x")
        body.append([f"{batch} x {seqlen}", "on" if ckpt else "off",
                     cell(h, "tokens_per_s", fmt_tokens), cell(t, "tokens_per_s", fmt_tokens), ratio,
                     cell(h, "peak_gib", lambda v: fmt_num(v, 1)), cell(t, "peak_gib", lambda v: fmt_num(v, 1)),
                     mem_ratio])
    return _md(["batch x seqlen", "ckpt", "hybrid tok/s", "Transformer tok/s", "speed ratio",
                "hybrid GiB", "Transformer GiB", "memory ratio"], body)


# Issue 10's table: the peers' figures on an H100 and the targets for hybridna (tokens/s, GiB).
ISSUE10 = [
    ((8, 8192), "128.9k tok/s, 65.9 GiB", "111.3k tok/s, 75.8 GiB", ">= 170k tok/s, <= 45 GiB"),
    ((1, 32768), "109.6k tok/s, 34.9 GiB", "52.7k tok/s, 40.0 GiB", ">= 145k tok/s"),
    ((1, 65536), "93.9k tok/s, 65.9 GiB", "31.7k tok/s, 75.8 GiB", ">= 125k tok/s, <= 45 GiB"),
    ((1, 131072), "OOM; 56.5k tok/s with ckpt (23.4 GiB)", "13.7k with ckpt", ">= 80k tok/s without ckpt, in 80 GB"),
]


def _fig(m) -> str:
    if m is None:
        return "not run"
    if m["status"] == "oom":
        return "OOM"
    return f"{fmt_tokens(m['tokens_per_s'])} tok/s, {fmt_num(m['peak_gib'], 1)} GiB"


def issue10_table(mrows) -> str:
    """Issue 10's shapes: ours (checkpointing off; on in brackets) next to the peers' figures and targets."""
    idx = {(m["model"], m["batch"], m["seqlen"], m["ckpt"]): m for m in mrows}
    body = []
    for (b, L), peer_h, peer_t, target in ISSUE10:
        if not any((k, b, L, c) in idx for k in ("hybrid", "transformer") for c in (False, True)):
            continue
        cells = []
        for kind in ("hybrid", "transformer"):
            off, on = idx.get((kind, b, L, False)), idx.get((kind, b, L, True))
            cells.append(_fig(off) + (f" (ckpt: {_fig(on)})" if on is not None else ""))
        body.append([f"{b} x {L}", cells[0], cells[1], peer_h, peer_t, target])
    if not body:
        return ""
    return _md(["tokens per step", "hybridna hybrid", "Transformer (SDPA)", "peer hybrid (issue 10)",
                "peer Transformer (issue 10)", "target"], body)


def check_table(rows) -> str:
    body = []
    for r in rows:
        e = r["extra"]
        if e.get("bench") != CHECK_BENCH:
            continue
        body.append([e.get("preset"), f"{e.get('batch')} x {e.get('seqlen')}", e.get("dtype"),
                     fmt_num(e.get("loss_rel_err"), 5), fmt_num(e.get("tol_loss"), 5),
                     fmt_num(e.get("grad_rel_err"), 5), fmt_num(e.get("tol_grad"), 5),
                     fmt_num(e.get("ref_bf16_loss_rel_err"), 5), fmt_num(e.get("ref_bf16_grad_rel_err"), 5)])
    if not body:
        return ""
    return _md(["preset", "shape", "kernels in", "loss rel err", "tol", "grad rel err", "tol",
                "ref-bf16 loss err", "ref-bf16 grad err"], body)


_RATE_KEYS = ("tflops", "gbs", "frac_of_copy", "copy_gbs", "peak_mem_gib", "tokens_per_s")


def ops_table(rows) -> str:
    """Every benchmark that is not a model row: median ms and whichever rates its extra_info holds."""
    body = []
    for r in sorted(rows, key=lambda r: (r["group"] or "", r["name"])):
        e = r["extra"]
        if e.get("bench") in (MODEL_BENCH, CHECK_BENCH):
            continue
        ms = e.get("ms", r["median_ms"])
        body.append([r["group"] or "-", r["name"], fmt_num(ms, 3)] + [fmt_num(e.get(k), 2) for k in _RATE_KEYS])
    if not body:
        return ""
    return _md(["group", "benchmark", "ms"] + list(_RATE_KEYS), body)


def profile_tables(summary: dict, top: int = 15) -> str:
    head = (f"{summary.get('model')} {summary.get('preset')} {summary.get('batch')} x {summary.get('seqlen')}"
            f"{' (checkpointing)' if summary.get('checkpointing') else ''}, {summary.get('device')}: "
            f"{summary.get('total_kernel_ms')} ms of kernel time in one training step")
    cats = _md(["category", "ms", "share"], [[c, fmt_num(v["ms"], 1), f"{100 * v['frac']:.1f}%"]
                                            for c, v in summary.get("categories", {}).items()])
    kern = _md(["kernel", "category", "calls", "ms", "share"],
               [[k["name"][:90].replace("|", "/"), k["category"], k["calls"], fmt_num(k["ms"], 2),
                 f"{100 * k['frac']:.1f}%"] for k in summary.get("top_kernels", [])[:top]])
    return "\n\n".join([head, cats, kern])


# ---- plots ----------------------------------------------------------------------------------------

def plot_model(mrows, out_dir: str) -> list[str]:
    """Throughput and peak memory against context length, one pair of PNGs per tokens-per-step value
    with at least two context lengths. Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    by_tokens = defaultdict(list)
    for m in mrows:
        by_tokens[m["tokens"]].append(m)
    colors = {"hybrid": "C0", "transformer": "C1"}
    labels = {"hybrid": "HybriDNA hybrid", "transformer": "Transformer (SDPA)"}
    paths = []
    for tokens, ms in sorted(by_tokens.items()):
        ctxs = sorted({m["seqlen"] for m in ms})
        if len(ctxs) < 2:
            continue
        device = next((m["device"] for m in ms if m["device"]), None)
        dev_mem = next((m["device_mem_gib"] for m in ms if m["device_mem_gib"]), None)
        for metric, ylabel, fname in (("tokens_per_s", "training tokens / s", "train_tokens_per_s"),
                                      ("peak_gib", "peak memory (GiB)", "train_peak_mem")):
            fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
            series = defaultdict(list)
            for m in ms:
                series[(m["model"], m["ckpt"])].append(m)
            ymax = max([m[metric] for m in ms if m[metric] is not None] + [dev_mem or 0, 1e-9])
            for (model, ckpt), pts in sorted(series.items(), key=lambda kv: (MODEL_ORDER.get(kv[0][0], 9), kv[0][1])):
                pts.sort(key=lambda m: m["seqlen"])
                ok = [m for m in pts if m[metric] is not None]
                oom = [m for m in pts if m["status"] == "oom"]
                style = dict(color=colors.get(model, "C2"), linestyle="--" if ckpt else "-",
                             marker="s" if ckpt else "o")
                label = f"{labels.get(model, model)}{', checkpointing' if ckpt else ''}"
                ax.plot([m["seqlen"] for m in ok], [m[metric] for m in ok], label=label, **style)
                if oom:
                    y = 0 if metric == "tokens_per_s" else (dev_mem or ymax)
                    ax.plot([m["seqlen"] for m in oom], [y] * len(oom), linestyle="none", marker="x",
                            markersize=9, color=style["color"], label=f"{label}: out of memory")
            if metric == "peak_gib" and dev_mem:
                ax.axhline(dev_mem, color="grey", linewidth=0.8, linestyle=":", label=f"card memory {dev_mem} GiB")
            ax.set_xscale("log", base=2)
            ax.set_xticks(ctxs)
            ax.set_xticklabels([fmt_ctx(c) for c in ctxs])
            ax.set_ylim(bottom=0)
            if metric == "tokens_per_s":
                ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt_tokens(v)))
            ax.set_xlabel(f"context length (tokens per step: {tokens}, batch = {tokens} / context)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"one training step, bf16{', ' + device if device else ''}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = os.path.join(out_dir, f"{fname}_T{tokens}.png")
            fig.savefig(path)
            plt.close(fig)
            paths.append(path)
    return paths


# ---- CLI ------------------------------------------------------------------------------------------

def build_report(rows, profiles=()) -> str:
    parts = []
    mrows = model_rows(rows)
    if mrows:
        dev = sorted({m["device"] for m in mrows if m["device"]})
        parts += ["## Model training step" + (f" ({', '.join(dev)})" if dev else ""), ""]
        i10 = issue10_table(mrows)
        if i10:
            parts += [i10, ""]
        parts += [comparison_table(mrows), "", model_table(mrows), ""]
    chk = check_table(rows)
    if chk:
        parts += ["## Training step: kernels vs references", "", chk, ""]
    ops = ops_table(rows)
    if ops:
        parts += ["## Other benchmarks", "", ops, ""]
    for p in profiles:
        parts += ["## Profile by kernel", "", profile_tables(p), ""]
    return "\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="pytest-benchmark JSON -> markdown tables and plots")
    ap.add_argument("json", nargs="+", help="--benchmark-json files (later files win on duplicates)")
    ap.add_argument("--plots", help="folder for the PNG plots (none when omitted)")
    ap.add_argument("--out", help="write the markdown here (default: stdout)")
    ap.add_argument("--profile", nargs="*", default=[], help="profile_*.json from `bench_model.py profile`")
    a = ap.parse_args(argv)
    rows = load(a.json)
    profiles = []
    for p in a.profile:
        with open(p) as f:
            profiles.append(json.load(f))
    md = build_report(rows, profiles)
    if a.plots:
        for p in plot_model(model_rows(rows), a.plots):
            md += f"\n![{os.path.basename(p)}]({p})"
        md += "\n"
    if a.out:
        with open(a.out, "w") as f:
            f.write(md)
    else:
        sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
