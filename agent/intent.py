"""The intent model: which tool a request needs, robust to phrasings no example showed.

A scikit-learn classifier (TF-IDF over words and character n-grams, numbers folded to one token,
multinomial logistic regression) trained at first use on the programmatically generated and
paraphrased request set of synthehr.agent.intent_data plus every registered tool's ToolSpec
examples and router_examples, so a new tool is learnt from its own spec. Training is deterministic
and takes about a second; the model is cached per process and registry.

The loop asks it for a plan (one intent per clause of the request). A confident intent decides
which tool the step may call (the LLM still writes the step and its arguments are grounded);
an unconfident one leaves the decision to the embedding router and the LLM.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from synthehr.tools.registry import Registry

NONE = "none"
MIN_PROB = 0.5
SPEC_WEIGHT = 3  # each spec example counts as this many generated requests


@dataclass
class Intent:
    tool: str
    prob: float
    probs: dict[str, float] = field(default_factory=dict)
    text: str = ""

    @property
    def confident(self) -> bool:
        return self.prob >= MIN_PROB


def _prep(text: str) -> str:
    t = text.lower()
    t = re.sub(r"\d+(?:[.,]\d+)*\s*(?:k\b)?", " 0 ", t)
    return " ".join(t.split())


def training_set(registry: "Registry") -> list[tuple[str, str]]:
    """The generated requests of the registered tools (and "none"), plus each spec's own examples."""
    from synthehr.agent.intent_data import generate

    names = set(registry.names)
    rows = [(t, i) for t, i in generate() if i in names or i == NONE]
    for spec in registry:
        for ex in (*spec.examples, *getattr(spec, "router_examples", ())):
            rows += [(ex, spec.name)] * SPEC_WEIGHT
    return rows


class IntentModel:
    def __init__(self, registry: "Registry"):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, make_pipeline

        rows = training_set(registry)
        texts = [t for t, _ in rows]
        labels = [i for _, i in rows]
        features = FeatureUnion([
            ("words", TfidfVectorizer(preprocessor=_prep, ngram_range=(1, 2), sublinear_tf=True)),
            ("chars", TfidfVectorizer(preprocessor=_prep, analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True,
                                      min_df=2)),
        ])
        self.pipeline = make_pipeline(features, LogisticRegression(C=8.0, max_iter=3000))
        self.pipeline.fit(texts, labels)
        self.classes = [str(c) for c in self.pipeline.classes_]
        self.size = len(rows)

    def predict(self, text: str) -> Intent:
        probs = self.pipeline.predict_proba([text])[0]
        scores = {c: float(p) for c, p in zip(self.classes, probs)}
        best = max(scores, key=lambda c: scores[c])
        return Intent(best, scores[best], scores, text)

    def plan(self, text: str) -> list[Intent]:
        """The intents of a request in the order written: one per clause when clauses need different tools."""
        from synthehr.agent.router import split_clauses

        whole = self.predict(text)
        clauses = split_clauses(text)
        if len(clauses) < 2:
            return [whole]
        found: list[Intent] = []
        for clause in clauses:
            it = self.predict(clause)
            if it.confident and it.tool != NONE and all(f.tool != it.tool for f in found):
                found.append(it)
        return found if len(found) >= 2 else [whole]


_LOCK = threading.Lock()
_MODELS: dict[tuple[str, ...], IntentModel] = {}


def default_intent_model(registry: "Registry") -> IntentModel | None:
    """The intent model for `registry` (trained once per process); None where scikit-learn is missing."""
    key = tuple(f"{s.name}:{len(s.examples)}:{len(getattr(s, 'router_examples', ()))}" for s in registry)
    with _LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model
        try:
            model = IntentModel(registry)
        except ImportError:
            return None
        _MODELS[key] = model
        return model


def as_route(intent: Intent) -> Any:
    """The intent as the router's Route (what the loop's planning reads)."""
    from synthehr.agent.router import Route

    ranked = sorted(intent.probs.values(), reverse=True)
    margin = ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)
    return Route(intent.tool, intent.prob, margin, intent.confident, dict(intent.probs), intent.text)
