"""Data pipeline speed (CPU): FASTA -> Zarr conversion MB/s and window sampling GB/s of tokens.

    pytest bench/bench_data.py --benchmark-only          # pytest-benchmark table + extra_info rates
    python bench/bench_data.py                           # the same figures as plain text

The big genome is smalt-examples' truncated human chrX (71 MB of FASTA text, 70 Mb); get it with
`cd /tmp && apt-get download smalt-examples && dpkg -x smalt-examples*.deb smalt` (or point
HYBRIDNA_BENCH_FASTA at any FASTA). Without it those cases skip and the bundled lambda genome
(48.5 kb) is measured instead. Conversion MB/s counts decompressed FASTA bytes; sampling GB/s counts
uint8 tokens delivered (each as an int64 in input_ids) by one process, i.e. one DataLoader worker,
from a warm page cache.
"""
from __future__ import annotations

import gzip
import os
import shutil
import statistics
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hybridna.data import LAMBDA_GENOME, GenomeWindows, build_store  # noqa: E402

_SMALT = "/tmp/smalt/usr/share/doc/smalt/test/data/hs37chrXtrunc.fa.gz"
BIG = os.environ.get("HYBRIDNA_BENCH_FASTA", _SMALT)
HAVE_BIG = os.path.isfile(BIG)
SKIP_BIG = pytest.mark.skipif(not HAVE_BIG, reason=f"big genome absent: {BIG} (see the module docstring)")
WINDOW = 131_072


def _text_bytes(path) -> int:
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    if not gz:
        return os.path.getsize(path)
    n = 0
    with gzip.open(path, "rb") as f:
        while True:
            b = f.read(1 << 24)
            if not b:
                return n
            n += len(b)


def _plain_copy(path, workdir) -> str:
    """Decompressed copy of a FASTA (conversion of plain text is the headline figure)."""
    out = os.path.join(workdir, "genome.fa")
    if not os.path.exists(out):
        with gzip.open(path, "rb") if open(path, "rb").read(2) == b"\x1f\x8b" else open(path, "rb") as f, \
                open(out, "wb") as g:
            shutil.copyfileobj(f, g, 1 << 24)
    return out


def time_convert(fasta, workdir, repeats=3) -> dict:
    nbytes = _text_bytes(fasta)
    out = os.path.join(workdir, "bench.zarr")
    times = []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        build_store([fasta], out, progress=False)
        times.append(time.perf_counter() - t0)
    shutil.rmtree(out, ignore_errors=True)
    return {"text_mb": nbytes / 1e6, "best_s": min(times), "median_s": statistics.median(times),
            "mbs_best": nbytes / min(times) / 1e6, "mbs_median": nbytes / statistics.median(times) / 1e6,
            "first_s": times[0]}


def _warm(store_path):
    for root, _, files in os.walk(store_path):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                while fh.read(1 << 24):
                    pass


def time_sampling(store_path, window, *, n=1500, rc_prob=0.0, max_n_frac=1.0) -> dict:
    _warm(store_path)
    ds = GenomeWindows([store_path], window, seed=0, rc_prob=rc_prob, max_n_frac=max_n_frac)
    it = iter(ds)
    for _ in range(50):
        next(it)
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        rates.append(n * window / (time.perf_counter() - t0) / 1e9)
    return {"window": window, "gbs_best": max(rates), "gbs_median": statistics.median(rates),
            "us_per_window": window / statistics.median(rates) / 1e3}


