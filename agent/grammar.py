"""GBNF grammar for one ReAct step, built from the tool registry.

The grammar admits exactly (after an optional leading space or newline, the whitespace a chat
format such as LLaMA-2's "[/INST] " puts before the reply):

    Thought: <one line>
    Action: <a registered tool name>
    Action Input: <a JSON object following that tool's args schema (keys and value types)>

or

    Thought: <one line>
    Final Answer: <text>

Tool names are alternatives, and each tool's Action Input is generated from its pydantic args
model's JSON schema (required keys first, optional keys in declaration order, enums as literal
alternatives, integers/numbers/booleans/strings/lists/nested objects typed). llama.cpp, xgrammar
(transformers) and vLLM all accept this GBNF dialect. A small model that cannot write free ReAct
reliably fills in a valid step under this grammar.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from synthehr.tools.registry import Registry

MAX_STRING = 80  # characters in one JSON string value
MAX_ITEMS = 6  # items in one JSON list (small models run on and on)

_COMMON = r'''
ws ::= [ ]?
string ::= "\"" char{0,%d} "\""
char ::= [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
integer ::= "-"? nat
nat ::= [0-9] | [1-9] [0-9]{1,11}
number ::= "-"? nat ( "." [0-9]{1,8} )? ( [eE] [-+]? [0-9]{1,3} )?
boolean ::= "true" | "false"
null ::= "null"
value ::= object | array | string | number | boolean | null
object ::= "{" ws ( string ws ":" ws value ( "," ws string ws ":" ws value ){0,7} )? ws "}"
array ::= "[" ws ( value ( "," ws value ){0,5} )? ws "]"
''' % MAX_STRING


class _Builder:
    def __init__(self) -> None:
        self.rules: dict[str, str] = {}

    def add(self, name: str, body: str) -> str:
        name = re.sub(r"[^a-zA-Z0-9-]", "-", name)
        base, i = name, 1
        while name in self.rules and self.rules[name] != body:
            i += 1
            name = f"{base}{i}"
        self.rules[name] = body
        return name

    # -- JSON schema -> rule ------------------------------------------------------------------
    def schema(self, name: str, schema: dict[str, Any], defs: dict[str, Any]) -> str:
        """Return a rule reference (a name or an inline expression) for `schema`."""
        ref = schema.get("$ref")
        if ref:
            target = ref.split("/")[-1]
            return self.schema(f"{name}", defs.get(target, {}), defs)
        if "const" in schema:
            return _literal(json.dumps(schema["const"]))
        if "enum" in schema:
            return self.add(f"{name}-enum", " | ".join(_literal(json.dumps(v)) for v in schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                subs = list(schema[key])
                # An optional field is left out rather than written as null; where a scalar form exists
                # (e.g. `int | list[str]`), small models do better with the scalar alone.
                non_null = [x for x in subs if x.get("type") != "null"] or subs
                scalar = [x for x in non_null if x.get("type") in ("string", "integer", "number", "boolean")
                          or "enum" in x or "const" in x]
                subs = scalar or non_null
                alts = [self.schema(f"{name}-{i}", s, defs) for i, s in enumerate(subs)]
                return self.add(f"{name}-alt", " | ".join(dict.fromkeys(alts)))
        if "allOf" in schema and len(schema["allOf"]) == 1:
            return self.schema(name, schema["allOf"][0], defs)
        t = schema.get("type")
        if isinstance(t, list):
            alts = [self.schema(f"{name}-{x}", {**schema, "type": x}, defs) for x in t]
            return self.add(f"{name}-alt", " | ".join(alts))
        if t == "string":
            return "string"
        if t == "integer":
            if (schema.get("minimum") is not None and schema["minimum"] >= 0) or (
                schema.get("exclusiveMinimum") is not None and schema["exclusiveMinimum"] >= -1
            ):
                return "nat"
            return "integer"
        if t == "number":
            return "number"
        if t == "boolean":
            return "boolean"
        if t == "null":
            return "null"
        if t == "array":
            item = self.schema(f"{name}-item", schema.get("items", {}), defs) if schema.get("items") else "value"
            hi = min(int(schema.get("maxItems", MAX_ITEMS)), MAX_ITEMS)
            return self.add(f"{name}-list", f'"[" ws ( {item} ( "," ws {item} ){{0,{max(hi - 1, 0)}}} )? ws "]"')
        if t == "object" or "properties" in schema:
            props = schema.get("properties")
            if not props:
                return "object"
            return self.obj(name, schema, defs)
        return "value"

    def obj(self, name: str, schema: dict[str, Any], defs: dict[str, Any]) -> str:
        props: dict[str, Any] = schema.get("properties", {})
        required = [k for k in props if k in set(schema.get("required", []))]
        optional = [k for k in props if k not in set(required)]
        kv: dict[str, str] = {}
        for key, sub in props.items():
            val = self.schema(f"{name}-{key}", sub, defs)
            kv[key] = self.add(f"{name}-{key}-kv", f'{_literal(json.dumps(key))} ws ":" ws {val}')

        def chain(keys: list[str]) -> str:
            # keys[0] present, then any subset of the rest in order
            first, rest = keys[0], keys[1:]
            if not rest:
                return kv[first]
            tail = self.add(f"{name}-{first}-rest", _opt_chain(rest))
            return f"{kv[first]} {tail}"

        def _opt_chain(keys: list[str]) -> str:
            first, rest = keys[0], keys[1:]
            body = f'( "," ws {kv[first]} )?'
            if rest:
                body += " " + self.add(f"{name}-{first}-more", _opt_chain(rest))
            return body

        parts = []
        if required:
            parts.append(' "," ws '.join(kv[k] for k in required))
        if optional:
            alts = " | ".join(chain(optional[i:]) for i in range(len(optional)))
            if required:
                parts.append(f'( "," ws ( {alts} ) )?')
            else:
                parts.append(f"( {alts} )?")
        inner = " ".join(parts)
        return self.add(f"{name}-obj", f'"{{" ws {inner} ws "}}"')


def _literal(text: str) -> str:
    """A GBNF string literal for `text` (escaping backslash and double quote)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def tool_args_rule(builder: _Builder, name: str, args_model: Any) -> str:
    schema = args_model.model_json_schema()
    defs = schema.get("$defs", {})
    ref = builder.schema(f"{name}-args", schema, defs)
    if ref in {"object", "value"}:
        return "object"
    return ref


