"""Window datasets over token stores: random pretraining windows and fixed intervals (BED).

GenomeWindows: sample k of a rank is a pure function of (seed, global index), where the global index
is `k * world_size + rank`; its random numbers come from a counter-based hash (splitmix64) of
(seed, global index, draw number). Nothing depends on which worker or process computes it, so

- ranks are disjoint (different global indices) and so are DataLoader workers (worker w of W takes
  the rank's samples in blocks of `batch_size`, block b going to worker (b - b0) % W, which is also the
  order in which DataLoader collects them);
- the position is one integer, the number of samples this rank has consumed: `state_dict()` saves it,
  `load_state_dict()` restores it, and iteration restarts at exactly the next sample. A finite stream
  (`num_samples`) that is iterated to its end goes back to 0, so a validation set gives the same
  windows at every evaluation.

Window choice: a (store, contig) pair with probability proportional to its number of window starts
(length - window + 1) -- every window position of the genome equally likely -- times the species
weight when several stores are mixed; then a uniform start. Contigs shorter than `window` are
skipped (no padding in pretraining batches: every token is real sequence and every label counts).
Windows with more than `max_n_frac * window` N tokens are rejected and redrawn from the same
sample's hash stream (deterministic). With probability `rc_prob` the window is reverse-complemented.
"""
from __future__ import annotations

import bisect
import gzip
import hashlib
import math
import os
import warnings
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

from hybridna.tokenizer import A_ID, C_ID, G_ID, N_ID, PAD_ID, T_ID

from .store import GenomeStore, as_stores, open_store

__all__ = ["GenomeWindows", "IntervalWindows", "Interval", "read_bed", "WindowLoader", "pad_collate"]

_M64 = (1 << 64) - 1
_INV53 = 1.0 / (1 << 53)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _complement_lut() -> np.ndarray:
    lut = np.arange(256, dtype=np.uint8)
    lut[[A_ID, C_ID, G_ID, T_ID]] = [T_ID, G_ID, C_ID, A_ID]
    return lut


_COMP = _complement_lut()
# GenomeWindows' fast reverse complement relies on the id contract A, C, G, T, N = 5, 6, 7, 8, 9.
assert (A_ID, C_ID, G_ID, T_ID, N_ID) == (5, 6, 7, 8, 9)


def _revcomp_u8(x: np.ndarray) -> np.ndarray:
    """Reverse complement of uint8 token ids (specials and N unchanged)."""
    return np.take(_COMP, x[::-1])


