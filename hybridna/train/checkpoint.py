"""Training checkpoints, written atomically: a temporary directory filled, flushed, then renamed.

Layout of one checkpoint (`<run>/checkpoints/step_000100/`):

    config.json, model.safetensors   the model, by `save_pretrained` (loads with `from_pretrained`)
    tokenizer.json                   when the run has a tokenizer (added prompt tokens)
    train_state.pt                   optimizer state, step, schedule, RNG states: tensors and plain
                                     Python values only, read back with torch.load(weights_only=True)
    data_state.rank<R>.json          each rank's data-loader position (exact resume)
    train_config.json                the training configuration, for reading

`<run>/checkpoints/latest` names the newest complete checkpoint; it is replaced atomically after the
checkpoint directory is in place, so a crash at any moment leaves the previous checkpoint usable.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from hybridna._fs import replace_dir

__all__ = [
    "atomic_dir", "atomic_write_text", "checkpoint_name", "latest_checkpoint", "mark_latest", "prune_checkpoints",
    "save_train_state", "load_train_state", "rng_state", "set_rng_state", "to_jsonable", "save_json", "load_json",
]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a temporary directory next to `final`; on success it is flushed and renamed to `final`
    (an older `final` is replaced). On an exception the temporary directory is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        replace_dir(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def mark_latest(root: str | os.PathLike, name: str) -> None:
    atomic_write_text(Path(root) / "latest", name + "\n")


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under `root` (a run's checkpoints/ directory), or None."""
    root = Path(root)
    marker = root / "latest"
    if marker.exists():
        p = root / marker.read_text().strip()
        if (p / "train_state.pt").exists():
            return p
    done = sorted(p for p in root.glob("step_*") if (p / "train_state.pt").exists())
    return done[-1] if done else None


def prune_checkpoints(root: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` step_* checkpoints (keep <= 0 keeps everything)."""
    if keep <= 0:
        return
    done = sorted(Path(root).glob("step_*"))
    for p in done[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def to_jsonable(x):
    """numpy scalars/arrays and tensors -> plain Python, recursively (for data-loader state)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return x


def save_json(path: str | os.PathLike, obj) -> None:
    with open(path, "w") as f:
        json.dump(to_jsonable(obj), f, indent=1)


def load_json(path: str | os.PathLike):
    with open(path) as f:
        return json.load(f)


def rng_state() -> dict:
    """Every RNG a training step can draw from, as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def save_train_state(path: str | os.PathLike, state: dict) -> None:
    torch.save(state, path)


def load_train_state(path: str | os.PathLike) -> dict:
    # weights_only: a checkpoint from elsewhere cannot run code on load.
    return torch.load(path, map_location="cpu", weights_only=True)
