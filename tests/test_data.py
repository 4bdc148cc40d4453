"""hybridna.data: FASTA -> Zarr token stores, window datasets, resume, sharding, CLI (CPU, no downloads)."""
import gzip
import hashlib
import json
import os
import pickle
import tracemalloc

import numpy as np
import pytest
import torch

from hybridna.data import (LAMBDA_GENOME, FastaError, GenomeWindows, IntervalWindows, build_store, bundled_genome,
                           open_store, read_bed, read_fasta)
from hybridna.tokenizer import BYTE_TO_ID, N_ID, PAD_ID, VOCAB

# The shared fixture genome has a 10-base contig that windows skip (and warn about); tested on its own.
pytestmark = pytest.mark.filterwarnings("ignore:GenomeWindows.*shorter than window")

# Reference tokenisation, written independently of the byte table: a dict per letter.
_REF = {**{c: VOCAB.index(c) for c in "ACGTN"}, **{c: N_ID for c in "RYSWKMBDHV"}}
_COMP = {5: 8, 6: 7, 7: 6, 8: 5, 9: 9, 0: 0}


def ref_tokens(seq: str) -> np.ndarray:
    return np.array([_REF[c.upper()] for c in seq], np.uint8)


def ref_mask(seq: str) -> np.ndarray:
    return np.array([c.islower() for c in seq], bool)


def ref_revcomp(ids) -> np.ndarray:
    return np.array([_COMP[int(x)] for x in np.asarray(ids)[::-1]], dtype=np.int64)


def random_seq(rng, n, *, iupac=0.02, lower=0.3, n_run=None) -> str:
    s = rng.choice(list("ACGT"), n)
    if iupac:
        k = rng.random(n) < iupac
        s[k] = rng.choice(list("NRYSWKMBDHV"), int(k.sum()))
    if lower:
        k = rng.random(n) < lower
        s[k] = np.char.lower(s[k])
    if n_run:
        a, b = n_run
        s[a:b] = "N"
    return "".join(s.tolist())


def write_fasta(path, records, *, width=60, eol="\n", gz=False, trailing_eol=True):
    parts = []
    for name, seq in records:
        parts.append(f">{name}{eol}")
        if width is None:
            parts.append(seq + eol)
        else:
            parts.extend(seq[i:i + width] + eol for i in range(0, len(seq), width))
    text = "".join(parts)
    if not trailing_eol:
        text = text.rstrip("\r\n")
    data = text.encode()
    if gz:
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def genome(tmp_path, rng):
    """Two FASTA files (one gzipped, CRLF) with several contigs of awkward lengths."""
    recs_a = [("chr1 first contig", random_seq(rng, 1000)), ("chr2", random_seq(rng, 77)),
              ("chr3", random_seq(rng, 2501, n_run=(100, 900)))]
    recs_b = [("plasmid_x", random_seq(rng, 333)), ("tiny", "ACGTacgtNn")]
    a = write_fasta(tmp_path / "a.fa", recs_a, width=61)
    b = write_fasta(tmp_path / "b.fa.gz", recs_b, width=7, eol="\r\n", gz=True)
    expected = {name.split()[0]: seq for name, seq in recs_a + recs_b}
    return [a, b], expected


def no_leftovers(directory, keep=()):
    return sorted(p for p in os.listdir(directory) if p not in keep and not p.endswith((".fa", ".gz", ".bed")))


