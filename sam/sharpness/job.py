"""``sam-sharpness``: Hessian spectrum and m-sharpness of a trained run.

    sam-sharpness runs=outputs/<date>/<time> [images=1000 k=5 iters=50 ...]
    python -m sam.cli.sharpness runs=...             # the same, without the console script

Rebuilds the model and the dataset from the run's resolved config (``results.json``, or the
config saved in the checkpoint), loads ``checkpoints/last.pt`` (or ``checkpoint=``), and
measures on a fixed seeded subset of the training images (un-augmented, normalized like
training): the top-k Hessian eigenvalues by Lanczos, lambda_max / lambda_5, the Hutchinson
trace, the SLQ spectral density and m-sharpness for each requested m. Writes
``sharpness.json`` (atomically) and ``hessian_density.png`` into ``out_dir`` (default: the run
directory) and prints a short summary. Options: configs/sharpness.yaml.
"""

from __future__ import annotations

import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from sam import distributed
from sam.data import load_splits
from sam.errors import UserError
from sam.results import RESULTS_FILE, atomic_write, load_checkpoint, read_json, write_json
from sam.runtime import device_name, resolve_device, versions
from sam.settings import stored_dataset
from sam.settings.tools import SharpnessOptions
from sam.sharpness.density import plot_density
from sam.sharpness.measurement import check_settings, fixed_subset, measure, vector_dtype
from sam.stored_config import instantiate_stored

OUTPUT_FILE = "sharpness.json"
DENSITY_FILE = "hessian_density.png"
SCHEMA_VERSION = 1


