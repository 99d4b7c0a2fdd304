"""How the two views of paper §2.2 are made, in one place (and the test-time view).

Every training batch comes from :func:`barlowtwins.views.batches.view_batches`, which picks one of three ways
from the data and the settings:

* ``per_sample``: the paper's pipeline as the official ``main.py`` runs it, PIL image by PIL image in loader
  workers (``data.views=pil``): crop, flip, jitter, grayscale, PIL's Gaussian blur, PIL's solarization;
* ``crops`` + ``cropped_batches`` + ``batched`` (the default for photos of any size): each view's crop drawn on the
  whole original image and cut with PIL's bicubic per sample in loader workers (``crops``), the batch collated
  there (``cropped_batches``), then the colour operations made a whole batch at a time (``batched``, whose
  operations are ``colour``);
* ``batched`` alone (images of one small shape, CIFAR): whole uint8 batches cropped (``roi_align``) and coloured
  on the training device.

``evaluation`` holds the deterministic test-time view (appendix B.1). Modules here may import
:mod:`barlowtwins.data`; nothing in ``data`` imports them.
"""

from barlowtwins.views.evaluation import CropNormalize, eval_resize, eval_transform
from barlowtwins.views.per_sample import TwoViews, two_views, view_transform

__all__ = ["CropNormalize", "TwoViews", "eval_resize", "eval_transform", "two_views", "view_transform"]