# ---------------------------------------------------------------------------------------------------
# FASTA reading and store contents
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [1, 7, 60, None], ids=lambda w: f"width{w}")
@pytest.mark.parametrize("eol", ["\n", "\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_read_fasta_formats(tmp_path, rng, width, eol, gz):
    recs = [("c1 desc here", random_seq(rng, 301)), ("c2", random_seq(rng, 64)), ("c3", random_seq(rng, 1))]
    p = write_fasta(tmp_path / ("x.fa.gz" if gz else "x.fa"), recs, width=width, eol=eol, gz=gz,
                    trailing_eol=width != 7)
    for block in (5, 64, 1 << 20):  # tiny blocks split headers, CRLF pairs and "\n>" across reads
        got = read_fasta(p, block_bytes=block)
        assert [g[0] for g in got] == ["c1", "c2", "c3"]
        for (name, ids, mask), (_, seq) in zip(got, recs):
            np.testing.assert_array_equal(ids, ref_tokens(seq), err_msg=f"{name} block={block}")
            np.testing.assert_array_equal(mask, ref_mask(seq), err_msg=f"{name} block={block}")


def test_blank_lines_and_multimember_gzip(tmp_path, rng):
    s1, s2 = random_seq(rng, 150), random_seq(rng, 90)
    text1 = f"\n>a\n{s1[:50]}\n\n{s1[50:]}\n\n".encode()
    text2 = f">b\n{s2}\n".encode()
    p = tmp_path / "m.fa.gz"
    p.write_bytes(gzip.compress(text1) + gzip.compress(text2))  # bgzip-style multi-member file
    got = read_fasta(p, block_bytes=16)
    assert [g[0] for g in got] == ["a", "b"]
    np.testing.assert_array_equal(got[0][1], ref_tokens(s1))
    np.testing.assert_array_equal(got[1][1], ref_tokens(s2))


@pytest.mark.parametrize("chunk_bases", [61, 256, 1 << 22])
def test_build_store_contents_and_metadata(tmp_path, genome, chunk_bases):
    files, expected = genome
    out = build_store(files, tmp_path / "g.zarr", chunk_bases=chunk_bases, species="testus", progress=False,
                      block_bytes=97)
    s = open_store(out)
    assert s.names == list(expected)
    assert s.lengths.tolist() == [len(v) for v in expected.values()]
    assert s.species == "testus"
    m = s.metadata
    assert m["vocab"] == VOCAB and m["chunk_bases"] == chunk_bases and m["compressor"] is None
    assert m["contigs"]["descriptions"][0] == "first contig"
    for src, f in zip(m["sources"], files):
        assert src["sha256"] == hashlib.sha256(open(f, "rb").read()).hexdigest()
        assert src["bytes"] == os.path.getsize(f)
    assert [x["contigs"] for x in m["sources"]] == [3, 2]
    for k, (name, seq) in enumerate(expected.items()):
        np.testing.assert_array_equal(s.tokens(name), ref_tokens(seq), err_msg=name)
        np.testing.assert_array_equal(s.softmask(name), ref_mask(seq), err_msg=name)
        assert m["contigs"]["n_count"][k] == int((ref_tokens(seq) == N_ID).sum())
        assert m["contigs"]["softmasked"][k] == int(ref_mask(seq).sum())
    # slices that start and end inside chunks and cross chunk boundaries
    seq = expected["chr3"]
    for a, b in [(0, 1), (5, 6), (6, 8), (0, 2501), (1000, 1001), (13, 1999), (2500, 2501), (7, 7)]:
        np.testing.assert_array_equal(s.tokens("chr3", a, b), ref_tokens(seq[a:b]), err_msg=f"{a}:{b}")
    np.testing.assert_array_equal(s.tokens(2, 10, 20), ref_tokens(seq[10:20]))  # by index
    # the store is a valid Zarr v3 group readable without hybridna
    import zarr

    g = zarr.open_group(out, mode="r")
    flat = np.concatenate([ref_tokens(v) for v in expected.values()])
    np.testing.assert_array_equal(g["tokens"][:], flat)
    assert g["tokens"].dtype == np.uint8 and g["tokens"].chunks == (chunk_bases,)
    assert no_leftovers(tmp_path) == ["g.zarr"]


def test_tokens_touch_only_covering_chunks(tmp_path, rng, monkeypatch):
    seq = random_seq(rng, 10_000)
    out = build_store(write_fasta(tmp_path / "x.fa", [("x", seq)]), tmp_path / "s", chunk_bases=1000,
                      progress=False)
    s = open_store(out)
    touched = []
    real = type(s)._chunk_map

    def spy(self, name, ci):
        touched.append(ci)
        return real(self, name, ci)

    monkeypatch.setattr(type(s), "_chunk_map", spy)
    np.testing.assert_array_equal(s.tokens("x", 2500, 4100), ref_tokens(seq[2500:4100]))
    assert sorted(set(touched)) == [2, 3, 4]
    assert s._mappable["tokens"]


def test_open_maps_are_capped(tmp_path, rng, monkeypatch):
    from hybridna.data import store as store_mod

    seq = random_seq(rng, 5000)
    s = open_store(build_store(write_fasta(tmp_path / "x.fa", [("x", seq)]), tmp_path / "s", chunk_bases=100,
                               progress=False))
    monkeypatch.setattr(store_mod, "MAX_OPEN_MAPS", 3)
    for a in rng.integers(0, 4900, 200):
        np.testing.assert_array_equal(s.tokens("x", a, a + 100), ref_tokens(seq[a:a + 100]))
        assert len(s._mmaps["tokens"]) <= 3
    np.testing.assert_array_equal(s.tokens("x"), ref_tokens(seq))


def test_progress_bar_and_empty_last_contig(tmp_path, capsys):
    p = tmp_path / "x.fa"
    p.write_bytes(b">a\nACGT\n>b")  # last record: a header without sequence or newline
    s = open_store(build_store([p], tmp_path / "s", progress=True))
    assert s.names == ["a", "b"] and s.lengths.tolist() == [4, 0]
    assert s.tokens("b").shape == (0,)
    assert "building s" in capsys.readouterr().err


def test_bad_slices(tmp_path, genome):
    files, _ = genome
    s = open_store(build_store(files, tmp_path / "g", progress=False))
    with pytest.raises(ValueError, match="contig"):
        s.tokens("nope", 0, 1)
    with pytest.raises(ValueError, match="start, end"):
        s.tokens("chr2", 10, 78)
    with pytest.raises(ValueError, match="start, end"):
        s.tokens("chr2", -1, 5)
    with pytest.raises(ValueError, match="index"):
        s.tokens(5, 0, 1)
    with pytest.raises(ValueError, match="not a directory"):
        open_store(tmp_path / "missing")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError):
        open_store(tmp_path / "empty_dir")


def test_compressed_store(tmp_path, genome):
    files, expected = genome
    plain = open_store(build_store(files, tmp_path / "p", chunk_bases=100, progress=False))
    comp = open_store(build_store(files, tmp_path / "c", chunk_bases=100, compressor="zstd", progress=False))
    assert comp.metadata["compressor"] == "zstd" and not comp._mappable["tokens"]
    for name in expected:
        np.testing.assert_array_equal(comp.tokens(name), plain.tokens(name))
        end = min(250, len(expected[name]))
        np.testing.assert_array_equal(comp.tokens(name, 3, end), plain.tokens(name, 3, end))
        np.testing.assert_array_equal(comp.softmask(name), plain.softmask(name))
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())  # noqa: E731
    assert size(tmp_path / "c") < size(tmp_path / "p")
    # DataLoader workers (forked) read compressed chunks through zarr
    ds = GenomeWindows(comp.path, 200, seed=2, num_samples=12)
    want = [_key(x) for x in ds]
    got = []
    for batch in ds.loader(batch_size=3, num_workers=2):
        got += list(zip(batch["contig"], batch["start"].tolist(), batch["strand"], batch["index"].tolist()))
    assert got == want


