"""The local web app (`synthehr serve`): a chat page over the same agent, sessions and workspace as the CLI.

Stack: FastAPI + uvicorn and one static page (agent/web_assets/: HTML, CSS, JS; no CDN, no fonts
or analytics fetched from anywhere). A turn is streamed to the page as newline-delimited JSON:

    {"type": "start", "session": ...}
    {"type": "step", "kind": "thought"|"action"|"observation"|"error", "tool", "args", "text", "files"}
    {"type": "progress", "task", "done", "total", "info"}        (a generator training, indexing ...)
    {"type": "answer", "text", "steps", "datasets", "plots", "citations", "files"}
    {"type": "error", "text"}
    {"type": "end"}

Security model:
- Binds to 127.0.0.1 by default. Binding elsewhere needs an access token (the environment variable
  named by server.token_env); without one the server refuses to start (`check_bind`).
- With a token every request must carry it: `Authorization: Bearer <token>`, the `synthehr_token`
  cookie, or `?token=` (which sets the cookie, then redirects to the same page without it).
- Without a token (loopback only) the Host header must be a loopback name (DNS-rebinding guard), and
  POSTs must be JSON (a cross-site form cannot send that without a CORS preflight, which is refused).
- Files are served only from the workspace's generated data sets (`<workspace>/datasets/`): paths are
  resolved (links and '..' included) and refused when they leave it (403) or do not exist (404).
  The workspace database and registered sources (which may hold real records) are never served.

Heavy imports (fastapi, the agent, the LLM) happen inside functions: importing this module is cheap.
"""

# (no `from __future__ import annotations`: FastAPI reads the route annotations, imported inside create_app)

import hmac
import ipaddress
import json
import logging
import mimetypes
import queue
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from synthehr.configs.settings import ConfigError, Settings

log = logging.getLogger("synthehr.web")

ASSETS_DIR = Path(__file__).with_name("assets")
TOKEN_COOKIE = "synthehr_token"
# Observation text shown per step on the page (the full text stays in the step's collapsible block).
MAX_OBSERVATION_CHARS = 2000
URL_RE = re.compile(r"https?://[^\s<>\"')\]]+")
SESSION_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# ---- binding and the access token ------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The host part of a Host header ('[::1]:7860' -> '::1', 'localhost:7860' -> 'localhost')."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:].split("]", 1)[0]
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def check_bind(host: str, token: str | None, token_env: str | None) -> None:
    """Refuse to serve on a non-loopback address without an access token (raises ConfigError)."""
    if is_loopback(host) or token:
        return
    if token_env:
        raise ConfigError(
            f"refusing to bind to {host} without an access token: set the environment variable {token_env} "
            f"(server.token_env) to a long random value, e.g. `export {token_env}=$(python -c 'import secrets; "
            f"print(secrets.token_urlsafe(32))')`, or bind to 127.0.0.1"
        )
    raise ConfigError(
        f"refusing to bind to {host} without an access token: server.token_env is null; set it (or --token-env) "
        "to the name of an environment variable holding the token, or bind to 127.0.0.1"
    )


def token_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time token comparison; with no expected token everything passes."""
    if not expected:
        return True
    if not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def request_token(headers: Any, cookies: Any, query: Any) -> str | None:
    """The token a request carries: Authorization bearer, then the cookie, then ?token=."""
    auth = headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return cookies.get(TOKEN_COOKIE) or query.get("token")


# ---- serving files safely ------------------------------------------------------------------------
class PathRefused(Exception):
    """A requested file path is outside what the server may serve (HTTP 403)."""


def safe_file(root: Path, relpath: str) -> Path:
    """Resolve `relpath` (a URL path, '/'-separated) inside `root`.

    Raises PathRefused (403) for absolute paths, '..', backslashes, NUL, hidden names (temporary files
    of atomic writes) or anything that resolves outside `root` (a symlink out included), and
    FileNotFoundError (404) when the file does not exist or is not a regular file.
    """
    if not relpath or "\x00" in relpath or "\\" in relpath:
        raise PathRefused("bad path")
    p = PurePosixPath(relpath)
    if p.is_absolute() or relpath.startswith("/"):
        raise PathRefused("absolute path")
    parts = p.parts
    if any(part in ("..", ".") for part in relpath.split("/")):
        raise PathRefused("'..' or '.' in path")
    if any(part.startswith(".") for part in parts):
        raise PathRefused("hidden file")
    root_resolved = Path(root).resolve()
    target = root_resolved.joinpath(*parts)
    resolved = target.resolve(strict=False)
    try:
        resolved.relative_to(root_resolved)
    except ValueError:
        raise PathRefused("outside the served folder") from None
    if not resolved.is_file():
        raise FileNotFoundError(relpath)
    return resolved


def file_url(workspace_root: Path, path: str | Path) -> str | None:
    """The page's URL for a workspace file (None when it is not under datasets/)."""
    try:
        rel = Path(path).resolve().relative_to(Path(workspace_root).resolve() / "datasets")
    except (ValueError, OSError):
        return None
    return "/files/" + "/".join(rel.parts)