def run_sharpness(cfg: SharpnessOptions) -> dict[str, Any]:
    """Measure the run that ``cfg`` (configs/sharpness.yaml) points at; return the document
    also written to ``<out_dir>/sharpness.json``."""
    t0 = time.perf_counter()
    ms = _m_list(cfg.m_sharpness.m)
    check_settings(k=cfg.k, iters=cfg.iters, images=cfg.images, batch_size=cfg.batch_size,
                   trace_samples=cfg.trace_samples, m=ms, rho=cfg.m_sharpness.rho,
                   ascent_steps=cfg.m_sharpness.ascent_steps, slq_runs=cfg.slq.runs,
                   slq_iters=cfg.slq.iters, m_prefix="m_sharpness.")
    if cfg.m_sharpness.mode not in ("train", "eval"):
        raise UserError(f"m_sharpness.mode={cfg.m_sharpness.mode}: use train or eval")
    dtype = vector_dtype(cfg.dtype)
    run_dir, ckpt_path, out_dir = _locate(cfg)
    state, ckpt_path = _load_state(ckpt_path)
    results = read_results(run_dir)
    config = results.get("config") or (state.get("config") if "model" in state else None)
    if results.get("status") not in (None, "complete"):
        epochs = (config or {}).get("epochs", "?")
        print(f"sam-sharpness: warning: the run is {results['status']} (checkpoint of epoch "
              f"{state.get('epoch')} of {epochs}): measuring it as it is", file=sys.stderr)
    if config is None:
        raise UserError(f"no run config for {ckpt_path}: pass runs=<its sam-train run "
                        "directory> (the one holding results.json)")

    device = resolve_device(cfg.device)
    model = instantiate_stored(config, "model", str(run_dir or ckpt_path))  # allowlist only
    load_weights(model, state.get("model", state), ckpt_path)
    model.to(device)
    splits = load_splits(stored_dataset(config, cfg.data_dir), config["seed"])
    x, y = fixed_subset(splits.train_x, splits.train_y, cfg.images, cfg.seed, splits.mean,
                        splits.std, device)
    # SAM's own shard size: the run's m (results.json's; else from the config and the
    # number of processes that wrote the checkpoint: under DDP the per-rank batch)
    world = distributed.checkpoint_world_size(state)
    run_m = (results.get("summary") or {}).get("m") or distributed.effective_m(
        config["batch_size"], config.get("m"), world, sam=config["optim"].get("name") == "sam",
        sync_ascent=bool(config.get("ddp_sync_ascent", False)))
    default_m = min(run_m, len(x))
    ms = [default_m if m is None else m for m in ms]
    ms = list(dict.fromkeys(ms))
    rho = cfg.m_sharpness.rho
    if rho is None:
        rho = (config.get("optim") or {}).get("rho", config.get("rho", 0.05))
    r = measure(model, x, y, batch_size=cfg.batch_size, k=cfg.k, iters=cfg.iters,
                trace_samples=cfg.trace_samples, m=ms, rho=rho,
                ascent_steps=cfg.m_sharpness.ascent_steps, m_mode=cfg.m_sharpness.mode,
                seed=cfg.seed, dtype=dtype, slq_runs=cfg.slq.runs, slq_iters=cfg.slq.iters)

    out_dir.mkdir(parents=True, exist_ok=True)
    density = None
    (out_dir / DENSITY_FILE).unlink(missing_ok=True)  # never beside a document without one
    if "density" in r:
        grid, dens = r["density"]
        atomic_write(out_dir / DENSITY_FILE, lambda f: plot_density(grid, dens, f), binary=True)
        density = {"runs": cfg.slq.runs, "iters": cfg.slq.iters, "grid": grid.tolist(),
                   "density": dens.tolist()}
    doc = {
        "schema_version": SCHEMA_VERSION,
        "run_dir": str(run_dir) if run_dir else None,
        "checkpoint": str(ckpt_path),
        "epoch": state.get("epoch"),
        "run_status": results.get("status"),
        "summary": results.get("summary"),
        "data": {"dataset": splits.name, "source": splits.source, "images": len(x),
                 "seed": cfg.seed, "augment": "none",
                 # m-sharpness uses the first images // m * m of them for each m
                 "m_sharpness_images": {str(m): len(x) // m * m for m in ms}},
        "settings": {"batch_size": cfg.batch_size, "k": cfg.k, "iters": cfg.iters,
                     "trace_samples": cfg.trace_samples, "dtype": cfg.dtype,
                     "hessian_mode": "eval"},
        "dim": r["dim"],
        "lambda_max": _num(r["lambda_max"]),
        "lambda_ratio": _num(r["lambda_ratio"]),
        "top_k": [_num(v) for v in r["top_k"]],
        "trace": _num(r["trace"]),
        "trace_stderr": _num(r["trace_stderr"]),
        "m_sharpness": {"rho": rho, "ascent_steps": cfg.m_sharpness.ascent_steps,
                        "mode": cfg.m_sharpness.mode,
                        "values": {str(m): _num(v) for m, v in r["m_sharpness"].items()}},
        "density": density,
        "device": device_name(device),
        "wall_time_s": time.perf_counter() - t0,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {k: v for k, v in versions().items() if k in ("sam", "torch")},
    }
    write_json(out_dir / OUTPUT_FILE, doc)
    _print_summary(doc, out_dir)
    return doc


def _m_list(value: Any) -> list[int | None]:
    if isinstance(value, list | tuple):
        if len(value) == 0:
            raise UserError("m_sharpness.m=[]: give a shard size, a list of them, or null")
        return list(value)
    return [value]


def _locate(cfg: SharpnessOptions) -> tuple[Path | None, Path, Path]:
    """(run directory or None, checkpoint path, output directory) from the options."""
    run_dir = Path(cfg.runs).expanduser() if cfg.runs else None
    if run_dir is not None and not run_dir.is_dir():
        raise UserError(f"runs={cfg.runs} is not a directory: pass a sam-train run "
                        "directory (outputs/<date>/<time>)")
    if cfg.checkpoint:
        ckpt = Path(cfg.checkpoint).expanduser()
        if not ckpt.is_file():
            raise UserError(f"checkpoint={cfg.checkpoint} does not exist: pass the path of a "
                            "sam-train checkpoint (<run>/checkpoints/last.pt)")
    elif run_dir is not None:
        ckpt = run_dir / "checkpoints" / "last.pt"
        if not ckpt.exists() and not ckpt.with_suffix(".prev.pt").exists():
            raise UserError(f"{run_dir} holds no checkpoints/last.pt: finish or resume the run "
                            "(sam-train with the same hydra.run.dir) or pass checkpoint=")
    else:
        raise UserError("nothing to measure: pass runs=<sam-train run directory> or "
                        "checkpoint=<path>")
    if cfg.out_dir:
        out = Path(cfg.out_dir).expanduser()
    elif run_dir is not None:
        out = run_dir
    else:
        out = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run_dir, ckpt, out


def _load_state(path: Path) -> tuple[dict[str, Any], Path]:
    """The checkpoint's contents and the file they came from (``last.prev.pt`` when
    ``last.pt`` is missing or unreadable: said on stderr)."""
    state, loaded, note = load_checkpoint(path)
    if not isinstance(state, dict) or loaded is None:
        raise UserError(f"checkpoint {path} is unreadable or not a sam-train checkpoint: "
                        "pass another checkpoint=")
    if note:
        print(f"sam-sharpness: warning: {note}", file=sys.stderr)
    return state, loaded


def read_results(run_dir: Path | None) -> dict[str, Any]:
    """The run's results.json as a dict; {} without a run directory, file or valid JSON."""
    if run_dir is None or not (run_dir / RESULTS_FILE).exists():
        return {}
    try:
        return read_json(run_dir / RESULTS_FILE)
    except ValueError:
        return {}


def load_weights(model: torch.nn.Module, weights: dict[str, Any], path: Path) -> None:
    """Load a state dict, dropping the prefixes of DDP (``module.``) and torch.compile;
    UserError naming the checkpoint ``path`` when it does not fit the model."""
    for prefix in ("module.", "_orig_mod."):
        if weights and all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix):]: v for k, v in weights.items()}
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint {path} does not fit the run's model ({first}): pass the "
                        "run_dir it was trained in") from err


def _num(v: float) -> float | None:
    """JSON-safe float: NaN / inf -> null."""
    v = float(v)
    return v if math.isfinite(v) else None


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _print_summary(doc: dict[str, Any], out_dir: Path) -> None:
    src = doc["run_dir"] or doc["checkpoint"]
    epoch = f"epoch {doc['epoch']}, " if doc["epoch"] is not None else ""
    ms = doc["m_sharpness"]
    values = "  ".join(f"m={m} {_fmt(v)}" for m, v in ms["values"].items())
    written = [str(out_dir / OUTPUT_FILE)]
    if doc["density"] is not None:
        written.append(str(out_dir / DENSITY_FILE))
    print(f"sam-sharpness: {src} ({epoch}{doc['data']['images']} training images, "
          f"{doc['dim']} parameters)")
    print(f"  lambda_max {_fmt(doc['lambda_max'])}  lambda_max/lambda_5 "
          f"{_fmt(doc['lambda_ratio'])}  trace {_fmt(doc['trace'])} "
          f"+- {_fmt(doc['trace_stderr'])}")
    print(f"  m-sharpness (rho={ms['rho']:g}, {ms['mode']} mode): {values}")
    print(f"  wrote {', '.join(written)} ({doc['wall_time_s']:.1f} s)")
