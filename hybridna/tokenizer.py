"""DNA tokenizer: one token per nucleotide, special tokens, user-added prompt tokens.

Token ids (a contract other modules code against):

    0 <pad>  1 <bos>  2 <eos>  3 <sep>  4 <unk>  5 A  6 C  7 G  8 T  9 N  10+ added tokens (<HepG2>, ...)

Encoding is a byte lookup table over numpy (`BYTE_TO_ID`), never a Python loop per base. Lowercase
(soft-masked) bases are accepted; `return_mask=True` also returns the soft mask. The IUPAC ambiguity
codes R Y S W K M B D H V map to N, U maps to T, whitespace is skipped (pasted multi-line sequences),
and any other byte becomes <unk> (or raises, with errors="raise").
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "VOCAB", "PAD_ID", "BOS_ID", "EOS_ID", "SEP_ID", "UNK_ID", "A_ID", "C_ID", "G_ID", "T_ID", "N_ID",
    "NUM_BASE_TOKENS", "NUCLEOTIDE_IDS", "BYTE_TO_ID", "INVALID_BYTE", "COMPLEMENT_ID", "ID_TO_BASE", "DNATokenizer",
    "reverse_complement_ids",
]

VOCAB = ["<pad>", "<bos>", "<eos>", "<sep>", "<unk>", "A", "C", "G", "T", "N"]
PAD_ID, BOS_ID, EOS_ID, SEP_ID, UNK_ID = 0, 1, 2, 3, 4
A_ID, C_ID, G_ID, T_ID, N_ID = 5, 6, 7, 8, 9
NUM_BASE_TOKENS = len(VOCAB)
NUCLEOTIDE_IDS = (A_ID, C_ID, G_ID, T_ID, N_ID)

INVALID_BYTE = 255
_WHITESPACE = b" \t\r\n\v\f"
_SKIP = 254  # internal marker for whitespace in _TABLE (BYTE_TO_ID keeps 255 there)


def _byte_table() -> np.ndarray:
    t = np.full(256, INVALID_BYTE, dtype=np.uint8)
    for ch, i in (("A", A_ID), ("C", C_ID), ("G", G_ID), ("T", T_ID), ("N", N_ID), ("U", T_ID)):
        t[ord(ch)] = t[ord(ch.lower())] = i
    for ch in "RYSWKMBDHV":
        t[ord(ch)] = t[ord(ch.lower())] = N_ID
    return t


# byte -> token id; 255 (INVALID_BYTE) for bytes that are not nucleotide codes.
BYTE_TO_ID = _byte_table()
BYTE_TO_ID.flags.writeable = False

_TABLE = BYTE_TO_ID.copy()
for _b in _WHITESPACE:
    _TABLE[_b] = _SKIP

# byte -> True for lowercase letters (soft-masked repeats in genome FASTA files).
_IS_LOWER = np.zeros(256, dtype=bool)
_IS_LOWER[ord("a"): ord("z") + 1] = True

# id -> complement id for the base vocabulary; specials and N map to themselves.
COMPLEMENT_ID = np.arange(NUM_BASE_TOKENS, dtype=np.int64)
COMPLEMENT_ID[[A_ID, C_ID, G_ID, T_ID]] = [T_ID, G_ID, C_ID, A_ID]
COMPLEMENT_ID.flags.writeable = False

# id -> character for decoding nucleotides.
ID_TO_BASE = np.array(["", "", "", "", "", "A", "C", "G", "T", "N"], dtype=object)

_IUPAC_COMPLEMENT = str.maketrans("ACGTUNRYSWKMBDHVacgtunryswkmbdhv", "TGCAANYRSWMKVHDBtgcaanyrswmkvhdb")
_TOKEN_RE = re.compile(r"(<[^<>\s]+>)")


def _complement_table(vocab_size: int) -> np.ndarray:
    t = np.arange(max(vocab_size, NUM_BASE_TOKENS), dtype=np.int64)
    t[:NUM_BASE_TOKENS] = COMPLEMENT_ID
    return t


def reverse_complement_ids(ids, *, lengths=None):
    """Reverse complement of token ids, per row.

    Each contiguous run of nucleotide tokens (A C G T N) is reverse-complemented in place; every other
    token (bos, eos, sep, pad, prompt tokens) stays where it is, so "<bos><HepG2>ACCT<eos><pad>"
    becomes "<bos><HepG2>AGGT<eos><pad>".

    Args:
        ids: (L,) or (B, L) numpy array or torch tensor of token ids.
        lengths: unused positions past each row's length (B,) are left as they are (optional; padding
            tokens are already left alone).
    Returns:
        the same type, shape and dtype as ids.
    """
    is_torch = type(ids).__module__.startswith("torch")
    if is_torch:
        import torch

        arr = ids.detach().cpu().numpy()
    else:
        arr = np.asarray(ids)
    squeeze = arr.ndim == 1
    a = np.array(arr.reshape(1, -1) if squeeze else arr, dtype=np.int64, copy=True)
    if a.ndim != 2:
        raise ValueError(f"ids: expected a 1-d or 2-d array of token ids, got shape {arr.shape}")
    out = a.copy()
    nuc = (a >= A_ID) & (a <= N_ID)
    if lengths is not None:
        lens = np.asarray(lengths).reshape(-1)
        nuc &= np.arange(a.shape[1])[None, :] < lens[:, None]
    comp = np.where(nuc, COMPLEMENT_ID[np.clip(a, 0, NUM_BASE_TOKENS - 1)], a)
    for r in range(a.shape[0]):
        m = nuc[r].astype(np.int8)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], m, [0]])))  # run starts and ends
        for s, e in zip(edges[::2], edges[1::2]):
            out[r, s:e] = comp[r, s:e][::-1]
    out = out[0] if squeeze else out
    if is_torch:
        return torch.as_tensor(out, dtype=ids.dtype, device=ids.device)
    return out.astype(arr.dtype, copy=False)


class DNATokenizer:
    """One token per nucleotide plus special and prompt tokens (ids in the module docstring).

    >>> tok = DNATokenizer()
    >>> tok.add_tokens(["<HepG2>"])
    [10]
    >>> tok.encode("<HepG2>ACGTn", add_bos=True).tolist()
    [1, 10, 5, 6, 7, 8, 9]
    """

    def __init__(self, added_tokens: Sequence[str] = ()):
        self.added_tokens: list[str] = []
        self._token_to_id = {t: i for i, t in enumerate(VOCAB)}
        self.add_tokens(added_tokens)

    # ---- vocabulary --------------------------------------------------------------------------------
    pad_id, bos_id, eos_id, sep_id, unk_id, n_id = PAD_ID, BOS_ID, EOS_ID, SEP_ID, UNK_ID, N_ID

    @property
    def vocab(self) -> list[str]:
        return VOCAB + self.added_tokens

    @property
    def vocab_size(self) -> int:
        return NUM_BASE_TOKENS + len(self.added_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int:
        try:
            return self._token_to_id[token]
        except KeyError:
            raise ValueError(f"token: unknown token {token!r}; add it with DNATokenizer.add_tokens") from None

    def id_to_token(self, i: int) -> str:
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"id: expected 0 <= id < {self.vocab_size}, got {i}")
        return self.vocab[i]

    def add_tokens(self, tokens: str | Iterable[str]) -> list[int]:
        """Add prompt tokens such as "<HepG2>"; returns their ids (existing tokens keep theirs).

        A model trained before the tokens existed must grow its embedding: `model.resize_token_embeddings(
        tokenizer.vocab_size)` (or `model.add_tokens(tokenizer, tokens)`, which does both).
        """
        if isinstance(tokens, str):
            tokens = [tokens]
        ids = []
        for t in tokens:
            if not isinstance(t, str) or not _TOKEN_RE.fullmatch(t):
                raise ValueError(f"tokens: expected names like '<HepG2>' (angle brackets, no spaces), got {t!r}")
            if t not in self._token_to_id:
                self._token_to_id[t] = self.vocab_size
                self.added_tokens.append(t)
            ids.append(self._token_to_id[t])
        return ids

    # ---- encoding ----------------------------------------------------------------------------------
    def _encode_bases(self, text: str, errors: str):
        raw = np.frombuffer(text.encode("latin-1", errors="replace"), dtype=np.uint8)
        ids = _TABLE[raw]
        keep = ids != _SKIP
        if not keep.all():
            raw, ids = raw[keep], ids[keep]
        bad = ids == INVALID_BYTE
        if bad.any():
            if errors == "raise":
                ch = chr(raw[np.flatnonzero(bad)[0]])
                raise ValueError(f"sequence: invalid character {ch!r} (expected A C G T N or an IUPAC code)")
            ids = np.where(bad, UNK_ID, ids)
        return ids.astype(np.int64), _IS_LOWER[raw]

    def encode(self, seq: str, *, add_bos: bool = False, add_eos: bool = False, return_mask: bool = False,
               errors: str = "unk"):
        """Token ids of one sequence.

        Args:
            seq: DNA letters, optionally with tokens in angle brackets ("<HepG2>ACGT", "<sep>").
            add_bos / add_eos: prepend <bos> / append <eos>.
            return_mask: also return the soft mask (True where the input letter was lowercase).
            errors: "unk" maps invalid characters to <unk>; "raise" raises ValueError.
        Returns:
            int64 numpy array (L,), or (ids, mask) with a bool mask (L,) when return_mask.
        """
        if not isinstance(seq, str):
            raise ValueError(f"seq: expected a str, got {type(seq).__name__}")
        if errors not in ("unk", "raise"):
            raise ValueError(f"errors: expected 'unk' or 'raise', got {errors!r}")
        ids_parts, mask_parts = [], []
        if add_bos:
            ids_parts.append(np.array([BOS_ID], np.int64))
            mask_parts.append(np.zeros(1, bool))
        pieces = _TOKEN_RE.split(seq) if "<" in seq else [seq]
        for k, piece in enumerate(pieces):
            if not piece:
                continue
            if k % 2 == 1:  # a bracketed token
                ids_parts.append(np.array([self.token_to_id(piece)], np.int64))
                mask_parts.append(np.zeros(1, bool))
            else:
                ids, mask = self._encode_bases(piece, errors)
                ids_parts.append(ids)
                mask_parts.append(mask)
        if add_eos:
            ids_parts.append(np.array([EOS_ID], np.int64))
            mask_parts.append(np.zeros(1, bool))
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64)
        if return_mask:
            mask = np.concatenate(mask_parts) if mask_parts else np.zeros(0, bool)
            return ids, mask
        return ids

    def batch_encode(self, seqs: Sequence[str], *, add_bos: bool = False, add_eos: bool = False,
                     max_length: int | None = None, pad_to_multiple_of: int | None = None,
                     return_mask: bool = False, return_tensors: str = "np", errors: str = "unk") -> dict:
        """Encode several sequences, right-padded with <pad> to the longest (or to max_length).

        Returns a dict: "input_ids" (B, L) int64, "attention_mask" (B, L) bool (True on real tokens),
        "lengths" (B,), and "soft_mask" (B, L) bool when return_mask. Sequences longer than max_length
        are truncated on the right. return_tensors: "np" or "pt".
        """
        if isinstance(seqs, str):
            raise ValueError("seqs: expected a list of str, got a single str (use encode)")
        if return_tensors not in ("np", "pt"):
            raise ValueError(f"return_tensors: expected 'np' or 'pt', got {return_tensors!r}")
        enc = [self.encode(s, add_bos=add_bos, add_eos=add_eos, return_mask=True, errors=errors) for s in seqs]
        if max_length is not None:
            if max_length < 1:
                raise ValueError(f"max_length: expected >= 1, got {max_length}")
            enc = [(i[:max_length], m[:max_length]) for i, m in enc]
        lengths = np.array([len(i) for i, _ in enc], dtype=np.int64)
        width = int(lengths.max()) if len(enc) else 0
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        ids = np.full((len(enc), width), PAD_ID, dtype=np.int64)
        soft = np.zeros((len(enc), width), dtype=bool)
        for r, (i, m) in enumerate(enc):
            ids[r, : len(i)] = i
            soft[r, : len(m)] = m
        out = {"input_ids": ids, "attention_mask": np.arange(width)[None, :] < lengths[:, None], "lengths": lengths}
        if return_mask:
            out["soft_mask"] = soft
        if return_tensors == "pt":
            import torch

            out = {k: torch.from_numpy(v) for k, v in out.items()}
        return out

    __call__ = batch_encode

    # ---- decoding ----------------------------------------------------------------------------------
    def decode(self, ids, *, skip_special_tokens: bool = True, mask=None) -> str:
        """Text of a 1-d sequence of ids. Special tokens (<pad> <bos> <eos> <sep> <unk>) are dropped
        when skip_special_tokens, prompt tokens are kept as "<name>". mask (bool, like ids) lowercases
        the soft-masked positions."""
        a = np.asarray(ids.detach().cpu() if hasattr(ids, "detach") else ids, dtype=np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= self.vocab_size):
            raise ValueError(f"ids: expected ids in [0, {self.vocab_size}), got range [{a.min()}, {a.max()}]")
        table = np.array(self.vocab, dtype=object)
        if skip_special_tokens:
            table[:A_ID] = ""
        chars = table[a]
        if mask is not None:
            m = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask, dtype=bool).reshape(-1)
            if m.shape != a.shape:
                raise ValueError(f"mask: expected shape {a.shape} like ids, got {m.shape}")
            nuc = m & (a >= A_ID) & (a <= N_ID)
            chars[nuc] = np.char.lower(chars[nuc].astype(str)).astype(object)
        return "".join(chars.tolist())

    def batch_decode(self, ids, *, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in ids]

    # ---- reverse complement ------------------------------------------------------------------------
    def reverse_complement(self, x):
        """Reverse complement of a DNA string (IUPAC-aware, case kept, leading "<token>"s kept in front)
        or of token ids (numpy / torch, (L,) or (B, L); see `reverse_complement_ids`)."""
        if isinstance(x, str):
            m = re.match(r"^((?:<[^<>\s]+>)*)(.*)$", x, flags=re.S)
            prefix, body = m.group(1), m.group(2)
            if "<" in body:
                raise ValueError("x: tokens in angle brackets are only allowed at the start of the string")
            return prefix + body.translate(_IUPAC_COMPLEMENT)[::-1]
        return reverse_complement_ids(x)

    # ---- persistence -------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "tokenizer.json")
        with open(path, "w") as f:
            json.dump({"type": "DNATokenizer", "vocab": self.vocab, "added_tokens": self.added_tokens}, f, indent=2)
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "DNATokenizer":
        """Load tokenizer.json from a model directory; without one, the added tokens listed in
        config.json (or none)."""
        path = os.path.join(directory, "tokenizer.json")
        if os.path.exists(path):
            with open(path) as f:
                d = json.load(f)
            if d.get("vocab", VOCAB)[:NUM_BASE_TOKENS] != VOCAB:
                raise ValueError(f"{path}: base vocabulary differs from {VOCAB}")
            return cls(d.get("added_tokens", []))
        cfg = os.path.join(directory, "config.json")
        if os.path.exists(cfg):
            with open(cfg) as f:
                return cls(json.load(f).get("added_tokens", []))
        if not os.path.isdir(directory):
            raise ValueError(f"directory: {directory!r} does not exist")
        return cls()

    def __repr__(self) -> str:
        return f"DNATokenizer(vocab_size={self.vocab_size}, added_tokens={self.added_tokens})"
