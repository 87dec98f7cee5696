"""Evaluation of the agent's planning: does the configured LLM pick the right tools and arguments?

`synthehr eval agent --cases FILE.jsonl` runs every case through the real agent loop
(synthehr.agent.loop.run_turn) with the configured backend, but with a registry of recording stand-ins:
tools with the real names, descriptions, examples and args models whose functions only record
the call and return a short plausible observation. Nothing is trained, sampled or written
(the run uses a temporary workspace); the evaluation measures the LLM's planning — tool choice
and arguments after grounding — not the tools.

Case format (one JSON object per line):

    {"id": "headline", "request": "generate 2000 ...",
     "history": [{"user": "generate 500 copd patients", "tool": "generate_cohort",
                  "args": {"condition": "copd", "n": 500}}],          # optional earlier turns (replayed, no LLM)
     "expect_tools": ["generate_cohort"],                              # [] = no tool (decline / answer directly)
     "expect_args": {"generate_cohort": {"n": 2000, "condition": "type 2 diabetes"}},
     "expect_decline": false, "answer_contains": ["100,000"], "tags": ["generation"]}

Every registered tool also brings its own cases (`spec_cases`: its few-shot line with the expected
arguments, and its examples), added by `synthehr eval agent --spec-cases`.

Argument values compare by meaning: conditions through the condition profiles, strings
case-insensitively, numbers numerically, lists as sets, objects as subsets; "*" means "present".
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthehr.agent.grounding import field_role
from synthehr.tools.base import ToolResult, ToolSpec
from synthehr.tools.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from synthehr.configs.settings import Settings


@dataclass
class Case:
    id: str
    request: str
    history: list[dict[str, Any]] = field(default_factory=list)
    expect_tools: list[str] = field(default_factory=list)
    expect_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    expect_decline: bool = False
    answer_contains: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


@dataclass
class CaseResult:
    id: str
    request: str
    expected_tools: list[str]
    called_tools: list[str]
    tool_ok: bool
    args_ok: bool | None  # None: the case checks no arguments
    args_mismatch: list[str]
    declined: bool
    decline_ok: bool | None
    answer_ok: bool | None  # answer_contains (when the case lists strings)
    answer_score_ok: bool | None  # the answer checks below all pass (None: no tool ran and none was expected)
    answer_checks: dict[str, bool]
    parse_failures: int
    llm_calls: int
    latency_s: float
    answer: str
    calls: list[dict[str, Any]]
    error: str | None = None


def load_cases(path: Path | str) -> list[Case]:
    cases = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("//") or line.startswith("#"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{i}: not valid JSON ({exc})") from None
        data.setdefault("id", f"case-{i}")
        unknown = set(data) - set(Case.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}:{i}: unknown keys {sorted(unknown)}")
        cases.append(Case(**data))
    return cases


def spec_cases(registry: Registry) -> list[Case]:
    """The evaluation cases every tool's spec carries, so a new tool is evaluated without editing a cases file.

    A spec's few-shot line becomes a case with its expected arguments (a free-text question only has to be
    present); each of its `examples` becomes a tool-choice case. A tool that reads a data set gets the
    generation tool's own few-shot request as an earlier turn. These requests are shown to the model and the
    router, so they check that a tool is wired in (in-distribution), not how well the agent generalises:
    the held-out cases files measure that. Tagged "spec" and the tool's name (`--only spec`).
    """
    from synthehr.agent.grounding import model_roles

    def roles(spec: ToolSpec) -> dict[str, str]:
        return model_roles(spec.args_model)

    gen = next((s for s in registry if {"condition", "n"} <= set(roles(s).values())
                and isinstance((s.few_shot or {}).get("args"), dict)), None)
    history = ([{"user": gen.few_shot["request"], "tool": gen.name, "args": dict(gen.few_shot["args"]),
                 "answer": gen.few_shot.get("final") or "Done."}] if gen is not None and gen.few_shot else [])
    cases: list[Case] = []
    for spec in registry:
        r = roles(spec)
        reads_dataset = "dataset" in r.values() and spec is not gen
        before = history if reads_dataset else []
        fs = spec.few_shot or {}
        if isinstance(fs.get("request"), str) and isinstance(fs.get("args"), dict) and (before or not fs.get("context")):
            expected = {k: ("*" if r.get(k) == "question" else v) for k, v in fs["args"].items()}
            cases.append(Case(id=f"spec-{spec.name}-few-shot", request=fs["request"], history=list(before),
                              expect_tools=[spec.name], expect_args={spec.name: expected}, tags=["spec", spec.name]))
        for i, example in enumerate(dict.fromkeys(spec.examples), 1):
            cases.append(Case(id=f"spec-{spec.name}-{i}", request=example, history=list(before),
                              expect_tools=[spec.name], tags=["spec", spec.name]))
    return cases


# ---- recording stand-ins ----------------------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.counter = 0


STANDIN_DEFINITION = "Cohort definition (evaluation guideline): adults who meet the condition's rule."
STANDIN_MISSING = "Fasting plasma glucose"
STANDIN_PASSAGE = "The evaluation passage says the source is a national survey."
STANDIN_TITLE = "Evaluation knowledge document"


def _standin(spec: ToolSpec, recorder: Recorder) -> ToolSpec:
    """The tool with a recording function whose result is typed like the real tool's (so answers can be scored)."""
    from synthehr.agent.grounding import model_roles
    from synthehr.tools.base import Figure, Missing, SourceRef

    roles = {r: k for k, r in model_roles(spec.args_model).items()}
    generates = "condition" in roles and "n" in roles

    def func(deps: Any, args: Any) -> ToolResult:
        values = args.model_dump(exclude_unset=True, mode="json")
        recorder.calls.append({"tool": spec.name, "args": values})
        note = "(evaluation stand-in: nothing was trained or written)"
        if generates:
            recorder.counter += 1
            ds = f"ds-20000101-000000-{recorder.counter:06x}"
            n = values.get(roles["n"]) or deps.settings.generation.default_rows
            cond = values.get(roles["condition"]) or "the cohort"
            path = str(deps.workspace.datasets_dir / ds / "data.csv")
            deps.session.last_dataset = ds
            deps.session.last_cohort = {k: v for k, v in values.items()}
            return ToolResult(
                text=f"Generated {n} synthetic {cond} records as {ds} ({path}); mean age 61 years. "
                     f"Sources: NHANES 2017-2018 [1]; guideline ADA Standards of Care [2]. {note}",
                data={"dataset_id": ds, "n_rows": n}, files=[path],
                summary=f"I generated {n:,} synthetic patients with {cond} from NHANES 2017-2018.",
                statements=[STANDIN_DEFINITION], figures=[Figure("mean age", 61, "years")],
                missing=[Missing(STANDIN_MISSING, "NHANES 2017-2018 does not measure it")],
                privacy="The generator was trained with differential privacy (epsilon 1).",
                sources=[SourceRef("NHANES 2017-2018"), SourceRef("ADA Standards of Care")])
        if "question" in roles:
            return ToolResult(text=f"[1] {STANDIN_TITLE}: {STANDIN_PASSAGE} {note}", data={},
                              summary="From the knowledge base:",
                              sources=[SourceRef(STANDIN_TITLE, n=1, quotes=[STANDIN_PASSAGE])])
        if "dataset" in roles:
            return ToolResult(text=f"{deps.session.last_dataset or 'no data set'}: mean HbA1c 7.2 %. {note}", data={},
                              summary=f"Statistics of {deps.session.last_dataset or 'the data set'}.",
                              figures=[Figure("mean HbA1c", 7.2, "%")])
        return ToolResult(text=f"{spec.name} answered. {note}", data={}, summary=f"{spec.name} answered.")

    return ToolSpec(name=spec.name, description=spec.description, args_model=spec.args_model, func=func,
                    examples=spec.examples, router_examples=spec.router_examples, router_cues=spec.router_cues,
                    router_requires=spec.router_requires, few_shot=spec.few_shot)