def test_bundled_lambda_genome(tmp_path):
    assert bundled_genome() == LAMBDA_GENOME and LAMBDA_GENOME.is_file()
    s = open_store(build_store([LAMBDA_GENOME], tmp_path / "lambda", species="lambda", progress=False))
    text = gzip.decompress(LAMBDA_GENOME.read_bytes()).decode()
    seq = "".join(text.split("\n", 1)[1].split())
    assert s.lengths.tolist() == [48502] == [len(seq)]
    np.testing.assert_array_equal(s.tokens(0), ref_tokens(seq))


def test_streaming_memory_is_bounded(tmp_path, rng):
    """A 24 MB FASTA converts with peak Python/numpy allocations far below its size (blocks, not the file)."""
    n = 24_000_000
    seq = np.frombuffer(b"ACGTacgtNA", np.uint8)[rng.integers(0, 10, n)]
    body = np.full(n + n // 80 + 1, ord("\n"), np.uint8)
    pos = np.arange(n) + np.arange(n) // 80  # 80 bases per line
    body[pos] = seq
    p = tmp_path / "big.fa"
    with open(p, "wb") as f:
        f.write(b">big\n")
        f.write(body.tobytes())
    # warm-up: zarr's first use allocates ~12 MB of one-time state (imports, codec registry)
    build_store(write_fasta(tmp_path / "w.fa", [("w", "ACGT")]), tmp_path / "w.zarr", progress=False)
    tracemalloc.start()
    try:
        out = build_store([p], tmp_path / "big.zarr", chunk_bases=1 << 20, block_bytes=1 << 20, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n / 3, f"peak traced memory {peak / 1e6:.1f} MB for a {n / 1e6:.0f} MB genome"
    s = open_store(out)
    assert s.lengths.tolist() == [n]
    np.testing.assert_array_equal(s.tokens("big", n - 1000, n), BYTE_TO_ID[seq[n - 1000:]])
    np.testing.assert_array_equal(s.softmask("big", 5_000_000, 5_001_000), np.isin(seq[5_000_000:5_001_000], np.frombuffer(b"acgt", np.uint8)))


# ---------------------------------------------------------------------------------------------------
# bad input: clear errors naming file and line; nothing written
# ---------------------------------------------------------------------------------------------------
def _bad_cases(tmp_path):
    good = tmp_path / "good.fa"
    good.write_text(">dup\nACGT\n>ok\nAC\n")
    full = gzip.compress(b">g\n" + b"ACGT" * 5000 + b"\n")
    return {
        "empty": (b"", None, "empty file"),
        "blank": (b"\n\n  \n", None, "empty file"),
        "no_header": (b"ACGT\nACGT\n", 1, "no FASTA header"),
        "seq_before_header": (b"\nACGT\n>a\nAC\n", 2, "sequence before the first header"),
        "dup_in_file": (b">a\nAC\n>b\nGT\n>a x\nTT\n", 5, "duplicate contig name 'a'"),
        "dup_across_files": (b">ok2\nAC\n>dup\nGT\n", 3, "duplicate contig name 'dup'"),
        "invalid_char": (b">a\nACGT\nACXT\n", 3, "column 3: invalid character 'X'"),
        "invalid_digit": (b">a\r\nAC\r\nGG1\r\n", 3, "invalid character '1'"),
        "empty_header": (b">\nACGT\n", 1, "empty header"),
        "gt_inside_line": (b">a\nACGT\nAC>GT\n>b\nAA\n", 3, "column 3: invalid character '>'"),
        "no_sequence": (b">a\n>b\n", None, "no sequence"),
        "truncated_gzip": (full[: len(full) // 2], None, "truncated gzip"),
        "corrupt_gzip": (full[:20] + b"\x00" * 40 + full[60:], None, "gzip"),
    }, good


@pytest.mark.parametrize("case", ["empty", "blank", "no_header", "seq_before_header", "dup_in_file",
                                  "dup_across_files", "invalid_char", "invalid_digit", "empty_header", "gt_inside_line",
                                  "no_sequence", "truncated_gzip", "corrupt_gzip"])
def test_bad_input_errors_write_nothing(tmp_path, case):
    cases, good = _bad_cases(tmp_path)
    data, line, msg = cases[case]
    bad = tmp_path / ("bad.fa.gz" if "gzip" in case else "bad.fa")
    bad.write_bytes(data)
    files = [good, bad] if case == "dup_across_files" else [bad]
    out = tmp_path / "out.zarr"
    with pytest.raises(FastaError, match=msg) as ei:
        build_store(files, out, chunk_bases=16, progress=False, block_bytes=8)
    text = str(ei.value)
    assert str(bad) in text
    if line is not None:
        assert f"{bad}:{line}:" in text, text
    assert not out.exists()
    assert no_leftovers(tmp_path) == [], "a temporary store was left behind"


def test_existing_output_and_overwrite(tmp_path, genome):
    files, _ = genome
    out = build_store(files[:1], tmp_path / "g", progress=False)
    with pytest.raises(FileExistsError):
        build_store(files, out, progress=False)
    assert open_store(out).names == ["chr1", "chr2", "chr3"]
    build_store(files, out, overwrite=True, progress=False)
    assert len(open_store(out).names) == 5
    assert no_leftovers(tmp_path) == ["g"]


def test_interrupted_build_leaves_nothing(tmp_path, genome, monkeypatch):
    from hybridna.data import store as store_mod

    files, _ = genome
    calls = {"n": 0}
    real = store_mod._StoreWriter._flush

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(store_mod._StoreWriter, "_flush", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_store(files, tmp_path / "g", chunk_bases=64, progress=False)
    assert no_leftovers(tmp_path) == []


def test_bad_arguments(tmp_path, genome):
    files, _ = genome
    with pytest.raises(ValueError, match="fasta_paths"):
        build_store([], tmp_path / "x")
    with pytest.raises(ValueError, match="fasta_paths"):
        build_store([tmp_path / "missing.fa"], tmp_path / "x")
    with pytest.raises(ValueError, match="chunk_bases"):
        build_store(files, tmp_path / "x", chunk_bases=0)
    with pytest.raises(ValueError, match="compressor"):
        build_store(files, tmp_path / "x", compressor="lz99")


# ---------------------------------------------------------------------------------------------------
# GenomeWindows
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path, genome):
    files, expected = genome
    return build_store(files, tmp_path / "g.zarr", chunk_bases=300, progress=False), expected


def _key(item):
    return (item["contig"], int(item["start"]), item["strand"], int(item["index"]))


def test_windows_items_match_store(store):
    path, expected = store
    ds = GenomeWindows([path], 50, seed=3, rc_prob=0.5, num_samples=200)
    items = list(ds)
    assert len(items) == 200 and [it["index"] for it in items] == list(range(200))
    strands = {it["strand"] for it in items}
    assert strands == {"+", "-"}
    for it in items:
        x = it["input_ids"]
        assert x.dtype == torch.int64 and x.shape == (50,)
        fwd = ref_tokens(expected[it["contig"]][it["start"]:it["start"] + 50]).astype(np.int64)
        want = fwd if it["strand"] == "+" else ref_revcomp(fwd)
        np.testing.assert_array_equal(x.numpy(), want)
    # short contigs (77 < 100 is kept at 50; "tiny" has 10 bases) are never sampled
    assert "tiny" not in {it["contig"] for it in items}
    assert ds.sample(17)["start"] == items[17]["start"]


def test_windows_deterministic_and_seeded(store):
    path, _ = store
    a = [_key(x) for x in GenomeWindows(path, 40, seed=1, rc_prob=0.5, num_samples=50)]
    b = [_key(x) for x in GenomeWindows(path, 40, seed=1, rc_prob=0.5, num_samples=50)]
    c = [_key(x) for x in GenomeWindows(path, 40, seed=2, rc_prob=0.5, num_samples=50)]
    assert a == b and a != c


def test_windows_weighted_by_contig_length(tmp_path, rng):
    p = write_fasta(tmp_path / "w.fa", [("big", random_seq(rng, 3010)), ("small", random_seq(rng, 1010)),
                                        ("short", random_seq(rng, 9))])
    path = build_store(p, tmp_path / "w", progress=False)
    with pytest.warns(UserWarning, match="1 contig"):
        ds = GenomeWindows(path, 11, seed=0, num_samples=4000)
    contigs = [x["contig"] for x in ds]
    frac_big = contigs.count("big") / len(contigs)
    assert abs(frac_big - 3000 / 4000) < 0.03  # binomial sd 0.007
    assert "short" not in contigs
    starts = np.array([x["start"] for x in ds if x["contig"] == "small"])
    assert starts.min() >= 0 and starts.max() <= 1010 - 11
    assert starts.min() < 50 and starts.max() > 950  # covers the whole contig, ends included


def test_windows_species_weights(tmp_path, rng):
    pa = build_store(write_fasta(tmp_path / "a.fa", [("a1", random_seq(rng, 500))]), tmp_path / "a",
                     species="ant", progress=False)
    pb = build_store(write_fasta(tmp_path / "b.fa", [("b1", random_seq(rng, 5000))]), tmp_path / "b",
                     species="bee", progress=False)
    default = [x["species"] for x in GenomeWindows([pa, pb], 20, num_samples=3000)]
    assert abs(default.count("ant") / 3000 - 481 / (481 + 4981)) < 0.02
    weighted = [x["species"] for x in GenomeWindows([pa, pb], 20, species_weights={"ant": 3, "bee": 1},
                                                     num_samples=3000)]
    assert abs(weighted.count("ant") / 3000 - 0.75) < 0.03
    listed = [x["species"] for x in GenomeWindows([pa, pb], 20, species_weights=[0, 1], num_samples=200)]
    assert set(listed) == {"bee"}
    with pytest.raises(ValueError, match="species_weights"):
        GenomeWindows([pa, pb], 20, species_weights={"ant": 1})
    with pytest.raises(ValueError, match="species_weights"):
        GenomeWindows([pa, pb], 20, species_weights=[1, 2, 3])


def test_windows_n_fraction_exclusion(store):
    path, _ = store  # chr3 bases 100..900 are N
    fracs = [float((it["input_ids"] == N_ID).float().mean())
             for it in GenomeWindows(path, 200, seed=0, max_n_frac=0.1, num_samples=300)]
    assert max(fracs) <= 0.1
    allowed = [float((it["input_ids"] == N_ID).float().mean())
               for it in GenomeWindows(path, 200, seed=0, max_n_frac=1.0, num_samples=300)]
    assert max(allowed) > 0.5  # without the limit, N-rich windows do come up


def test_windows_all_n_raises(tmp_path):
    path = build_store(write_fasta(tmp_path / "n.fa", [("n", "N" * 500)]), tmp_path / "n", progress=False)
    ds = GenomeWindows(path, 100, max_n_frac=0.5, max_tries=20, num_samples=1)
    with pytest.raises(RuntimeError, match="no window"):
        next(iter(ds))


def test_windows_bad_arguments(store):
    path, _ = store
    for kw, name in [(dict(window=0), "window"), (dict(window=10**6), "window"), (dict(rc_prob=1.5), "rc_prob"),
                     (dict(max_n_frac=-0.1), "max_n_frac"), (dict(rank=2, world_size=2), "rank"),
                     (dict(batch_size=0), "batch_size")]:
        args = dict(window=50) | kw
        with pytest.raises(ValueError, match=name):
            ds = GenomeWindows(path, **args)
            next(iter(ds))


def test_resume_exact(store):
    path, _ = store
    full = [_key(x) for x in GenomeWindows(path, 60, seed=7, rc_prob=0.5, num_samples=100)]
    ds = GenomeWindows(path, 60, seed=7, rc_prob=0.5, num_samples=100)
    it = iter(ds)
    first = [_key(next(it)) for _ in range(37)]
    state = ds.state_dict()
    assert state["consumed"] == 37
    ds2 = GenomeWindows(path, 60, seed=7, rc_prob=0.5, num_samples=100)
    ds2.load_state_dict(state)
    rest = [_key(x) for x in ds2]
    assert first + rest == full
    with pytest.raises(ValueError, match="seed"):
        GenomeWindows(path, 60, seed=8, rc_prob=0.5).load_state_dict(state)
    with pytest.raises(ValueError, match="window"):
        GenomeWindows(path, 61, seed=7, rc_prob=0.5).load_state_dict(state)


def test_workers_disjoint_and_resume_with_loader(store):
    """DataLoader with 2 workers: every sample exactly once, in the canonical order, and exact resume."""
    path, _ = store
    canonical = [_key(x) for x in GenomeWindows(path, 30, seed=5, rc_prob=0.5, num_samples=60)]
    ds = GenomeWindows(path, 30, seed=5, rc_prob=0.5, num_samples=60)
    got = []
    for batch in torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2):
        got += list(zip(batch["contig"], batch["start"].tolist(), batch["strand"], batch["index"].tolist()))
    assert sorted(k[3] for k in got) == list(range(60))  # disjoint workers, nothing missing
    assert sorted(got, key=lambda k: k[3]) == canonical
    # resume through loader(): stop after 5 batches (prefetching workers have run ahead), restart
    ds = GenomeWindows(path, 30, seed=5, rc_prob=0.5, num_samples=60)
    seen = []
    for step, batch in enumerate(ds.loader(batch_size=4, num_workers=2)):
        seen += list(zip(batch["contig"], batch["start"].tolist(), batch["strand"], batch["index"].tolist()))
        if step == 4:
            break
    state = ds.state_dict()
    assert state["consumed"] == 20
    ds2 = GenomeWindows(path, 30, seed=5, rc_prob=0.5, num_samples=60)
    ds2.load_state_dict(state)
    for batch in ds2.loader(batch_size=4, num_workers=2):
        seen += list(zip(batch["contig"], batch["start"].tolist(), batch["strand"], batch["index"].tolist()))
    assert seen == canonical
    assert ds2.state_dict()["consumed"] == 0  # ran to the end: the next pass starts over


def test_ranks_disjoint(store):
    """world_size=2: the two ranks' streams interleave into the single-process stream, no overlap."""
    path, _ = store
    single = [_key(x)[:3] for x in GenomeWindows(path, 25, seed=9, rc_prob=0.5, num_samples=80)]
    r0 = [_key(x)[:3] for x in GenomeWindows(path, 25, seed=9, rc_prob=0.5, rank=0, world_size=2, num_samples=40)]
    r1 = [_key(x)[:3] for x in GenomeWindows(path, 25, seed=9, rc_prob=0.5, rank=1, world_size=2, num_samples=40)]
    assert r0 == single[0::2] and r1 == single[1::2]
    assert r0 != r1
    # torch.distributed, when initialised, supplies rank / world size
    assert torch.distributed.is_available()
    ds = GenomeWindows(path, 25, seed=9, rc_prob=0.5, num_samples=40)
    state = ds.state_dict()
    assert state["world_size"] == 1 and state["rank"] == 0
    ds_r1 = GenomeWindows(path, 25, seed=9, rc_prob=0.5, rank=1, world_size=2, num_samples=40)
    with pytest.raises(ValueError, match="world_size"):
        ds_r1.load_state_dict(state)


def _ddp_child(rank, world, init_file, store_path, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ds = GenomeWindows(store_path, 25, seed=9, rc_prob=0.5, num_samples=40)  # rank from torch.distributed
        keys = [list(_key(x)[:3]) for x in ds]
        state = ds.state_dict()
    finally:
        torch.distributed.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"keys": keys, "state": state}, f)


def test_ranks_from_torch_distributed(tmp_path, store):
    """Two gloo processes: each rank takes its rank / world size from torch.distributed."""
    path, _ = store
    single = [list(_key(x)[:3]) for x in GenomeWindows(path, 25, seed=9, rc_prob=0.5, num_samples=80)]
    torch.multiprocessing.start_processes(_ddp_child, args=(2, str(tmp_path / "pg"), path, str(tmp_path)),
                                          nprocs=2, start_method="spawn")
    got = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert got[0]["keys"] == single[0::2] and got[1]["keys"] == single[1::2]
    assert [g["state"]["world_size"] for g in got] == [2, 2] and [g["state"]["rank"] for g in got] == [0, 1]


def test_windows_pickle_roundtrip(store):
    """Spawned DataLoader workers receive a pickled dataset: memory maps are dropped and reopened."""
    path, _ = store
    ds = GenomeWindows(path, 40, seed=4, rc_prob=0.5, num_samples=20)
    before = [_key(x) for x in ds]
    ds2 = pickle.loads(pickle.dumps(ds))
    assert [_key(x) for x in ds2] == before


# ---------------------------------------------------------------------------------------------------
# interval mode
# ---------------------------------------------------------------------------------------------------
def test_interval_windows_list_and_bed(tmp_path, store):
    path, expected = store
    ivs = [("chr1", 10, 30), ("chr3", 0, 5, "-")]
    ds = IntervalWindows(path, ivs)
    assert len(ds) == 2
    np.testing.assert_array_equal(ds[0]["input_ids"].numpy(), ref_tokens(expected["chr1"][10:30]))
    np.testing.assert_array_equal(ds[1]["input_ids"].numpy(), ref_revcomp(ref_tokens(expected["chr3"][0:5])))
    bed = tmp_path / "x.bed"
    bed.write_text("track name=x\n# comment\nchr2\t0\t10\tpeak1\t0\t+\n\nchr1\t990\t1000\tpeak2\t5\t-\n")
    ds = IntervalWindows(path, bed, window=16)
    a, b = ds[0], ds[1]
    assert a["name"] == "peak1" and a["start"] == -3 and a["end"] == 13
    want = np.full(16, PAD_ID, np.int64)
    want[3:] = ref_tokens(expected["chr2"][0:13])
    np.testing.assert_array_equal(a["input_ids"].numpy(), want)
    want = np.full(16, PAD_ID, np.int64)
    want[:13] = ref_tokens(expected["chr1"][987:1000])
    np.testing.assert_array_equal(b["input_ids"].numpy(), ref_revcomp(want))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["input_ids"].shape == (2, 16)
    assert [iv.name for iv in read_bed(bed)] == ["peak1", "peak2"]


def test_interval_variable_lengths_pad_collate(store):
    from hybridna.data import pad_collate

    path, expected = store
    ds = IntervalWindows(path, [("chr1", 0, 7), ("chr2", 5, 8, "-"), ("chr3", 100, 112)])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=pad_collate)))
    assert batch["input_ids"].shape == (3, 12) and batch["lengths"].tolist() == [7, 3, 12]
    assert batch["attention_mask"].sum(1).tolist() == [7, 3, 12]
    np.testing.assert_array_equal(batch["input_ids"][1, :3].numpy(), ref_revcomp(ref_tokens(expected["chr2"][5:8])))
    assert (batch["input_ids"][1, 3:] == PAD_ID).all()
    assert batch["contig"] == ["chr1", "chr2", "chr3"] and batch["start"].tolist() == [0, 5, 100]


