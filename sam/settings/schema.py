"""Everything a training run can be configured with: each setting's type, range and meaning.

The values themselves (the defaults) live in ``configs/`` (``train.yaml`` and the groups);
this file says what they may be. A setting that only some options of a group have (e.g.
``dataset.extra``, SVHN's) has here the value the code takes when the option lacks it.
``sam.settings.read_settings`` turns the composed config into these frozen objects once,
before anything is built; nothing below it sees the config. docs/configuration.md's
"Every setting" tables are generated from this file (``python -m sam.settings``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sam.settings.fields import setting

_S = dict(frozen=True, kw_only=True)


@dataclass(**_S)
class DatasetSettings:
    """``dataset``: what is loaded, how much of it, and its labels."""

    name: str = setting(doc="dataset: cifar10, cifar100, svhn, fashion_mnist, synthetic, or "
                        "an image set (flowers102, stanford_cars, ..., imagefolder, imagenet)")
    num_classes: int | None = setting(None, ge=1, doc="classes (image sets: null = counted "
                                      "from the folders)")
    data_dir: str = setting("", doc="where the dataset's files live (default: data_dir)")
    download: bool = setting(False, doc="fetch absent files into data_dir once")
    verify: bool = setting(True, doc="md5 check; false accepts re-packed copies")
    subset: int | None = setting(None, ge=1, doc="first N training images only (image sets: "
                                 "N spread evenly)")
    test_subset: int | None = setting(None, ge=1, doc="first N evaluation images only")
    val_fraction: float = setting(0.0, ge=0, lt=1, doc="> 0: evaluate on the last fraction "
                                  "of the training set instead of the test set")
    fallback_synthetic: bool = setting(False, doc="synthetic data, loudly labelled, when the "
                                       "files are absent from the default location")
    label_noise: float = setting(0.0, ge=0, lt=1, doc="fraction of training labels "
                                 "replaced at random (Table 4)")
    label_noise_mode: str = setting("uniform", choices=("uniform", "flip"),
                                    doc="uniform: redrawn from all classes; flip: another class")
    noise_seed: int | None = setting(None, doc="seed of the noisy labels; null = seed")
    channels: int = setting(3, choices=(1, 3), doc="image channels (fashion_mnist: 1)")
    stats: str = setting("train", choices=("train", "official"),
                         doc="normalisation: the training set's mean/std, or the official "
                         "constants (svhn, fashion_mnist)")
    extra: bool = setting(True, doc="svhn: train on train + extra (604,388 images)")
    flip: bool = setting(True, doc="horizontal flips in augment=basic")
    aa_policy: str = setting("cifar", choices=("cifar", "svhn"),
                             doc="augment=autoaugment's official policy")
    aa_crop_flip: bool = setting(True, doc="augment=autoaugment: crop and flip after it")
    train_size: int = setting(1024, ge=1, doc="synthetic: training images (or subset's, "
                              "if larger)")
    test_size: int = setting(256, ge=1, doc="synthetic: test images (or test_subset's, "
                             "if larger)")
    root: str | None = setting(None, doc="image sets: folder under data_dir")
    train_split: str = setting("train", doc="image sets: the split trained on")
    test_split: str = setting("test", doc="image sets: the split evaluated")
    image_size: int = setting(224, ge=1, doc="image sets: training crop and evaluation "
                              "centre crop (pixels)")
    resize: int | None = setting(None, ge=1, doc="image sets: evaluation resize of the "
                                 "shorter side; null = image_size")
    crop_scale: tuple[float, ...] = setting((0.08, 1.0), gt=0, le=1,
                                            doc="image sets: RandomResizedCrop's area range")
    interpolation: str = setting("bilinear", choices=("bilinear", "bicubic"),
                                 doc="image sets: resize filter (antialiased)")
    mean: tuple[float, ...] | None = setting(None, doc="image sets: normalisation mean; "
                                             "null = ImageNet's")
    std: tuple[float, ...] | None = setting(None, gt=0, doc="image sets: normalisation std; "
                                            "null = ImageNet's")
    num_workers: int | None = setting(None, ge=0, doc="image sets: DataLoader workers; "
                                      "null = min(8, CPUs)")


@dataclass(**_S)
class AugmentSettings:
    """``augment``: the training images' augmentation."""

    name: str = setting(choices=("none", "basic", "cutout", "autoaugment"),
                        doc="none, basic (pad-crop-flip), cutout, autoaugment")
    pad_mode: str = setting("reflect", choices=("reflect", "zero"),
                            doc="the crop's padding: reflect (official) or zero (torchvision)")
    cutout_per_image: bool = setting(True, doc="Cutout: one square per image, or one "
                                     "position per batch (official)")
    policy: str = setting("torchvision", choices=("official", "torchvision"),
                          doc="AutoAugment: the official ops batched on the device, or "
                          "torchvision's per image in workers")
    num_workers: int = setting(0, ge=0, doc="DataLoader workers (policy=torchvision)")
    mixup_alpha: float = setting(0.0, doc="Mixup: 0 = off; > 0: each batch mixed with a "
                                 "permutation of itself, lam ~ Beta(alpha, alpha) (Table 4: "
                                 "1, 8, 16, 32)")