def standin_registry(real: Registry, recorder: Recorder) -> Registry:
    """The real tools' names, descriptions, examples and args models, with recording functions."""
    return Registry([_standin(spec, recorder) for spec in real])


# ---- comparison ---------------------------------------------------------------------------------------
def _norm(s: Any) -> str:
    return " ".join(re.sub(r"[^0-9a-z.]+", " ", str(s).lower()).split())


def _condition_id(value: Any) -> str | None:
    try:
        from synthehr.agent.grounding import _profiles
        from synthehr.tools.store.profiles import resolve_condition

        return resolve_condition(str(value), _profiles() or None).id
    except Exception:  # noqa: BLE001
        return None


_FILTER_RULE = re.compile(r"^\s*(age|sex)\w*\s*(>=|<=|>|<|==|=)\s*(\S+)\s*$", re.I)


def lookup(args: dict[str, Any], key: str) -> Any:
    """The value of `key` in a call's arguments: by name, by role (n, n_observations, ...), or inside filters."""
    if key in args:
        return args[key]
    role = field_role(key) or key
    for k, v in args.items():
        if field_role(k) == role:
            return v
    for v in args.values():
        if isinstance(v, dict):
            found = lookup(v, key)
            if found is not None:
                return found
        if isinstance(v, list) and role in ("age_min", "age_max", "sex"):
            for item in v:
                if isinstance(item, str):
                    m = _FILTER_RULE.match(item)
                    if not m:
                        continue
                    col, op, val = m.group(1).lower(), m.group(2), m.group(3)
                    if role == "sex" and col == "sex":
                        return val
                    if role == "age_min" and col == "age" and op in (">=", ">"):
                        return float(val)
                    if role == "age_max" and col == "age" and op in ("<=", "<"):
                        return float(val)
                elif isinstance(item, dict) and str(item.get("column", "")).startswith(role.split("_")[0]):
                    if role == "sex" and item.get("equals") is not None:
                        return item["equals"]
                    if role == "age_min" and (item.get("min") is not None or item.get("above") is not None):
                        return item.get("min", item.get("above"))
                    if role == "age_max" and (item.get("max") is not None or item.get("below") is not None):
                        return item.get("max", item.get("below"))
    return None


