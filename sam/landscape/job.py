"""``sam-landscape``: pictures of the loss landscape around trained runs (Li et al. 2018).

    sam-landscape runs=[outputs/sgd_run,outputs/sam_run] [images=1000 plane.points=21 ...]
    python -m sam.cli.landscape runs=...            # the same, without the console script

For each run (a sam-train run directory or checkpoint) it rebuilds the network from the
run's config, draws filter-normalized random directions (:mod:`sam.landscape.directions`,
one seed: the same raw draw for every run) and evaluates, in eval mode on a fixed seeded
un-augmented subset of the training images (or the test set, ``split=test``):

- the line ``L(w + a d1)``, every run on the same axes (``landscape_1d.png``);
- the plane ``L(w + a d1 + b d2)``, one contour per run on one colour scale
  (``landscape_2d_<label>.png``; ``plane.surface=true`` adds a 3-D ``landscape_3d_...``);
- with two or more runs, the straight line ``(1 - t) w_1 + t w_2`` from the first run to the
  second (``interpolation.png``).

The grid values go to ``landscape.json`` (``from_json=<it>`` redraws the PNGs without
evaluating anything) and the figures also to each run's ``tensorboard/`` as images
``landscape/line``, ``landscape/plane``, ``landscape/interpolation``. Options:
configs/landscape.yaml.
"""

from __future__ import annotations

import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from sam.data import load_splits
from sam.errors import UserError
from sam.landscape import plots
from sam.landscape.directions import random_directions
from sam.landscape.runs import PROG, Run, load_run, model_summary, set_labels, slug
from sam.landscape.surface import interpolation, line, plane, same_architecture
from sam.results import read_json, write_json
from sam.runtime import device_name, resolve_device, versions
from sam.settings import stored_dataset
from sam.settings.tools import LandscapeOptions
from sam.sharpness import fixed_subset

OUTPUT_FILE = "landscape.json"
LINE_FILE = "landscape_1d.png"
INTERPOLATION_FILE = "interpolation.png"
SCHEMA_VERSION = 1
DTYPES = {"float32": torch.float32, "float64": torch.float64}
DIRECTIONS = ("filter-normalized Gaussian (Li et al. 2018); zero on biases and BatchNorm "
              "parameters (ignore='biasbn'); BatchNorm in eval mode (running statistics fixed)")


def run_landscape(cfg: LandscapeOptions) -> dict[str, Any]:
    """Evaluate and draw what ``cfg`` (configs/landscape.yaml) asks; return the document also
    written to ``<out_dir>/landscape.json``."""
    if cfg.from_json:
        return _redraw(cfg)
    t0 = time.perf_counter()
    _check(cfg)
    runs = [load_run(s) for s in _sources(cfg.runs)]
    labels = cfg.labels
    set_labels(runs, None if labels is None else [labels] if isinstance(labels, str)
               else [str(v) for v in labels])
    _check_same_data(runs)
    pair = cfg.interpolation.points > 0 and len(runs) >= 2
    if pair:
        _check_same_model(runs[0], runs[1])
    device, dtype = resolve_device(cfg.device), DTYPES[cfg.dtype]
    batches, data = _data(runs[0], cfg, device, dtype)
    nhwc = batches[0][0].dim() == 4  # images: channels_last for the convolutions
    out_dir = _out_dir(cfg, runs)
    bar = sys.stderr.isatty() if cfg.progress == "auto" else bool(cfg.progress)

    entries, evaluated = [], 0
    a_line = _symmetric(cfg.line.points, cfg.line.span)
    a_plane = _symmetric(cfg.plane.points, cfg.plane.span)
    for run in runs:
        net = run.model(device, dtype, nhwc)
        d1, d2 = random_directions(net, 2, cfg.seed)
        entry = _run_entry(run)
        if a_line:
            t = time.perf_counter()
            loss, error = line(net, d1, a_line, batches, progress=bar)
            entry["line"] = {"a": a_line, "loss": _json(loss), "error": error,
                             "seconds": time.perf_counter() - t}
        if a_plane:
            t = time.perf_counter()
            loss, error = plane(net, d1, d2, a_plane, a_plane, batches, progress=bar)
            entry["plane"] = {"a": a_plane, "b": a_plane, "loss": [_json(r) for r in loss],
                              "error": error, "seconds": time.perf_counter() - t}
        evaluated += len(a_line) + len(a_plane) ** 2
        entries.append(entry)
        del net, d1, d2
    inter = None
    if pair:
        n = cfg.interpolation.points
        start, stop = float(cfg.interpolation.start), float(cfg.interpolation.stop)
        ts = [start + (stop - start) * i / (n - 1) for i in range(n)]
        net, other = runs[0].model(device, dtype, nhwc), runs[1].model(device, dtype, nhwc)
        loss, error = interpolation(net, other, ts, batches, progress=bar)
        inter = {"from": runs[0].label, "to": runs[1].label, "t": ts, "loss": _json(loss),
                 "error": error}
        evaluated += n
        del net, other
    wall = time.perf_counter() - t0
    doc = {
        "schema_version": SCHEMA_VERSION,
        "data": data,
        "settings": {"directions": DIRECTIONS, "seed": cfg.seed, "dtype": cfg.dtype,
                     "batch_size": cfg.batch_size, "mode": "eval"},
        "runs": entries,
        "interpolation": inter,
        "points": evaluated,
        "device": device_name(device),
        "wall_time_s": wall,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {k: v for k, v in versions().items() if k in ("sam", "torch")},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / OUTPUT_FILE, doc)
    written = [out_dir / OUTPUT_FILE, *draw(doc, out_dir, cfg)]
    _print_summary(doc, written)
    return doc


