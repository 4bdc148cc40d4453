"""bench/report.py on a small synthetic pytest-benchmark JSON: tables, ratios, OOM rows, plots."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import report  # noqa: E402

DEV = "NVIDIA H100 80GB HBM3"


def _model(name, model, batch, seqlen, ckpt, tok_s=None, gib=None, oom=False):
    extra = dict(bench="model_train_step", model=model, preset="300m", batch=batch, seqlen=seqlen,
                 tokens_per_step=batch * seqlen, checkpointing=ckpt, device=DEV, device_mem_gib=79.2)
    if oom:
        extra.update(status="oom", error="CUDA out of memory")
        median = 1e-6
    else:
        extra.update(status="ok", tokens_per_s=tok_s, peak_mem_gib=gib, peak_reserved_gib=gib + 1,
                     step_ms=batch * seqlen / tok_s * 1e3, model_tflops=100.0, frac_of_matmul=0.13)
        median = batch * seqlen / tok_s
    return dict(name=name, fullname=f"bench/bench_model.py::{name}", group=f"train-step B{batch}xL{seqlen}",
                stats=dict(median=median, mean=median), extra_info=extra)


@pytest.fixture
def bench_json(tmp_path):
    T = 65536
    benches = [
        _model("h-1k", "hybrid", T // 1024, 1024, False, 150e3, 40.0),
        _model("h-8k", "hybrid", T // 8192, 8192, False, 140e3, 41.0),
        _model("h-64k", "hybrid", 1, 65536, False, 120e3, 44.0),
        _model("t-1k", "transformer", T // 1024, 1024, False, 120e3, 60.0),
        _model("t-8k", "transformer", T // 8192, 8192, False, 100e3, 70.0),
        _model("t-64k", "transformer", 1, 65536, False, 30e3, 76.0),
        _model("t-64k-ck", "transformer", 1, 65536, True, 25e3, 20.0),
        _model("t-128k", "transformer", 1, 131072, False, oom=True),
        _model("h-32k", "hybrid", 1, 32768, False, 145e3, 22.0),  # a single context at 32768 tokens: no plot
        dict(name="test_ssd[fwd]", fullname="bench/bench_ssd.py::test_ssd[fwd]", group="ssd",
             stats=dict(median=0.002), extra_info=dict(ms=1.9, gbs=1500.0, frac_of_copy=0.5)),
        dict(name="check", fullname="bench/bench_model.py::check", group="train-step check", stats=dict(median=1.0),
             extra_info=dict(bench="model_step_check", preset="300m", batch=1, seqlen=2048, dtype="bf16-autocast",
                             loss_rel_err=1e-3, tol_loss=1e-2, grad_rel_err=5e-3, tol_grad=2e-2)),
    ]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(dict(benchmarks=benches[:6], datetime="2026-11-25T10:55:00")))
    # b repeats h-8k with a new figure: the later file wins
    b.write_text(json.dumps(dict(benchmarks=benches[6:] + [_model("h-8k", "hybrid", 8, 8192, False, 160e3, 42.0)])))
    return [str(a), str(b)]


def test_model_rows_and_tables(bench_json):
    rows = report.load(bench_json)
    assert len(rows) == 11
    m = report.model_rows(rows)
    assert [(r["model"], r["seqlen"]) for r in m][:2] == [("hybrid", 32768), ("hybrid", 1024)]  # by tokens, context
    h8 = next(r for r in m if r["model"] == "hybrid" and r["seqlen"] == 8192)
    assert h8["tokens_per_s"] == 160e3 and h8["peak_gib"] == 42.0  # later file wins
    oom = next(r for r in m if r["seqlen"] == 131072)
    assert oom["status"] == "oom" and oom["tokens_per_s"] is None and oom["peak_gib"] is None

    cmp_md = report.comparison_table(m)
    # 8x8192: 160k / 100k = 1.60x faster, 42 / 70 = 0.60x the memory
    line = next(l for l in cmp_md.splitlines() if l.startswith("| 8 x 8192 | off"))
    assert "160.0k" in line and "100.0k" in line and "1.60x" in line and "0.60x" in line
    line = next(l for l in cmp_md.splitlines() if l.startswith("| 1 x 131072"))
    assert "OOM" in line
    line = next(l for l in cmp_md.splitlines() if l.startswith("| 1 x 65536 | on"))
    assert line.split("|")[3].strip() == "-" and "25.0k" in line  # no hybrid row with checkpointing

    i10 = report.issue10_table(m)
    line = next(l for l in i10.splitlines() if l.startswith("| 8 x 8192"))
    assert "160.0k tok/s, 42.0 GiB" in line and "100.0k tok/s, 70.0 GiB" in line and ">= 170k" in line
    line = next(l for l in i10.splitlines() if l.startswith("| 1 x 65536"))
    assert "30.0k tok/s, 76.0 GiB (ckpt: 25.0k tok/s, 20.0 GiB)" in line
    assert "| 1 x 131072 | not run | OOM |" in i10

    md = report.build_report(rows)
    assert "out of memory" in md
    assert "test_ssd[fwd]" in md and "1500.00" in md
    assert "0.00100" in md and "0.00500" in md  # check table


def test_plots_written(bench_json, tmp_path):
    out = tmp_path / "plots"
    paths = report.plot_model(report.model_rows(report.load(bench_json)), str(out))
    # only 65536 tokens per step has several context lengths (131072 and 32768 have one each)
    assert sorted(os.path.basename(p) for p in paths) == ["train_peak_mem_T65536.png", "train_tokens_per_s_T65536.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(p) > 5000


def test_cli(bench_json, tmp_path):
    out_md = tmp_path / "r.md"
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps(dict(model="hybrid", preset="300m", batch=1, seqlen=32768, checkpointing=False,
                                    device=DEV, total_kernel_ms=250.0,
                                    categories={"matmul (cuBLAS/CUTLASS)": dict(ms=150.0, frac=0.6)},
                                    top_kernels=[dict(name="nvjet_gemm", category="matmul (cuBLAS/CUTLASS)",
                                                      calls=100, ms=150.0, frac=0.6)])))
    assert report.main(bench_json + ["--plots", str(tmp_path / "png"), "--out", str(out_md),
                                     "--profile", str(prof)]) == 0
    md = out_md.read_text()
    assert "## Model training step (NVIDIA H100 80GB HBM3)" in md
    assert "nvjet_gemm" in md and "60.0%" in md
    assert "train_tokens_per_s_T65536.png" in md


def test_jsonl_log(tmp_path):
    """bench_model.py's HYBRIDNA_BENCH_LOG rows (one JSON object per line) load like --benchmark-json."""
    p = tmp_path / "rows.jsonl"
    p.write_text("\n".join(json.dumps(_model(n, "hybrid", 1, L, False, 1e5, 10.0)) for n, L in (("a", 1024), ("b", 2048))))
    m = report.model_rows(report.load([str(p)]))
    assert [r["seqlen"] for r in m] == [1024, 2048] and m[0]["tokens_per_s"] == 1e5


def test_rejects_non_benchmark_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{}")
    with pytest.raises(ValueError, match="pytest-benchmark"):
        report.load([str(p)])