def values_match(key: str, expected: Any, actual: Any) -> bool:
    if expected == "*":
        return actual is not None
    if isinstance(expected, str) and re.match(r"^(>=|<=|>|<)\s*-?\d", expected):
        try:
            a = float(actual)
        except (TypeError, ValueError):
            return False
        op, val = re.match(r"^(>=|<=|>|<)\s*(.*)$", expected).groups()
        v = float(val)
        return {">=": a >= v, "<=": a <= v, ">": a > v, "<": a < v}[op]
    if expected is None:
        return actual in (None, "", [], {})
    if field_role(key) == "condition":
        e, a = _condition_id(expected), _condition_id(actual)
        return e is not None and e == a
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected == actual
    if isinstance(expected, (int, float)):
        try:
            return abs(float(actual) - float(expected)) < 1e-9
        except (TypeError, ValueError):
            return False
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return False
        return all(values_match(k, v, actual.get(k)) for k, v in expected.items())
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return False
        return {_norm(x) for x in expected} <= {_norm(x) for x in actual}
    return _norm(expected) == _norm(actual)


_DECLINE_WORDS = re.compile(r"\b(?:can't|cannot|can not|won't|not able|unable|outside|decline|not allowed|only|"
                            r"at most|limit)\b", re.I)


# ---- running ----------------------------------------------------------------------------------------------
def run_case(case: Case, settings: "Settings", llm: Any, real: Registry, router: Any = "auto",
             workspace_root: Path | None = None) -> CaseResult:
    from synthehr.agent import session as session_mod
    from synthehr.agent.loop import run_turn
    from synthehr.tools.deps import build_deps

    recorder = Recorder()
    registry = standin_registry(real, recorder)
    deps = build_deps(settings=settings, session=re.sub(r"[^A-Za-z0-9_.-]", "-", f"eval-{case.id}"))
    session_mod.reset(deps)
    sess = session_mod.load(deps)
    for h in case.history:
        steps = []
        if h.get("tool"):
            spec = registry.get(h["tool"])
            args = spec.args_model.model_validate(h.get("args") or {}).model_dump(exclude_unset=True, mode="json")
            before = deps.session.to_dict()
            res = spec.run(deps, args)
            session_mod.update_state(deps.session, spec.name, args, res, before)
            steps.append({"tool": spec.name, "args": args, "observation": res.text, "files": res.files})
        sess.state = deps.session
        sess.add_turn(h.get("user", ""), steps, h.get("answer", "Done."), [], "2000-01-01T00:00:00+00:00")
    session_mod.save(deps, sess)
    recorder.calls.clear()

    started = time.perf_counter()
    error = None
    try:
        result = run_turn(deps, llm, case.request, registry=registry, router=router)
        answer, declined, parse_failures, llm_calls = result.answer, result.declined, result.parse_failures, result.llm_calls
    except Exception as exc:  # noqa: BLE001 - a crash is a failed case, reported, not the end of the run
        answer, declined, parse_failures, llm_calls = "", False, 0, 0
        error = f"{type(exc).__name__}: {exc}"
    latency = time.perf_counter() - started

    if error is None:
        # The arguments the agent passed (after grounding; unset defaults left out), of the calls that ran.
        executed = [{"tool": st["tool"], "args": st.get("args") or {}} for st in result.steps
                    if st.get("tool") and st.get("ok")]
        if len(executed) == len(recorder.calls):
            recorder.calls[:] = executed
    called = list(dict.fromkeys(c["tool"] for c in recorder.calls))
    tool_ok = called == list(case.expect_tools) and error is None
    mismatches: list[str] = []
    args_ok: bool | None = None
    if case.expect_args:
        args_ok = True
        for tool, expected in case.expect_args.items():
            call = next((c for c in recorder.calls if c["tool"] == tool), None)
            if call is None:
                args_ok = False
                mismatches.append(f"{tool}: not called")
                continue
            for key, value in expected.items():
                got = lookup(call["args"], key)
                if not values_match(key, value, got):
                    args_ok = False
                    mismatches.append(f"{tool}.{key}: expected {value!r}, got {got!r}")
    decline_ok = None
    if case.expect_decline:
        decline_ok = not recorder.calls and bool(_DECLINE_WORDS.search(answer))
    answer_ok = None
    if case.answer_contains:
        answer_ok = all(s.lower() in answer.lower() for s in case.answer_contains)
    checks = score_answer(answer, result.steps if error is None else [], case.request) if error is None else {}
    return CaseResult(
        id=case.id, request=case.request, expected_tools=list(case.expect_tools), called_tools=called,
        tool_ok=tool_ok, args_ok=args_ok, args_mismatch=mismatches, declined=declined, decline_ok=decline_ok,
        answer_ok=answer_ok, answer_score_ok=(all(checks.values()) if checks else None), answer_checks=checks,
        parse_failures=parse_failures, llm_calls=llm_calls, latency_s=round(latency, 3),
        answer=answer[:500], calls=recorder.calls, error=error,
    )


