"""The options of the tools that read finished runs, ``sam-sharpness``, ``sam-landscape`` and
``sam-correlate`` (configs/sharpness.yaml, landscape.yaml, correlate.yaml), as typed, frozen
settings (``sam-correlate``'s ranges are checked here too, by ``setting``).

Their values are in those files; their types are checked here when the CLI reads them;
their ranges and combinations by the tool itself (``sam.sharpness.check_settings``, the
landscape's ``_check``), whose lines name what a measurement needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from sam.settings.fields import setting

_S = dict(frozen=True, kw_only=True)
Runs = str | tuple[str, ...] | None  # one run directory or checkpoint, or a list of them


@dataclass(**_S)
class SlqOptions:
    """``slq``: the spectral density by stochastic Lanczos quadrature."""

    runs: int = setting(doc="random starts (0 = no density)")
    iters: int = setting(doc="Lanczos steps per start")


@dataclass(**_S)
class MSharpnessOptions:
    """``m_sharpness``: the paper's m-sharpness of the run."""

    m: int | tuple[int | None, ...] | None = setting(doc="shard size(s); null = the run's")
    rho: float | None = setting(doc="null = the run's rho")
    ascent_steps: int = setting(doc="1 = SAM's one-step inner max")
    mode: str = setting(doc="BatchNorm as in SAM's step (train) or eval")


@dataclass(**_S)
class ReaderOptions:
    """What every tool that reads trained runs takes: the runs, where its output and the
    data go, and the fixed images it evaluates."""

    runs: Runs = setting(doc="run directories (or checkpoints)")
    out_dir: str | None = setting(doc="where the tool writes")
    data_dir: str | None = setting(doc="the runs' dataset.data_dir, moved")
    images: int = setting(doc="fixed images, drawn with seed")
    batch_size: int = setting(doc="images per pass")
    seed: int = setting(doc="the subset (and the tool's random vectors)")
    device: str = setting(doc="auto, cpu, cuda, cuda:N")
    dtype: str = setting(doc="float32 or float64")


@dataclass(**_S)
class SharpnessOptions(ReaderOptions):
    """``sam-sharpness``: Hessian spectrum and m-sharpness of a trained run."""

    checkpoint: str | None = setting(doc="an explicit checkpoint")
    k: int = setting(doc="top-k eigenvalues")
    iters: int = setting(doc="Lanczos steps")
    trace_samples: int = setting(doc="Hutchinson probes")
    slq: SlqOptions
    m_sharpness: MSharpnessOptions


@dataclass(**_S)
class LineOptions:
    """``line``: L(w + a d1)."""

    points: int = setting(doc="0 = none")
    span: float = setting(doc="a from -span to span")


@dataclass(**_S)
class PlaneOptions:
    """``plane``: L(w + a d1 + b d2)."""

    points: int = setting(doc="per axis; 0 = none")
    span: float = setting(doc="a, b from -span to span")
    levels: int = setting(doc="contour levels")
    vmax: float | None = setting(doc="top of the colour scale")
    log: bool = setting(doc="levels spaced geometrically")
    surface: bool = setting(doc="also a 3-D surface PNG")


@dataclass(**_S)
class InterpolationOptions:
    """``interpolation``: L((1 - t) w_1 + t w_2)."""

    points: int = setting(doc="0 = none")
    start: float = setting(doc="first t")
    stop: float = setting(doc="last t")


@dataclass(**_S)
class LandscapeOptions(ReaderOptions):
    """``sam-landscape``: loss-landscape pictures of one or more runs."""

    labels: str | tuple[str, ...] | None = setting(doc="a name per run")
    from_json: str | None = setting(doc="redraw a landscape.json")
    split: str = setting(doc="train or test images")
    line: LineOptions
    plane: PlaneOptions
    interpolation: InterpolationOptions
    tensorboard: bool = setting(doc="the PNGs into each run's TensorBoard")
    progress: bool | str = setting(doc="a tqdm bar: true, false, auto")


@dataclass(**_S)
class CorrelateOptions:
    """``sam-correlate``: m-sharpness against the generalization gap over a population."""

    runs: Runs = setting(doc="sweep directory (or a list of them)")
    out_dir: str | None = setting(doc="where correlate.json/png go")
    data_dir: str | None = setting(doc="the runs' dataset.data_dir, moved")
    m: int | tuple[int, ...] = setting(doc="m-sharpness shard sizes", ge=1)
    rho: float = setting(doc="m-sharpness radius", ge=0)
    images: int = setting(doc="m-sharpness images, drawn with seed", ge=1)
    ascent_steps: int = setting(doc="1 = SAM's one-step inner max", ge=1)
    mode: str = setting(doc="BatchNorm as in SAM's step (train) or eval", choices=("train", "eval"))
    gap_images: int | None = setting(doc="training images of the train error; null = all", ge=1)
    batch_size: int = setting(doc="images per evaluation pass", ge=1)
    seed: int = setting(doc="the image subsets")
    device: str = setting(doc="auto, cpu, cuda, cuda:N")
    hparams: str | tuple[str, ...] | None = setting(
        doc="config keys conditioned on; null = those that vary"
    )
    mi_size: int | None = setting(doc="|S|; null = min(2, hyperparameters - 1)", ge=0)
    min_runs: int = setting(doc="fewer finished runs is an error", ge=2)
    remeasure: bool = setting(doc="ignore the runs' cached measurements")