@pytest.fixture(scope="module")
def workdir():
    d = tempfile.mkdtemp(prefix="hybridna-bench-data-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def big_store(workdir):
    return build_store([BIG], os.path.join(workdir, "big.zarr"), progress=False)


@pytest.fixture(scope="module")
def lambda_store(workdir):
    return build_store([LAMBDA_GENOME], os.path.join(workdir, "lambda.zarr"), progress=False)


@SKIP_BIG
@pytest.mark.parametrize("fmt", ["fa", "fa.gz"])
def test_convert_big(benchmark, workdir, fmt):
    src = _plain_copy(BIG, workdir) if fmt == "fa" else BIG
    r = time_convert(src, workdir)
    benchmark.extra_info.update({k: round(v, 3) for k, v in r.items()}, source=os.path.basename(src))
    out = os.path.join(workdir, "pedantic.zarr")

    def run():
        shutil.rmtree(out, ignore_errors=True)
        build_store([src], out, progress=False)

    benchmark.pedantic(run, rounds=1, iterations=1)


def test_convert_lambda(benchmark, workdir):
    r = time_convert(str(LAMBDA_GENOME), workdir, repeats=5)
    benchmark.extra_info.update({k: round(v, 4) for k, v in r.items()})
    out = os.path.join(workdir, "lambda-pedantic.zarr")

    def run():
        shutil.rmtree(out, ignore_errors=True)
        build_store([LAMBDA_GENOME], out, progress=False)

    benchmark.pedantic(run, rounds=1, iterations=1)


@SKIP_BIG
@pytest.mark.parametrize("rc_prob,max_n_frac", [(0.0, 1.0), (0.5, 0.1)], ids=["plain", "rc0.5-maxN0.1"])
def test_sample_big(benchmark, big_store, rc_prob, max_n_frac):
    r = time_sampling(big_store, WINDOW, rc_prob=rc_prob, max_n_frac=max_n_frac)
    benchmark.extra_info.update({k: round(v, 3) for k, v in r.items()})
    it = iter(GenomeWindows([big_store], WINDOW, rc_prob=rc_prob, max_n_frac=max_n_frac))
    benchmark.pedantic(lambda: next(it), rounds=200, iterations=1, warmup_rounds=10)


@pytest.mark.parametrize("rc_prob", [0.0, 0.5], ids=["plain", "rc0.5"])
def test_sample_lambda(benchmark, lambda_store, rc_prob):
    window = 16_384  # lambda is 48.5 kb: the 131,072-base window does not fit
    r = time_sampling(lambda_store, window, rc_prob=rc_prob, n=3000)
    benchmark.extra_info.update({k: round(v, 3) for k, v in r.items()})
    it = iter(GenomeWindows([lambda_store], window, rc_prob=rc_prob))
    benchmark.pedantic(lambda: next(it), rounds=200, iterations=1, warmup_rounds=10)


def main():
    work = tempfile.mkdtemp(prefix="hybridna-bench-data-")
    try:
        print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, cpus {os.cpu_count()}, "
              f"load {os.getloadavg()[0]:.1f}")
        if HAVE_BIG:
            for src in (_plain_copy(BIG, work), BIG):
                r = time_convert(src, work)
                print(f"convert {os.path.basename(src)}: {r['text_mb']:.1f} MB text, best {r['best_s']:.2f} s "
                      f"({r['mbs_best']:.0f} MB/s), median {r['median_s']:.2f} s ({r['mbs_median']:.0f} MB/s), "
                      f"first {r['first_s']:.2f} s")
            store = build_store([BIG], os.path.join(work, "big.zarr"), progress=False)
            for rc, mn in ((0.0, 1.0), (0.5, 1.0), (0.5, 0.1)):
                r = time_sampling(store, WINDOW, rc_prob=rc, max_n_frac=mn)
                print(f"sample window {WINDOW} rc_prob {rc} max_n_frac {mn}: median {r['gbs_median']:.2f} GB/s "
                      f"(best {r['gbs_best']:.2f}), {r['us_per_window']:.0f} us/window")
        else:
            print(f"skipped big genome: {BIG} absent")
        r = time_convert(str(LAMBDA_GENOME), work, repeats=5)
        print(f"convert lambda: {r['text_mb'] * 1e3:.1f} kB text, median {r['median_s'] * 1e3:.1f} ms")
        store = build_store([LAMBDA_GENOME], os.path.join(work, "lambda.zarr"), progress=False)
        for rc in (0.0, 0.5):
            r = time_sampling(store, 16_384, rc_prob=rc, n=3000)
            print(f"sample lambda window 16384 rc_prob {rc}: median {r['gbs_median']:.2f} GB/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
