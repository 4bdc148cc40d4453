"""Streaming FASTA reader: plain or gzipped, any line width, CRLF, many contigs, in fixed-size blocks.

The reader never holds more than one block (plus one header line) of the input in memory. Each block
is tokenised with two `bytes.translate` passes built from the tokenizer's byte table
(`hybridna.tokenizer.BYTE_TO_ID`): one to token ids, one to the soft-mask track (1 where the letter
was lowercase); whitespace is deleted in the same pass. Both run in C over the whole block, so there
is no Python work per base or per line, only per block and per header.

Errors are `FastaError` (a ValueError) naming the file and the 1-based line.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

import numpy as np

from hybridna.tokenizer import BYTE_TO_ID, INVALID_BYTE

__all__ = ["FastaError", "FastaReader", "read_fasta", "TOKEN_TABLE", "MASK_TABLE", "WHITESPACE"]

WHITESPACE = b" \t\r\n\v\f"
# Translation tables for bytes.translate, derived from the tokenizer's table (one source of truth).
TOKEN_TABLE = bytes(BYTE_TO_ID.tolist())
_mask = np.zeros(256, np.uint8)
for _b in range(256):
    if BYTE_TO_ID[_b] != INVALID_BYTE and chr(_b).islower():
        _mask[_b] = 1
MASK_TABLE = bytes(_mask.tolist())
_INVALID = bytes([INVALID_BYTE])
BLOCK_BYTES = 8 << 20  # 8 MiB of decompressed text per block: large enough that per-block costs vanish


class FastaError(ValueError):
    """Bad FASTA input; the message names the file and the line."""

    def __init__(self, path, line: int | None, message: str):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


class _HashingReader:
    """File wrapper that hashes (sha256) and counts the raw bytes as they are read."""

    def __init__(self, f: BinaryIO, on_bytes: Callable[[int], None] | None = None):
        self.f, self.sha, self.nbytes, self.on_bytes = f, hashlib.sha256(), 0, on_bytes

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.sha.update(b)
        self.nbytes += len(b)
        if self.on_bytes is not None and b:
            self.on_bytes(len(b))
        return b

    def readinto(self, buf) -> int:  # used by gzip's buffered reader
        n = self.f.readinto(buf)
        if n:
            self.sha.update(memoryview(buf)[:n])
            self.nbytes += n
            if self.on_bytes is not None:
                self.on_bytes(n)
        return n

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self.f.closed

    def close(self):
        self.f.close()


@dataclass
class FileSummary:
    path: str
    nbytes: int = 0
    sha256: str = ""
    gzip: bool = False
    contigs: int = 0
    bases: int = 0
    lines: int = 0
    extra: dict = field(default_factory=dict)


class FastaReader:
    """Parse one FASTA file in blocks and hand the tokens to a sink.

    The sink gets `begin_contig(name, description, path, line)`, `add(tokens: bytes, mask: bytes)`
    (token ids as uint8 bytes, soft-mask 0/1 bytes, same length) and `end_contig()`.
    """

    def __init__(self, path, *, block_bytes: int = BLOCK_BYTES, on_bytes: Callable[[int], None] | None = None):
        self.path = os.fspath(path)
        self.block_bytes = int(block_bytes)
        self.on_bytes = on_bytes

    def _open(self):
        raw = open(self.path, "rb")
        magic = raw.read(2)
        raw.seek(0)
        hr = _HashingReader(raw, self.on_bytes)
        if magic == b"\x1f\x8b":
            return hr, gzip.GzipFile(fileobj=hr, mode="rb"), True
        return hr, hr, False

    def parse(self, sink) -> FileSummary:
        path = self.path
        if not os.path.exists(path):
            raise FastaError(path, None, "no such file")
        if os.path.isdir(path):
            raise FastaError(path, None, "is a directory, expected a FASTA file")
        hr, stream, is_gz = self._open()
        summary = FileSummary(path=path, gzip=is_gz)
        line = 0  # newlines consumed before the current position
        in_header = False
        header = bytearray()
        header_line = 0
        at_line_start = True
        in_contig = False
        seq_before_header_line = None  # line of the first sequence byte seen before any header
        seen_non_ws = False
        contig_bases = 0
        try:
            while True:
                try:
                    block = stream.read(self.block_bytes)
                except EOFError as e:  # gzip stream cut short
                    raise FastaError(path, line + 1, f"truncated gzip file ({e})") from None
                except (gzip.BadGzipFile, zlib.error, OSError) as e:
                    raise FastaError(path, line + 1, f"corrupt gzip data ({e})") from None
                if not block:
                    break
                pos, n = 0, len(block)
                while pos < n:
                    if in_header:
                        nl = block.find(b"\n", pos)
                        if nl < 0:
                            header += block[pos:]
                            if len(header) > (1 << 20):
                                raise FastaError(path, header_line, "header line longer than 1 MiB")
                            pos = n
                            break
                        header += block[pos:nl]
                        line += 1
                        pos = nl + 1
                        in_header = False
                        at_line_start = True
                        if in_contig:
                            sink.end_contig()
                        name, desc = _parse_header(bytes(header), path, header_line)
                        sink.begin_contig(name, desc, path, header_line)
                        summary.contigs += 1
                        in_contig = True
                        contig_bases = 0
                        seen_non_ws = True
                        continue
                    # sequence text up to the next header ('>' at the start of a line)
                    # '>' is rare (headers only), so a one-byte memchr search beats searching "\n>"
                    hstart = block.find(b">", pos)
                    while hstart > pos and block[hstart - 1] != 10:  # '>' inside a line: invalid, below
                        hstart = block.find(b">", hstart + 1)
                    if hstart == pos and not at_line_start:
                        hstart = block.find(b"\n>", pos)
                        hstart = -1 if hstart < 0 else hstart + 1
                    end = n if hstart < 0 else hstart
                    if end > pos:
                        seg = block[pos:end]
                        tokens = seg.translate(TOKEN_TABLE, WHITESPACE)
                        if tokens:
                            seen_non_ws = True
                            if not in_contig:
                                if seq_before_header_line is None:
                                    first = len(seg) - len(seg.lstrip(WHITESPACE))
                                    seq_before_header_line = line + seg.count(b"\n", 0, first) + 1
                            else:
                                bad = tokens.find(_INVALID)
                                if bad >= 0:
                                    _raise_invalid(path, line, seg)
                                sink.add(tokens, seg.translate(MASK_TABLE, WHITESPACE))
                                contig_bases += len(tokens)
                                summary.bases += len(tokens)
                        line += seg.count(b"\n")
                        at_line_start = seg[-1] == 10
                    if hstart >= 0:
                        if seq_before_header_line is not None:
                            raise FastaError(path, seq_before_header_line,
                                             f"sequence before the first header (first header at line {line + 1})")
                        in_header = True
                        header_line = line + 1
                        header = bytearray()
                        pos = hstart + 1
                    else:
                        pos = n
            if in_header:  # last line is a header without a newline
                if in_contig:
                    sink.end_contig()
                name, desc = _parse_header(bytes(header), path, header_line)
                sink.begin_contig(name, desc, path, header_line)
                summary.contigs += 1
                in_contig = True
            if in_contig:
                sink.end_contig()
            if seq_before_header_line is not None:
                raise FastaError(path, seq_before_header_line,
                                 "no FASTA header: expected a first line like '>name'")
            if not seen_non_ws:
                raise FastaError(path, None, "empty file (no FASTA records)")
            if summary.bases == 0:
                raise FastaError(path, None, f"no sequence: {summary.contigs} header(s) but 0 bases")
        finally:
            stream.close()
            hr.close()  # GzipFile does not close a file object it was given
        summary.nbytes = hr.nbytes
        summary.sha256 = hr.sha.hexdigest()
        summary.lines = line
        return summary


def _parse_header(header: bytes, path, line: int) -> tuple[str, str]:
    text = header.decode("utf-8", errors="replace").rstrip("\r\n")
    parts = text.split(None, 1)
    if not parts:
        raise FastaError(path, line, "empty header: expected '>name [description]'")
    return parts[0], (parts[1].strip() if len(parts) > 1 else "")


def _raise_invalid(path, line0: int, seg: bytes):
    """Find the first invalid byte of seg (error path only) and raise with its line and column."""
    arr = np.frombuffer(seg, np.uint8)
    ids = BYTE_TO_ID[arr]
    ws = np.isin(arr, np.frombuffer(WHITESPACE, np.uint8))
    i = int(np.flatnonzero((ids == INVALID_BYTE) & ~ws)[0])
    ln = line0 + seg.count(b"\n", 0, i) + 1
    col = i - (seg.rfind(b"\n", 0, i) + 1) + 1
    ch = chr(seg[i])
    raise FastaError(path, ln, f"column {col}: invalid character {ch!r} (byte {seg[i]}); expected A C G T N "
                               "or an IUPAC code (R Y S W K M B D H V), either case")


class _CollectSink:
    def __init__(self):
        self.records: list[tuple[str, str, list, list]] = []

    def begin_contig(self, name, desc, path, line):
        self.records.append((name, desc, [], []))

    def add(self, tokens: bytes, mask: bytes):
        self.records[-1][2].append(tokens)
        self.records[-1][3].append(mask)

    def end_contig(self):
        pass


def read_fasta(path, *, block_bytes: int = BLOCK_BYTES) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Whole-file convenience reader (small files, tests): [(name, token ids uint8, soft mask bool)]."""
    sink = _CollectSink()
    FastaReader(path, block_bytes=block_bytes).parse(sink)
    return [(name, np.frombuffer(b"".join(t), np.uint8).copy(), np.frombuffer(b"".join(m), np.uint8).astype(bool))
            for name, _, t, m in sink.records]
