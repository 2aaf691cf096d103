"""A sweep that grows (issue 21): new values of swept keys added to a finished folder.

A researcher's first look at a sweep is usually followed by more seeds or more
rates. When a config differs from a results folder's config only by values
added to its sweep lists (same keys, same order, every old value still there,
everything else equal), ``run`` keeps the folder: each old run is placed at
its index in the larger sweep, the folder is re-cut into the new plan's
chunks, and only the runs that are new are trained. The result equals a fresh
run of the whole sweep (runs are independent; a run's numbers do not depend
on the chunk it is batched in). Any other change is still refused (or needs
``--overwrite``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .config import ExperimentConfig
from .config_sweep import SweepSpace

if TYPE_CHECKING:
    import xarray as xr

    from .planning import Plan


def folder_config(out: Path) -> ExperimentConfig | None:
    """The config a results folder was made for (its ``config.yaml``, when that
    still matches the folder's record), or None."""
    from .store import _config_yaml, folder_config_hash

    raw = _config_yaml(Path(out))
    if raw is None:
        return None
    raw = {k: v for k, v in raw.items() if k != "config_hash"}
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except (ValidationError, ValueError, TypeError):
        return None
    return cfg if cfg.config_hash() == folder_config_hash(Path(out)) else None


def value_positions(old: ExperimentConfig, new: ExperimentConfig) -> list[list[int]] | None:
    """Where each swept value of ``old`` sits in ``new``'s sweep lists, when ``new``
    only adds values to ``old``'s sweep (None otherwise).

    Returns:
        Per swept key (in order), the position in ``new``'s list of each value
        of ``old``'s list.
    """
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    sa, sb = a.pop("sweep"), b.pop("sweep")
    if a != b or list(sa) != list(sb):
        return None  # another non-swept key, or other swept keys: not a growth
    positions = []
    for key in sa:
        where = {json.dumps(v, sort_keys=True): j for j, v in enumerate(sb[key])}
        pos = [where.get(json.dumps(v, sort_keys=True)) for v in sa[key]]
        if any(p is None for p in pos):
            return None  # a value was removed or changed
        positions.append([int(p) for p in pos if p is not None])
    return positions


def grow_folder(
    plan: Plan, out: Path, old: ExperimentConfig, positions: list[list[int]], progress: Any = None
) -> int:
    """Re-cut ``out`` (a folder of ``old``) into ``plan``'s chunks, training only new runs.

    Call under :func:`implicit_bias.store.folder_lock`. The folder is first
    marked as ``plan.config``'s (an interrupted growth leaves old chunks that
    the next run refuses as another config's and redoes: never a wrong result).

    Returns:
        The number of runs trained.
    """
    from .engine import Trainer
    from .planning import settle_chunking
    from .results_data import drop_data
    from .store import (
        CHUNK_DIR,
        CHUNKING_FILE,
        _concat_runs,
        done_chunks,
        open_results,
        prepare_folder,
        with_chunk_data,
        write_chunk,
    )
    from .sweep import _save_data

    out = Path(out)
    tree = open_results(out)  # every old chunk verified before any is reused
    old_space, new_space = SweepSpace(old), SweepSpace(plan.config)
    have: dict[int, tuple[xr.Dataset, int]] = {}  # new run index -> (old group, position)
    for node in tree.children.values():
        ds = drop_data(node.to_dataset())
        ds.attrs = {}
        for p, r in enumerate(ds["run"].values.tolist()):
            digits = old_space.digits(int(r))
            new = new_space.index([positions[j][d] for j, d in enumerate(digits)])
            have[new] = (ds, p)
    prepare_folder(out, plan.config, overwrite=False, grow=True)
    (out / CHUNKING_FILE).unlink(missing_ok=True)  # the new plan's groups, cut afresh
    plan = settle_chunking(plan, out)
    trained = 0
    for chunk in plan.chunks:
        pieces = [
            have[i][0].isel(run=[have[i][1]]).assign_coords(run=[i])
            for i in chunk.runs
            if i in have
        ]
        new_runs = [plan.runs[i] for i in chunk.runs if i not in have]
        if new_runs:
            from .store import ChunkPlan, chunk_to_dataset

            _save_data(out, new_runs)
            res = Trainer(new_runs, progress=progress).train()
            part = ChunkPlan(chunk.group, chunk.chunk, tuple(r.index for r in new_runs))
            fresh = chunk_to_dataset(res, part, plan.groups[chunk.group])
            pieces.append(drop_data(fresh))
            trained += len(new_runs)
        merged = _concat_runs(pieces).sortby("run")  # attrs: with_chunk_data sets them
        runs = [plan.runs[i] for i in chunk.runs]
        write_chunk(out, chunk, with_chunk_data(merged, runs, chunk, plan.groups[chunk.group]))
    # old chunks the new plan does not name (fewer, larger chunks): their runs are in
    # the new chunks now; removed by name, as the run would remove them as foreign
    keep = {c.filename for c in plan.chunks}
    for name in done_chunks(out) - keep:
        (out / CHUNK_DIR / name).unlink(missing_ok=True)
    return trained