# ---- progress from tools to the page -------------------------------------------------------------
class WebProgress:
    """synthehr.tools.base.Progress that forwards to the page (throttled to ~5 updates a second)."""

    def __init__(self, emit: Callable[[dict[str, Any]], None], min_interval: float = 0.2):
        self._emit = emit
        self._min = min_interval
        self._task: str | None = None
        self._total: int | None = None
        self._done = 0
        self._last = 0.0

    def start(self, task: str, total: int | None = None) -> None:
        self._task, self._total, self._done, self._last = task, total, 0, 0.0
        self._emit({"type": "progress", "task": task, "done": 0, "total": total, "info": {}, "state": "start"})

    def update(self, advance: int = 1, **info: Any) -> None:
        self._done += advance
        now = time.monotonic()
        if now - self._last < self._min and (self._total is None or self._done < self._total):
            return
        self._last = now
        clean = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in info.items() if isinstance(v, (int, float, str))}
        self._emit({"type": "progress", "task": self._task, "done": self._done, "total": self._total, "info": clean, "state": "run"})

    def finish(self) -> None:
        if self._task is not None:
            self._emit({"type": "progress", "task": self._task, "done": self._total or self._done, "total": self._total,
                        "info": {}, "state": "finish"})
        self._task = None


# ---- what a turn produced ------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return obj


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(_plain(obj), default=str))


def dataset_summary(row: dict[str, Any], workspace_root: Path) -> dict[str, Any]:
    """A data set for the page: key facts from its datasets-table row and card, and links to its files."""
    try:
        card = json.loads(row.get("card_json") or "{}")
    except ValueError:
        card = {}
    d = Path(row["dir"])
    if not d.is_absolute():
        d = Path(workspace_root) / d
    links: dict[str, str] = {}
    for key, name in (("csv", "data.csv"), ("parquet", "data.parquet"), ("card_md", "card.md"), ("card_json", "card.json")):
        if (d / name).is_file():
            url = file_url(workspace_root, d / name)
            if url:
                links[key] = url
    plots = []
    if (d / "plots").is_dir():
        for p in sorted((d / "plots").iterdir()):
            if p.suffix.lower() in (".png", ".svg") and not p.name.startswith("."):
                url = file_url(workspace_root, p)
                if url:
                    plots.append({"url": url, "name": p.stem.replace("_", " ")})
    source = card.get("source") or {}
    condition = card.get("condition") or {}
    model = card.get("model") or {}
    return {
        "id": row["id"],
        "source": row.get("source"),
        "source_title": source.get("title"),
        "source_url": source.get("url"),
        "condition": condition.get("name") or row.get("condition"),
        "n_rows": row.get("n_rows"),
        "epsilon": row.get("epsilon"),
        "delta": row.get("delta"),
        "accountant": model.get("accountant"),
        "target_epsilon": model.get("target_epsilon"),
        "n_columns": len(card.get("columns") or []),
        "columns": [c.get("label") or c.get("name") for c in (card.get("columns") or [])][:40],
        "missing_observations": card.get("missing_observations") or [],
        "guidelines": card.get("guidelines") or [],
        "created_at": row.get("created_at"),
        "session": row.get("session"),
        "links": links,
        "plots": plots,
    }


DATASET_FILES = {"data.csv", "data.parquet", "card.json", "card.md"}


