"""Barlow Twins self-supervised learning (Zbontar, Jing, Misra, LeCun, Deny, ICML 2021)."""

from barlowtwins.augment import TwoViews, eval_transform, two_views, view_transform
from barlowtwins.checkpoint import export_backbone, load_backbone
from barlowtwins.config import PretrainConfig, make_config
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.evaluate.knn import knn_accuracy, knn_predict
from barlowtwins.loss import BarlowTwinsLoss, LossTerms, barlow_twins_loss, barlow_twins_terms
from barlowtwins.model import BarlowTwins, build_backbone, build_projector
from barlowtwins.optim import LARS, build_optimizer, lr_factor, param_groups
from barlowtwins.train import pretrain

__all__ = [
    "LARS",
    "BarlowTwins",
    "BarlowTwinsError",
    "BarlowTwinsLoss",
    "LossTerms",
    "PretrainConfig",
    "TwoViews",
    "barlow_twins_loss",
    "barlow_twins_terms",
    "build_backbone",
    "build_optimizer",
    "build_projector",
    "eval_transform",
    "export_backbone",
    "knn_accuracy",
    "knn_predict",
    "load_backbone",
    "lr_factor",
    "make_config",
    "param_groups",
    "pretrain",
    "two_views",
    "view_transform",
]