@dataclass(**_S)
class FidelitySettings:
    """``fidelity``: which code the training follows (docs/fidelity.md)."""

    name: str = setting("pytorch", choices=("official", "pytorch"),
                        doc="official: google-research/sam; pytorch: davda54/sam")
    wd_mode: str = setting("base", choices=("base", "loss"),
                           doc="weight decay in the base step, or lam/2 ||w||^2 in the loss")
    max_grad_norm: float | None = setting(None, gt=0, doc="clip the final gradient's global "
                                          "norm; null = no clipping")
    model_style: str = setting("pytorch", choices=("official", "pytorch"),
                               doc="WRN/Shake-Shake/PyramidNet as the official code or PyTorch")
    cutout_per_image: bool = setting(True, doc="Cutout per image (pytorch) or per batch")
    autoaugment: str = setting("torchvision", choices=("official", "torchvision"),
                               doc="AutoAugment's implementation")
    true_gradient: bool = setting(False, doc="Shake-Shake/ShakeDrop: the ascent pass takes "
                                  "the forward gate's gradient")
    init_seed: int | None = setting(None, doc="the initial weights' seed (official: 0, as "
                                    "PRNGKey(0)); null = the run seed")
    dataset_stats: str = setting("train", choices=("train", "official"),
                                 doc="SVHN / Fashion-MNIST normalisation (dataset.stats)")
    fp32_precision: str = setting("default", choices=("tf32", "ieee", "default"),
                                  doc="fp32 convolutions and matmuls on CUDA: tf32, ieee "
                                  "(strict fp32), or torch's defaults")


@dataclass(**_S)
class SharpnessSettings:
    """``sharpness``: Hessian spectrum and m-sharpness measured during training."""

    every: int = setting(0, ge=0, doc="0 = off; N = after every N-th epoch and the last")
    epochs: tuple[int, ...] = setting((), ge=1, doc="after these epochs too, e.g. [1,50,300] "
                                      "(Figure 3); [] = none")
    images: int = setting(1000, ge=1, doc="fixed training subset, un-augmented")
    batch_size: int | None = setting(None, ge=1, doc="images per Hessian-vector product; "
                                     "null = batch_size")
    k: int = setting(5, ge=5, doc="top-k Lanczos eigenvalues (lambda_max / lambda_5)")
    iters: int = setting(20, ge=1, doc="Lanczos steps")
    trace_samples: int = setting(10, ge=2, doc="Hutchinson probes for tr(H)")
    m: int | None = setting(None, ge=1, doc="m-sharpness shard size; null = the run's m")
    rho: float | None = setting(None, ge=0, doc="m-sharpness radius; null = the run's rho")
    dtype: str = setting("float32", choices=("float32", "float64"),
                         doc="Lanczos / Hutchinson vectors")
    slq_runs: int = setting(0, ge=0, doc="> 0: the SLQ spectral density of each measured "
                            "epoch (runs x slq_iters HVPs) in spectrum/epoch_<n>.json")
    slq_iters: int = setting(80, ge=2, doc="Lanczos steps per SLQ run")

    @property
    def on(self) -> bool:
        """Whether anything is measured during training (``every`` or ``epochs``)."""
        return self.every != 0 or bool(self.epochs)


