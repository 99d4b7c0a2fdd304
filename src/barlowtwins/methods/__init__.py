"""Self-supervised methods by name. A builder takes ``(backbone, model config, loss config)`` and returns an
``nn.Module`` whose ``forward(y_a, y_b)`` returns a dict of named terms (``"loss"`` among them), with:

* ``logged``: the term names written to metrics.jsonl and TensorBoard, in order;
* ``no_weight_decay()``: parameter names kept out of weight decay and LARS adaptation;
* ``after_step(step, total_steps)``: called after each optimiser step (a momentum target network updates here).
* optionally ``expose_embeddings``: when the run's monitor sets it, ``forward`` also returns ``h_a`` (backbone
  features of view A) and ``z_a``, ``z_b`` (embeddings), detached, for the online probe and the pictures of C.
"""

from barlowtwins.methods import barlow_twins

METHODS = {"barlow_twins": barlow_twins.build}