def turn_artifacts(workspace: Any, steps: list[Any], answer: str, files: list[str]) -> dict[str, Any]:
    """What a turn produced, for the page: data sets written (card + downloads), plots, other files
    under datasets/ (exports), and citations (provenance passages' links, URLs in observations/answer)."""
    root = Path(workspace.root)
    ds_dir = (root / "datasets").resolve()
    all_files = [str(f) for f in files]
    ids: list[str] = []
    citations: list[dict[str, Any]] = []
    seen: set[str] = set()

    def cite(url: str | None, title: str | None = None) -> None:
        url = (url or "").rstrip(".,;:") or None
        if url is not None and not url.startswith(("http://", "https://")):
            url = None
        key = url or (title or "")
        if key and key not in seen:
            seen.add(key)
            citations.append({"url": url, "title": title or url})

    for step in steps:
        all_files += [str(f) for f in (_get(step, "files") or [])]
        data = _get(step, "data") or {}
        if isinstance(data, dict):
            if _get(step, "tool") == "generate_cohort" and isinstance(data.get("dataset_id"), str):
                ids.append(data["dataset_id"])
            for c in data.get("citations") or []:
                if isinstance(c, dict) and (c.get("url") or c.get("title")):
                    title = " — ".join(str(x) for x in (c.get("title"), c.get("section")) if x) or None
                    cite(c.get("url"), title)
                elif isinstance(c, str):
                    cite(c if c.startswith("http") else None, c)
        for url in URL_RE.findall(str(_get(step, "observation") or "")):
            cite(url)
    for url in URL_RE.findall(answer or ""):
        cite(url)
    plots: list[dict[str, str]] = []
    others: list[dict[str, str]] = []
    for f in dict.fromkeys(all_files):
        try:
            rel = Path(f).resolve().relative_to(ds_dir)
        except (ValueError, OSError):
            continue
        url = file_url(root, f)
        if not rel.parts or url is None:
            continue
        if rel.name in DATASET_FILES:
            ids.append(rel.parts[0])
        elif rel.suffix.lower() in (".png", ".svg"):
            plots.append({"url": url, "name": rel.stem.replace("_", " ")})
        else:
            others.append({"url": url, "name": rel.name, "dataset": rel.parts[0]})
    datasets = []
    for ds_id in dict.fromkeys(ids):
        row = workspace.get("datasets", "id", ds_id)
        if row is not None:
            datasets.append(dataset_summary(row, root))
    return {"datasets": datasets, "plots": plots, "downloads": others, "citations": citations}


_DATASET_PATH_RE = re.compile(r"(?<![\w\]\(/])((?:/[^\s,;()\[\]<>\"'`]*/)?datasets/([A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+))")


def link_files(text: str, workspace_root: Path) -> str:
    """Turn paths of served files in an answer (absolute, or 'datasets/<id>/<file>') into Markdown links
    to /files/... so the page shows clickable names instead of server paths. Other paths stay as written."""
    ds_dir = (Path(workspace_root) / "datasets").resolve()

    def repl(m: re.Match[str]) -> str:
        whole, rel = m.group(1), m.group(2)
        trail = ""
        while rel and rel[-1] in ".:":
            rel, whole, trail = rel[:-1], whole[:-1], rel[-1] + trail
        if whole.startswith("/") and not Path(whole).resolve().is_relative_to(ds_dir):
            return m.group(0)
        try:
            safe_file(ds_dir, rel)
        except (PathRefused, OSError):
            return m.group(0)
        return f"[{rel}](/files/{rel}){trail}"

    text = _DATASET_PATH_RE.sub(repl, text)
    # Other workspace paths are shown relative to the workspace (the page user needs no server paths).
    return text.replace(str(Path(workspace_root).resolve()) + "/", "")


def step_for_page(step: Any, workspace_root: Path | None = None) -> dict[str, Any]:
    obs = str(_get(step, "observation") or _get(step, "text") or "")
    if workspace_root is not None:
        obs = obs.replace(str(Path(workspace_root).resolve()) + "/", "")
    return {
        "tool": _get(step, "tool"),
        "args": _json_safe(_get(step, "args") or {}),
        "observation": obs[:MAX_OBSERVATION_CHARS] + ("…" if len(obs) > MAX_OBSERVATION_CHARS else ""),
        "files": [str(f) for f in (_get(step, "files") or [])],
    }


