"""Turn pytest-benchmark JSON (or the suite's JSON-lines row log) into markdown tables and plots.

    python bench/report.py rows.jsonl [more.json ...] [--plots DIR] [--max-plots N] [--out REPORT.md]
                           [--summary] [--profile P.json ...]

Inputs: --benchmark-json files, or HYBRIDNA_BENCH_LOG files (.jsonl: one test per line, written as each
test finishes by bench/conftest.py, skipped and failed tests included, plus "meta" lines with the card,
versions, switches and wall time of the run; bench_model.py `sweep` rows are not this format).

Tables: the run (card, versions, wall time, counts; time per file; failures; skip reasons), the model
training step (bench_model.py rows: tokens/s, peak GiB, status, hybrid vs Transformer side by side with
ratios, issue 10's shapes next to the peers' figures), the kernels-vs-reference step check, and every
other benchmark (median ms and the rates its extra_info holds). Plots (PNG, matplotlib Agg), one pair
per tokens-per-step value that has at least two context lengths (those with the most contexts first,
at most --max-plots files): training throughput and peak memory against context length, hybrid vs
Transformer, checkpointing off (solid) / on (dashed), out-of-memory shapes as x.
`--summary` prints a compact plain-text digest (for a GPU call's short output tail).
`--profile` adds the by-category and top-kernel tables of `bench_model.py profile` JSON files.
When the same test appears twice (several files, or a re-run in one log), the later row wins, merged
over the earlier one's fields.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict

MODEL_BENCH = "model_train_step"
CHECK_BENCH = "model_step_check"
MODEL_ORDER = {"hybrid": 0, "transformer": 1}


def _read(path) -> dict:
    """{benchmarks, metas, datetime, machine_info} of one --benchmark-json or .jsonl file."""
    with open(path) as f:
        if str(path).endswith(".jsonl"):
            benches, metas = [], []
            for line in f:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a killed run
                    continue
                (metas if "meta" in obj else benches).append(obj.get("meta", obj))
            start = next((m for m in metas if m.get("event") == "start"), {})
            return dict(benchmarks=benches, metas=metas, datetime=start.get("time"), machine_info={})
        data = json.load(f)
    if "benchmarks" not in data:
        raise ValueError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' key)")
    return dict(data, metas=[])


def load_run(paths) -> tuple[list[dict], list[dict]]:
    """(rows, metas). Rows {name, fullname, group, median_ms, extra, outcome, reason, error, file, wall_s}
    from pytest-benchmark JSON files and HYBRIDNA_BENCH_LOG files; metas: the logs' run lines."""
    rows: dict[str, dict] = {}
    metas: list[dict] = []
    for path in paths:
        data = _read(path)
        metas += data["metas"]
        machine = data.get("machine_info", {})
        for b in data["benchmarks"]:
            stats = b.get("stats") or {}
            med = stats.get("median")
            key = b.get("fullname", b["name"])
            row = dict(name=b["name"], fullname=key, group=b.get("group"),
                       median_ms=None if med is None else med * 1e3, extra=dict(b.get("extra_info") or {}),
                       datetime=data.get("datetime"), node=machine.get("node"), outcome=b.get("outcome"),
                       reason=b.get("reason"), error=b.get("error"), file=b.get("file") or key.split("::")[0],
                       wall_s=b.get("wall_s"))
            old = rows.get(key)
            if old is not None:  # merged: a --benchmark-json row keeps the log's outcome, file and wall time
                row = dict(old, **{k: v for k, v in row.items() if v not in (None, {}, "")})
            rows[key] = row
    return list(rows.values()), metas


def load(paths) -> list[dict]:
    """The rows of load_run."""
    return load_run(paths)[0]


def _measured(r) -> bool:
    """A row with figures: passed, or from a --benchmark-json file (which holds no skipped tests but
    out-of-memory rows, marked in extra_info)."""
    return r.get("outcome") in (None, "passed")


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
        status = e.get("status") or ("failed" if r.get("outcome") == "failed" else "ok")
        if status == "ok" and e.get("tokens_per_s") is None:
            status = r.get("outcome") or "not run"
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


