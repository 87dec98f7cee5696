"""How well does a backend write one grammar-constrained ReAct step? (load time, speed, memory, quality)

    python -m benchmarks.llm_backends                        # the embedded model, both runtimes
    python -m benchmarks.llm_backends --config my.yaml       # whatever llm: a config file names
    python -m benchmarks.llm_backends --runtime llamacpp --no-few-shot
    python -m benchmarks.llm_backends --paths llamacpp transformers openai-grammar openai-tools --repeats 2
        # step latency per path side by side (the README's backend table): writes llm_paths_latest.{json,md}

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




# ---- step latency per path, side by side (the README's backend table) --------------------------------------
PATHS = ("llamacpp", "transformers", "openai-grammar", "openai-tools")


def _start_server(model: Path, threads: int) -> tuple[Any, str]:
    """`python -m llama_cpp.server` as configs/presets/llamacpp-server.yaml says (--n_ctx 4096), on a free port."""
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "4096", "--n_threads", str(threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    for _ in range(300):
        try:
            with urllib.request.urlopen(base + "/models", timeout=2):
                return proc, base
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not start")


def run_paths(settings: Any, paths: list[str], repeats: int, threads: int, n_cases: int = len(CASES)) -> dict[str, Any]:
    """One agent step (the agent's system prompt, few-shot turns, the request; the step grammar) for each
    case, on each path in turn (interleaved, so every path sees the same machine load), `repeats` times.
    Medians per path; the first step (cold prompt) separately."""
    import statistics

    from synthehr.agent import prompts
    from synthehr.agent.grammar import build_step_grammar
    from synthehr.agent.llm.budget import compact_tools, native_request
    from synthehr.agent.llm.factory import create_backend, embedded_model_path
    from synthehr.agent.tooling import openai_tool_schemas
    from synthehr.configs.settings import LLMSettings

    registry = _registry()
    model = embedded_model_path()
    base_llm = settings.llm.model_copy(update={"n_threads": threads, "prompt_cache_dir": None, "n_ctx": 4096})
    server = None
    backends: dict[str, Any] = {}
    load_s: dict[str, float] = {}
    try:
        for p in paths:
            t0 = time.perf_counter()
            if p == "llamacpp":
                backends[p] = create_backend(base_llm.model_copy(update={"backend": "llamacpp", "model": str(model)}))
            elif p == "transformers":
                backends[p] = create_backend(base_llm.model_copy(update={"backend": "embedded", "runtime": "transformers"}))
            else:
                if server is None:
                    server = _start_server(model, threads)
                backends[p] = create_backend(LLMSettings(backend="openai", base_url=server[1], grammar_param="grammar",
                                                         n_ctx=4096, timeout_s=900))
                assert backends[p].supports_grammar
            load_s[p] = round(time.perf_counter() - t0, 2)
        system = {"role": "system", "content": prompts.system_prompt(registry, settings)}
        shots = prompts.few_shot_messages(registry)
        tools = compact_tools(openai_tool_schemas(registry))
        times: dict[str, list[float]] = {p: [] for p in paths}
        first: dict[str, float] = {}
        ok: dict[str, int] = {p: 0 for p in paths}
        prompt_tokens: dict[str, int] = {}
        cases = [CASES[i] for i in (0, 1, 5, 7, 2, 3, 4, 6)[:n_cases]]  # headline, copd, stats, decline first
        for rep in range(repeats):
            for case in cases:
                msgs = [system, *shots, {"role": "user", "content": prompts.user_message(
                    case["request"], CONTEXT if case.get("context") else "")}]
                # As in the agent with the router: a tool request must act (only that tool), a decline may only answer.
                grammar = (build_step_grammar(registry, tools=[case["tool"]], allow_final=False) if case["tool"]
                           else build_step_grammar(registry, allow_actions=False))
                for p in paths:
                    llm = backends[p]
                    t = time.perf_counter()
                    if p == "openai-tools" and case["tool"]:
                        sent, choice = native_request(tools, grammar)
                        reply = llm.generate_tool_call(msgs, sent, tool_choice=choice, max_tokens=160)
                        c = reply.tool_calls[0] if reply.tool_calls else None
                        text = (f"Thought: x\nAction: {c.name}\nAction Input: {c.raw_arguments}" if c
                                else f"Thought: x\nFinal Answer: {reply.content}")
                    else:
                        text = llm.generate(msgs, stop=list(prompts.STOP), max_tokens=160, grammar=grammar)
                    dt = time.perf_counter() - t
                    if p not in first:
                        first[p] = round(dt, 2)
                    else:
                        times[p].append(dt)
                    prompt_tokens[p] = max(prompt_tokens.get(p, 0), llm.last_usage.prompt_tokens)
                    ok[p] += score(case, text)["tool_ok"] if rep == 0 else 0
                    print(f"{p:<15} {case['id']:<11} {dt:6.2f}s {text[:80]!r}", flush=True)
    finally:
        if server is not None:
            server[0].terminate()
            server[0].wait(timeout=30)
    return {
        "threads": threads, "repeats": repeats, "cases": len(cases), "load_avg_after": os.getloadavg()[0],
        "paths": {p: {"load_s": load_s[p], "first_step_s": first.get(p),
                      "median_step_s": round(statistics.median(times[p]), 2) if times[p] else None,
                      "max_step_s": round(max(times[p]), 2) if times[p] else None,
                      "steps": len(times[p]), "right_tool": f"{ok[p]}/{len(cases)}",
                      "max_prompt_tokens": prompt_tokens.get(p)} for p in paths},
    }


def main_paths(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="step latency per LLM path, side by side")
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", type=int, default=len(CASES), help="the first N of headline, copd, stats, decline, ...")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "llm_paths_latest")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from synthehr.configs.settings import load_settings

    settings = load_settings(env={}, workspace_config=False)
    r = run_paths(settings, a.paths, a.repeats, a.threads, a.cases)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(r, indent=2))
    lines = [f"Step latency, SmolLM2-135M stand-in weights, {a.threads} threads, {a.repeats} x {r['cases']} steps per path "
             f"(interleaved), load average {r['load_avg_after']:.1f} at the end",
             "", "| path | load s | first step s (cold prompt) | median step s | slowest step s | right tool (run 1) |",
             "|---|---|---|---|---|---|"]
    for p, v in r["paths"].items():
        lines.append(f"| {p} | {v['load_s']} | {v['first_step_s']} | {v['median_step_s']} | {v['max_step_s']} | {v['right_tool']} |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    import sys

    if "--paths" in sys.argv or "--repeats" in sys.argv:
        main_paths(sys.argv[1:])
    else:
        main()
