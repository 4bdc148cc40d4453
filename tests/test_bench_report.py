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


# ---- the suite's row log (bench/conftest.py's HYBRIDNA_BENCH_LOG) -------------------------------------------

def _log_lines(tmp_path):
    """A log as a run cut by a time limit leaves it: a start line, model rows (one OOM, one budget skip), a
    kernel row, a failure, a skip, and a last line cut mid-write (no end line)."""
    meta = {"meta": dict(event="start", time="2026-12-07T12:00:00Z", torch="2.11", triton="3.6", device=DEV,
                         device_mem_gib=79.2, budget_s=405, env={"HYBRIDNA_BENCH_CONTEXTS": "1024,4096"})}
    rows = [
        dict(_model("test_train_step[hybrid-B128xL1024-ckpt_on]", "hybrid", 128, 1024, True, 110e3, 30.0),
             file="bench_model.py", outcome="passed", wall_s=6.0),
        dict(_model("test_train_step[hybrid-B32xL4096-ckpt_on]", "hybrid", 32, 4096, True, 108e3, 30.0),
             file="bench_model.py", outcome="passed", wall_s=6.5),
        dict(_model("test_train_step[transformer-B128xL1024-ckpt_off]", "transformer", 128, 1024, False, oom=True),
             file="bench_model.py", outcome="skipped", reason="out of memory: CUDA out of memory", wall_s=1.5),
        dict(_model("test_train_step[transformer-B128xL1024-ckpt_on]", "transformer", 128, 1024, True, 100e3, 24.0),
             file="bench_model.py", outcome="passed", wall_s=5.0),
        dict(name="test_train_step[transformer-B32xL4096-ckpt_on]",
             fullname="bench/bench_model.py::test_train_step[transformer-B32xL4096-ckpt_on]", group=None,
             file="bench_model.py", outcome="skipped", when="setup", wall_s=0.0,
             reason="time budget: bench_model.py's share ended at 190 s of HYBRIDNA_BENCH_BUDGET_S=405"),
        dict(name="test_ssd_scan[B8-T8192-hybridna-fwd]", fullname="bench/bench_ssd.py::test_ssd_scan[B8-T8192-hybridna-fwd]",
             group=None, file="bench_ssd.py", outcome="passed", wall_s=2.0, stats=dict(median=0.0011, rounds=20),
             extra_info=dict(ms=1.07, gbs=1800.0, frac_of_copy=0.6, copy_gbs=3000.0, graph_ms=1.0512)),
        dict(name="test_ssd_scan[B8-T8192-mamba_ssm-fwd]", fullname="bench/bench_ssd.py::test_ssd_scan[B8-T8192-mamba_ssm-fwd]",
             group=None, file="bench_ssd.py", outcome="skipped", wall_s=0.0, reason="mamba_ssm Triton ops not importable"),
        dict(name="test_ssd_scan[B1-T131072-hybridna-fwd]", fullname="bench/bench_ssd.py::test_ssd_scan[B1-T131072-hybridna-fwd]",
             group=None, file="bench_ssd.py", outcome="failed", wall_s=3.0, extra_info=dict(shape="B1 T131072"),
             error="E   AssertionError: rel err 3e-2"),
    ]
    p = tmp_path / "rows.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in [meta] + rows) + '\n{"name": "test_conv1d_fwd[B8')
    return p


def test_log_rows_tables_and_summary(tmp_path):
    p = _log_lines(tmp_path)
    rows, metas = report.load_run([str(p)])
    assert len(rows) == 8 and len(metas) == 1  # the cut last line is dropped
    info = report.run_info(rows, metas)
    assert not info["finished"] and info["device"] == DEV and info["counts"] == dict(passed=4, skipped=3, failed=1)
    assert report.file_times(rows) == [("bench_model.py", 3, 2, 0, 19.0), ("bench_ssd.py", 1, 1, 1, 5.0)]
    assert report.failures(rows) == [("bench/bench_ssd.py::test_ssd_scan[B1-T131072-hybridna-fwd]",
                                      "E   AssertionError: rel err 3e-2")]
    reasons = dict(report.skip_reasons(rows))  # the OOM skip is a result, not a skip reason
    assert set(reasons) == {"mamba_ssm Triton ops not importable",
                            "time budget: bench_model.py's share ended at 190 s of HYBRIDNA_BENCH_BUDGET_S=405"}

    m = report.model_rows(rows)  # the budget-skipped case has no extra_info: not a model row
    assert [(r["model"], r["seqlen"], r["ckpt"], r["status"]) for r in m] == [
        ("hybrid", 1024, True, "ok"), ("transformer", 1024, False, "oom"), ("transformer", 1024, True, "ok"),
        ("hybrid", 4096, True, "ok")]
    line = next(ln for ln in report.comparison_table(m).splitlines() if ln.startswith("| 128 x 1024 | on"))
    assert "1.10x" in line and "1.25x" in line  # 110k / 100k tok/s, 30 / 24 GiB

    md = report.build_report(rows, metas=metas)
    assert "cut before its end" in md and "| bench_model.py | 3 | 2 | 0 | 19.0 |" in md
    assert "test_ssd_scan[B8-T8192-hybridna-fwd] | 1.070 |" in md and "1.0512" in md  # graph ms column
    assert "B1-T131072" in md.split("Failed:")[1]  # the failure is listed, not in the benchmark table
    assert "test_ssd_scan[B1-T131072-hybridna-fwd] |" not in md
    text = report.summary(rows, metas)
    assert "CUT (no end line)" in text and "bench_ssd.py: 1 passed, 1 skipped, 1 failed, 5.0 s" in text
    assert "FAILED bench/bench_ssd.py::test_ssd_scan[B1-T131072-hybridna-fwd]" in text
    assert "128 x 1024   ckpt off |" in text and "OOM" in text and "1.10x, mem 1.25x" in text
    assert "ssd_scan[B8-T8192-hybridna-fwd] 1.070 1800 GB/s (0.60 of copy); g 1.0512" in text
    assert len(report.summary(rows, metas, max_chars=300)) < 340


def test_log_merged_with_benchmark_json(tmp_path):
    """--benchmark-json after the log: its figures win, the log's outcome / file / wall time stay."""
    p = _log_lines(tmp_path)
    j = tmp_path / "bench.json"
    j.write_text(json.dumps(dict(benchmarks=[_model("test_train_step[hybrid-B128xL1024-ckpt_on]", "hybrid", 128,
                                                           1024, True, 120e3, 31.0)])))
    rows = report.load([str(p), str(j)])
    r = next(r for r in rows if r["name"] == "test_train_step[hybrid-B128xL1024-ckpt_on]")
    assert r["extra"]["tokens_per_s"] == 120e3 and r["outcome"] == "passed" and r["wall_s"] == 6.0


def test_plots_capped(bench_json, tmp_path):
    rows = report.load(bench_json)
    rows.append(dict(rows[0], fullname="x", extra=dict(rows[0]["extra"], batch=2, seqlen=32768 // 2, tokens_per_step=32768)))
    m = report.model_rows(rows)  # now 32768 tokens per step has 2 contexts too: 4 PNGs, capped at 2
    assert len(report.plot_model(m, str(tmp_path / "all"))) == 4
    paths = report.plot_model(m, str(tmp_path / "cap"), max_plots=2)
    assert sorted(os.path.basename(p) for p in paths) == ["train_peak_mem_T65536.png", "train_tokens_per_s_T65536.png"]


def test_cli_summary_and_relative_links(tmp_path, capsys):
    p = _log_lines(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    assert report.main([str(p), "--plots", str(out / "plots"), "--max-plots", "4", "--out", str(out / "report.md"),
                        "--summary"]) == 0
    assert "run: " + DEV in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "](plots/train_tokens_per_s_T131072.png)" in md and len(list((out / "plots").iterdir())) == 2


def _run_bench(tmp_path, *args, **env):
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # a plain pytest: not an xdist worker's environment (pytest-benchmark disables itself under xdist)
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HYBRIDNA_BENCH_"))}
    e.update(HYBRIDNA_BENCH_LOG=str(tmp_path / "rows.jsonl"), **env)
    r = subprocess.run([sys.executable, "-m", "pytest", "bench/bench_data.py", "--benchmark-only", "-q",
                        "-p", "no:cacheprovider", "-p", "no:xdist", "-k", "lambda", *args], cwd=root, env=e,
                       capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return report.load_run([str(tmp_path / "rows.jsonl")])


def test_conftest_writes_every_row(tmp_path):
    """The hook in bench/conftest.py: a start and an end line, each test's row as it finishes (passed with
    extra_info and stats; skipped with the reason), in the layout report.py reads."""
    rows, metas = _run_bench(tmp_path)
    assert [m["event"] for m in metas] == ["start", "end"] and metas[1]["exitstatus"] == 0
    passed = [r for r in rows if r["outcome"] == "passed"]
    assert {r["name"] for r in passed} == {"test_convert_lambda", "test_sample_lambda[plain]", "test_sample_lambda[rc0.5]"}
    assert all(r["median_ms"] and r["extra"] and r["file"] == "bench_data.py" and r["wall_s"] >= 0 for r in passed)
    assert report.run_info(rows, metas)["finished"]
    assert "bench_data.py: 3 passed" in report.summary(rows, metas)


def test_conftest_time_budget(tmp_path):
    """A spent HYBRIDNA_BENCH_BUDGET_S skips the remaining tests with the reason; pytest still ends cleanly."""
    rows, metas = _run_bench(tmp_path, HYBRIDNA_BENCH_BUDGET_S="0.001")
    assert rows and all(r["outcome"] == "skipped" and r["reason"].startswith("time budget: bench_data.py") for r in rows)
    assert metas[-1]["counts"] == {"skipped": len(rows)}


def test_conftest_skip_done(tmp_path):
    """HYBRIDNA_BENCH_SKIP_DONE: a second run deselects what passed in the first run's log and runs the rest;
    a missing log is a usage error naming the switch."""
    first = tmp_path / "first"
    first.mkdir()
    _run_bench(first, "-k", "plain or convert")
    second = tmp_path / "second"
    second.mkdir()
    rows, _ = _run_bench(second, HYBRIDNA_BENCH_SKIP_DONE=str(first / "rows.jsonl"))
    assert {r["name"] for r in rows} == {"test_sample_lambda[rc0.5]"}
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HYBRIDNA_BENCH_"))}
    r = subprocess.run([sys.executable, "-m", "pytest", "bench/bench_data.py", "--benchmark-only", "-q", "-p", "no:xdist",
                        "-p", "no:cacheprovider"], cwd=root, env={**e, "HYBRIDNA_BENCH_SKIP_DONE": str(tmp_path / "nope.jsonl")},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "HYBRIDNA_BENCH_SKIP_DONE" in r.stdout + r.stderr
