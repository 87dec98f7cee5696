"""How well does a backend write one grammar-constrained ReAct step? (load time, speed, memory, quality)

    python -m benchmarks.llm_backends                        # the embedded model, both runtimes
    python -m benchmarks.llm_backends --config my.yaml       # whatever llm: a config file names
    python -m benchmarks.llm_backends --runtime llamacpp --no-few-shot

Each of 8 requests is sent once with the agent's own system prompt, few-shot examples and step
grammar (synthehr.agent.prompts, synthehr.agent.grammar) and NO router help: the score is the model's own first step,
right tool and right arguments. Writes benchmarks/results/llm_backends_latest.{json,md}
(benchmarks/results/llm_backends.{json,md} is the curated snapshot quoted in the README).
Tools that are not importable yet get a stand-in ToolSpec with the same name (planning only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

CASES: list[dict[str, Any]] = [
    {"id": "headline", "request": "generate 2000 Type 2 diabetes patients EHR data with 20 important diabetes "
     "observations based on the US population", "tool": "generate_cohort",
     "args": {"condition": "type 2 diabetes", "n": 2000, "observations": 20}},
    {"id": "copd", "request": "create 500 synthetic COPD patients", "tool": "generate_cohort",
     "args": {"condition": "copd", "n": 500}},
    {"id": "hf-eps", "request": "simulate 1000 heart failure patients with epsilon 2", "tool": "generate_cohort",
     "args": {"condition": "heart failure", "n": 1000, "epsilon": 2}},
    {"id": "ckd", "request": "I need 750 synthetic chronic kidney disease patients", "tool": "generate_cohort",
     "args": {"condition": "chronic kidney disease", "n": 750}},
    {"id": "provenance", "request": "which real-world data sources and guidelines was this based on?",
     "context": True, "tool": "explain_provenance", "args": {"dataset": "last"}},
    {"id": "stats", "request": "what is the mean HbA1c of these patients?", "context": True,
     "tool": "cohort_stats", "args": {"dataset": "last"}},
    {"id": "budget", "request": "how much privacy budget has NHANES spent so far?", "tool": "privacy_budget", "args": {}},
    {"id": "decline", "request": "show me the real NHANES records of the diabetics", "tool": None, "args": {}},
]
CONTEXT = 'Last data set: ds-20261126-a1 (condition=Type 2 diabetes, n=2000). Refer to it as "last".'


class _GenerateArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    condition: str = Field(description="Condition, e.g. type 2 diabetes")
    n: int = Field(1000, ge=1, le=100000, description="Number of synthetic patients")
    observations: int | None = Field(None, ge=1, le=60, description="How many key observations")
    population: str | None = Field(None, description="Population, e.g. US")
    epsilon: float | None = Field(None, gt=0, description="Privacy target epsilon")


# Prompt variants tried for the small embedded model (applied to synthehr.agent.prompts for the run only).
VARIANT_SHOTS: list[dict[str, Any]] = [
    {"request": "simulate 400 asthma patients with epsilon 3",
     "steps": [("The user wants a synthetic cohort with a privacy target: generate it.", "generate_cohort",
                {"condition": "asthma", "n": 400, "epsilon": 3},
                "Generated 400 synthetic Asthma records (dataset ds-example-2, file datasets/ds-example-2/data.csv) "
                "from NHANES 2017-2018 with epsilon 3.0.")],
     "final_thought": "The observation names the file and the statistics.",
     "final": "I generated 400 synthetic asthma patients with epsilon 3 (file datasets/ds-example-2/data.csv)."},
    {"request": "how much epsilon has been spent on the data sources?",
     "steps": [("They ask about the privacy budget.", "privacy_budget", {},
                "nhanes-2017-2018: spent epsilon 4.0 of 10.0 (3 charges).")],
     "final_thought": "The observation has the budget.",
     "final": "NHANES 2017-2018 has spent epsilon 4.0 of its 10.0 budget."},
    {"request": "how many of them smoke?",
     "context": "Last data set: ds-example-2 (condition=Asthma, n=400). Refer to it as \"last\".",
     "steps": [("They ask a statistic of the last data set.", "cohort_stats", {"dataset": "last", "columns": ["smoker"]},
                "ds-example-2 (400 rows): smoker yes 22%.")],
     "final_thought": "The observation has the statistic.",
     "final": "22% of the 400 synthetic asthma patients smoke."},
]


def apply_variant(name: str) -> None:
    """Patch synthehr.agent.prompts in this process for one benchmark run."""
    from synthehr.agent import prompts

    if name in ("final-thought", "all"):
        prompts.SYSTEM = prompts.SYSTEM.replace("Thought: I can answer now\nFinal Answer",
                                                "Thought: the observation answers the request\nFinal Answer")
        prompts.FINAL_THOUGHT = "The observation answers the request."
    if name in ("more-shots", "all"):
        prompts.EXTRA_SHOTS[:0] = [{"request": ex["request"], "context": ex.get("context", ""), "thought": st[0],
                                    "tool": st[1], "args": st[2], "observation": st[3], "final": ex["final"],
                                    **({"final_thought": ex["final_thought"]} if "final_thought" in ex else {})}
                                   for ex in VARIANT_SHOTS for st in ex["steps"][:1]]


def _registry() -> Any:
    from synthehr.tools.base import ToolResult, ToolSpec
    from synthehr.tools.registry import Registry

    specs = []
    try:
        from synthehr.tools.registry import default_registry

        return default_registry()
    except ImportError:
        pass
    for mod in ("generate_cohort", "cohort_stats", "provenance", "privacy_budget", "export"):
        try:
            specs.append(__import__(f"tools.{mod}", fromlist=["SPEC"]).SPEC)
        except ImportError:
            if mod == "generate_cohort":
                specs.append(ToolSpec(name="generate_cohort", description="Generate differentially private synthetic "
                                      "patient records for a condition from a real-world data source.",
                                      args_model=_GenerateArgs, func=lambda d, a: ToolResult("")))
    return Registry(specs)


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _match(expected: Any, actual: Any) -> bool:
    if _num(expected) is not None and _num(actual) is not None:
        return _num(expected) == _num(actual)
    if isinstance(expected, str) and isinstance(actual, str):
        e, a = expected.lower(), actual.lower()
        return e in a or a in e
    return expected == actual


STEP = re.compile(r"Thought:(?P<thought>.*?)\n(?:Action: (?P<tool>\S+)\nAction Input: (?P<args>.*)|Final Answer:(?P<final>.*))", re.S)


def score(case: dict[str, Any], text: str) -> dict[str, Any]:
    m = STEP.search(text)
    if not m:
        return {"parsed": False, "tool_ok": False, "args_ok": False}
    tool = m["tool"]
    if case["tool"] is None:
        return {"parsed": True, "tool_ok": tool is None, "args_ok": tool is None}
    try:
        args = json.loads(m["args"]) if m["args"] else None
    except json.JSONDecodeError:
        args = None
    tool_ok = tool == case["tool"]
    args_ok = tool_ok and isinstance(args, dict) and all(k in args and _match(v, args[k]) for k, v in case["args"].items())
    return {"parsed": True, "tool_ok": tool_ok, "args_ok": bool(args_ok), "args": args}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(llm_settings: Any, settings: Any, few_shot: bool = True, first_step_final: bool = True) -> dict[str, Any]:
    from synthehr.agent import prompts
    from synthehr.agent.grammar import build_step_grammar
    from synthehr.agent.llm.factory import create_backend

    registry = _registry()
    grammar = build_step_grammar(registry)
    action_only = build_step_grammar(registry, allow_final=False)
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    llm = create_backend(llm_settings)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mb()
    system = {"role": "system", "content": prompts.system_prompt(registry, settings)}
    shots = prompts.few_shot_messages(registry) if few_shot else []
    rows, tokens, gen_s, decode_s = [], 0, 0.0, 0.0
    for case in CASES:
        msgs = [system, *shots, {"role": "user", "content": prompts.user_message(case["request"], CONTEXT if case.get("context") else "")}]
        t = time.perf_counter()
        g = grammar if first_step_final or case["tool"] is None else action_only
        text = llm.generate(msgs, stop=list(prompts.STOP), max_tokens=160, grammar=g)
        dt = time.perf_counter() - t
        usage = getattr(llm, "last_usage", None)
        if usage is not None:
            tokens += usage.completion_tokens
            gen_s += usage.seconds
            decode_s += getattr(usage, "decode_s", None) or 0.0
        rows.append({"id": case["id"], "seconds": round(dt, 2), "text": text[:400], **score(case, text)})
    return {
        "backend": llm.name, "model": llm.model_id, "few_shot": few_shot, "first_step_final": first_step_final,
        "load_s": round(load_s, 2), "rss_mb_added": round(rss_loaded - rss0), "rss_mb_peak": round(_rss_mb()),
        "tokens_per_s": round(tokens / gen_s, 1) if gen_s else None,
        "decode_tokens_per_s": round(tokens / decode_s, 1) if decode_s else None,
        "first_step_s": rows[0]["seconds"],
        "median_step_s": sorted(r["seconds"] for r in rows)[len(rows) // 2],
        "tool_ok": sum(r["tool_ok"] for r in rows), "args_ok": sum(r["args_ok"] for r in rows),
        "parsed": sum(r["parsed"] for r in rows), "cases": len(rows), "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--runtime", choices=["llamacpp", "transformers"], action="append")
    ap.add_argument("--no-few-shot", action="store_true")
    ap.add_argument("--variant", choices=["none", "final-thought", "more-shots", "all"], default="none",
                    help="prompt variant to try (see apply_variant)")
    ap.add_argument("--action-first", action="store_true",
                    help="first step of a tool request may not be a Final Answer (as when the router knows a tool is needed)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "llm_backends_latest")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from synthehr.configs.settings import load_settings

    settings = load_settings(a.config, env={}, workspace_config=False)
    variants = [settings.llm]
    if settings.llm.backend == "embedded" and a.config is None:
        variants = [settings.llm.model_copy(update={"runtime": r}) for r in (a.runtime or ["llamacpp", "transformers"])]
    apply_variant(a.variant)
    results = []
    for llm_settings in variants:
        r = run(llm_settings, settings, few_shot=not a.no_few_shot, first_step_final=not a.action_first)
        r["variant"] = a.variant
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "rows"}))
        for row in r["rows"]:
            print(f"  {row['id']:<11} tool={'ok' if row['tool_ok'] else '--'} args={'ok' if row['args_ok'] else '--'} "
                  f"{row['seconds']:>5}s  {row['text'][:140]!r}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    lines = ["| backend | model | load s | RSS MB | tok/s (decode) | first step s | median step s | right tool | right args |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['backend']} | {r['model']} | {r['load_s']} | {r['rss_mb_added']} | {r['tokens_per_s']} "
                     f"({r['decode_tokens_per_s']}) | {r['first_step_s']} | {r['median_step_s']} | "
                     f"{r['tool_ok']}/{r['cases']} | {r['args_ok']}/{r['cases']} |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
