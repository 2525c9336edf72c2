"""Bootstrap (paper Table 4): train a model, then retrain from scratch on the labels the
first model predicts for the training images: ``bootstrap=<run dir or sweep dir>``.

The paper says only "Bootstrap = train, then retrain from scratch on the first model's
predicted labels" (section 3.3; the official code, google-research/sam, has no label-noise
or bootstrap code). The choices made here:

- the labels are HARD: argmax of the source model's logits, one class per image;
- they are predicted for every training image of this run, un-augmented and normalized as
  for evaluation, by the source run's final model (``checkpoints/last.pt``, read as data:
  ``weights_only``), in eval mode (BatchNorm running statistics) and fp32;
- the source must have trained on exactly this run's training set (the same images and the
  same, possibly noisy, labels: checked tensor by tensor), and must be complete;
- ``bootstrap`` may name the source run's directory, or a directory holding runs (the first
  stage's sweep): then the source is the one complete run there whose config equals this
  run's except ``bootstrap`` (the second stage repeats the first stage's command with
  ``bootstrap=<its sweep dir>``).

The labels are stored in the run directory (``bootstrap_labels.pt``: labels, their hash,
the source) the first time, and a resumed run reads them from there: it resumes exactly,
even after the source moved. ``results.json`` records ``bootstrap`` (source, hashes, how
many labels changed) and ``summary.bootstrap`` (the source run).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor

from sam import distributed
from sam.data import IMAGE_SETS, Splits, load_splits, make_loader
from sam.data.label_noise import label_hash
from sam.errors import UserError
from sam.results import (
    RESULTS_FILE,
    atomic_write,
    comparable_config,
    config_diff,
    flat_config,
    load_checkpoint,
    read_json,
)
from sam.settings import Settings, stored_dataset
from sam.stored_config import checked_node
from sam.train.writes import writing

log = logging.getLogger("sam.train")

LABELS_FILE = "bootstrap_labels.pt"
UNSET = "<stage-1 sweep dir>"  # experiment=table4_bootstrap's, until bootstrap=<dir> is given

Relabel = Callable[[Splits, torch.device], dict]


def relabeller(s: Settings, config: dict, run_dir: Path, write: bool) -> Relabel | None:
    """None without ``bootstrap``; else a function that replaces ``splits.train_y`` by the
    bootstrap labels (stored in ``run_dir``, or predicted and, with ``write``, stored
    there) and returns their record for results.json."""
    if s.bootstrap is None:
        return None
    if s.dataset.name in IMAGE_SETS:
        raise UserError(
            f"bootstrap with dataset={s.dataset.name}: bootstrap labels need a "
            "dataset held in memory (cifar10, cifar100, svhn, fashion_mnist, "
            "synthetic); remove bootstrap"
        )

    def relabel(splits: Splits, device: torch.device) -> dict:
        labels, record = bootstrap_labels(s, config, splits, device, run_dir, write)
        splits.train_y = labels
        return record

    return relabel


def bootstrap_labels(
    s: Settings, config: dict, splits: Splits, device: torch.device, run_dir: Path, write: bool
) -> tuple[Tensor, dict]:
    """The training labels of a bootstrap run and their record: read from
    ``run_dir/bootstrap_labels.pt`` when it exists (a resumed run), else predicted by the
    source run's final model (and stored there when ``write``). Every rank gets rank 0's."""
    path = run_dir / LABELS_FILE
    if path.exists():
        labels, record = _stored(path, s.bootstrap, splits.train_y)
    else:
        source = find_source(s.bootstrap, config, run_dir)
        labels, record = _predicted(s, source, splits, device)
        if write:
            with writing(path):  # a full disk: one line, nothing half-written
                atomic_write(
                    path, lambda f: torch.save({"labels": labels, **record}, f), binary=True
                )
    return distributed.broadcast_object((labels, record))


# --------------------------------------------------------------------------- the source


def find_source(setting: str, config: dict, run_dir: Path | None = None) -> Path:
    """The source run's directory: ``setting`` itself when it holds results.json, else the
    one complete run below it whose config is this run's but for ``bootstrap``.
    UserError (one line) for a missing, unfinished or ambiguous source."""
    where = f"bootstrap={setting}"
    if setting == UNSET:
        raise UserError(
            "bootstrap is not set: experiment=table4_bootstrap retrains from the "
            "first stage's runs; add bootstrap=<its sweep directory>"
        )
    path = Path(setting).expanduser()
    if not path.is_dir():
        raise UserError(
            f"{where}: no such directory: pass the run directory (or sweep "
            "directory) of the first training"
        )
    if (path / RESULTS_FILE).is_file():
        _check_complete(path, read_json(path / RESULTS_FILE), where)
        return path
    mine = _trained_as(config)
    candidates = []
    for file in sorted(path.rglob(RESULTS_FILE)):
        if run_dir is not None and file.parent.resolve() == run_dir.resolve():
            continue
        try:
            run = read_json(file)
        except ValueError:
            continue
        other = run.get("config")
        if isinstance(other, dict) and other and other.get("bootstrap") is None:
            candidates.append((file.parent, run, _trained_as(other)))
    same = [(d, run) for d, run, c in candidates if c == mine]
    if not same:
        nearest = min(candidates, key=lambda c: _distance(c[2], mine), default=None)
        hint = (
            f" (nearest, {nearest[0]}: {config_diff(nearest[2], mine)})"
            if nearest is not None
            else ""
        )
        raise UserError(
            f"{where}: none of the {len(candidates)} run(s) there has this run's "
            f"config{hint}: run the first stage with the same overrides, or "
            "point bootstrap at one run directory"
        )
    done = [(d, run) for d, run in same if run.get("status") == "complete"]
    if len(done) > 1:
        raise UserError(
            f"{where}: {len(done)} complete runs there match this config "
            f"({', '.join(str(d) for d, _ in done[:3])}): point bootstrap at one "
            "run directory"
        )
    source, run = (done or same)[0]
    _check_complete(source, run, where)
    return source


def _trained_as(config: dict) -> dict:
    """What a config trains, as the resume check compares it, without ``bootstrap`` (and,
    for SGD, without the ``rho`` it ignores)."""
    out = comparable_config(config)
    out.pop("bootstrap", None)
    if (out.get("optim") or {}).get("name") == "sgd":
        out.pop("rho", None)
    return out


def _distance(a: dict, b: dict) -> int:
    """How many settings two configs differ in (the nearest candidate is named)."""
    fa, fb = flat_config(a), flat_config(b)
    return sum(fa.get(k, UNSET) != fb.get(k, UNSET) for k in {*fa, *fb})


def _check_complete(source: Path, run: dict, where: str) -> None:
    status = run.get("status")
    if status != "complete":
        raise UserError(
            f"{where}: the source run {source} is {status}, not complete: finish "
            "it first (rerun its command), then start the bootstrap run"
        )


# --------------------------------------------------------------------------- the labels


def _predicted(
    s: Settings, source: Path, splits: Splits, device: torch.device
) -> tuple[Tensor, dict]:
    """Hard labels argmax f(x) of the source's final model for ``splits.train_x``, and their
    record; UserError when the source trained on another training set."""
    where = f"bootstrap={s.bootstrap}"
    run = read_json(source / RESULTS_FILE)
    config = run.get("config") or {}
    _check_same_training_set(s, config, splits, source, where)
    ckpt = source / "checkpoints" / "last.pt"
    state, loaded, _ = load_checkpoint(ckpt)
    if state is None or loaded != ckpt or state.get("epoch") != config.get("epochs"):
        raise UserError(
            f"{where}: {ckpt} is missing or not the final epoch's: rerun the "
            "source run's command to finish it"
        )
    node = checked_node(config, "model", str(source))  # the project's models only
    if node.get("in_mean", "unused") is None:  # model=timm: the loaders' statistics
        node.update(in_mean=list(splits.mean), in_std=list(splits.std))
    model = instantiate(node)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        raise UserError(
            f"{where}: {ckpt} does not fit its own config's model "
            f"({str(err).splitlines()[0]}): use a run sam-train wrote"
        ) from None
    labels = predict(model.to(device), splits, device, s.eval_batch_size)
    before = splits.train_y
    record = {
        "source": s.bootstrap,
        "run": str(source),
        "epoch": state["epoch"],
        "kind": "hard (argmax of the final model, un-augmented images, eval mode)",
        "hash": label_hash(labels),
        "replaced_hash": label_hash(before),
        "images": len(labels),
        "changed": int((labels != before).sum()),
    }
    record.update(_agreement_with_clean(s, labels, before))
    log.info(
        "bootstrap: %d of %d training labels from %s differ from the ones it trained on",
        record["changed"],
        len(labels),
        source,
    )
    return labels, record


@torch.no_grad()
def predict(
    model: torch.nn.Module, splits: Splits, device: torch.device, batch_size: int
) -> Tensor:
    """argmax_c f(x)_c for every training image (int64, on the CPU): un-augmented,
    normalized as for evaluation, the model in eval mode, fp32."""
    model.eval()
    loader = make_loader(
        splits.train_x,
        splits.train_y,
        batch_size=batch_size,
        device=device,
        mean=splits.mean,
        std=splits.std,
        augment="none",
        shuffle=False,
        drop_last=False,
        seed=0,
    )
    return torch.cat([model(x).argmax(1).cpu() for x, _ in loader]).to(torch.int64)


def _check_same_training_set(
    s: Settings, config: dict, splits: Splits, source: Path, where: str
) -> None:
    """UserError unless the source's training images and labels are this run's."""
    try:
        theirs = load_splits(stored_dataset(config, s.dataset.data_dir), config["seed"])
    except (KeyError, TypeError) as err:
        raise UserError(
            f"{where}: {source} holds no usable config ({err}): use a run sam-train wrote"
        ) from None
    if torch.equal(theirs.train_x, splits.train_x) and torch.equal(theirs.train_y, splits.train_y):
        return
    diff = config_diff(
        {"dataset": config.get("dataset"), "seed": config.get("seed")},
        {"dataset": _dataset_config(s), "seed": s.seed},
    )
    raise UserError(
        f"{where}: {source} trained on another training set "
        f"({diff or 'its images or labels differ'}): bootstrap from a run of the "
        "same dataset, subset and label noise (and seed, for the noise seed)"
    )


def _dataset_config(s: Settings) -> dict[str, Any]:
    """This run's dataset settings as a config node (for the message only)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s.dataset).items()}