# ---- the app -------------------------------------------------------------------------------------
class WebState:
    """What the server shares across requests: settings, the LLM (built on first use), the index."""

    def __init__(
        self,
        settings: Settings,
        *,
        llm: Any = None,
        llm_factory: Callable[[Settings], Any] | None = None,
        registry: Any = None,
        run_turn: Callable[..., Any] | None = None,
        deps_factory: Callable[..., Any] | None = None,
    ):
        from synthehr.tools.store.workspace import Workspace

        self.settings = settings
        self.workspace = Workspace(settings.workspace.path)
        self._llm = llm
        self._llm_factory = llm_factory
        self.registry = registry
        self._run_turn = run_turn
        self._deps_factory = deps_factory
        self._index: Any = None
        # One turn at a time: local LLMs and the training engine are not re-entrant.
        self.turn_lock = threading.Lock()

    def llm(self) -> Any:
        if self._llm is None:
            if self._llm_factory is not None:
                self._llm = self._llm_factory(self.settings)
            else:
                from synthehr.agent.llm.factory import create_backend

                self._llm = create_backend(self.settings.llm)
        return self._llm

    def run_turn_fn(self) -> Callable[..., Any]:
        if self._run_turn is None:
            from synthehr.agent.loop import run_turn

            self._run_turn = run_turn
        return self._run_turn

    def _index_factory(self, deps: Any) -> Any:
        if self._index is None:
            from synthehr.tools.engines.knowledge_index import open_index

            self._index = open_index(deps)
        elif hasattr(self._index, "progress"):
            self._index.progress = deps.progress  # the index is shared across turns; progress is per turn
        return self._index

    def deps(self, session: str, progress: Any) -> Any:
        if self._deps_factory is not None:
            return self._deps_factory(session=session, progress=progress)
        from synthehr.tools.deps import build_deps

        d = build_deps(settings=self.settings, session=session, progress=progress)
        d.index_factory = self._index_factory
        return d


