"""`synthehr tools list` and `synthehr tools run`: every tool the agent can call, built-in and from `synthehr.tools`
entry points, and a command for each made from its spec (synthehr.agent.cli.tool_run)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    tools_app = typer.Typer(help="The tools the agent can call (built-in and third-party plugins).", no_args_is_help=True)
    app.add_typer(tools_app, name="tools")
    from synthehr.agent.cli import tool_run

    tool_run.register(tools_app)

    @tools_app.command("list")
    def tools_list(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
        """List every registered tool with its arguments and where it came from."""
        from synthehr.agent.cli.common import print_json
        from synthehr.agent.plugins import registry_with_plugins
        from synthehr.agent.tooling import describe_args

        registry, plugins = registry_with_plugins()
        origin = {p.name: f"plugin {p.distribution} ({p.entry_point})" for p in plugins}
        rows = [{"name": s.name, "origin": origin.get(s.name, "built-in"),
                 "description": " ".join(s.description.split()),
                 "arguments": [a["name"] + ("*" if a["required"] else "") for a in describe_args(s.args_model)]}
                for s in registry]
        if as_json:
            print_json(rows)
            return
        for r in rows:
            typer.echo(f"{r['name']}  [{r['origin']}]  ({', '.join(r['arguments']) or 'no arguments'})")
            typer.echo(f"    {r['description'][:160]}")