@dataclass(**_S)
class OptimSettings:
    """``optim``: the optimizer (``sgd``, ``sam`` and its variants). ``spec`` is the group
    as written (what ``hydra.utils.instantiate`` builds); the fields are what the trainer
    reads and checks. A variant's own options are checked by ``sam.optim``."""

    spec: dict[str, Any]
    name: str = setting(choices=("sgd", "sam"), doc="sgd, or sam (SAM and its variants)")
    variant: str = setting("sam", doc="the report's name: sam, gsam, looksam, ...")
    perturb: str = setting("all", choices=("all", "norm", "no_norm"),
                           doc="which parameters SAM perturbs (norm: SAM-ON)")
    rho: float = setting(0.0, ge=0, doc="SAM's radius (from rho)")
    p: float = setting(2, choices=(2, float("inf")), doc="2, or .inf (eps = rho sign(g))")
    adaptive: bool = setting(False, doc="ASAM: eps scaled by |w| + eta")
    eta: float = setting(0.01, ge=0, doc="ASAM's eta")
    ascent_steps: int = setting(1, ge=1, doc="k > 1: k steps of projected ascent (C.6)")
    second_order: bool = setting(False, doc="exact gradient of L(w + eps(w)) (C.4)")
    ascent: str = setting("gradient", choices=("gradient", "random"),
                          doc="random: eps along a Gaussian direction (C.5)")
    alpha: float = setting(0.0, ge=0, doc="GSAM's / LookSAM's alpha")
    k: int | None = setting(None, ge=1, doc="LookSAM: a SAM step every k")
    rho_min: float | None = setting(None, ge=0, doc="GSAM: rho's floor; null = constant rho")
    lr_min: float = setting(0.0, ge=0, doc="GSAM: lr at which rho reaches rho_min")
    wd_mode: str = setting("base", choices=("base", "loss"), doc="from fidelity")
    max_grad_norm: float | None = setting(None, gt=0, doc="from fidelity")
    lr: float = setting(gt=0, doc="from lr")
    base: str = setting("sgd", choices=("sgd", "adam", "adamw"),
                        doc="the base optimizer: sgd (the paper's), adam, adamw")
    momentum: float = setting(0.0, ge=0, doc="sgd: momentum (0.9: the paper's)")
    nesterov: bool = setting(False, doc="sgd: Nesterov momentum")
    betas: tuple[float, ...] = setting((0.9, 0.999), ge=0, lt=1,
                                       doc="adam, adamw: (beta1, beta2) of the moment averages")
    eps: float = setting(1e-8, gt=0, doc="adam, adamw: the denominator's epsilon")
    weight_decay: float = setting(0.0, ge=0, doc="from lam")


@dataclass(**_S)
class ScheduleSettings:
    """``schedule``: the learning rate per step (``spec``: the group as written)."""

    spec: dict[str, Any]
    warmup_epochs: float = setting(0, ge=0, doc="cosine: linear warmup epochs")
    milestones: tuple[float, ...] = setting((), gt=0, lt=1,
                                            doc="step: fractions of training where lr drops")
    gamma: float = setting(1.0, gt=0, doc="step: lr multiplier at each milestone")


@dataclass(**_S)
class ModelSettings:
    """``model``: the network; ``spec`` is its constructor and arguments (configs/model/)."""

    spec: dict[str, Any]


@dataclass(**_S)
class TensorBoardLoggerSettings:
    """``logger.tensorboard``: event files in <run dir>/tensorboard/ (the default)."""


@dataclass(**_S)
class CsvLoggerSettings:
    """``logger.csv``: params.csv, metrics.csv (a row per epoch), status.txt, results.json."""

    dir: str | None = setting(None, doc="where the files go; null = <run dir>/csv")


@dataclass(**_S)
class MlflowLoggerSettings:
    """``logger.mlflow``: one MLflow run per training run (docs/trackers.md)."""

    tracking_uri: str | None = setting(None, doc="a tracking server (http://host:5000) or a "
                                       "store (sqlite:///path.db); null = "
                                       "$MLFLOW_TRACKING_URI, else MLflow's default: "
                                       "sqlite:///mlflow.db in the working directory")
    experiment: str = setting("sam", doc="the MLflow experiment (created when absent)")


@dataclass(**_S)
class WandbLoggerSettings:
    """``logger.wandb``: one Weights & Biases run per training run (docs/trackers.md)."""

    project: str = setting("sam", doc="the W&B project")
    entity: str | None = setting(None, doc="the W&B team or user; null = your default")
    mode: str | None = setting(None, choices=("online", "offline", "disabled"),
                               doc="offline: no network (`wandb sync` later); null = "
                               "$WANDB_MODE, else online")
    dir: str | None = setting(None, doc="the folder wandb/ goes in; null = the run directory")


@dataclass(**_S)
class SearchSettings:
    """``search``: sam-search's Optuna study, minimizing the final validation error."""

    params: dict = setting(doc="the search space: a key of the config -> {low, high, log}, "
                           "e.g. rho: {low: 0.01, high: 0.5, log: true}")
    trials: int = setting(20, ge=1, doc="trials of the study in all (a rerun adds the "
                          "missing ones and resumes an interrupted one)")
    study: str = setting("rho_search", doc="the study's name in its storage")
    dir: str | None = setting(None, doc="optuna.db and a run directory per trial; "
                              "null = outputs/search/<study>")
    seed: int = setting(0, doc="the TPE sampler's seed")


