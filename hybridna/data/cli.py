"""`hybridna data build FASTA... --out STORE` and `hybridna data info STORE`."""
from __future__ import annotations

import argparse
import json
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    b = sub.add_parser("build", help="convert FASTA files (plain or .gz) into a Zarr v3 token store",
                       description="Convert FASTA files (plain or gzipped) into one Zarr v3 token store "
                                   "(uint8 token ids + soft-mask track, chunked, memory-mappable).")
    b.add_argument("fasta", nargs="+", help="FASTA files (.fa, .fasta, optionally .gz); contigs of all files "
                                            "go into one store")
    b.add_argument("--out", required=True, help="store directory to create")
    b.add_argument("--chunk-bases", type=int, default=None, help="bases per chunk (default 4194304)")
    b.add_argument("--compress", action="store_true",
                   help="compress chunks (zstd; see --compressor); compressed stores are read through zarr "
                        "instead of memory maps")
    b.add_argument("--compressor", choices=["zstd", "blosc"], default=None,
                   help="codec for --compress (default zstd); implies --compress")
    b.add_argument("--species", default=None, help="species label stored in the metadata")
    b.add_argument("--overwrite", action="store_true", help="replace an existing store")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    i = sub.add_parser("info", help="summary of a token store", description="Print a token store's summary.")
    i.add_argument("store", help="store directory")
    i.add_argument("--json", action="store_true", help="print the full metadata as JSON")
    i.add_argument("--contigs", type=int, default=10, help="list this many contigs (default 10)")


def main(args) -> int:
    from . import DEFAULT_CHUNK_BASES, FastaError, build_store, open_store

    if args.data_command == "build":
        t0 = time.perf_counter()
        try:
            path = build_store(args.fasta, args.out, chunk_bases=args.chunk_bases or DEFAULT_CHUNK_BASES,
                               compressor=args.compressor or ("zstd" if args.compress else None), species=args.species, overwrite=args.overwrite,
                               progress=False if args.quiet else None)
        except (FastaError, ValueError, FileExistsError) as e:
            print(f"hybridna data build: error: {e}", file=sys.stderr)
            return 2
        dt = time.perf_counter() - t0
        s = open_store(path)
        print(f"{path}: {len(s.names)} contigs, {s.total_bases:,} bases from {len(args.fasta)} file(s) "
              f"in {dt:.2f} s ({s.total_bases / dt / 1e6:.1f} Mb/s)")
        return 0
    if args.data_command == "info":
        try:
            s = open_store(args.store)
        except ValueError as e:
            print(f"hybridna data info: error: {e}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(s.metadata, indent=2))
            return 0
        d = s.info()
        print(f"store        {d['path']}")
        print(f"species      {d['species']}")
        print(f"contigs      {d['contigs']:,}")
        tb = max(d["total_bases"], 1)
        print(f"bases        {d['total_bases']:,} (N {d['n_bases']:,} = {100 * d['n_bases'] / tb:.2f}%, "
              f"soft-masked {d['softmasked_bases']:,} = {100 * d['softmasked_bases'] / tb:.2f}%)")
        print(f"chunks       {d['chunk_bases']:,} bases, compressor {d['compressor']}, "
              f"memory-mapped {d['memory_mapped']}")
        print(f"vocab        {' '.join(d['vocab'])}")
        for src in d["sources"]:
            print(f"source       {src['path']} ({src['bytes']:,} bytes, sha256 {src['sha256'][:16]}..., "
                  f"{src['contigs']} contigs, {src['bases']:,} bases)")
        n = min(args.contigs, len(s.names))
        for k in range(n):
            print(f"  {s.names[k]}\t{int(s.lengths[k]):,}")
        if len(s.names) > n:
            print(f"  ... {len(s.names) - n} more")
        print(f"created      {d['created']}")
        return 0
    raise ValueError(f"data_command: unknown action {args.data_command!r}")
