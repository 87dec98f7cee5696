import pytest
from pydantic import BaseModel

from synthehr.tools.base import ToolResult, ToolSpec
from synthehr.tools.registry import Registry


class A(BaseModel):
    x: int = 1


def _spec(name):
    return ToolSpec(name=name, description="d", args_model=A, func=lambda deps, a: ToolResult(text=str(a.x)))


def test_refuses_duplicate_names():
    r = Registry([_spec("a")])
    with pytest.raises(ValueError, match="already registered"):
        r.add(_spec("a"))


def test_unknown_tool_lists_valid():
    r = Registry([_spec("a"), _spec("b")])
    with pytest.raises(KeyError, match="a, b"):
        r.get("c")
    assert r.names == ["a", "b"] and "a" in r and len(r) == 2


def test_spec_validates_arguments():
    assert _spec("a").run(None, {"x": 3}).text == "3"
    with pytest.raises(Exception):
        _spec("a").run(None, {"x": "many"})
