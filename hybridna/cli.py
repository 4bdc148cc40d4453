"""`hybridna` command line: each subcommand lives in its own module, imported only when used.

A subcommand module exposes `add_arguments(parser)` and `main(args) -> int | None`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "data": ("hybridna.data.cli", "FASTA -> Zarr v3 token shards"),
    "pretrain": ("hybridna.train.pretrain", "pretrain a model on Zarr token shards"),
    "finetune": ("hybridna.train.finetune", "fine-tune: echo-embedding classification or prompt-token generation"),
    "generate": ("hybridna.inference", "sample DNA from a trained model"),
    "score": ("hybridna.inference", "log-likelihood of sequences (and variant effects)"),
    "embed": ("hybridna.inference", "sequence embeddings (echo or plain)"),
}


def build_parser(names=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridna", description="HybriDNA: hybrid Mamba2 + attention DNA language model")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if names is None or name in names:
            mod = importlib.import_module(module)
            add = getattr(mod, f"add_{name}_arguments", None) or mod.add_arguments
            add(p)
        p.set_defaults(_module=module)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Import only the module of the subcommand asked for (its imports can be heavy).
    names = [a for a in argv if a in SUBCOMMANDS][:1] or None
    args = build_parser(names).parse_args(argv)
    mod = importlib.import_module(args._module)
    run = getattr(mod, f"{args.command}_main", None) or mod.main
    rc = run(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