def _model_pairs(mrows):
    """(batch, seqlen, ckpt, hybrid row, Transformer row, speed ratio, memory ratio) per (shape, checkpointing)
    where either model ran; a row is None where that model did not run, a ratio None where it cannot be formed."""
    by = defaultdict(dict)
    for m in mrows:
        by[(m["tokens"], m["seqlen"], m["batch"], m["ckpt"])][m["model"]] = m
    for (tokens, seqlen, batch, ckpt), d in by.items():
        h, t = d.get("hybrid"), d.get("transformer")
        speed = h["tokens_per_s"] / t["tokens_per_s"] if h and t and h["tokens_per_s"] and t["tokens_per_s"] else None
        mem = h["peak_gib"] / t["peak_gib"] if h and t and h["peak_gib"] and t["peak_gib"] else None
        yield batch, seqlen, ckpt, h, t, speed, mem


def comparison_table(mrows) -> str:
    """Hybrid against Transformer at each (shape, checkpointing) where either ran."""
    def cell(m, key, f):
        if m is None:
            return "-"
        return "OOM" if m["status"] == "oom" else f(m[key])

    body = []
    for batch, seqlen, ckpt, h, t, speed, mem in _model_pairs(mrows):
        ratio = "-" if speed is None else f"{speed:.2f}x"
        mem_ratio = "-" if mem is None else f"{mem:.2f}x"
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


_RATE_KEYS = ("tflops", "gbs", "frac_of_copy", "copy_gbs", "graph_ms", "peak_mem_gib", "tokens_per_s")


def ops_table(rows) -> str:
    """Every benchmark that is not a model row: median ms and whichever rates its extra_info holds."""
    body = []
    for r in sorted(rows, key=lambda r: (r["group"] or "", r["name"])):
        e = r["extra"]
        if e.get("bench") in (MODEL_BENCH, CHECK_BENCH) or not _measured(r):
            continue
        ms = e.get("ms", r["median_ms"])
        body.append([r["group"] or "-", r["name"], fmt_num(ms, 3)] + [fmt_num(e.get(k), 4 if k == "graph_ms" else 2)
                                                                  for k in _RATE_KEYS])
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


# ---- the run: card, time per file, failures, skips -------------------------------------------------

def run_info(rows, metas) -> dict:
    """Card, versions, start time, switches, wall time and outcome counts of the run (metas from a
    HYBRIDNA_BENCH_LOG; counts from the rows when the run was cut before its end line)."""
    start = next((m for m in metas if m.get("event") == "start"), {})
    end = next((m for m in reversed(metas) if m.get("event") == "end"), None)
    counts = Counter(r["outcome"] for r in rows if r.get("outcome"))
    return dict(device=start.get("device") or next((r["extra"]["device"] for r in rows if r["extra"].get("device")), None),
                time=start.get("time"), torch=start.get("torch"), triton=start.get("triton"), env=start.get("env", {}),
                budget_s=start.get("budget_s"), finished=end is not None, exitstatus=end and end.get("exitstatus"),
                wall_s=end and end.get("wall_s"), counts=dict(counts))


def file_times(rows) -> list[tuple[str, int, int, int, float]]:
    """(file, passed, skipped, failed, wall seconds) per file, in run order."""
    by = {}
    for r in rows:
        if r.get("outcome") is None:
            continue
        f = os.path.basename(r.get("file") or "?")
        d = by.setdefault(f, Counter())
        d[r["outcome"]] += 1
        d["wall"] += r.get("wall_s") or 0.0
    return [(f, d["passed"], d["skipped"], d["failed"], round(d["wall"], 1)) for f, d in by.items()]


def failures(rows) -> list[tuple[str, str]]:
    return [(r["fullname"], (r.get("error") or "").strip()) for r in rows if r.get("outcome") == "failed"]


