"""Filesystem helpers shared by the data stores and the training checkpoints."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished directory `tmp` to `final`, replacing an existing `final`.

    A rename cannot replace a non-empty directory, so an old `final` is first renamed aside and
    removed after the swap: at every moment `final` is either the old or the new complete tree.
    """
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
