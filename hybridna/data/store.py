"""Zarr v3 token stores: build from FASTA (streaming, atomic) and read windows through memory maps.

Layout of a store (a Zarr v3 group, a directory):

    <store>/zarr.json          group; attributes["hybridna"] holds the metadata below
    <store>/tokens/            uint8 (total_bases,): every contig's token ids, concatenated in file order
    <store>/softmask/          uint8 (total_bases,): 1 where the FASTA letter was lowercase (soft-masked)

Both arrays are chunked by `chunk_bases` and, by default, uncompressed (the only codec is "bytes"), so
each chunk file `<array>/c/<i>` is the raw bytes of bases [i * chunk_bases, (i + 1) * chunk_bases) and
is read through a memory map. Contig k occupies [offsets[k], offsets[k] + lengths[k]) of the flat
arrays. Metadata: format and version, vocabulary (token strings in id order), contig names, lengths,
offsets, N counts, soft-masked counts, the FASTA header descriptions, the source files (path, size,
sha256, contigs, bases), the species label, chunk size and compressor.
"""
from __future__ import annotations

import datetime
import mmap
import os
import shutil
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np

from hybridna._fs import replace_dir
from hybridna.tokenizer import N_ID, PAD_ID, VOCAB

from .fasta import FastaError, FastaReader

__all__ = ["build_store", "open_store", "GenomeStore", "DEFAULT_CHUNK_BASES", "FORMAT", "FORMAT_VERSION"]

FORMAT = "hybridna-token-store"
FORMAT_VERSION = 1
# 4 MiB chunks: a 131,072-base window crosses a chunk boundary 3% of the time, and a human genome is
# ~750 chunk files per array (few enough to keep every chunk memory-mapped at once).
DEFAULT_CHUNK_BASES = 1 << 22
_N_BYTE = bytes([N_ID])
# Chunk maps kept open per array and process (each holds a file descriptor); 512 x 4 MiB = 2 GiB of
# genome mapped at once. Least recently used maps are closed beyond this.
MAX_OPEN_MAPS = 512


def _resolve_compressor(compressor):
    """None -> uncompressed; True / "zstd" -> Zstd level 3; "blosc" -> Blosc zstd; a zarr codec as is."""
    if compressor is None or compressor is False:
        return None, None
    import zarr.codecs as zc

    if compressor is True or compressor == "zstd":
        return zc.ZstdCodec(level=3), "zstd"
    if compressor == "blosc":
        return zc.BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle"), "blosc"
    if isinstance(compressor, str):
        raise ValueError(f"compressor: expected None, 'zstd', 'blosc' or a zarr codec, got {compressor!r}")
    return compressor, type(compressor).__name__


