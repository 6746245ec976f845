"""SentEval's seven transfer tasks: a classifier (logistic regression or MLP) fitted on the frozen sentence
vectors under SentEval's protocol for each task (inner k-fold, dev split, or k-fold then test)."""

from __future__ import annotations

from typing import Any

from sgcl_jax import transfer
from sgcl_jax.encoder import SentenceEncoder
from sgcl_jax.evaluators.base import Evaluator, Scores


class Transfer(Evaluator):
    """MR, CR, SUBJ, MPQA, SST2, TREC, MRPC (any subset)."""

    def run(self, encoder: SentenceEncoder) -> tuple[Scores, dict[str, str]]:
        """Every distinct sentence encoded once (cached by the weights' fingerprint), then each task's fits."""
        s = self.settings
        return transfer.evaluate_tasks(encoder, self.names, s.senteval_dir, s.classifier, s.kfold,
                                       s.classifier_seeds, s.batch_size, s.cache_dir)

    def protocol(self) -> dict[str, Any]:
        """Classifier, folds, seeds and SentEval's per-task protocol."""
        return transfer.transfer_protocol(self.settings.classifier, self.settings.kfold,
                                          self.settings.classifier_seeds)
