"""The end of a pretraining run: the kNN evaluation beside the random-init floor (eval/knn.json), and what a
re-run of a finished run does (nothing, unless asked to evaluate again)."""

from __future__ import annotations

import logging
from pathlib import Path

from barlowtwins import distributed
from barlowtwins.config import EvalInputs, PretrainConfig
from barlowtwins.evaluate import knn
from barlowtwins.models.backbones import CUSTOM
from barlowtwins.train.run_dir import RunDir

logger = logging.getLogger(__name__)


def evaluate_run(config: PretrainConfig, run_dir: Path) -> None:
    """kNN of the run's backbone beside its random-init floor on ``data.eval`` (eval/knn.json), if set."""
    if config.data.eval and config.model.arch == CUSTOM:
        logger.info("kNN skipped: a custom backbone cannot be rebuilt by name; use evaluate.knn.knn_eval from Python")
    elif config.data.eval:
        knn.run(eval_inputs(config, run_dir), config.knn)


def finished_run(config: PretrainConfig, run: RunDir, step: int, eval_only: bool) -> Path:
    """A re-run of a finished run changes nothing in it, unless ``eval_only``, or its evaluation is missing
    (interrupted after training): then the evaluation runs."""
    run.release()
    distributed.shutdown()
    results = run.path / "eval" / "knn.json"
    if not run.main:
        return run.path
    if eval_only:
        logger.info("evaluating the finished run %s (step %s) again; %s is rewritten", run.path, step, results)
    elif config.data.eval and config.model.arch != CUSTOM and not results.is_file():
        logger.info("%s is finished (step %s) but has no %s yet: evaluating it", run.path, step, results)
    else:
        logger.info(
            "%s is finished (step %s): nothing to do, nothing changed; --eval-only evaluates it again "
            "(overwriting its eval/knn.json), a larger --epochs trains it further",
            run.path,
            step,
        )
        return run.path
    evaluate_run(config, run.path)
    return run.path


def eval_inputs(config: PretrainConfig, run_dir: Path) -> EvalInputs:
    """What the evaluations read after pretraining: this run's checkpoint, its training data as the labelled
    bank, ``data.eval`` as the test set; image settings and the random-init floor come from the checkpoint."""
    data = config.data
    return EvalInputs(
        checkpoint=str(run_dir),
        train_data=data.train,
        test_data=data.eval,
        limit=data.limit,
        test_limit=data.eval_limit,
        data_root=data.root,
        download=data.download,
        device=config.train.device,
        workers=data.workers,
    )