def _agreement_with_clean(s: Settings, labels: Tensor, noisy: Tensor) -> dict:
    """With label noise: the fraction of the bootstrap labels, and of the noisy labels they
    replace, that equal the clean labels (what the first model corrected)."""
    if not s.dataset.label_noise:
        return {}
    clean = load_splits(replace(s.dataset, label_noise=0.0), s.seed).train_y
    return {
        "clean_agreement": float((labels == clean).double().mean()),
        "noisy_clean_agreement": float((noisy == clean).double().mean()),
    }


def _stored(path: Path, setting: str, replaced: Tensor) -> tuple[Tensor, dict]:
    """The labels a run stored when it began, checked against their hash and against the
    training labels they replace; UserError when they belong to another run."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        labels = stored.pop("labels")
    except Exception as err:
        raise UserError(
            f"{path} is unreadable ({type(err).__name__}): delete it to predict "
            "the labels again from the source run"
        ) from None
    if label_hash(labels) != stored.get("hash") or len(labels) != len(replaced):
        raise UserError(
            f"{path} is damaged (its labels do not match their hash): delete it "
            "to predict them again from the source run"
        )
    if stored.get("source") != setting or stored.get("replaced_hash") != label_hash(replaced):
        raise UserError(
            f"{path} was made for another source or training set (bootstrap="
            f"{stored.get('source')}): train in a new run directory"
        )
    return labels, stored


def record_labels(results: dict, s: Settings, record: dict | None) -> None:
    """Put the training labels' origin into results.json: ``bootstrap`` (the record, or
    None), ``summary.bootstrap`` (the source run, or None) and ``summary.mixup_alpha``."""
    results["bootstrap"] = record
    results["summary"]["bootstrap"] = record["run"] if record else None
    results["summary"]["mixup_alpha"] = s.augment.mixup_alpha
