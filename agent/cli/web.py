"""`synthehr serve`: the local web app (agent/web/app.py) over the same agent, sessions and workspace as the CLI."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: Optional[str] = typer.Option(
            None, "--host", help="Address to bind (default: server.host, 127.0.0.1). Anything but loopback needs an access token."
        ),
        port: Optional[int] = typer.Option(None, "--port", help="Port (default: server.port, 7860)."),
        token_env: Optional[str] = typer.Option(
            None, "--token-env", metavar="NAME",
            help="Environment variable holding the access token (default: server.token_env, SYNTHEHR_TOKEN). "
                 "When it is set, every request must carry the token (?token=, cookie, or Authorization: Bearer).",
        ),
    ) -> None:
        """Start the web chat page: conversation, agent steps, downloads, data cards, plots and provenance links.

        Example: synthehr serve  (then open http://127.0.0.1:7860/)
        """
        import os

        from synthehr.agent.cli.common import CTX
        from synthehr.agent.web.app import check_bind, serve as run_server
        from synthehr.configs.settings import load_settings

        settings = load_settings(CTX.config)
        host = host or settings.server.host
        port = port or settings.server.port
        token_env = token_env or settings.server.token_env
        token = os.environ.get(token_env) if token_env else None
        check_bind(host, token, token_env)  # refuse before printing anything
        shown = f"[{host}]" if ":" in host else host
        typer.echo(f"synthehr web app on http://{shown}:{port}/  (workspace {settings.workspace.path}; Ctrl+C to stop)")
        if token:
            typer.echo(f"access token required: open http://{shown}:{port}/?token=<value of ${token_env}>")
        if settings.server.index_on_start:
            typer.echo("knowledge index: brought up to date in the background (the page shows its state)")
        run_server(settings, host=host, port=port, token_env=token_env)