class _StoreWriter:
    """Sink for FastaReader: packs tokens into full chunks and appends them to two Zarr arrays."""

    def __init__(self, group, chunk_bases: int, compressor):
        self.chunk = chunk_bases
        kw = dict(shape=(0,), chunks=(chunk_bases,), dtype="uint8", fill_value=0,
                  compressors=compressor, config={"write_empty_chunks": True})
        self.tok_arr = group.create_array("tokens", **kw)
        self.mask_arr = group.create_array("softmask", **kw)
        # Uncompressed: a chunk file is the chunk's raw bytes ("bytes" codec, default key encoding
        # "c/<i>"), so write it directly and let zarr only record the final shape. 0.8 s -> 0.55 s
        # for 70 Mb (zarr's per-chunk write path costs ~7 ms per 4 MiB chunk).
        self.raw_dirs = None
        if compressor is None:
            root = group.store.root if hasattr(group.store, "root") else None
            if root is not None:
                self.raw_dirs = [os.path.join(str(root), name, "c") for name in ("tokens", "softmask")]
                for d in self.raw_dirs:
                    os.makedirs(d, exist_ok=True)
        self.tok_buf = np.empty(chunk_bases, np.uint8)
        self.mask_buf = np.empty(chunk_bases, np.uint8)
        self.fill = 0  # bytes in the buffers
        self.written = 0  # bases flushed to the arrays
        self.names: list[str] = []
        self.descriptions: list[str] = []
        self.lengths: list[int] = []
        self.offsets: list[int] = []
        self.n_counts: list[int] = []
        self.masked: list[int] = []
        self.file_index: list[int] = []
        self.first_seen: dict[str, tuple[str, int]] = {}
        self.current_file = 0
        self._cur = None

    @property
    def total(self) -> int:
        return self.written + self.fill

    def begin_contig(self, name, desc, path, line):
        if name in self.first_seen:
            p0, l0 = self.first_seen[name]
            raise FastaError(path, line, f"duplicate contig name {name!r} (first seen at {p0}:{l0})")
        self.first_seen[name] = (path, line)
        self.names.append(name)
        self.descriptions.append(desc)
        self.offsets.append(self.total)
        self.file_index.append(self.current_file)
        self._cur = [0, 0, 0]  # length, N count, soft-masked count

    def add(self, tokens: bytes, mask: bytes):
        cur = self._cur
        cur[0] += len(tokens)
        cur[1] += tokens.count(_N_BYTE)
        cur[2] += mask.count(b"\x01")
        t = np.frombuffer(tokens, np.uint8)
        m = np.frombuffer(mask, np.uint8)
        i, n = 0, len(t)
        while i < n:
            k = min(n - i, self.chunk - self.fill)
            self.tok_buf[self.fill:self.fill + k] = t[i:i + k]
            self.mask_buf[self.fill:self.fill + k] = m[i:i + k]
            self.fill += k
            i += k
            if self.fill == self.chunk:
                self._flush()

    def end_contig(self):
        length, n, masked = self._cur
        self.lengths.append(length)
        self.n_counts.append(n)
        self.masked.append(masked)
        self._cur = None

    def _flush(self):
        if self.fill == 0:
            return
        a, b = self.written, self.written + self.fill
        if self.raw_dirs is not None:
            ci = a // self.chunk
            for d, buf in zip(self.raw_dirs, (self.tok_buf, self.mask_buf)):
                buf[self.fill:] = 0  # the edge chunk is stored full size, padded with the fill value
                with open(os.path.join(d, str(ci)), "wb") as f:
                    f.write(buf.data)
        else:
            for arr, buf in ((self.tok_arr, self.tok_buf), (self.mask_arr, self.mask_buf)):
                arr.resize((b,))
                arr[a:b] = buf[: self.fill]
        self.written, self.fill = b, 0

    def close(self):
        self._flush()
        if self.raw_dirs is not None:
            for arr in (self.tok_arr, self.mask_arr):
                arr.resize((self.written,))


def build_store(fasta_paths, out, *, chunk_bases: int = DEFAULT_CHUNK_BASES, compressor=None,
                species: str | None = None, overwrite: bool = False, progress: bool | None = None,
                block_bytes: int | None = None) -> str:
    """Convert FASTA files (plain or gzipped) into one Zarr v3 token store.

    Streaming: the input is read in blocks and written chunk by chunk, so a genome larger than memory
    converts without being loaded whole. The store is written to a temporary directory next to `out`
    and renamed into place only when complete; on any error the temporary directory is removed and
    nothing is left at `out`.

    Args:
        fasta_paths: a path or a list of paths; contigs of all files go into one store, in order.
        out: the store directory to create.
        chunk_bases: bases per chunk (both arrays).
        compressor: None (default: uncompressed, memory-mappable), "zstd" / True, "blosc", or a zarr
            codec. Compressed stores are read through zarr slices instead of memory maps.
        species: optional species label stored in the metadata (used by GenomeWindows' species weights).
        overwrite: replace an existing store at `out` (otherwise FileExistsError).
        progress: tqdm progress bar over input bytes; None shows it only on a terminal.
    Returns:
        the store path (str).
    Raises:
        FastaError (a ValueError) naming file and line for bad input: empty file, no header, sequence
        before the first header, duplicate contig names, invalid characters, truncated gzip.
    """
    import zarr

    if isinstance(fasta_paths, (str, os.PathLike)):
        fasta_paths = [fasta_paths]
    paths = [os.fspath(p) for p in fasta_paths]
    if not paths:
        raise ValueError("fasta_paths: expected at least one FASTA file, got none")
    for p in paths:
        if not os.path.isfile(p):
            raise ValueError(f"fasta_paths: {p!r} is not a file")
    if not isinstance(chunk_bases, (int, np.integer)) or isinstance(chunk_bases, bool) or chunk_bases < 1:
        raise ValueError(f"chunk_bases: expected a positive int, got {chunk_bases!r}")
    chunk_bases = int(chunk_bases)
    if species is not None and not isinstance(species, str):
        raise ValueError(f"species: expected a str or None, got {species!r}")
    codec, codec_name = _resolve_compressor(compressor)
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"out: {out} already exists (pass overwrite=True / --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    from tqdm.auto import tqdm

    total_in = sum(os.path.getsize(p) for p in paths)
    bar = tqdm(total=total_in, unit="B", unit_scale=True, desc=f"building {out.name}",
               disable=(None if progress is None else not progress), leave=False)
    try:
        group = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
        writer = _StoreWriter(group, chunk_bases, codec)
        sources = []
        for fi, p in enumerate(paths):
            writer.current_file = fi
            kw = {} if block_bytes is None else {"block_bytes": block_bytes}
            s = FastaReader(p, on_bytes=bar.update, **kw).parse(writer)
            sources.append({"path": os.path.abspath(p), "name": os.path.basename(p), "bytes": s.nbytes,
                            "sha256": s.sha256, "gzip": s.gzip, "contigs": s.contigs, "bases": s.bases})
        writer.close()
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "vocab": list(VOCAB),
            "pad_id": PAD_ID,
            "n_id": N_ID,
            "species": species,
            "chunk_bases": chunk_bases,
            "compressor": codec_name,
            "total_bases": writer.total,
            "contigs": {
                "names": writer.names,
                "lengths": writer.lengths,
                "offsets": writer.offsets,
                "n_count": writer.n_counts,
                "softmasked": writer.masked,
                "file": writer.file_index,
                "descriptions": writer.descriptions,
            },
            "sources": sources,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "complete": True,
        }
        group.attrs["hybridna"] = meta
        replace_dir(tmp, out)  # with overwrite=True the old store is swapped out whole
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return str(out)


