"""Detection and instance-segmentation transfer (paper Table 4, appendix C.2): ``barlowtwins detect``."""