def _dist_info(rank, world_size) -> tuple[int, int]:
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            r, w = 0, 1
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if not (isinstance(world_size, int) and world_size >= 1):
        raise ValueError(f"world_size: expected an int >= 1, got {world_size!r}")
    if not (isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank: expected an int in [0, {world_size}), got {rank!r}")
    return rank, world_size


class GenomeWindows(torch.utils.data.IterableDataset):
    """Fixed-length windows at random offsets of one or several token stores.

    Args:
        stores: a store (GenomeStore or path) or a list of them.
        window: window length in tokens.
        seed: base seed; the stream is a function of (seed, rank, world_size) only.
        rc_prob: probability of reverse-complementing a window (strand "-").
        max_n_frac: reject windows whose fraction of N tokens exceeds this (1.0 keeps all).
        species_weights: None (every window position equally likely across all stores), a dict
            {species: weight} (a store's species is its metadata label, or its directory name when
            unlabelled; stores of one species share its weight in proportion to their size), or a
            list with one weight per store.
        rank, world_size: DDP position; default: torch.distributed when initialised, else 0 / 1.
        batch_size: the DataLoader batch size, so that with several workers the loader's output order
            is the canonical sample order (needed for exact resume; `loader()` sets it for you).
        num_samples: samples per rank (None: infinite stream).
        max_tries: draws per sample before giving up when max_n_frac rejects them all.

    Items are dicts: input_ids (LongTensor (window,)), contig (str), start (int, 0-based forward-strand
    start), strand ("+" or "-"), species (str), index (int, the sample's number on this rank).

    Resume: iterating in the main process keeps `state_dict()` current by itself. With DataLoader worker
    processes the main-process object cannot see what the workers yield (they also prefetch), so
    iterate `ds.loader(batch_size, num_workers=...)`, which counts the batches handed out, or record
    the position yourself with `set_consumed(n)` (n = samples consumed = the last batch's index + 1).
    """

    def __init__(self, stores, window: int, *, seed: int = 0, rc_prob: float = 0.0, max_n_frac: float = 1.0,
                 species_weights=None, rank: int | None = None, world_size: int | None = None,
                 batch_size: int = 1, num_samples: int | None = None, max_tries: int = 1000):
        super().__init__()
        if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window: expected a positive int, got {window!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ValueError(f"seed: expected an int, got {seed!r}")
        if not 0.0 <= float(rc_prob) <= 1.0:
            raise ValueError(f"rc_prob: expected a probability in [0, 1], got {rc_prob!r}")
        if not 0.0 <= float(max_n_frac) <= 1.0:
            raise ValueError(f"max_n_frac: expected a fraction in [0, 1], got {max_n_frac!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 0):
            raise ValueError(f"num_samples: expected None or an int >= 0, got {num_samples!r}")
        if not isinstance(max_tries, int) or max_tries < 1:
            raise ValueError(f"max_tries: expected a positive int, got {max_tries!r}")
        self.stores: list[GenomeStore] = as_stores(stores)
        self.window = int(window)
        self.seed = int(seed) & _M64
        self.rc_prob = float(rc_prob)
        self.max_n_frac = float(max_n_frac)
        self.max_n = math.floor(self.max_n_frac * self.window + 1e-9)
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.max_tries = max_tries
        self._rank, self._world = rank, world_size
        self._consumed = 0
        self._build_table(species_weights)

    # ---- sampling table ----------------------------------------------------------------------------
    def species_of(self, i: int) -> str:
        s = self.stores[i]
        return s.species if s.species is not None else os.path.basename(s.path.rstrip("/"))

    def _build_table(self, species_weights):
        W = self.window
        rows = []  # (store, contig, n_starts)
        skipped = 0
        store_starts = np.zeros(len(self.stores), np.float64)
        for si, s in enumerate(self.stores):
            ok = np.flatnonzero(s.lengths >= W)
            skipped += len(s.lengths) - len(ok)
            for ci in ok:
                n = int(s.lengths[ci]) - W + 1
                rows.append((si, int(ci), n))
                store_starts[si] += n
            if len(ok) == 0:
                raise ValueError(f"window: {W} is longer than every contig of {s.path} "
                                 f"(longest {int(s.lengths.max())})")
        if skipped:
            warnings.warn(f"GenomeWindows: {skipped} contig(s) shorter than window={W} are skipped", stacklevel=3)
        labels = [self.species_of(i) for i in range(len(self.stores))]
        if species_weights is None:
            store_w = store_starts.copy()
        elif isinstance(species_weights, dict):
            unknown = set(labels) - set(species_weights)
            if unknown:
                raise ValueError(f"species_weights: no weight for species {sorted(unknown)} "
                                 f"(stores' species: {sorted(set(labels))})")
            per_species = {}
            for si, lab in enumerate(labels):
                per_species[lab] = per_species.get(lab, 0.0) + store_starts[si]
            store_w = np.array([float(species_weights[lab]) * store_starts[si] / per_species[lab]
                                for si, lab in enumerate(labels)])
        else:
            store_w = np.asarray(species_weights, dtype=np.float64).reshape(-1)
            if store_w.shape[0] != len(self.stores):
                raise ValueError(f"species_weights: expected {len(self.stores)} weights (one per store), "
                                 f"got {store_w.shape[0]}")
        if not np.all(np.isfinite(store_w)) or np.any(store_w < 0) or store_w.sum() <= 0:
            raise ValueError(f"species_weights: expected non-negative finite weights with a positive sum, "
                             f"got {species_weights!r}")
        p = np.array([store_w[si] * n / store_starts[si] for si, _, n in rows], dtype=np.float64)
        cum = np.cumsum(p / p.sum())
        cum[-1] = 1.0
        self._cum = cum.tolist()
        self._row_store = [r[0] for r in rows]
        self._row_contig = [r[1] for r in rows]
        self._row_nstarts = [r[2] for r in rows]
        self._row_offset = [int(self.stores[r[0]].offsets[r[1]]) for r in rows]
        self._row_name = [self.stores[r[0]].names[r[1]] for r in rows]
        self._labels = labels
        h = hashlib.sha256()
        for s in self.stores:
            h.update(json_bytes([s.names, s.lengths.tolist(), [x["sha256"] for x in s.metadata["sources"]]]))
        h.update(json_bytes([W, p.tolist(), self.rc_prob, self.max_n_frac]))
        self._fingerprint = h.hexdigest()[:16]

    # ---- one sample ----------------------------------------------------------------------------------
    def _draw(self, g: int, buf: np.ndarray):
        """Sample with global index g: returns (row, start, strand) and fills buf with its tokens."""
        base = _splitmix64(self.seed ^ _splitmix64(g))
        for k in range(self.max_tries):
            x1 = _splitmix64(base + 3 * k)
            x2 = _splitmix64(base + 3 * k + 1)
            row = bisect.bisect_right(self._cum, (x1 >> 11) * _INV53)
            if row >= len(self._cum):
                row = len(self._cum) - 1
            start = (x2 * self._row_nstarts[row]) >> 64
            self.stores[self._row_store[row]].read_into("tokens", self._row_offset[row] + start, buf)
            if self.max_n < self.window and np.count_nonzero(buf == N_ID) > self.max_n:
                continue
            rc = self.rc_prob > 0 and (_splitmix64(base + 3 * k + 2) >> 11) * _INV53 < self.rc_prob
            return row, start, rc
        raise RuntimeError(f"GenomeWindows: no window with at most {self.max_n_frac:.3f} N found in "
                           f"{self.max_tries} draws (sample {g}); lower the window or raise max_n_frac")

    def _scratch(self):
        sc = getattr(self, "_scratch_bufs", None)
        if sc is None or sc[0].shape[0] != self.window:
            sc = self._scratch_bufs = (np.empty(self.window, np.uint8), np.empty(self.window, np.uint8))
        return sc

    def sample(self, index: int, *, rank: int | None = None, world_size: int | None = None) -> dict:
        """The item with number `index` on this rank (what iteration yields at that position)."""
        r, w = _dist_info(self._rank if rank is None else rank, self._world if world_size is None else world_size)
        buf = np.empty(self.window, np.uint8)
        return self._item(index, index * w + r, buf)

    def _item(self, j: int, g: int, buf: np.ndarray) -> dict:
        row, start, rc = self._draw(g, buf)
        ids = torch.empty(self.window, dtype=torch.int64)
        if rc:
            # Complement with contiguous uint8 arithmetic (A,C,G,T = 5..8 -> 13 - x; N = 9 stays), then
            # reverse while widening: ~2x faster than a table lookup through a reversed view.
            comp, isn = self._scratch()
            np.subtract(13, buf, out=comp)
            np.equal(buf, N_ID, out=isn.view(bool))
            np.multiply(isn, 2 * N_ID - 13, out=isn)
            np.add(comp, isn, out=comp)
            ids.numpy()[:] = comp[::-1]
        else:
            ids.numpy()[:] = buf
        return {"input_ids": ids, "contig": self._row_name[row], "start": start, "strand": "-" if rc else "+",
                "species": self._labels[self._row_store[row]], "index": j}

    # ---- iteration -----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        rank, world = _dist_info(self._rank, self._world)
        info = torch.utils.data.get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        in_main = info is None
        B = self.batch_size
        j0 = self._consumed
        stop = self.num_samples
        buf = np.empty(self.window, np.uint8)
        b = wid  # block number relative to j0
        while True:
            lo = j0 + b * B
            if stop is not None and lo >= stop:
                if in_main:  # a finite stream ran to its end: the next iteration starts over
                    self._consumed = 0
                return
            hi = lo + B if stop is None else min(lo + B, stop)
            for j in range(lo, hi):
                item = self._item(j, j * world + rank, buf)
                if in_main:
                    self._consumed = j + 1
                yield item
            b += nw

    def __len__(self):
        if self.num_samples is None:
            raise TypeError("GenomeWindows with num_samples=None is an infinite stream and has no len()")
        return self.num_samples

    # ---- resume --------------------------------------------------------------------------------------
    @property
    def consumed(self) -> int:
        """Samples of this rank handed out so far (the resume position)."""
        return self._consumed

    def set_consumed(self, n: int) -> None:
        """Set the resume position by hand (e.g. steps * batch_size when the loop counts itself)."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n: expected an int >= 0, got {n!r}")
        self._consumed = n

    def state_dict(self) -> dict:
        rank, world = _dist_info(self._rank, self._world)
        return {"consumed": self._consumed, "seed": self.seed, "window": self.window, "world_size": world,
                "rank": rank, "fingerprint": self._fingerprint}

    def load_state_dict(self, state: dict) -> None:
        """Resume: iteration continues at exactly the sample the saved run would have drawn next.

        The seed, window, stores, weights and world size must match the saved run (ValueError otherwise).
        """
        if not isinstance(state, dict) or "consumed" not in state:
            raise ValueError("state: expected a dict from GenomeWindows.state_dict()")
        _, world = _dist_info(self._rank, self._world)
        for key, mine in (("seed", self.seed), ("window", self.window), ("world_size", world),
                          ("fingerprint", self._fingerprint)):
            if key in state and state[key] != mine:
                raise ValueError(f"state: saved {key}={state[key]!r} differs from this dataset's {mine!r}; "
                                 "exact resume needs the same stores, window, seed, weights and world size")
        self.set_consumed(int(state["consumed"]))

    def loader(self, batch_size: int, *, num_workers: int = 0, **kwargs) -> "WindowLoader":
        """A DataLoader over this dataset that keeps `state_dict()` exact with any number of workers."""
        return WindowLoader(self, batch_size, num_workers=num_workers, **kwargs)


class WindowLoader:
    """DataLoader wrapper for GenomeWindows: sets the block size to the batch size and counts batches
    handed out, so `dataset.state_dict()` is the exact resume position even with worker processes
    (which prefetch batches the training loop has not seen yet)."""

    def __init__(self, dataset: GenomeWindows, batch_size: int, *, num_workers: int = 0, **kwargs):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.kwargs = kwargs

    def __iter__(self):
        ds = self.dataset
        ds.batch_size = self.batch_size
        dl = torch.utils.data.DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers,
                                         **self.kwargs)
        for batch in dl:
            if self.num_workers > 0:
                idx = batch["index"]
                first, n = int(idx[0]), len(idx)
                if first != ds._consumed:
                    raise RuntimeError(f"WindowLoader: batch starts at sample {first}, expected {ds._consumed}")
                ds._consumed = first + n
            yield batch
        ds._consumed = 0  # a finite stream ran to its end: the next iteration starts over

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)


def json_bytes(obj) -> bytes:
    import json

    return json.dumps(obj, separators=(",", ":")).encode()


# ---- interval mode ---------------------------------------------------------------------------------
class Interval(NamedTuple):
    contig: str
    start: int
    end: int
    strand: str = "+"
    name: str = ""


def read_bed(path) -> list[Interval]:
    """Intervals of a BED file (plain or gzipped): chrom, start, end, [name, [score, [strand]]].

    Lines starting with '#', 'track' or 'browser' and blank lines are skipped. Errors name file and line.
    """
    return [iv for _, iv in _read_bed_lines(path)]


def _read_bed_lines(path) -> list[tuple[int, Interval]]:
    path = os.fspath(path)
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    out = []
    with opener(path, "rt") as f:
        for ln, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            if len(cols) < 3:
                raise ValueError(f"{path}:{ln}: expected at least 3 columns (chrom start end), got {len(cols)}")
            try:
                start, end = int(cols[1]), int(cols[2])
            except ValueError:
                raise ValueError(f"{path}:{ln}: start and end must be integers, got {cols[1]!r} {cols[2]!r}") from None
            if start < 0 or end <= start:
                raise ValueError(f"{path}:{ln}: expected 0 <= start < end, got {start} {end}")
            strand = cols[5] if len(cols) > 5 else "+"
            if strand == ".":
                strand = "+"
            if strand not in "+-":
                raise ValueError(f"{path}:{ln}: strand must be '+', '-' or '.', got {strand!r}")
            out.append((ln, Interval(cols[0], start, end, strand, cols[3] if len(cols) > 3 else "")))
    if not out:
        raise ValueError(f"{path}: no intervals")
    return out


class IntervalWindows(torch.utils.data.Dataset):
    """Map-style dataset of given intervals of a store (evaluation and fine-tuning data).

    Args:
        store: a GenomeStore or path.
        intervals: a BED path, or a list of (contig, start, end) / (contig, start, end, strand) /
            Interval tuples (0-based, end exclusive).
        window: None: each item is exactly the interval (lengths may differ; batch with a collate
            that pads, or batch_size=1). An int: each interval is re-centred to `window` tokens
            (centre = (start + end) // 2); positions past a contig's ends are filled with pad_id.
        pad_id: padding token (default the tokenizer's <pad>).

    Items: input_ids (LongTensor), contig, start, end (the window's coordinates, possibly past the
    contig ends when padded), strand ("-" items are reverse-complemented), name, index.
    Use a DistributedSampler for DDP, and `collate_fn=pad_collate` for variable-length intervals.
    """

    def __init__(self, store, intervals, *, window: int | None = None, pad_id: int = PAD_ID):
        self.store = open_store(store)
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f"window: expected None or a positive int, got {window!r}")
        self.window = window
        self.pad_id = int(pad_id)
        src, lines = None, None
        if isinstance(intervals, (str, os.PathLike)):
            src = os.fspath(intervals)
            lines, intervals = zip(*_read_bed_lines(src))
        out = []
        for k, iv in enumerate(intervals):
            where = f"{src}:{lines[k]}" if src else f"intervals[{k}]"
            if isinstance(iv, Interval):
                pass
            elif isinstance(iv, (tuple, list)) and 3 <= len(iv) <= 5:
                iv = Interval(str(iv[0]), int(iv[1]), int(iv[2]), *(iv[3:]))
            else:
                raise ValueError(f"intervals: {where}: expected (contig, start, end[, strand]), got {iv!r}")
            if iv.contig not in self.store._index:
                raise ValueError(f"intervals: {where}: contig {iv.contig!r} is not in store {self.store.path}")
            L = self.store.contig_length(iv.contig)
            if not 0 <= iv.start < iv.end:
                raise ValueError(f"intervals: {where}: expected 0 <= start < end, got {iv.start} {iv.end}")
            if window is None and iv.end > L:
                raise ValueError(f"intervals: {where}: end {iv.end} is past the end of {iv.contig!r} (length {L})")
            if iv.strand not in ("+", "-"):
                raise ValueError(f"intervals: {where}: strand must be '+' or '-', got {iv.strand!r}")
            out.append(iv)
        if not out:
            raise ValueError("intervals: expected at least one interval")
        self.intervals = out

    def __len__(self) -> int:
        return len(self.intervals)

    def __getitem__(self, i: int) -> dict:
        iv = self.intervals[i]
        if self.window is None:
            s, e = iv.start, iv.end
        else:
            s = (iv.start + iv.end) // 2 - self.window // 2
            e = s + self.window
        L = self.store.contig_length(iv.contig)
        buf = np.full(e - s, self.pad_id, np.uint8)
        a, b = max(s, 0), min(e, L)
        if b > a:
            buf[a - s:b - s] = self.store.tokens(iv.contig, a, b)
        if iv.strand == "-":
            buf = _revcomp_u8(buf)
        return {"input_ids": torch.from_numpy(buf.astype(np.int64)), "contig": iv.contig, "start": s, "end": e,
                "strand": iv.strand, "name": iv.name, "index": i}


def pad_collate(items: Sequence[dict], *, pad_id: int = PAD_ID) -> dict:
    """Collate items of different lengths: input_ids right-padded with pad_id to (B, L_max), plus
    attention_mask (B, L_max) bool and lengths (B,); other fields as lists (ints as a LongTensor)."""
    if not items:
        raise ValueError("items: expected at least one item")
    lengths = torch.tensor([len(it["input_ids"]) for it in items], dtype=torch.int64)
    L = int(lengths.max())
    ids = torch.full((len(items), L), pad_id, dtype=torch.int64)
    for r, it in enumerate(items):
        ids[r, : len(it["input_ids"])] = it["input_ids"]
    out = {"input_ids": ids, "attention_mask": torch.arange(L)[None, :] < lengths[:, None], "lengths": lengths}
    for k in items[0]:
        if k == "input_ids":
            continue
        vals = [it[k] for it in items]
        out[k] = torch.tensor(vals, dtype=torch.int64) if all(isinstance(v, int) for v in vals) else vals
    return out