# ---------------------------------------------------------------------------- checks


def _check(cfg: LandscapeOptions) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise UserError(msg)

    need(cfg.split in ("train", "test"), f"split={cfg.split}: use train (a fixed seeded "
         "subset of the training images, un-augmented) or test")
    need(cfg.dtype in DTYPES, f"dtype={cfg.dtype}: use float32 or float64")
    need(cfg.progress in (True, False, "auto"), f"progress={cfg.progress}: use true, false "
         "or auto (only on a terminal)")
    need(cfg.images >= 1, f"images={cfg.images}: must be >= 1")
    need(cfg.batch_size >= 1, f"batch_size={cfg.batch_size}: must be >= 1")
    for key in ("line", "plane", "interpolation"):
        n = getattr(cfg, key).points
        need(n == 0 or n >= 2, f"{key}.points={n}: use 0 (none) or >= 2 (odd puts a point "
             "on the run's weights)")
    for key in ("line", "plane"):
        need(getattr(cfg, key).span > 0, f"{key}.span={getattr(cfg, key).span}: must be > 0")
    need(cfg.plane.levels >= 2, f"plane.levels={cfg.plane.levels}: must be >= 2")
    need(cfg.interpolation.stop > cfg.interpolation.start,
         f"interpolation.start={cfg.interpolation.start} >= stop={cfg.interpolation.stop}: "
         "give start < stop (0 is the first run, 1 the second)")
    need(cfg.line.points + cfg.plane.points + cfg.interpolation.points > 0,
         "line.points, plane.points and interpolation.points are all 0: nothing to draw")


def _sources(value: Any) -> list[str]:
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list | tuple) and len(value) > 0:
        return [str(v) for v in value]
    raise UserError("nothing to draw: pass runs=<run directory> or runs=[<sgd run>,<sam run>] "
                    "(sam-train run directories or checkpoint files)")


def _check_same_data(runs: list[Run]) -> None:
    first = runs[0].config.get("dataset", {})
    for run in runs[1:]:
        other = run.config.get("dataset", {})
        for key in ("name", "num_classes"):
            if first.get(key) != other.get(key):
                raise UserError(f"{runs[0].source} and {run.source} were trained on different "
                                f"data (dataset.{key}: {first.get(key)} vs {other.get(key)}): "
                                "compare runs of one dataset")


