"""torchvision's Faster R-CNN / Mask R-CNN around our backbone (paper Table 4: both with the C4 variant).

Everything but the backbone is torchvision's: ``GeneralizedRCNNTransform`` (normalisation, the random
shorter-side resize of images, boxes and masks), the RPN, ``MultiScaleRoIAlign``, the heads and their losses.
C4 (detectron2's R50-C4): one feature map, anchors of 32-512 px at three aspect ratios, 14x14 RoIAlign, res5 +
pooling as the box head; the mask head of Mask R-CNN C4 is the same res5 (shared weights) and a 2x deconvolution
to 14x14 masks. FPN: torchvision's defaults for its ResNet-FPN models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from barlowtwins.config import IMAGENET_MEAN, IMAGENET_STD, DetectConfig
from barlowtwins.detection.backbone import C4Body, C4BoxHead, fpn_backbone, freeze_batchnorm, stage_channels

C4_ANCHOR_SIZES = ((32, 64, 128, 256, 512),)  # detectron2's R50-C4 anchors, one level at stride 16
ASPECT_RATIOS = ((0.5, 1.0, 2.0),)
C4_POOL = 14  # detectron2's C4 RoIAlign resolution; res5 (stride 2) makes it 7x7
MASK_HEAD_WIDTH = 256  # the deconvolution's channels (detectron2's and torchvision's)


class ResizeTransform(GeneralizedRCNNTransform):
    """torchvision's transform with a test-time shorter side of its own (detectron2's MIN_SIZE_TEST); training
    draws one of ``min_sizes`` per image (MIN_SIZE_TRAIN)."""

    def __init__(self, min_sizes: Sequence[int], max_size: int, test_size: int, mean, std):
        super().__init__(tuple(min_sizes), max_size, list(mean), list(std))
        self.train_sizes, self.test_size = tuple(min_sizes), test_size

    def resize(self, image, target=None):
        self.min_size = self.train_sizes if self.training else (self.test_size,)
        return super().resize(image, target)


def build_detector(
    resnet: nn.Module,
    num_classes: int,
    model: str = DetectConfig.model,
    variant: str = DetectConfig.variant,
    norm: str = DetectConfig.norm,
    min_sizes: Sequence[int] = DetectConfig.min_sizes,
    max_size: int = DetectConfig.max_size,
    test_size: int = DetectConfig.test_size,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    box_batch_per_image: int = DetectConfig.box_batch_per_image,
    detections_per_image: int = DetectConfig.detections_per_image,
    score_threshold: float = DetectConfig.score_threshold,
) -> nn.Module:
    """A Faster R-CNN (``model="faster_rcnn"``) or Mask R-CNN whose backbone is ``resnet`` (its own tensors).

    ``num_classes`` counts the object classes (background is added). ``norm="frozen"`` fixes every batch norm
    (statistics and affine); "sync" and "train" keep batch statistics (the caller converts to SyncBatchNorm
    under torchrun). ``mean``/``std``: the pretraining normalisation."""
    if norm == "frozen":
        freeze_batchnorm(resnet)
    kwargs = {
        "num_classes": num_classes + 1,
        "box_batch_size_per_image": box_batch_per_image,
        "box_detections_per_img": detections_per_image,
        "box_score_thresh": score_threshold,
    }
    if variant == "c4":
        c5 = stage_channels(resnet)[3]
        backbone, res5 = C4Body(resnet), resnet.layer4
        kwargs.pop("num_classes")  # given by the predictor
        kwargs.update(
            rpn_anchor_generator=AnchorGenerator(C4_ANCHOR_SIZES, ASPECT_RATIOS),
            box_roi_pool=MultiScaleRoIAlign(["0"], C4_POOL, sampling_ratio=0),
            box_head=C4BoxHead(res5),
            box_predictor=FastRCNNPredictor(c5, num_classes + 1),
        )
        if model == "mask_rcnn":
            kwargs.update(
                mask_roi_pool=MultiScaleRoIAlign(["0"], C4_POOL, sampling_ratio=0),
                mask_head=res5,
                mask_predictor=MaskRCNNPredictor(c5, MASK_HEAD_WIDTH, num_classes + 1),
            )
    else:
        backbone = fpn_backbone(resnet)
    detector = (MaskRCNN if model == "mask_rcnn" else FasterRCNN)(backbone, **kwargs)
    detector.transform = ResizeTransform(min_sizes, max_size, test_size, mean, std)
    return detector


def predictions_to_cpu(outputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().cpu() for k, v in output.items()} for output in outputs]
