"""Every setting and its default, written once: frozen dataclasses for pretraining and for each evaluation.

Pretraining configuration flows one way: these defaults (the paper's ImageNet recipe) <- a named recipe
(``recipes/<name>.yaml``, only the values that differ) <- command-line overrides -> one frozen
``PretrainConfig`` -> ``pretrain(config)`` (:mod:`barlowtwins.recipes` does the merging and type checks,
:mod:`barlowtwins.validation` the ranges and combinations).
Components never see these objects; they get plain arguments, and where a function offers a default it
refers to the field here (``lambd: float = LossConfig.lambd``) instead of repeating the number.
This module imports neither torch nor anything that does, so the command line starts fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# ImageNet's normalisation (torchvision's): the default, and for weights that carry none; others by name
from barlowtwins.dataset_stats import IMAGENET_MEAN, IMAGENET_STD

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
VIEWS = ("batched", "pil")
CACHES = ("auto", "memory", "disk", "off")
CROPS = ("auto", "sample", "batch")
OPTIMIZERS = ("lars", "sgd", "adamw")
FORMULATIONS = ("auto", "cross", "gram")
# Table 5's objectives (paper §4), then §5.2's auto-correlation alternative; which of them the ``gram``
# formulation can express is in losses.barlow_twins
OBJECTIVES = (
    "barlow_twins",
    "invariance_only",
    "redundancy_only",
    "feature_norm",
    "cross_covariance",
    "cross_entropy",
    "auto_correlation",
)


@dataclass(frozen=True)
class DataConfig:
    train: tuple[str, ...] = ()  # --data: ImageFolder dir, shard pattern(s)/paths, or a built-in name
    eval: tuple[str, ...] = ()  # --eval-data: labelled test set; kNN at the end of pretraining uses it
    root: str = "data"  # where torchvision's CIFAR/STL sets are (or get downloaded to)
    download: bool = False  # torchvision sets are downloaded only when the user asks
    limit: int = 0  # use only the first N training samples (0: all); for smoke tests and tiny runs
    eval_limit: int = 0  # use only the first N samples of --eval-data (0: all)
    workers: int = -1  # DataLoader worker processes; -1: one per CPU this process may use (affinity), at most 8
    shuffle_buffer: int = 2000  # WebDataset only: samples held for shuffling within a worker
    views: str = "batched"  # "batched": colour ops of a whole batch on the training device; "pil": all per sample
    cache: str = "auto"  # decoded images: "memory", "disk" (memory-mapped, once ever), "off" (decode every step),
    # "auto": memory under a quarter of the free RAM, else disk under half the free disk, else off
    cache_dir: str = ""  # where "disk" caches live ("": $BARLOWTWINS_CACHE, else ~/.cache/barlowtwins)
    # Stored images keep their whole picture and aspect ratio; crops are drawn on the original (paper §2.2).
    crops: str = "auto"  # batched views' crops: "sample" (PIL bicubic per sample in workers, as the paper's
    # pipeline), "batch" (roi_align, bilinear, a whole batch at once), "auto": batch for images of one shape stored
    # as they are and at most twice the view's side (CIFAR, STL-10, the digits), else sample
    stored_size: int = 0  # cap on a stored image's shorter side, px (never enlarged); 0: every crop stays a
    # reduction of the stored pixels (915 px for 224 px views from 8 % crops; views/batches.stored_side)


@dataclass(frozen=True)
class ModelConfig:
    method: str = "barlow_twins"  # the self-supervised method (methods.METHODS); the paper's is the default
    arch: str = "resnet50"  # torchvision ResNet or timm:NAME[,key=value...]; classifier removed (paper §2.2)
    small_stem: bool = False  # 3x3 stride-1 first conv, no max-pool: for 32-96 px images (CIFAR, STL)
    stem_stride: int = 1  # the small stem's stride; 2 halves the feature maps (a third of the time at 32 px)
    projector: str = "8192-8192-8192"  # output widths of the projector's linear layers (paper §2.2)
    projector_bn: bool = True  # BN after hidden projector layers; False is Table 5's "No BN in MLP"
    predictor: str = ""  # widths of a predictor on branch A ("": none, "auto": projector's first width-output width)
    stop_gradient: bool = False  # no gradient through branch B (Table 6 (a), (c))
    momentum: float = 0.996  # BYOL's target-network momentum tau_base, raised to 1 by a cosine (Grill et al. 2020)
    init: str = ""  # --init: weights a fresh run starts from (init_weights.py); a resumed run never re-reads them


@dataclass(frozen=True)
class AugmentConfig:
    """The two asymmetric views of paper §2.2 (BYOL's parameters). Pairs are (view A, view B)."""

    image_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: tuple[float, float] = (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: tuple[float, float] = (0.0, 0.2)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Multi-crop (Caron et al. 2020): small views beside A and B, the loss averaged over the pairs (A, B),
    # (A, small), (B, small); cheap views, more pairs per step. View B's operations, without blur.
    small_views: int = 0  # small views per image (0: the paper's two views)
    small_size: int = 16  # their side, px
    small_crop_scale: tuple[float, float] = (0.05, 0.4)  # their RandomResizedCrop area range


@dataclass(frozen=True)
class LossConfig:
    lambd: float = 0.0051  # off-diagonal weight; official code (the paper rounds to 5e-3, §2.2)
    formulation: str = "auto"  # "cross" (DxD matrix), "gram" (batch space, for wide projectors), "auto"
    objective: str = "barlow_twins"  # eq. 1, or a Table 5 variant (config.OBJECTIVES)
    temperature: float = 0.5  # NT-Xent's and Table 5's cross-entropy tau; SimCLR's CIFAR-10 value (Chen 2020a, B.9)
    scale: float = 1.0  # gradients of the loss x this (solo-learn's scale_loss); logged terms stay unscaled


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "lars"  # "lars" (paper), "sgd" or "adamw" (often better for small data)
    lr_weights: float = 0.2  # peak lr of weights per 256 images (official code, paper §2.2); recipes may say "auto"
    lr_biases: float = 0.0048  # peak lr of biases and BN parameters per 256 images (official code)
    weight_decay: float = 1.5e-6  # paper §2.2; never applied to biases and BN parameters
    momentum: float = 0.9  # LARS and SGD; AdamW uses beta1 = momentum
    lars_eta: float = 0.001  # LARS trust coefficient (official code)
    clip_lr: bool = False  # LARS as solo-learn's clip_lr: adapted lr min(eta||w||/(||g||+wd||w||), lr); False: official
    warmup_epochs: float = 10.0  # linear warm-up from 0 (paper §2.2)
    final_lr_ratio: float = 0.01  # cosine decays to peak x this: paper 0.2 -> 0.002; official code 0.001


@dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/barlowtwins"  # run directory: config, metrics, checkpoints, results
    epochs: int = 1000  # paper §2.2
    batch_size: int = 2048  # global batch, over all processes (paper §2.2)
    precision: str = "auto"  # "auto" (bf16 on recent GPUs, fp16 on older ones, fp32 on CPU), "bf16", "fp16", "fp32"
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    channels_last: bool = True  # faster convolutions on GPUs and on CPUs alike
    compile: bool = False  # torch.compile the method; 0.81-0.88x eager bf16 on a 2-core CPU (docs/speed)
    seed: int = 0
    time_budget: str = ""  # e.g. "20m", "90s", "1.5h": fit the schedule to the steps that fit ("": the epochs)
    log_every: int = 10  # steps between metrics.jsonl lines
    checkpoint_every: int = 0  # steps between extra mid-epoch checkpoints (0: at the end of each epoch only)
    # Low-resolution first (FFCV's progressive resizing; not in the paper): views A and B at progressive_start px,
    # grown linearly back to image_size between the two fractions of the run's steps (a schedule, like the learning
    # rate's); made at the step's side on the whole-batch path, else made at image_size and shrunk on the device
    progressive_start: int = 0  # side of the first steps' views, px (0: augment.image_size throughout, as the paper)
    progressive_ramp: tuple[float, float] = (0.5, 0.85)  # the growth starts / ends at these fractions of the run


@dataclass(frozen=True)
class KnnConfig:
    """Weighted kNN on L2-normalised frozen features (not in the paper; the libraries' cheap monitor)."""

    k: tuple[int, ...] = (200, 20)  # neighbours; the first is the headline (lightly: 200; DINO: 20)
    temperature: float = 0.1  # vote weight exp(similarity / T) (lightly's value)
    batch_size: int = 256  # images per forward pass while extracting features


@dataclass(frozen=True)
class MonitorConfig:
    """Watching a run while it trains (not in the paper): kNN, an online probe, pictures, a collapse alarm."""

    knn_every_epochs: float = -1.0  # kNN on data.eval every N epochs; -1: ~10 epoch ends a run (if data.eval); 0: off
    knn_bank_limit: int = 10000  # the monitor's kNN bank is the first N training samples (the final kNN uses all)
    knn_query_limit: int = 10000  # ... and its queries the first N samples of data.eval
    probe: bool = True  # online linear probe on detached backbone features of view A (solo-learn, lightly)
    probe_lr: float = 0.1  # the probe's SGD learning rate (solo-learn's classifier_lr), momentum 0.9, no decay
    picture_every: int = -1  # steps between pictures of C and the spectrum (and the alarm); -1: epoch ends; 0: off
    picture_block: int = 64  # side of the block of C drawn (its first dimensions)
    alarm_rank_fraction: float = 0.01  # alarm when the effective rank < this x min(batch, width), or < 2
    alarm_constant: float = 0.5  # alarm when more than this share of embedding dimensions is constant (C_ii = 0)


@dataclass(frozen=True)
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)  # after pretraining, when data.eval is set
    monitor: MonitorConfig = field(default_factory=MonitorConfig)  # while pretraining

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of Python scalars and lists (YAML/JSON friendly)."""
        return _to_plain(dataclasses.asdict(self))


# Fields that may differ when resuming a run: they change how the run is executed, not what it computes.
RESUMABLE_CHANGES = frozenset(
    {
        "train.epochs",
        "train.out",
        "train.device",
        "train.compile",
        "train.log_every",
        "train.time_budget",
        "train.checkpoint_every",
        "knn.k",
        "knn.temperature",
        "knn.batch_size",
        "data.eval",
        "data.eval_limit",
        "data.workers",
        "data.cache",  # the same pixels, held elsewhere
        "data.cache_dir",
        "data.root",
        "data.download",
        "data.train",  # the same data may live at another path on another machine
        *(f"monitor.{f.name}" for f in dataclasses.fields(MonitorConfig)),  # watching changes nothing trained
    }
)


# --- evaluation protocols (appendix B and C); the command line takes its defaults from these ---


@dataclass(frozen=True)
class EvalInputs:
    """What every evaluation reads: the weights with their random-init floor, test-time images, and data.

    Image size and normalisation left unset (0, empty) come from the checkpoint's pretraining values, else
    32 px with a small stem or 224 px, and ImageNet's normalisation.
    """

    checkpoint: str = ""  # run directory, checkpoint, exported backbone, or plain state_dict file
    arch: str = ""  # architecture of a plain state_dict ("": from the checkpoint or its .json sidecar)
    small_stem: bool | None = None  # None: from the checkpoint or sidecar, else False
    image_size: int | None = None  # None: the pretraining size, else 32 (small stem) or 224
    mean: tuple[float, ...] = ()  # (): the pretraining normalisation, else ImageNet's
    std: tuple[float, ...] = ()
    resize_ratio: float = 0.0  # test-time resize before the centre crop; 0: B.1's 256/224 above 64 px, else none
    train_data: tuple[str, ...] = ()  # labelled training data (the kNN bank, the probe's training set)
    test_data: tuple[str, ...] = ()  # labelled test data
    limit: int = 0  # use only the first N samples of each set (0: all)
    test_limit: int | None = None  # use only the first N test samples (None: as limit)
    data_root: str = DataConfig.root
    download: bool = DataConfig.download
    device: str = TrainConfig.device
    workers: int = DataConfig.workers
    seed: int = 0  # classifier initialisation, data order, drawn subsets; random-init floor of a plain state_dict
    random_init: bool = True  # also evaluate the randomly initialised backbone (the floor)
    baseline_weights: str = ""  # also evaluate this state_dict (same architecture), e.g. supervised weights
    out: str = ""  # JSON result file ("": eval/<protocol>.json in the run directory, or beside the weights)


@dataclass(frozen=True)
class LinearConfig:
    """Linear evaluation on frozen features (appendix B.1)."""

    # "augmented": the paper's B.1 protocol (crop + flip every batch through the frozen backbone); "fast": an
    # approximation (features once, no augmentation); "auto": augmented at ImageNet scale (224 px and up), else fast
    mode: str = "auto"
    epochs: int = 100  # B.1: 100 epochs
    lr: float = 0.3  # B.1: learning rate 0.3, cosine-annealed per epoch
    momentum: float = 0.9  # B.1: SGD with momentum (0.9 in the official evaluate.py)
    weight_decay: float = 1e-6  # B.1: weight decay 10^-6
    batch_size: int = 256  # B.1: batch size 256
    crop_scale: tuple[float, float] = (0.08, 1.0)  # B.1 "random crop": RandomResizedCrop's default (official code)
    feature_bn: bool = False  # batch-norm without affine before the linear layer (MAE's probe; not in the paper)


@dataclass(frozen=True)
class SemiConfig:
    """Semi-supervised fine-tuning of the whole network on 1% or 10% of the labels (appendix B.2)."""

    fraction: float = 0.01  # B.2 / Table 2: 1% (or 0.1) of the labels, drawn class-balanced when no list is given
    epochs: int = 20  # B.2: 20 epochs
    lr_backbone: float = 0.002  # B.2: learning rate 0.002 for the ResNet-50
    lr_classifier: float = 0.5  # B.2: 0.5 for the final classification layer
    milestones: tuple[int, ...] = (12, 16)  # B.2: both multiplied by 0.2 after the 12th and 16th epoch
    gamma: float = 0.2  # B.2: the factor at each milestone
    momentum: float = 0.9  # B.2: "SGD with momentum" (0.9 in the official evaluate.py)
    weight_decay: float = 0.0  # B.2: "do not use weight decay"
    batch_size: int = 256  # B.2: batch size 256
    crop_scale: tuple[float, float] = (0.08, 1.0)  # B.1's augmentation, which B.2 reuses


@dataclass(frozen=True)
class TransferConfig:
    """Transfer by linear classifiers on frozen features of another dataset (appendix C.1)."""

    classifiers: tuple[str, ...] = ("linear", "svm")  # SGD softmax classifier and/or per-class linear SVMs
    epochs: int = 14  # C.1: 14 epochs on Places-205 (84 on iNaturalist2018)
    lr: float = 0.01  # C.1: learning rate 0.01, divided by 10 at two equally spaced points
    drops: int = 2  # C.1: the number of divisions by 10
    gamma: float = 0.1  # C.1: the factor of each division
    momentum: float = 0.9  # C.1: SGD momentum 0.9
    weight_decay: float = 5e-4  # C.1: weight decay 5x10^-4
    batch_size: int = 256  # not in C.1; B.1's batch size
    feature_bn: bool = False  # as LinearConfig.feature_bn
    svm_costs: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # Goyal et al. 2019's grid, trimmed
    svm_folds: int = 3  # Goyal et al. 2019: 3-fold cross-validation of C


@dataclass(frozen=True)
class NeighboursConfig:
    """``barlowtwins neighbours``: query photos beside their nearest photos, and TensorBoard projector files."""

    queries: int = 8  # query photos drawn at random (with --seed) from --data when none is named
    k: int = 8  # neighbours shown per query, by cosine similarity of the frozen backbone features
    thumbnail: int = 96  # side of each photo in neighbours.png, px (centre square of the original photo)
    projector_points: int = 4096  # bank samples written for TensorBoard's projector (a seeded draw if more; 0: none)
    sprite_size: int = 48  # side of each projector thumbnail, px; the sprite (a square of them) must fit 8192 px
    batch_size: int = KnnConfig.batch_size  # images per forward pass while extracting features


@dataclass(frozen=True)
class AblateConfig:
    """``barlowtwins ablate``: the paper's §4 studies, each variant x seed its own pretraining run."""

    recipe: str = "cifar10-cpu"  # base recipe every variant starts from
    time_budget: str = "10m"  # training time of each run ("": the recipe's epochs)
    seeds: int = 3  # runs per variant; the report gives mean and std over them
    out: str = "runs/ablate"  # study directory: one run directory per variant and seed, the report
    batch_sizes: tuple[int, ...] = (64, 128, 256)  # batch-size study (Fig. 2): the paper went 128..4096
    lrs: tuple[float, ...] = (0.15, 0.3, 0.6)  # its LARS lr_weights grid per batch size (the paper grid-searched)
    widths: tuple[int, ...] = (128, 512, 2048, 8192, 16384)  # projector study (Fig. 4): output widths, gram loss
    linear_epochs: int = LinearConfig.epochs  # the fast linear probe on frozen features (B.1 recipe)


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


# --- detection and instance-segmentation transfer (paper Table 4, appendix C.2): ``barlowtwins detect`` ---
DETECT_MODELS = ("faster_rcnn", "mask_rcnn")
DETECT_VARIANTS = ("c4", "fpn")
DETECT_NORMS = ("sync", "frozen", "train")


@dataclass(frozen=True)
class DetectConfig:
    """Fine-tuning a detector on our backbone. Defaults: appendix C.2's VOC07+12 run (He et al. 2019's settings
    in detectron2); the ``coco`` and ``detect-cpu`` recipes (``recipes/detection/``) hold what differs."""

    data: tuple[str, ...] = ()  # --data: VOC tree(s) (several: VOC07+12) or a folder in COCO 2017's layout
    checkpoint: str = "random"  # --checkpoint: run directory, exported .pth / .safetensors, or "random" (baseline)
    arch: str = ""  # architecture of a plain state_dict or of "random" ("": from the checkpoint or sidecar)
    model: str = "faster_rcnn"  # "faster_rcnn" (Table 4, VOC) or "mask_rcnn" (Table 4, COCO)
    variant: str = "c4"  # "c4": stages 1-4 feature map, stage 5 + pooling as box head (Table 4); "fpn"
    norm: str = "sync"  # BN: "sync" (C.2: SyncBatchNorm; batch statistics on one process), "frozen", "train"
    classes: tuple[str, ...] = ()  # VOC class names in label order ((): those found in the training annotations)
    min_sizes: tuple[int, ...] = tuple(range(480, 801, 32))  # shorter side, drawn per image in training (MoCo VOC)
    max_size: int = 1333  # longer side cap (detectron2)
    test_size: int = 800  # shorter side at test time (detectron2)
    batch_size: int = 16  # C.2: batch size 16 (over 8 GPUs)
    steps: int = 24000  # C.2: 24k iterations on VOC07+12
    lr: float = 0.1  # C.2: initial learning rate 0.1 (VOC)
    milestones: tuple[int, ...] = (18000, 22000)  # C.2: lr x gamma after 18k and 22k iterations
    gamma: float = 0.1  # C.2: "reduced by a factor of 10"
    warmup_steps: int = 1000  # C.2: linear warm-up for 1000 iterations
    warmup_factor: float = 0.333  # C.2: warm-up "slope 0.333": the lr starts at this x lr (detectron2 WARMUP_FACTOR)
    momentum: float = 0.9  # detectron2's SGD momentum
    weight_decay: float = 1e-4  # detectron2's default weight decay
    box_batch_per_image: int = 512  # RoIs sampled per image for the box head (detectron2 default)
    detections_per_image: int = 100  # kept after NMS at test time (detectron2 and COCO's maxDets)
    score_threshold: float = 0.05  # detections below this score are dropped at test time (detectron2)
    time_budget: str = ""  # e.g. "20m": fit the steps to the budget, milestones scaled with them ("": the steps)
    out: str = "runs/detect"  # run directory: config, metrics, checkpoint, eval/
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", ...
    workers: int = 2  # DataLoader worker processes
    seed: int = 0  # data order, flips, resize draws and the detector's new layers; "random" backbone init
    limit: int = 0  # use only the first N training images (0: all); for smoke tests
    test_limit: int = 0  # use only the first N test images (0: all)
    log_every: int = 10  # steps between metrics.jsonl lines
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    pictures: int = 4  # test images drawn with their predictions in eval/predictions.png

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


# Detection fields that may differ when resuming: where and how the run executes, not what it computes.
DETECT_RESUMABLE = frozenset(
    {"data", "out", "device", "workers", "time_budget", "log_every", "checkpoint_every", "test_limit", "pictures"}
)