def skip_reasons(rows) -> list[tuple[str, int]]:
    """Skip reasons with their counts, most frequent first (out-of-memory skips are results, not listed)."""
    c = Counter()
    for r in rows:
        if r.get("outcome") == "skipped" and r["extra"].get("status") != "oom":
            c[(r.get("reason") or "").replace("Skipped: ", "")[:160]] += 1
    return c.most_common()


def run_section(rows, metas) -> str:
    info = run_info(rows, metas)
    if not info["counts"] and not metas:
        return ""
    env = ", ".join(f"{k}={v}" for k, v in sorted(info["env"].items()))
    state = (f"finished in {info['wall_s']} s, exit status {info['exitstatus']}" if info["finished"]
             else "cut before its end (no end line in the log)")
    parts = [f"{info['device'] or 'no GPU'}; torch {info['torch']}, triton {info['triton']}; started {info['time']}; "
             f"{state}; " + ", ".join(f"{n} {k}" for k, n in sorted(info["counts"].items()))
             + (f"; budget {info['budget_s']:.0f} s" if info["budget_s"] else ""), ""]
    if env:
        parts += [f"Switches: {env}", ""]
    ft = file_times(rows)
    if ft:
        parts += [_md(["file", "passed", "skipped", "failed", "wall s"], [list(t) for t in ft]), ""]
    fl = failures(rows)
    if fl:
        parts += ["Failed:", ""] + [f"- `{n}`: {e.splitlines()[0][:200] if e else ''}" for n, e in fl] + [""]
    sk = skip_reasons(rows)
    if sk:
        parts += ["Skipped (reason: count):", ""] + [f"- {reason}: {n}" for reason, n in sk] + [""]
    return "\n".join(parts)


# ---- plots ----------------------------------------------------------------------------------------