# logger=[...]: the trackers a run can log to, each its own settings (configs/logger/)
TRACKER_SETTINGS: dict[str, type] = {
    "tensorboard": TensorBoardLoggerSettings, "csv": CsvLoggerSettings,
    "mlflow": MlflowLoggerSettings, "wandb": WandbLoggerSettings}


@dataclass(**_S)
class LoggerSettings:
    """``logger``: the experiment trackers (``logger=[tensorboard,mlflow]``); a tracker's
    settings are null when it is not chosen."""

    tensorboard: TensorBoardLoggerSettings | None = None
    csv: CsvLoggerSettings | None = None
    mlflow: MlflowLoggerSettings | None = None
    wandb: WandbLoggerSettings | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The chosen trackers, in TRACKER_SETTINGS's order."""
        return tuple(n for n in TRACKER_SETTINGS if getattr(self, n) is not None)


def _default_logger() -> LoggerSettings:
    return LoggerSettings(tensorboard=TensorBoardLoggerSettings())


@dataclass(**_S)
class Settings:
    """One run's settings: the top-level keys of configs/train.yaml and the groups."""

    dataset: DatasetSettings
    augment: AugmentSettings
    fidelity: FidelitySettings
    sharpness: SharpnessSettings
    optim: OptimSettings
    schedule: ScheduleSettings
    model: ModelSettings
    # a config without the group (written before it) logs to TensorBoard, as then
    logger: LoggerSettings = field(default_factory=_default_logger)
    rho: float = setting(ge=0, doc="SAM neighbourhood radius (optim.rho)")
    m: int | None = setting(ge=1, doc="shard size: own BatchNorm statistics (SGD and SAM) "
                            "and own eps (SAM); null = the whole (per-rank) batch")
    m_impl: str = setting(choices=("auto", "loop", "vmap"), doc="how shards of m run")
    accumulate: int = setting(ge=1, doc="micro-batches per batch (memory); one eps per batch")
    lam: float = setting(ge=0, doc="L2 / weight decay lambda (optim.weight_decay)")
    wd_exclude_norm_bias: bool = setting(doc="no weight decay on 1-d parameters")
    label_smoothing: float = setting(ge=0, lt=1, doc="training loss (1-a) CE + a mean(-log p)")
    bn_eval_mode: bool = setting(doc="BatchNorm with its running statistics in training too")
    seed: int = setting(doc="data order, augmentation, dropout/shake noise (and the "
                        "initial weights when init_seed is null)")
    init_seed: int | None = setting(doc="the initial weights' seed; null = seed "
                                    "(fidelity.init_seed)")
    epochs: int = setting(ge=1, doc="training epochs")
    batch_size: int = setting(ge=1, doc="the global batch")
    lr: float = setting(gt=0, doc="peak learning rate (optim.lr)")
    device: str = setting(doc="auto (cuda when present), cpu, cuda, cuda:N")
    data_dir: str = setting(doc="where datasets live ($SAM_DATA or data)")
    amp: str = setting(choices=("auto", "bf16", "fp16", "off"), doc="autocast precision")
    channels_last: bool = setting(doc="NHWC tensors")
    compile: bool = setting(doc="torch.compile the model")
    deterministic: bool = setting(doc="deterministic algorithms (bit-reproducible on cpu)")
    eval_batch_size: int = setting(ge=1, doc="evaluation batch")
    progress: bool | str = setting(choices=("auto", True, False),
                                   doc="tqdm bar: auto = on a TTY outside multirun")
    checkpoint_every_steps: int = setting(ge=0, doc="0 = after each epoch only; N = also "
                                          "every N steps")
    nan_check_every: int = setting(ge=1, doc="steps between NaN/inf loss checks")
    ddp_sync_ascent: bool = setting(doc="multi-GPU: average the ascent gradient first")
    sync_bn: bool = setting(doc="multi-GPU: SyncBatchNorm (cuda only)")
    bootstrap: str | None = setting(None, doc="retrain on the labels a finished run predicts "
                                    "for the training images: its run directory, or a sweep "
                                    "holding a run of this config (Table 4); null = off")

    @property
    def is_sam(self) -> bool:
        """Whether the optimizer takes SAM's two passes (SAM or a variant)."""
        return self.optim.name == "sam"