def score_answer(answer: str, steps: list[dict[str, Any]], request: str = "") -> dict[str, bool]:
    """The answer checks of one case (empty when no tool succeeded): numbers and ids traceable to the tool
    results, the facts each result requires (n, a file, the definition and the missing observations for a
    cohort; citations for retrieval; a figure for statistics), no failure claim after success, no repeats."""
    from synthehr.agent.answer import DUMP, FAILURE_CLAIM, numbers_in, repeated_sentences, verify

    ok = [s for s in steps if s.get("tool") and s.get("ok")]
    if not ok:
        return {}
    problems = verify(answer, steps, request=request)
    checks = {
        "traceable": not any(p.startswith(("numbers", "identifiers")) for p in problems),
        "no_failure_claim": not FAILURE_CLAIM.search(answer),
        "no_repeats": not repeated_sentences(answer),
        "no_dump": not DUMP.search(answer),
    }
    low = answer.lower()
    for s in ok:
        r = s.get("result") or {}
        data = s.get("data") or {}
        if isinstance(data.get("n_rows"), int):
            n = data["n_rows"]
            checks["n"] = checks.get("n", True) and (float(n) in numbers_in(answer))
            checks["file"] = checks.get("file", True) and any(Path(f).name in answer for f in s.get("files") or [])
            for st in r.get("statements") or []:
                if st.lower().startswith("cohort definition"):
                    checks["definition"] = st.lower()[:40] in low
            if r.get("missing"):
                checks["missing_observations"] = all(m["item"].lower() in low for m in r["missing"][:3])
        if any(src.get("quotes") for src in r.get("sources") or []):
            checks["citations"] = bool(re.search(r"\[\d+\]", answer)) and any(
                src["title"].lower() in low for src in r["sources"])
        if r.get("figures") and not isinstance(data.get("n_rows"), int):
            checks["figures"] = any(abs(f["value"] - x) < 0.051 for f in r["figures"] for x in numbers_in(answer))
    return checks