def test_interval_errors(tmp_path, store):
    path, _ = store
    with pytest.raises(ValueError, match="not in store"):
        IntervalWindows(path, [("chrZ", 0, 5)])
    with pytest.raises(ValueError, match="past the end"):
        IntervalWindows(path, [("chr2", 70, 80)])
    bed = tmp_path / "bad.bed"
    bed.write_text("chr1\t5\t10\nchr1\tfive\t10\n")
    with pytest.raises(ValueError, match=f"{bed}:2:"):
        IntervalWindows(path, bed)
    bed.write_text("# header\nchr1\t5\t10\n\nchrQ\t1\t10\n")
    with pytest.raises(ValueError, match=f"{bed}:4: contig 'chrQ' is not in store"):
        IntervalWindows(path, bed)


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------
def test_cli_build_and_info(tmp_path, genome, capsys):
    from hybridna.cli import main

    files, expected = genome
    out = tmp_path / "cli.zarr"
    assert main(["data", "build", *files, "--out", str(out), "--chunk-bases", "128", "--species", "testus",
                 "--quiet"]) == 0
    s = open_store(out)
    assert s.names == list(expected) and s.chunk_bases == 128 and s.species == "testus"
    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "testus" in text and "chr1" in text and f"{sum(map(len, expected.values())):,}" in text
    assert main(["data", "build", "--compress", *files, "--out", str(tmp_path / "z"), "--quiet"]) == 0
    assert open_store(tmp_path / "z").metadata["compressor"] == "zstd"
    assert main(["data", "build", *files, "--out", str(tmp_path / "b"), "--compressor", "blosc", "--quiet"]) == 0
    assert open_store(tmp_path / "b").metadata["compressor"] == "blosc"
    bad = tmp_path / "bad.fa"
    bad.write_text(">a\nACGU!\n")
    assert main(["data", "build", str(bad), "--out", str(tmp_path / "bad.zarr"), "--quiet"]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert not (tmp_path / "bad.zarr").exists()