def create_app(
    settings: Settings,
    *,
    token: str | None = None,
    host: str = "127.0.0.1",
    llm: Any = None,
    llm_factory: Callable[[Settings], Any] | None = None,
    registry: Any = None,
    run_turn: Callable[..., Any] | None = None,
    deps_factory: Callable[..., Any] | None = None,
) -> Any:
    """Build the FastAPI app. `run_turn`, `llm`, `registry` and `deps_factory` are for tests."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse

    check_bind(host, token, settings.server.token_env)
    state = WebState(settings, llm=llm, llm_factory=llm_factory, registry=registry, run_turn=run_turn,
                     deps_factory=deps_factory)
    app = FastAPI(title="synthehr", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.web = state
    guard_host = not token  # loopback without a token: refuse foreign Host headers (DNS rebinding)

    @app.middleware("http")
    async def _security(request: Request, call_next: Callable[..., Any]) -> Any:
        if guard_host:
            if not is_loopback(host_name(request.headers.get("host") or "")):
                return JSONResponse({"error": "unknown host"}, status_code=403)
        if token:
            given = request_token(request.headers, request.cookies, request.query_params)
            if not token_matches(token, given):
                return JSONResponse({"error": "access token required"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            if request.query_params.get("token") and request.method == "GET":
                # Move the token from the address bar into an HttpOnly cookie.
                params = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                from urllib.parse import urlencode

                target = request.url.path + (("?" + urlencode(params)) if params else "")
                resp: Any = RedirectResponse(target, status_code=303)
                resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
                return resp
        if request.method == "POST" and not (request.headers.get("content-type") or "").startswith("application/json"):
            return JSONResponse({"error": "send JSON (Content-Type: application/json)"}, status_code=415)
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Content-Security-Policy", (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        ))
        return response

    def asset(name: str, media_type: str) -> Any:
        return FileResponse(ASSETS_DIR / name, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @app.get("/")
    def index() -> Any:
        return asset("index.html", "text/html; charset=utf-8")

    @app.get("/app.js")
    def app_js() -> Any:
        return asset("app.js", "text/javascript; charset=utf-8")

    @app.get("/app.css")
    def app_css() -> Any:
        return asset("app.css", "text/css; charset=utf-8")

    @app.get("/favicon.svg")
    def favicon() -> Any:
        return asset("favicon.svg", "image/svg+xml")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        from synthehr import __version__

        return {
            "version": __version__,
            "workspace": str(state.workspace.root),
            "llm": {"backend": settings.llm.backend, "model": settings.llm.model if settings.llm.backend != "fake" else "scripted"},
            "privacy": {"target_epsilon": settings.privacy.target_epsilon,
                        "source_budget_epsilon": settings.privacy.source_budget_epsilon},
        }

    @app.get("/api/datasets")
    def datasets(limit: int = 200) -> dict[str, Any]:
        rows = state.workspace.query("SELECT * FROM datasets ORDER BY created_at DESC, rowid DESC LIMIT ?",
                                     (max(1, min(limit, 1000)),))
        return {"datasets": [dataset_summary(r, state.workspace.root) for r in rows]}

    @app.get("/api/datasets/{dataset_id}")
    def dataset(dataset_id: str) -> Any:
        row = state.workspace.get("datasets", "id", dataset_id)
        if row is None:
            return JSONResponse({"error": f"no data set '{dataset_id}'"}, status_code=404)
        return dataset_summary(row, state.workspace.root)

    @app.get("/api/sessions")
    def sessions() -> dict[str, Any]:
        rows = state.workspace.query(
            "SELECT name, created_at, updated_at, history_json FROM sessions ORDER BY updated_at DESC LIMIT 100")
        out = []
        for r in rows:
            try:
                turns = json.loads(r["history_json"] or "[]")
            except ValueError:
                turns = []
            first = next((str(t.get("user")) for t in turns if isinstance(t, dict) and t.get("user")), "")
            out.append({"name": r["name"], "updated_at": r["updated_at"], "turns": len(turns),
                        "title": (first[:60] + ("…" if len(first) > 60 else "")) or r["name"]})
        return {"sessions": out}

    @app.post("/api/sessions")
    def new_session() -> dict[str, Any]:
        return {"name": f"web-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"}

    @app.get("/api/sessions/{name}")
    def session_history(name: str) -> Any:
        """The turns of a conversation (user text, steps, answer, artifacts) to show it again."""
        if not SESSION_NAME_RE.match(name):
            return JSONResponse({"error": "bad session name"}, status_code=400)
        _, history = state.workspace.load_session(name)
        turns = []
        for h in history:
            if not isinstance(h, dict):
                continue
            steps = [s for s in (h.get("steps") or []) if isinstance(s, dict)]
            answer = str(h.get("answer") or "")
            turns.append({"user": str(h.get("user") or ""), "answer": link_files(answer, state.workspace.root),
                          "steps": [step_for_page(s, state.workspace.root) for s in steps],
                          **turn_artifacts(state.workspace, steps, answer, [str(f) for f in h.get("files") or []])})
        return {"name": name, "turns": turns}

    @app.post("/api/chat")
    async def chat(request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "body must be JSON"}, status_code=400)
        text = str((body or {}).get("text") or "").strip()
        session = str((body or {}).get("session") or "default")
        if not text:
            return JSONResponse({"error": "empty message"}, status_code=400)
        if not SESSION_NAME_RE.match(session):
            return JSONResponse({"error": "bad session name (letters, digits, '-', '_', '.')"}, status_code=400)
        return StreamingResponse(_turn_stream(state, session, text), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/files/{path:path}")
    def files(path: str, download: int = 0) -> Any:
        try:
            target = safe_file(state.workspace.datasets_dir, path)
        except PathRefused:
            return JSONResponse({"error": "forbidden"}, status_code=403)
        except (FileNotFoundError, OSError):
            return JSONResponse({"error": "not found"}, status_code=404)
        media = {".csv": "text/csv; charset=utf-8", ".parquet": "application/vnd.apache.parquet",
                 ".md": "text/markdown; charset=utf-8", ".json": "application/json",
                 ".png": "image/png", ".svg": "image/svg+xml"}.get(target.suffix.lower())
        media = media or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        parts = Path(path).parts
        filename = f"{parts[0]}-{target.name}" if len(parts) > 1 else target.name
        attach = bool(download) or target.suffix.lower() in (".csv", ".parquet")
        headers = {"Cache-Control": "no-store"}
        if target.suffix.lower() == ".svg":
            headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
        return FileResponse(target, media_type=media, filename=filename if attach else None,
                            content_disposition_type="attachment" if attach else "inline", headers=headers)

    @app.exception_handler(404)
    async def _not_found(request: Request, exc: Exception) -> Any:
        return JSONResponse({"error": "not found"}, status_code=404)

    return app


_DONE = object()


def _user_error_types() -> tuple[type[BaseException], ...]:
    from synthehr.tools.base import ToolInputError
    from synthehr.tools.store.workspace import BudgetExceeded

    return (ToolInputError, ConfigError, BudgetExceeded)


def _turn_stream(state: WebState, session: str, text: str) -> Iterator[bytes]:
    """Run one agent turn in a worker thread and yield its events as NDJSON lines as they happen."""
    events: queue.Queue[Any] = queue.Queue()
    emit = events.put
    root_prefix = str(state.workspace.root) + "/"  # observations show workspace paths relative to it

    def on_event(ev: Any) -> None:
        kind = _get(ev, "kind")
        if kind == "answer":
            return  # the final answer is sent once, with the turn's artifacts
        emit({"type": "step", "kind": kind, "tool": _get(ev, "tool"), "args": _json_safe(_get(ev, "args")),
              "text": str(_get(ev, "text") or "").replace(root_prefix, "")[:MAX_OBSERVATION_CHARS],
              "files": [str(f) for f in (_get(ev, "files") or [])]})

    def worker() -> None:
        try:
            if not state.turn_lock.acquire(blocking=False):
                emit({"type": "status", "text": "Waiting for another request to finish…"})
                state.turn_lock.acquire()
            try:
                progress = WebProgress(emit)
                deps = state.deps(session, progress)
                if state._llm is None:
                    emit({"type": "status", "text": "Loading the language model…"})
                llm = state.llm()
                emit({"type": "status", "text": "Thinking…"})
                kwargs: dict[str, Any] = {"on_event": on_event}
                if state.registry is not None:
                    kwargs["registry"] = state.registry
                result = state.run_turn_fn()(deps, llm, text, **kwargs)
                answer = str(_get(result, "answer") or "")
                steps = list(_get(result, "steps") or [])
                files = [str(f) for f in (_get(result, "files") or [])]
                arts = turn_artifacts(deps.workspace, steps, answer, files)
                root = deps.workspace.root
                emit({"type": "answer", "text": link_files(answer, root), "files": files,
                      "steps": [step_for_page(s, root) for s in steps], **arts})
            finally:
                state.turn_lock.release()
        except _user_error_types() as exc:
            emit({"type": "error", "text": str(exc)})
        except Exception as exc:  # noqa: BLE001 - the one mapping (synthehr.errors.user_message)
            from synthehr.errors import user_message

            message = user_message(exc)
            if message is not None:
                emit({"type": "error", "text": message})
                return
            # a bug: log it on the server; the page gets no internals (no data rows)
            log.error("turn failed: %s\n%s", type(exc).__name__, traceback.format_exc())
            emit({"type": "error", "text": f"Something went wrong ({type(exc).__name__}); the server log has details."})
        finally:
            emit(_DONE)

    yield _line({"type": "start", "session": session})
    threading.Thread(target=worker, name=f"synthehr-turn-{session}", daemon=True).start()
    while True:
        try:
            ev = events.get(timeout=15)
        except queue.Empty:
            yield _line({"type": "ping"})  # keeps proxies and the page's stream alive during long training
            continue
        if ev is _DONE:
            break
        yield _line(ev)
    yield _line({"type": "end"})


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, default=str) + "\n").encode("utf-8")


def serve(settings: Settings, host: str, port: int, token_env: str | None) -> None:
    """Run the web app with uvicorn until interrupted (used by `synthehr serve`)."""
    import os

    token = os.environ.get(token_env) if token_env else None
    check_bind(host, token, token_env)
    app = create_app(settings, token=token or None, host=host)
    import uvicorn

    # access_log off: query strings may carry the token.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