def _check_same_model(a: Run, b: Run) -> None:
    sa, sb = model_summary(a.config), model_summary(b.config)
    if sa != sb:
        raise UserError(f"{a.source} and {b.source} hold different models ({sa} vs {sb}): "
                        "interpolate between two runs of one model, or interpolation.points=0")
    net_a, net_b = a.model(torch.device("cpu"), torch.float32), b.model(torch.device("cpu"),
                                                                         torch.float32)
    difference = same_architecture(net_a, net_b)
    if difference is not None:
        raise UserError(f"{a.source} and {b.source} hold different networks ({difference}): "
                        "interpolate between two runs of one model, or interpolation.points=0")


# ---------------------------------------------------------------------------- pieces


def _json(values: list[float]) -> list[float | None]:
    """Losses for JSON: NaN / inf (a network diverging far out) -> null."""
    return [v if math.isfinite(v) else None for v in values]


def _symmetric(points: int, span: float) -> list[float]:
    """``points`` values from -span to span, exactly symmetric, 0 exact when points is odd."""
    if points == 0:
        return []
    return [span * (2 * i - (points - 1)) / (points - 1) for i in range(points)]


def _data(run: Run, cfg: LandscapeOptions, device: torch.device,
          dtype: torch.dtype) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict[str, Any]]:
    """The fixed images (first run's dataset config) as batches on the device."""
    splits = load_splits(stored_dataset(run.config, cfg.data_dir), run.config["seed"])
    x_all, y_all = ((splits.train_x, splits.train_y) if cfg.split == "train"
                    else (splits.test_x, splits.test_y))
    x, y = fixed_subset(x_all, y_all, cfg.images, cfg.seed, splits.mean, splits.std, device)
    x = x.to(dtype)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    batches = list(zip(x.split(cfg.batch_size), y.split(cfg.batch_size), strict=True))
    split = cfg.split if cfg.split == "train" else splits.eval_split
    return batches, {"dataset": splits.name, "source": splits.source, "split": split,
                     "images": len(x), "seed": cfg.seed, "augment": "none"}


def _out_dir(cfg: LandscapeOptions, runs: list[Run]) -> Path:
    if cfg.out_dir:
        return Path(cfg.out_dir).expanduser()
    if len(runs) == 1:
        run = runs[0]
        return (run.run_dir or run.checkpoint.parent) / "landscape"
    return Path("outputs") / "landscape" / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")


def _run_entry(run: Run) -> dict[str, Any]:
    optim = run.config.get("optim") or {}
    return {"label": run.label, "source": run.source,
            "run_dir": str(run.run_dir) if run.run_dir else None,
            "checkpoint": str(run.checkpoint), "epoch": run.epoch, "status": run.status,
            "model": model_summary(run.config), "optimizer": optim.get("name"),
            "rho": optim.get("rho"), "line": None, "plane": None}


# ---------------------------------------------------------------------------- drawing


def draw(doc: dict[str, Any], out_dir: Path, cfg: LandscapeOptions) -> list[Path]:
    """Write the PNGs of ``doc`` into ``out_dir`` and, when ``cfg.tensorboard``, add them to
    each run's ``tensorboard/``; return the files written."""
    written: list[Path] = []
    figures: dict[str, dict[str, Any]] = {r["label"]: {} for r in doc["runs"]}
    with_line = [r for r in doc["runs"] if r.get("line")]
    if with_line:
        curves = {r["label"]: (r["line"]["a"], r["line"]["loss"], r["line"]["error"])
                  for r in with_line}
        fig = plots.lines_figure(curves, "a (filter-normalized direction)",
                                 f"loss along one random direction; {_data_words(doc)}", [0.0])
        written.append(_save(fig, out_dir / LINE_FILE))
        for r in with_line:
            figures[r["label"]]["landscape/line"] = fig
    with_plane = [r for r in doc["runs"] if r.get("plane")]
    if with_plane:
        levels = plots.shared_levels([r["plane"]["loss"] for r in with_plane],
                                     cfg.plane.levels, cfg.plane.vmax, cfg.plane.log)
        used: set[str] = set()
        for r in with_plane:
            name = slug(r["label"])
            name = name if name not in used else f"{name}_{len(used)}"
            used.add(name)
            p = r["plane"]
            title = f"{r['label']}: loss on a random plane\n{_data_words(doc)}"
            fig = plots.plane_figure(p["a"], p["b"], p["loss"], title, levels)
            written.append(_save(fig, out_dir / f"landscape_2d_{name}.png"))
            figures[r["label"]]["landscape/plane"] = fig
            if cfg.plane.surface:
                fig = plots.surface_figure(p["a"], p["b"], p["loss"], r["label"], levels)
                written.append(_save(fig, out_dir / f"landscape_3d_{name}.png"))
                figures[r["label"]]["landscape/surface"] = fig
    inter = doc.get("interpolation")
    if inter:
        fig = plots.lines_figure({f"{inter['from']} -> {inter['to']}":
                                  (inter["t"], inter["loss"], inter["error"])},
                                 f"t: (1 - t) w[{inter['from']}] + t w[{inter['to']}]",
                                 f"the straight line between two runs; {_data_words(doc)}",
                                 [0.0, 1.0])
        written.append(_save(fig, out_dir / INTERPOLATION_FILE))
        for label in (inter["from"], inter["to"]):
            if label in figures:
                figures[label]["landscape/interpolation"] = fig
    if cfg.tensorboard:
        for r in doc["runs"]:
            if r.get("run_dir") and figures[r["label"]]:
                tb = Path(r["run_dir"]) / "tensorboard"
                plots.log_images(tb, figures[r["label"]], int(r.get("epoch") or 0))
    return written


