"""Detection scoring of an explanation: can a reader tell, from the explanation alone, which texts fire the feature?

The set is the feature's held-out activating contexts (never shown to the explainer; drawn across activation
quantiles) and its negatives (random and hard), shuffled with a seed per feature and cut into batches of
`batch_size` excerpts per scorer request. The truth of an excerpt is whether the feature fires in it (read from the
token table, not assumed from how it was drawn). From the scorer's 0/1 answers the project computes

    recall (TPR) = TP / (TP + FN)     specificity (TNR) = TN / (TN + FP)     precision = TP / (TP + FP)
    balanced accuracy = (TPR + TNR) / 2

Balanced accuracy is the score: 0.5 is chance whatever the positive/negative mix, 1.0 is perfect. A batch whose
answer cannot be read is left out (counted in `unanswered`); with no positives or no negatives answered the score
is None, never a made-up number.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from qscope_data.explain.contexts import Context, FeatureData


@dataclass(frozen=True)
class DetectionScore:
    balanced_accuracy: float | None
    precision: float | None
    recall: float | None
    specificity: float | None
    tp: int
    fp: int
    tn: int
    fn: int
    unanswered: int = 0  # excerpts whose batch got no readable answer

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def to_json(self) -> dict:
        return asdict(self)


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 6) if b else None


def detection_score(truth: list[bool], answers: list[bool | None]) -> DetectionScore:
    """Counts and rates from per-excerpt truth and the scorer's answers (None = not answered)."""
    if len(truth) != len(answers):
        raise ValueError("truth and answers differ in length")
    tp = sum(1 for t, a in zip(truth, answers) if a is not None and t and a)
    fn = sum(1 for t, a in zip(truth, answers) if a is not None and t and not a)
    fp = sum(1 for t, a in zip(truth, answers) if a is not None and not t and a)
    tn = sum(1 for t, a in zip(truth, answers) if a is not None and not t and not a)
    recall, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    balanced = round((recall + specificity) / 2, 6) if recall is not None and specificity is not None else None
    return DetectionScore(balanced, _ratio(tp, tp + fp), recall, specificity, tp, fp, tn, fn,
                          unanswered=sum(1 for a in answers if a is None))


def detection_set(data: FeatureData, seed: int) -> list[Context]:
    """Held-out activating contexts and negatives of one feature, shuffled (seeded by feature)."""
    items = data.of("heldout", "random_negative", "hard_negative")
    random.Random(f"{seed}:{data.feature}:detection").shuffle(items)
    return items


def batches(items: list[Context], size: int) -> list[list[Context]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
