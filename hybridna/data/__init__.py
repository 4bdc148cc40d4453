"""Genome data: FASTA -> Zarr v3 token stores, memory-mapped window sampling, resumable loaders.

    from hybridna.data import build_store, open_store, GenomeWindows, LAMBDA_GENOME
    path = build_store([LAMBDA_GENOME], "runs/lambda.zarr", species="lambda")
    store = open_store(path)
    store.names, store.lengths, store.tokens(store.names[0], 0, 100)   # uint8 token ids
    ds = GenomeWindows([path], 1024, seed=0, rc_prob=0.5)
    for batch in ds.loader(batch_size=8, num_workers=2): ...
    state = ds.state_dict()   # exact resume: ds.load_state_dict(state)
"""
from __future__ import annotations

from pathlib import Path

from .fasta import FastaError, read_fasta
from .store import DEFAULT_CHUNK_BASES, GenomeStore, build_store, open_store

_LAZY = {"GenomeWindows", "Interval", "IntervalWindows", "WindowLoader", "read_bed", "pad_collate"}


def __getattr__(name):
    # The window datasets import torch (seconds); `hybridna data build` does not need it.
    if name in _LAZY:
        from . import windows

        return getattr(windows, name)
    raise AttributeError(f"module 'hybridna.data' has no attribute {name!r}")

LAMBDA_GENOME = Path(__file__).resolve().parent.parent / "genomes" / "lambda_virus.fa.gz"


def bundled_genome() -> Path:
    """Path of the bundled enterobacteria phage lambda genome (48,502 bases, gzipped FASTA)."""
    return LAMBDA_GENOME


__all__ = [
    "build_store", "open_store", "GenomeStore", "GenomeWindows", "IntervalWindows", "Interval", "read_bed",
    "WindowLoader", "pad_collate", "FastaError", "read_fasta", "LAMBDA_GENOME", "bundled_genome", "DEFAULT_CHUNK_BASES",
]