def summarize(results: list[CaseResult]) -> dict[str, Any]:
    n = len(results)
    with_args = [r for r in results if r.args_ok is not None]
    declines = [r for r in results if r.decline_ok is not None]
    answers = [r for r in results if r.answer_ok is not None]
    scored = [r for r in results if r.answer_score_ok is not None]
    lat = [r.latency_s for r in results]
    return {
        "cases": n,
        "tool_accuracy": round(sum(r.tool_ok for r in results) / n, 4) if n else None,
        "argument_accuracy": round(sum(bool(r.args_ok) for r in with_args) / len(with_args), 4) if with_args else None,
        "argument_cases": len(with_args),
        "decline_accuracy": round(sum(bool(r.decline_ok) for r in declines) / len(declines), 4) if declines else None,
        "answer_checks": round(sum(bool(r.answer_ok) for r in answers) / len(answers), 4) if answers else None,
        "answer_accuracy": round(sum(bool(r.answer_score_ok) for r in scored) / len(scored), 4) if scored else None,
        "answer_cases": len(scored),
        "parse_failures": sum(r.parse_failures for r in results),
        "cases_with_parse_failures": sum(1 for r in results if r.parse_failures),
        "errors": sum(1 for r in results if r.error),
        "median_latency_s": round(statistics.median(lat), 3) if lat else None,
        "llm_calls": sum(r.llm_calls for r in results),
    }


def run_eval(
    cases: list[Case],
    settings: "Settings",
    llm: Any,
    real: Registry,
    *,
    router: Any = "auto",
    on_case: Callable[[CaseResult], None] | None = None,
) -> dict[str, Any]:
    """Run `cases` in a temporary workspace; return {"summary": ..., "cases": [...], "backend": ...}."""
    with tempfile.TemporaryDirectory(prefix="synthehr-eval-") as tmp:
        s = settings.model_copy(deep=True)
        s.workspace.path = Path(tmp)
        results = []
        for case in cases:
            r = run_case(case, s, llm, real, router=router)
            results.append(r)
            if on_case is not None:
                on_case(r)
    return {
        "backend": {"name": getattr(llm, "name", "?"), "model_id": getattr(llm, "model_id", "?"),
                    "constrained": settings.llm.constrained, "router": router is not None},
        "summary": summarize(results),
        "cases": [asdict(r) for r in results],
    }