def plot_model(mrows, out_dir: str, max_plots: int | None = None) -> list[str]:
    """Throughput and peak memory against context length, one pair of PNGs per tokens-per-step value
    with at least two context lengths, those with the most contexts first, at most max_plots files.
    Returns the written paths."""
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
    n_ctx = {t: len({m["seqlen"] for m in ms}) for t, ms in by_tokens.items()}
    keep = sorted((t for t in by_tokens if n_ctx[t] >= 2), key=lambda t: (-n_ctx[t], -t))
    if max_plots is not None:
        keep = keep[:max_plots // 2]
    for tokens, ms in sorted((t, by_tokens[t]) for t in keep):
        ctxs = sorted({m["seqlen"] for m in ms})
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

def build_report(rows, profiles=(), metas=()) -> str:
    parts = []
    run = run_section(rows, metas)
    if run:
        parts += ["## Run", "", run]
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


def _rate(e) -> str:
    if e.get("tflops") is not None:
        return f"{e['tflops']:.0f} TFLOP/s"
    if e.get("gbs") is not None:
        return f"{e['gbs']:.0f} GB/s" + (f" ({e['frac_of_copy']:.2f} of copy)" if e.get("frac_of_copy") else "")
    if e.get("tokens_per_s") is not None:
        return f"{e['tokens_per_s']:.0f} tok/s"
    return ""


def summary(rows, metas=(), max_chars: int = 9000) -> str:
    """A compact plain-text digest: the run, time per file, failures, skip reasons, hybrid vs Transformer,
    the step check and one line per other benchmark (cut to max_chars, the model part first)."""
    info = run_info(rows, metas)
    out = [f"run: {info['device'] or 'no GPU'}, torch {info['torch']}, triton {info['triton']}, started {info['time']}, "
           + (f"wall {info['wall_s']} s, exit {info['exitstatus']}" if info["finished"] else "CUT (no end line)")
           + "; " + ", ".join(f"{n} {k}" for k, n in sorted(info["counts"].items()))]
    out += [f"  {f}: {p} passed, {sk} skipped, {fl} failed, {w} s" for f, p, sk, fl, w in file_times(rows)]
    for n, e in failures(rows):
        out.append(f"FAILED {n}: {(e.splitlines() or [''])[0][:160]}")
    out += ["skips: " + "; ".join(f"{n}x {reason[:90]}" for reason, n in skip_reasons(rows)[:10])]
    mrows = model_rows(rows)
    if mrows:
        out.append("model (tokens/s, peak GiB; hybrid / Transformer = speed ratio, memory ratio):")
        def cell(m):
            if m is None:
                return "-"
            if m["status"] != "ok":
                return m["status"].upper() if m["status"] == "oom" else m["status"]
            return fmt_tokens(m["tokens_per_s"]) + (f" {fmt_num(m['peak_gib'], 1)}G" if m["peak_gib"] else "")

        for batch, seqlen, ckpt, h, t, speed, mem in _model_pairs(mrows):
            ratio = ""
            if speed is not None:
                ratio = f"  {speed:.2f}x" + (f", mem {mem:.2f}x" if mem is not None else "")
            out.append(f"  {batch:>3} x {seqlen:<6} ckpt {'on ' if ckpt else 'off'} | {cell(h):>14} | {cell(t):>14}{ratio}")
    for r in rows:
        e = r["extra"]
        if e.get("bench") == CHECK_BENCH:
            out.append(f"step check {e.get('preset')} {e.get('batch')}x{e.get('seqlen')} {e.get('dtype')}: loss err "
                       f"{fmt_num(e.get('loss_rel_err'), 5)} (tol {e.get('tol_loss')}), grad err "
                       f"{fmt_num(e.get('grad_rel_err'), 5)} (tol {e.get('tol_grad')}), {r.get('outcome') or 'ok'}")
    ops = [r for r in rows if _measured(r) and r["extra"].get("bench") not in (MODEL_BENCH, CHECK_BENCH)]
    if ops:
        out.append("other benchmarks (ms, rate; graph ms):")
    for r in sorted(ops, key=lambda r: (r.get("file") or "", r["name"])):
        e = r["extra"]
        ms = e.get("ms", r["median_ms"])
        name = r["name"].removeprefix("test_")
        out.append(f"  {name[:70]} {fmt_num(ms, 3)} {_rate(e)}" + (f"; g {e['graph_ms']}" if e.get("graph_ms") else ""))
    text = "\n".join(out)
    if len(text) > max_chars:
        text = text[:max_chars - 40] + f"\n... ({len(text) - max_chars + 40} characters cut)"
    return text + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="pytest-benchmark JSON / row logs -> markdown tables and plots")
    ap.add_argument("json", nargs="+", help="--benchmark-json or HYBRIDNA_BENCH_LOG (.jsonl) files (later win)")
    ap.add_argument("--plots", help="folder for the PNG plots (none when omitted)")
    ap.add_argument("--max-plots", type=int, help="at most this many PNG files")
    ap.add_argument("--out", help="write the markdown here (default: stdout)")
    ap.add_argument("--summary", action="store_true", help="print a compact plain-text digest to stdout")
    ap.add_argument("--profile", nargs="*", default=[], help="profile_*.json from `bench_model.py profile`")
    a = ap.parse_args(argv)
    rows, metas = load_run(a.json)
    profiles = []
    for p in a.profile:
        with open(p) as f:
            profiles.append(json.load(f))
    md = build_report(rows, profiles, metas)
    if a.plots:
        for p in plot_model(model_rows(rows), a.plots, a.max_plots):
            md += f"\n![{os.path.basename(p)}]({os.path.relpath(p, os.path.dirname(os.path.abspath(a.out))) if a.out else p})"
        md += "\n"
    if a.out:
        with open(a.out, "w") as f:
            f.write(md)
    elif not a.summary:
        sys.stdout.write(md)
    if a.summary:
        sys.stdout.write(summary(rows, metas))
    return 0


if __name__ == "__main__":
    sys.exit(main())