class GenomeStore:
    """Read access to a token store: contig names, lengths, and token / soft-mask slices.

    Uncompressed stores are read through memory maps of the chunk files (opened lazily, one per chunk
    touched); a slice copies only the bytes it covers, never a whole contig. Compressed stores are
    read through zarr slices.
    """

    def __init__(self, path):
        import zarr

        self.path = str(Path(path).absolute())
        if not os.path.isdir(self.path):
            raise ValueError(f"path: {path!r} is not a directory (expected a store from build_store)")
        try:
            group = zarr.open_group(self.path, mode="r", zarr_format=3)
        except Exception as e:  # noqa: BLE001 - any zarr failure means "not a store"
            raise ValueError(f"path: {path!r} is not a Zarr v3 group ({e})") from None
        meta = group.attrs.get("hybridna")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not meta.get("complete"):
            raise ValueError(f"path: {path!r} is not a complete hybridna token store (no metadata)")
        if meta.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"path: {path!r} has store format version {meta['version']}, newer than "
                             f"this hybridna ({FORMAT_VERSION})")
        if list(meta["vocab"]) != list(VOCAB):
            raise ValueError(f"path: {path!r} was built with vocabulary {meta['vocab']}, expected {VOCAB}")
        self.metadata = meta
        c = meta["contigs"]
        self.names: list[str] = list(c["names"])
        self.lengths = np.asarray(c["lengths"], dtype=np.int64)
        self.offsets = np.asarray(c["offsets"], dtype=np.int64)
        self.n_counts = np.asarray(c["n_count"], dtype=np.int64)
        self.species: str | None = meta.get("species")
        self.chunk_bases = int(meta["chunk_bases"])
        self.total_bases = int(meta["total_bases"])
        self._index = {n: i for i, n in enumerate(self.names)}
        self._group = group
        self._arrays = {}
        self._mmaps: dict[str, OrderedDict[int, np.ndarray]] = {"tokens": OrderedDict(), "softmask": OrderedDict()}
        self._mappable = {name: self._is_mappable(group[name]) for name in ("tokens", "softmask")}

    # -- pickling (DataLoader workers under spawn): drop maps and zarr handles, reopen lazily --------
    def __getstate__(self):
        d = self.__dict__.copy()
        d["_group"] = None
        d["_arrays"] = {}
        d["_mmaps"] = {"tokens": OrderedDict(), "softmask": OrderedDict()}
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)

    @staticmethod
    def _is_mappable(arr) -> bool:
        md = arr.metadata
        codecs = [c.to_dict()["name"] for c in md.codecs]
        enc = md.chunk_key_encoding.to_dict()
        return codecs == ["bytes"] and enc.get("name") == "default" and \
            enc.get("configuration", {}).get("separator", "/") == "/"

    def _zarr_array(self, name):
        if name not in self._arrays:
            if self._group is None:
                import zarr

                self._group = zarr.open_group(self.path, mode="r", zarr_format=3)
            self._arrays[name] = self._group[name]
        return self._arrays[name]

    @property
    def contigs(self) -> list[str]:
        """Contig names in store order (alias of `names`)."""
        return self.names

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return (f"GenomeStore({self.path!r}, contigs={len(self.names)}, bases={self.total_bases:,}, "
                f"species={self.species!r})")

    def contig_index(self, contig) -> int:
        """Index of a contig given by name or index."""
        if isinstance(contig, (int, np.integer)) and not isinstance(contig, bool):
            if not -len(self.names) <= contig < len(self.names):
                raise ValueError(f"contig: index {contig} out of range for {len(self.names)} contigs")
            return int(contig) % len(self.names)
        try:
            return self._index[contig]
        except (KeyError, TypeError):
            raise ValueError(f"contig: {contig!r} is not in store {self.path} "
                             f"(first contigs: {self.names[:5]})") from None

    def contig_length(self, contig) -> int:
        return int(self.lengths[self.contig_index(contig)])

    def _bounds(self, contig, start, end) -> tuple[int, int]:
        i = self.contig_index(contig)
        length = int(self.lengths[i])
        end = length if end is None else int(end)
        start = int(start)
        if not 0 <= start <= end <= length:
            raise ValueError(f"start, end: expected 0 <= start <= end <= {length} (length of "
                             f"{self.names[i]!r}), got start={start}, end={end}")
        off = int(self.offsets[i])
        return off + start, off + end

    def tokens(self, contig, start: int = 0, end: int | None = None) -> np.ndarray:
        """Token ids of contig[start:end] (0-based, end exclusive) as a new uint8 array."""
        a, b = self._bounds(contig, start, end)
        out = np.empty(b - a, np.uint8)
        self.read_into("tokens", a, out)
        return out

    def softmask(self, contig, start: int = 0, end: int | None = None) -> np.ndarray:
        """Soft mask of contig[start:end] as a new bool array (True where the FASTA was lowercase)."""
        a, b = self._bounds(contig, start, end)
        out = np.empty(b - a, np.uint8)
        self.read_into("softmask", a, out)
        return out.view(bool)

    def _chunk_map(self, name: str, ci: int) -> np.ndarray:
        maps = self._mmaps[name]
        m = maps.get(ci)
        if m is not None:
            maps.move_to_end(ci)
        else:
            if len(maps) >= MAX_OPEN_MAPS:
                # Python's mmap keeps a duplicate file descriptor per map: cap them (least recently used)
                maps.popitem(last=False)
            f = os.path.join(self.path, name, "c", str(ci))
            try:
                with open(f, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    m = np.frombuffer(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), np.uint8) if size \
                        else np.zeros(0, np.uint8)
            except FileNotFoundError:  # chunk never written: all fill value (0)
                m = np.zeros(0, np.uint8)
            maps[ci] = m
        return m

    def read_into(self, name: str, gstart: int, out: np.ndarray) -> None:
        """Copy flat positions [gstart, gstart + len(out)) of array `name` into out (uint8)."""
        n = out.shape[0]
        if n == 0:
            return
        if not self._mappable[name]:
            out[:] = self._zarr_array(name)[gstart:gstart + n]
            return
        C = self.chunk_bases
        ci, off = divmod(gstart, C)
        if off + n <= C:  # the common case: one chunk, one memcpy
            m = self._chunk_map(name, ci)
            if off + n <= m.shape[0]:
                out[:] = m[off:off + n]
                return
        i = 0
        while i < n:
            m = self._chunk_map(name, ci)
            k = min(n - i, C - off)
            have = max(0, min(k, m.shape[0] - off))
            if have:
                out[i:i + have] = m[off:off + have]
            if have < k:
                out[i + have:i + k] = 0
            i += k
            ci += 1
            off = 0

    def info(self) -> dict:
        """A summary dict (for `hybridna data info`)."""
        m = self.metadata
        return {
            "path": self.path,
            "species": self.species,
            "contigs": len(self.names),
            "total_bases": self.total_bases,
            "n_bases": int(self.n_counts.sum()),
            "softmasked_bases": int(np.sum(m["contigs"]["softmasked"])),
            "chunk_bases": self.chunk_bases,
            "compressor": m.get("compressor"),
            "memory_mapped": bool(self._mappable["tokens"]),
            "vocab": m["vocab"],
            "sources": m["sources"],
            "created": m.get("created"),
        }


def open_store(path) -> GenomeStore:
    """Open a token store built by `build_store` (see GenomeStore)."""
    if isinstance(path, GenomeStore):
        return path
    return GenomeStore(path)


def as_stores(stores) -> list[GenomeStore]:
    """A store, a path, or a list of either -> list of GenomeStore."""
    if isinstance(stores, (str, os.PathLike, GenomeStore)):
        stores = [stores]
    out = [open_store(s) for s in stores]
    if not out:
        raise ValueError("stores: expected at least one store, got none")
    return out
