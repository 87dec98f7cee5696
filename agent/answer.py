"""The answer the user reads: written from the tools' typed results, and a verifier for a model's own wording.

`write_answer` turns the typed fields of each successful tool call (synthehr.tools.base.ToolResult:
summary, statements, figures, missing, privacy, sources, plots, files) into plain clinical language:
for a cohort, how many patients and which definition and guideline, the key figures, the requested
observations the source does not measure and why (as information, never as a failure), privacy in
one sentence and the files as workspace-relative paths; for a factual question, the retrieved
sentences with their citation numbers and the sources (or, when nothing was retrieved, that the
knowledge base has nothing). It writes nothing a result does not hold and no sentence twice.

`verify` checks an answer a capable model wrote against the same results: every number and data-set
id must come from a tool result (or the request), no sentence may repeat, no failure may be claimed
after a tool succeeded, no raw tool output may be quoted, and a provenance answer must cite. The loop
uses the model's answer only when `verify` finds nothing; otherwise the writer's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_answer", "verify", "choose_answer", "relative_path", "numbers_in", "repeated_sentences",
           "FAILURE_CLAIM", "DUMP"]

FAILURE_CLAIM = re.compile(
    r"\b(?:fail(?:ed|s)|failure to|could ?n[o']t|unable to|not (?:be )?(?:generated|created|available|possible|done)|"
    r"did ?n[o']t (?:work|succeed)|an error|went wrong|no data ?set (?:was|has been) (?:made|generated|created)|"
    r"can'?t help|cannot help|can not help)\b",
    re.I)
DUMP = re.compile(r"tool output|what the tools reported|Observation\s*:|Action Input|\{\s*\"[a-z_]+\"\s*:", re.I)
_NUMBER = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.-])-?\d+(?:\.\d+)?")
_DATASET_ID = re.compile(r"\b[a-z]+-\d{8}-\d{6}-[0-9a-f]{6}\b")


# ---- helpers -------------------------------------------------------------------------------------------
def relative_path(path: str, root: Path | str | None) -> str:
    """`path` relative to the workspace root where it lies inside it (the user never sees server paths)."""
    if root is None:
        return str(path)
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except (ValueError, OSError):
        return str(path)


def _fmt_number(v: float) -> str:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return "n/a"
    if float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:,.2f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:,.1f}"


def _fmt_figure(f: dict[str, Any]) -> str:
    value = _fmt_number(f["value"])
    unit = f.get("unit") or ""
    if value == "n/a":
        return f"{f['label']} not available"
    suffix = "%" if unit == "%" else (f" {unit}" if unit else "")
    text = f"{f['label']} {value}{suffix}"
    if f.get("reference") is not None:
        # "mean HbA1c 7.3% vs 7.4% in the source (DP estimate)": the source's figure as the tool reported it
        # (e.g. DP-released), never a statistic of real rows.
        text += f" vs {_fmt_number(f['reference'])}{suffix} in the {f.get('reference_label') or 'source'}"
    return text


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def _norm_sentence(s: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", s.lower()))


def repeated_sentences(text: str) -> list[str]:
    """Sentences (or long fragments) that occur more than once."""
    seen: dict[str, int] = {}
    for s in _sentences(text):
        key = _norm_sentence(s)
        if len(key.split()) >= 3:
            seen[key] = seen.get(key, 0) + 1
    out = [k for k, c in seen.items() if c > 1]
    words = re.findall(r"[a-z0-9]+", text.lower())
    grams: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - 5):
        g = tuple(words[i:i + 6])
        grams[g] = grams.get(g, 0) + 1
    out += [" ".join(g) for g, c in grams.items() if c >= 3]
    return out


def numbers_in(text: str) -> set[float]:
    out = set()
    for m in _NUMBER.finditer(text):
        try:
            out.add(round(float(m.group(0).replace(",", "")), 6))
        except ValueError:
            pass
    return out


def _flatten_numbers(value: Any, out: set[float]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if not (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
            out.add(round(float(value), 6))
            if abs(value) <= 1:
                out.add(round(float(value) * 100, 6))  # a share written as a percentage
    elif isinstance(value, str):
        out.update(numbers_in(value))
    elif isinstance(value, dict):
        for v in value.values():
            _flatten_numbers(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _flatten_numbers(v, out)


def _ok_steps(steps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in steps if s.get("tool") and s.get("ok")]


# ---- the writer ----------------------------------------------------------------------------------------------
def _missing_text(missing: list[dict[str, Any]]) -> str:
    by_reason: dict[str, list[str]] = {}
    for m in missing:
        by_reason.setdefault(m["reason"], []).append(m["item"])
    parts = []
    for reason, items in by_reason.items():
        shown = items[:10]
        more = " and further ones listed in the data card" if len(items) > 10 else ""
        listed = ", ".join(shown) + more
        if reason.endswith("does not measure it"):
            who = reason[: -len(" does not measure it")]
            parts.append(f"Not included because {who} does not measure them: {listed}.")
        else:
            parts.append(f"Not included ({reason}): {listed}.")
    return " ".join(parts)


def _result_paragraphs(step: dict[str, Any], root: Path | str | None, cite_offset: int) -> tuple[list[str], int]:
    """The paragraphs of one successful tool call, and how many citation numbers it used."""
    r = step.get("result") or {}
    paras: list[str] = []
    summary = (r.get("summary") or "").strip()
    sources = r.get("sources") or []
    quoted = [s for s in sources if s.get("quotes")]
    typed = any(r.get(k) for k in ("summary", "statements", "figures", "sources", "missing", "privacy"))
    head: list[str] = [summary] if summary else []
    head += [x for x in (r.get("statements") or []) if x]
    if not typed and step.get("observation"):
        # A tool without typed fields (e.g. a third-party LangChain tool): its short observation, once.
        head = [str(step["observation"])]
    if head:
        paras.append(" ".join(head))
    figures = [f for f in (r.get("figures") or []) if f.get("value") is not None]
    if figures:
        paras.append("Key figures: " + "; ".join(_fmt_figure(f) for f in figures) + ".")
    if r.get("missing"):
        paras.append(_missing_text(r["missing"]))
    if step.get("unmet"):
        paras.append("Not applied, because the data source does not record it: " + ", ".join(step["unmet"]) + ".")
    if r.get("privacy"):
        paras.append("Privacy: " + r["privacy"])
    used = 0
    if quoted:
        lines = []
        for s in quoted:
            n = (s.get("n") or 0) + cite_offset
            for q in s["quotes"][:2]:
                q = q.strip()
                if q and not q.endswith((".", "!", "?", "…")):
                    q += "."
                lines.append(f"- {q} [{n}]")
        paras.append("\n".join(dict.fromkeys(lines)))
        refs = []
        for s in quoted:
            n = (s.get("n") or 0) + cite_offset
            where = f" — {s['section']}" if s.get("section") else ""
            refs.append(f"[{n}] {s['title']}{where}" + (f" ({s['url']})" if s.get("url") else ""))
        paras.append("Sources:\n" + "\n".join(dict.fromkeys(refs)))
        used = max((s.get("n") or 0) for s in quoted)
    elif sources:
        paras.append("Based on: " + "; ".join(
            dict.fromkeys(s["title"] + (f" ({s['url']})" if s.get("url") else "") for s in sources)) + ".")
    plots = list(r.get("plots") or [])
    if plots:
        paras.append("Plots: " + ", ".join(relative_path(p, root) for p in plots))
    files = [f for f in (step.get("files") or []) if f not in plots]
    if files:
        paras.append("Files: " + ", ".join(relative_path(f, root) for f in files))
    return paras, used


def write_answer(steps: Sequence[dict[str, Any]], *, root: Path | str | None = None) -> str:
    """The answer from the typed results of the turn's tool calls (see the module docstring)."""
    ok = _ok_steps(steps)
    if not ok:
        errors = [s for s in steps if s.get("observation") and s.get("error") in ("tool", "arguments")]
        if errors:
            return "I could not complete the request: " + str(errors[-1]["observation"])
        return ""
    paras: list[str] = []
    offset = 0
    for step in ok:
        p, used = _result_paragraphs(step, root, offset)
        offset += used
        paras += p
    done_tools = {s["tool"] for s in ok}
    for s in steps:
        if s.get("tool") and not s.get("ok") and s.get("error") == "tool" and s["tool"] not in done_tools:
            paras.append(f"One further step ({s['tool']}) did not run: {s.get('observation', '')}")
    # No paragraph and no sentence twice.
    out: list[str] = []
    seen: set[str] = set()
    for para in paras:
        kept = []
        for line in para.split("\n"):
            key = _norm_sentence(line)
            if key and key in seen and not line.startswith(("[", "Sources")):
                continue
            seen.add(key)
            kept.append(line)
        if kept:
            out.append("\n".join(kept))
    return "\n\n".join(out)