def _save(fig: Any, path: Path) -> Path:
    plots.save_png(fig, path)
    return path


def _data_words(doc: dict[str, Any]) -> str:
    d = doc["data"]
    return f"{d['images']} {d['split']} images of {d['dataset']}"


def _redraw(cfg: LandscapeOptions) -> dict[str, Any]:
    path = Path(cfg.from_json).expanduser()
    if not path.is_file():
        raise UserError(f"from_json={cfg.from_json} does not exist: pass a landscape.json "
                        "written by sam-landscape")
    try:
        doc = read_json(path)
    except ValueError as err:
        raise UserError(f"from_json={cfg.from_json} is not valid JSON ({err}): pass a "
                        "landscape.json written by sam-landscape") from err
    if doc.get("schema_version") != SCHEMA_VERSION or "runs" not in doc:
        raise UserError(f"from_json={cfg.from_json} is not a landscape.json of schema "
                        f"{SCHEMA_VERSION}: rerun sam-landscape on the runs")
    if cfg.plane.levels < 2:
        raise UserError(f"plane.levels={cfg.plane.levels}: must be >= 2")
    out_dir = Path(cfg.out_dir).expanduser() if cfg.out_dir else path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    written = draw(doc, out_dir, cfg)
    print(f"{PROG}: redrew {', '.join(str(p) for p in written)}")
    return doc


def _fmt(v: float | None, percent: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{100 * v:.2f}%" if percent else f"{v:.4g}"


def _print_summary(doc: dict[str, Any], written: list[Path]) -> None:
    print(f"{PROG}: {len(doc['runs'])} run(s), {_data_words(doc)}, {doc['points']} points "
          f"in {doc['wall_time_s']:.1f} s on {doc['device']}")
    for r in doc["runs"]:
        line_ = r.get("line")
        if line_:
            mid = len(line_["a"]) // 2
            ends = [v for v in (line_["loss"][0], line_["loss"][-1]) if v is not None]
            edge = sum(ends) / len(ends) if ends else None
            print(f"  {r['label']}: loss {_fmt(line_['loss'][mid])} at a={line_['a'][mid]:g}, "
                  f"{_fmt(edge)} at a=+-{line_['a'][-1]:g} (mean); error "
                  f"{_fmt(line_['error'][mid], True)} -> {_fmt(line_['error'][0], True)}, "
                  f"{_fmt(line_['error'][-1], True)}")
    inter = doc.get("interpolation")
    if inter:
        inside = [v for t, v in zip(inter["t"], inter["loss"], strict=True)
                  if 0 <= t <= 1 and v is not None]
        if inside:
            print(f"  {inter['from']} -> {inter['to']}: largest loss on the segment "
                  f"{_fmt(max(inside))}")
    print(f"  wrote {', '.join(str(p) for p in written)}")