def build_step_grammar(
    registry: "Registry",
    *,
    tools: list[str] | None = None,
    allow_final: bool = True,
    allow_actions: bool = True,
) -> str:
    """The GBNF grammar of one ReAct step over `registry` (optionally only the named `tools`)."""
    b = _Builder()
    branches = []
    names = [s.name for s in registry if tools is None or s.name in tools]
    if allow_actions and names:
        alts = []
        for spec in registry:
            if spec.name not in names:
                continue
            args = tool_args_rule(b, f"t-{spec.name}", spec.args_model)
            alts.append(b.add(f"call-{spec.name}", f'{_literal(spec.name)} "\\nAction Input: " {args}'))
        b.add("action", '"Action: " ( ' + " | ".join(alts) + " )")
        branches.append("action")
    if allow_final or not branches:
        b.add("final", '"Final Answer: " answer')
        branches.append("final")
    head = [
        f'root ::= lead "Thought: " thought "\\n" ( {" | ".join(branches)} )',
        # The whitespace a chat format puts before the reply: after LLaMA-2's "[/INST]" the natural next
        # token is " Thought" (SentencePiece "▁Thought"); forbidding it pushes the model off its course.
        r"lead ::= [ \n]?",
        r"thought ::= [^\n\x00]{1,200}",
        r"answer ::= [^\x00]+",
    ]
    body = [f"{k} ::= {v}" for k, v in b.rules.items()]
    return "\n".join(head + body) + _COMMON


_RULE = re.compile(r"^([a-zA-Z0-9-]+)\s*::=\s*(.*)$")


def check_gbnf(grammar: str) -> None:
    """Raise ValueError if `grammar` is not valid GBNF.

    Uses xgrammar's parser when installed (the same dialect as llama.cpp); otherwise checks that
    every referenced rule is defined and a `root` exists.
    """
    try:
        import xgrammar
    except ImportError:  # pragma: no cover - xgrammar is normally installed with transformers
        xgrammar = None
    if xgrammar is not None:
        try:
            xgrammar.Grammar.from_ebnf(grammar, root_rule_name="root")
        except Exception as exc:  # noqa: BLE001 - xgrammar raises RuntimeError on syntax errors
            raise ValueError(f"invalid GBNF grammar: {exc}") from exc
        return
    defined = set()
    bodies = []
    for line in grammar.splitlines():
        m = _RULE.match(line.strip())
        if m:
            defined.add(m.group(1))
            bodies.append(m.group(2))
    if "root" not in defined:
        raise ValueError("invalid GBNF grammar: no root rule")
    for body in bodies:
        stripped = re.sub(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]', " ", body)
        for ref in re.findall(r"[a-zA-Z][a-zA-Z0-9-]*", stripped):
            if ref not in defined:
                raise ValueError(f"invalid GBNF grammar: rule '{ref}' is not defined")


def grammar_accepts(grammar: str, text: str) -> bool:
    """Whether `grammar` accepts the whole of `text` (needs xgrammar; used by tests and debugging)."""
    import xgrammar
    from xgrammar.testing import _is_grammar_accept_string

    return bool(_is_grammar_accept_string(xgrammar.Grammar.from_ebnf(grammar, root_rule_name="root"), text))