# ---- the verifier -------------------------------------------------------------------------------------------
def evidence_numbers(steps: Sequence[dict[str, Any]], request: str = "", context: str = "") -> set[float]:
    have = numbers_in(request) | numbers_in(context)
    for s in steps:
        if not s.get("tool"):
            continue
        _flatten_numbers(s.get("args") or {}, have)
        _flatten_numbers(s.get("observation") or "", have)
        _flatten_numbers(s.get("data") or {}, have)
        _flatten_numbers(s.get("result") or {}, have)
    return have


def _written_numbers(text: str) -> list[tuple[float, int]]:
    """(value, decimals as written) of each number in `text`."""
    out = []
    for m in _NUMBER.finditer(text):
        raw = m.group(0).replace(",", "")
        try:
            out.append((float(raw), len(raw.split(".")[1]) if "." in raw else 0))
        except ValueError:
            pass
    return out


def _traceable(n: float, decimals: int, have: set[float]) -> bool:
    """A reported figure, or that figure rounded to the decimals written (7.14 -> 7.1 is fine; 6.6 -> 6.59,
    more precise than any tool said, is not)."""
    if n in have:
        return True
    tol = 0.5 * 10 ** -decimals + 1e-9
    return any(abs(n - h) <= tol for h in have)


def verify(answer: str, steps: Sequence[dict[str, Any]], *, request: str = "", context: str = "") -> list[str]:
    """What is wrong with `answer` given the turn's tool results (empty: nothing found)."""
    problems: list[str] = []
    text = answer.strip()
    if not text:
        return ["empty answer"]
    ok = _ok_steps(steps)
    have = evidence_numbers(steps, request, context)
    stray = sorted({n for n, d in _written_numbers(text) if not _traceable(n, d, have)})
    if stray:
        problems.append("numbers no tool reported: " + ", ".join(_fmt_number(n) for n in stray[:5]))
    evidence_text = json.dumps([{k: s.get(k) for k in ("args", "observation", "data", "result", "files")}
                                for s in steps], default=str) + " " + request + " " + context
    ids = [i for i in _DATASET_ID.findall(text) if i not in evidence_text]
    if ids:
        problems.append("identifiers no tool reported: " + ", ".join(ids[:3]))
    if ok and FAILURE_CLAIM.search(text):
        problems.append(f"claims a failure after a tool succeeded: {FAILURE_CLAIM.search(text).group(0)!r}")
    reps = repeated_sentences(text)
    if reps:
        problems.append(f"repeats itself: {reps[0][:60]!r}")
    if DUMP.search(text):
        problems.append("quotes raw tool output")
    cited = [s for s in ok if any(src.get("quotes") for src in (s.get("result") or {}).get("sources") or [])]
    if cited and not re.search(r"\[\d+\]", text):
        problems.append("answers a factual question without citations")
    return problems


def choose_answer(model_answer: str | None, steps: Sequence[dict[str, Any]], *, model_phrases: bool,
                  request: str = "", context: str = "", root: Path | str | None = None) -> tuple[str, list[str]]:
    """(the answer to show, the verifier's problems with the model's answer). The writer's answer unless the
    model may phrase answers and its answer passes `verify`; files and sources the model left out are added."""
    written = write_answer(steps, root=root)
    if not model_phrases or not model_answer or not _ok_steps(steps):
        return written, []
    problems = verify(model_answer, steps, request=request, context=context)
    if problems:
        return written, problems
    answer = model_answer.strip()
    extra = []
    files = [relative_path(f, root) for s in _ok_steps(steps) for f in (s.get("files") or [])]
    if files and not any(Path(f).name in answer for f in files):
        extra.append("Files: " + ", ".join(dict.fromkeys(files)))
    return answer + ("\n\n" + "\n".join(extra) if extra else ""), []

