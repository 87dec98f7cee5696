"""The local web app (`synthehr serve`): a chat page over the same agent, sessions and workspace as the CLI.

Stack: FastAPI + uvicorn and one static page (agent/web/assets/: HTML, CSS, JS; no CDN, no fonts
or analytics fetched from anywhere). A turn is streamed to the page as newline-delimited JSON:

    {"type": "start", "session", "turn"}                      (turn: the id POST /api/turns/<turn>/cancel stops)
    {"type": "status", "text"}                                 ("Loading the language model…", "Training finished; …")
    {"type": "step", "kind": "thought"|"action"|"observation"|"error", "tool", "args", "text", "files"}
    {"type": "progress", "task", "label", "detail", "eta", "eta_s", "done", "total", "state"}
                          (label and detail in plain words, e.g. "pass over the records 4 of 10", "about 40 s left";
                           state start|run|finish|stopped; no training losses)
    {"type": "delta", "text", "provisional"?}                  (the answer as it is written: StepEvent answer_delta; a
                                                                capable model's unchecked wording (answer_draft) comes
                                                                with provisional: true)
    {"type": "answer_replace", "text", "kept"}                 (the checked answer replaces every delta so far: kept
                                                                says whether the model's wording passed the verifier;
                                                                an empty text withdraws a draft that was not final)
    {"type": "answer", "text", "steps", "datasets", "plots", "downloads", "citations", "files"}
    {"type": "cancelled", "text", "tool_started", "training_started"}   (Stop pressed, or the page went away)
    {"type": "error", "text"}
    {"type": "end"}

GET /api/sessions/<name> gives every turn again in the same shape (answer as `text`, steps with their
thoughts, cards, plots with alt text, sources): what the page showed is kept in <workspace>/web/<name>.jsonl.
The knowledge index is brought up to date in a background thread at server start (GET /api/status).
Request bodies over server.max_body_bytes (1 MB) get 413; a JSON body that is not an object gets 422.

Stopping: a turn ends at its next step or progress update (TurnCancelled). Nothing is charged before a tool
starts, so a page that goes away while the model thinks costs no budget; a training that already started
keeps its charge (train_generator charges the full target before it reads a record) and is discarded.

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
# What a long task is, in the clinician's words (progress task name -> label, unit of one step).
TASK_WORDS: dict[str, tuple[str, str]] = {
    "fitting the dp tables": ("Fitting the generator to the privately measured summaries of the real records", "step"),
    "training dp-gan": ("Learning the patterns of the real records under differential privacy", "pass over the records"),
    "indexing knowledge": ("Preparing the knowledge base (guidelines and data-source documents)", "passage"),
    "indexing lineage": ("Recording where this data set came from", "passage"),
}


# Both start after the source's privacy charge was made (the DP tables are measured before either).
TRAINING_TASKS = {"fitting the dp tables", "training dp-gan"}
# What happens after a long task, so the page does not sit on "done" with nothing said.
AFTER_TASK = {
    "training dp-gan": "Training finished; checking quality, then sampling the synthetic patients and writing the files…",
}


def task_words(task: str | None) -> tuple[str, str]:
    key = (task or "").strip().lower()
    if key in TASK_WORDS:
        return TASK_WORDS[key]
    return ((task or "Working").strip().capitalize(), "step")


def eta_words(seconds: float | None) -> str:
    """'about 40 s left', 'about 3 min left' (None: no estimate yet)."""
    if seconds is None:
        return ""
    if seconds < 5:
        return "almost done"
    if seconds < 90:
        return f"about {int(round(seconds / 5.0) * 5) or 5} s left"
    return f"about {int(round(seconds / 60.0))} min left"


class WebProgress:
    """synthehr.progress.Progress that forwards to the page (throttled to ~5 updates a second).

    The page gets the task in plain words, "step k of n" and a time estimate from the rate so far; training
    losses and other internals are not sent. Every update also checks whether the turn was stopped
    (`check` raises TurnCancelled), so a stopped turn ends inside a long training instead of after it.
    """

    def __init__(self, emit: Callable[[dict[str, Any]], None], min_interval: float = 0.2,
                 check: Callable[[], None] | None = None, control: "TurnControl | None" = None):
        self._emit = emit
        self._min = min_interval
        self._control = control
        self._check = check or (control.check if control is not None else (lambda: None))
        self._task: str | None = None
        self._total: int | None = None
        self._done = 0
        self._last = 0.0
        self._t0 = 0.0

    def check(self) -> None:
        self._check()

    def note(self, text: str) -> None:
        """A status line for the page (e.g. waiting for the knowledge base)."""
        self._emit({"type": "status", "text": text})

    def _event(self, state: str) -> dict[str, Any]:
        label, unit = task_words(self._task)
        eta = None
        if state == "run" and self._total and self._done > 0:
            eta = (time.monotonic() - self._t0) / self._done * max(0, self._total - self._done)
        if state == "finish":
            detail = "done"
        elif state == "stopped":
            detail = "stopped"
        elif self._total:
            detail = f"{unit} {min(self._done, self._total)} of {self._total}"
        else:
            detail = f"{self._done} {unit}s" if self._done else "starting…"
        return {"type": "progress", "task": self._task, "label": label, "done": self._done, "total": self._total,
                "detail": detail, "eta_s": None if eta is None else round(eta, 1), "eta": eta_words(eta),
                "state": state}

    def start(self, task: str, total: int | None = None) -> None:
        if self._control is not None and task.strip().lower() in TRAINING_TASKS:
            self._control.training_started = True  # before the check: the charge was made before training starts
        self._check()
        self._task, self._total, self._done, self._last, self._t0 = task, total, 0, 0.0, time.monotonic()
        self._emit(self._event("start"))

    def update(self, advance: int = 1, **info: Any) -> None:
        self._check()
        self._done += advance
        now = time.monotonic()
        if now - self._last < self._min and (self._total is None or self._done < self._total):
            return
        self._last = now
        self._emit(self._event("run"))

    def finish(self) -> None:
        if self._task is not None:
            if self._control is not None and self._control.cancelled.is_set():
                self._emit(self._event("stopped"))  # ended by Stop (or the page going away), not completed
            else:
                if self._total:
                    self._done = self._total
                self._emit(self._event("finish"))
                after = AFTER_TASK.get(self._task.strip().lower())
                if after:
                    self._emit({"type": "status", "text": after})
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
                    plots.append({"url": url, "name": plot_title(p.stem), "alt": plot_alt(p, None)})
    source = card.get("source") or {}
    condition = card.get("condition") or {}
    model = card.get("model") or {}
    cohort = card.get("cohort") or {}
    labels = {str(c.get("name")): str(c.get("label") or c.get("name")) for c in (card.get("columns") or [])
              if isinstance(c, dict) and c.get("name")}
    filters = [human_filter(str(f), labels) for f in (cohort.get("filters") or [])]
    # (the cohort's fixed values are the condition's own definition, already in the title: not repeated)
    shares = []
    for k, v in (cohort.get("proportions") or {}).items() if isinstance(cohort.get("proportions"), dict) else []:
        try:
            shares.append(f"{human_filter(str(k), labels)}: {100 * float(v):.0f} %")
        except (TypeError, ValueError):
            shares.append(f"{human_filter(str(k), labels)}: {v}")
    links["card_html"] = f"/datasets/{row['id']}/card"
    return {
        "id": row["id"],
        "filters": filters,
        "shares": shares,
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


_OPS = {">=": "≥", "<=": "≤", "!=": "≠", "==": "=", ">": ">", "<": "<", "=": "="}
_FILTER_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|!=|==|>|<|=)\s*(.+?)\s*$")


def human_filter(text: str, labels: dict[str, str]) -> str:
    """'age_years>=65' -> 'Age ≥ 65' (column names shown by their labels)."""
    m = _FILTER_RE.match(text)
    if not m:
        return text
    name, op, value = m.groups()
    return f"{labels.get(name, name.replace('_', ' '))} {_OPS[op]} {value}"


def plot_title(stem: str) -> str:
    """'hist_hba1c_pct' -> 'histogram: hba1c pct' (the caption under a figure)."""
    for prefix, word in (("hist_", "histogram"), ("bar_", "bar chart"), ("scatter_", "scatter plot"), ("grouped_", "by group")):
        if stem.startswith(prefix):
            return f"{word}: {stem[len(prefix):].replace('_', ' ')}"
    return stem.replace("_", " ")


DATASET_FILES = {"data.csv", "data.parquet", "card.json", "card.md"}
IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp")  # a declared plot the page can show


def turn_artifacts(workspace: Any, steps: list[Any], answer: str, files: list[str]) -> dict[str, Any]:
    """What a turn produced, for the page: data sets written (card + downloads), plots, other files
    under datasets/ (exports), and citations (provenance passages' links, URLs in observations/answer).

    Any tool's result renders from what it declares (ToolResult: `files`, `plots`, `sources`, kept in each
    step's `files` and `result`), so a new tool's files, plots and sources show without web code."""
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

    alts: dict[str, str] = {}
    declared_plots: set[str] = set()
    for step in steps:
        all_files += [str(f) for f in (_get(step, "files") or [])]
        data = _get(step, "data") or {}
        typed = _get(step, "result") or {}
        typed = typed if isinstance(typed, dict) else {}
        for f in typed.get("plots") or []:  # the plots the tool declared (files it wrote that are figures)
            declared_plots.add(str(f))
            all_files.append(str(f))
        for f in _get(step, "files") or []:
            if Path(str(f)).suffix.lower() in (".png", ".svg") or str(f) in declared_plots:
                alts[str(f)] = plot_alt(f, data if isinstance(data, dict) else None)
        if isinstance(data, dict):
            if _get(step, "tool") == "generate_cohort" and isinstance(data.get("dataset_id"), str):
                ids.append(data["dataset_id"])
            for c in data.get("citations") or []:
                if isinstance(c, dict) and (c.get("url") or c.get("title")):
                    title = " — ".join(str(x) for x in (c.get("title"), c.get("section")) if x) or None
                    cite(c.get("url"), title)
                elif isinstance(c, str):
                    cite(c if c.startswith("http") else None, c)
            if _get(step, "tool") == "explain_provenance" and isinstance(data.get("dataset_id"), str):
                # The data set explained was made from a source: name it (title and link, from its card).
                row = workspace.get("datasets", "id", data["dataset_id"])
                try:
                    src = (json.loads((row or {}).get("card_json") or "{}").get("source") or {})
                except ValueError:
                    src = {}
                if src.get("title") or src.get("url"):
                    cite(src.get("url"), f"{src.get('title') or src.get('name')} — the source data set {data['dataset_id']} "
                                         "was trained on")
        for src in typed.get("sources") or []:  # the documents the tool declared its result rests on
            if isinstance(src, dict) and (src.get("url") or src.get("title")):
                cite(src.get("url"), " — ".join(str(x) for x in (src.get("title"), src.get("section")) if x) or None)
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
        elif rel.suffix.lower() in (".png", ".svg") or (f in declared_plots and rel.suffix.lower() in IMAGE_SUFFIXES):
            plots.append({"url": url, "name": plot_title(rel.stem), "alt": alts.get(f) or plot_alt(f, None)})
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
        "thought": str(_get(step, "thought") or "") or None,
        "failed": _get(step, "ok") is False,
    }


# ---- plots: what a figure shows, in words (its alt text) ------------------------------------------
def _num(v: Any) -> str:
    if v is None:
        return "–"
    v = float(v)
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _col_label(name: str, info: dict[str, Any]) -> str:
    label = str(info.get("label") or name)
    unit = info.get("unit")
    return f"{label} ({unit})" if unit and unit not in label else label


def _describe_column(name: str, info: dict[str, Any]) -> str:
    if info.get("kind") == "numeric" or "mean" in info:
        if not info.get("n"):
            return f"no values of {_col_label(name, info)}"
        text = (f"{_col_label(name, info)} in {info.get('n'):,} synthetic patients: mean {_num(info.get('mean'))}"
                + (f", SD {_num(info.get('sd'))}" if info.get("sd") is not None else "")
                + f", median {_num(info.get('median'))} (IQR {_num(info.get('q1'))} to {_num(info.get('q3'))})"
                + f", range {_num(info.get('min'))} to {_num(info.get('max'))}")
    else:
        props = info.get("proportions") or {}
        if info.get("kind") == "binary" and not props:  # binary: the share of 1 (yes)
            props = {"yes": info.get("proportion_1")}
        shown = ", ".join(f"{k} {100 * float(v):.1f} %" for k, v in list(props.items())[:8] if v is not None)
        text = f"{_col_label(name, info)} in {info.get('n', 0):,} synthetic patients: {shown or 'no values'}"
    if info.get("missing"):
        text += f"; {info['missing']:,} missing"
    return text


def plot_alt(path: str | Path, data: dict[str, Any] | None) -> str:
    """The alt text of a cohort_stats figure: what it plots and the numbers it shows (from the tool's data)."""
    stem = Path(path).stem
    data = data if isinstance(data, dict) else {}
    cols: dict[str, Any] = data.get("columns") or {}
    ds = f" (synthetic data set {data['dataset_id']})" if data.get("dataset_id") else ""

    def find(fragment: str) -> tuple[str, dict[str, Any]] | None:
        for name, info in cols.items():
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))
            if fragment == safe or fragment == name:
                return name, info if isinstance(info, dict) else {}
        return None

    for prefix, what in (("hist_", "Histogram of "), ("bar_", "Bar chart of ")):
        if stem.startswith(prefix):
            hit = find(stem[len(prefix):])
            if hit:
                return what + _describe_column(*hit) + ds + "."
            return what + stem[len(prefix):].replace("_", " ") + ds + "."
    if stem.startswith("scatter_") and isinstance(data.get("correlation"), dict):
        c = data["correlation"]
        x, y = c.get("x"), c.get("y")
        lx = _col_label(x, cols.get(x) or {}) if x else "x"
        ly = _col_label(y, cols.get(y) or {}) if y else "y"
        parts = [f"{k} {_num(c[k])}" for k in ("pearson", "spearman", "n") if c.get(k) is not None]
        return f"Scatter plot of {ly} against {lx}" + (f": {', '.join(parts)}" if parts else "") + ds + "."
    if stem.startswith("grouped_"):
        m = re.match(r"grouped_(.+)_by_(.+)", stem)
        if m:
            hit = find(m.group(1))
            label = _col_label(*hit) if hit else m.group(1).replace("_", " ")
            groups = (data.get("groups") or {}).get("groups") or []
            text = f"{label} by {m.group(2).replace('_', ' ')}"
            rows = []
            for g in groups[:8]:
                if not isinstance(g, dict):
                    continue
                key = g.get("group")
                stat = ((g.get("stats") or {}).get(hit[0]) if hit else None) or {}
                if key is not None and stat.get("mean") is not None:
                    rows.append(f"{key if not isinstance(key, dict) else ', '.join(map(str, key.values()))}: mean "
                                f"{_num(stat['mean'])} (n {stat.get('n', '?')})")
            return text + (": " + "; ".join(rows) if rows else "") + ds + "."
    if stem == "correlation_heatmap":
        return f"Heatmap of Pearson correlations between {len(cols) or 'the'} observations{ds}."
    return stem.replace("_", " ") + ds + "."


# ---- the app -------------------------------------------------------------------------------------
class TurnCancelled(BaseException):
    """Raised inside a turn's worker (from its event or progress callbacks) when the turn was stopped or its
    page went away. A BaseException, like asyncio.CancelledError, so that no tool's `except Exception`
    turns it into an ordinary error and the agent carries on."""


class TurnControl:
    """One running turn: its id, session and the flag that stops it."""

    def __init__(self, session: str):
        self.id = uuid.uuid4().hex
        self.session = session
        self.cancelled = threading.Event()
        self.reason = ""
        self.tool_started = False  # a tool ran in this turn
        self.running_tool: str | None = None  # the tool running now (None between steps)
        self.training_started = False  # a generator training started in the running tool (its charge is made)

    def cancel(self, reason: str) -> None:
        if not self.cancelled.is_set():
            self.reason = reason
            self.cancelled.set()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise TurnCancelled(self.reason)


class IndexStatus:
    """The knowledge index's build at server start: state ('idle', 'building', 'ready', 'failed') and progress
    (a synthehr.progress.Progress by its methods)."""

    def __init__(self) -> None:
        self.state = "idle"
        self.done = 0
        self.total: int | None = None
        self.error: str | None = None
        self.embedded = 0
        self.finished = threading.Event()

    # the Progress interface (synthehr.progress.Progress)
    def start(self, task: str, total: int | None = None) -> None:
        self.done, self.total = 0, total

    def update(self, advance: int = 1, **info: Any) -> None:
        self.done += advance

    def finish(self) -> None:
        if self.total is not None:
            self.done = self.total

    def as_dict(self) -> dict[str, Any]:
        words = {"idle": "The knowledge base is prepared when first needed.",
                 "building": "Preparing the knowledge base (guidelines and data-source documents)…",
                 "ready": "Knowledge base ready.",
                 "failed": "The knowledge base could not be prepared; questions about sources will say so."}
        return {"state": self.state, "done": self.done, "total": self.total, "text": words[self.state],
                "error": self.error}


class WebState:
    """What the server shares across requests: settings, the LLM (built on first use), the index, running turns."""

    def __init__(
        self,
        settings: Settings,
        *,
        llm: Any = None,
        llm_factory: Callable[[Settings], Any] | None = None,
        registry: Any = None,
        run_turn: Callable[..., Any] | None = None,
        deps_factory: Callable[..., Any] | None = None,
        index_factory: Callable[[Any], Any] | None = None,
    ):
        from synthehr.tools.store.workspace import Workspace

        self.settings = settings
        self.workspace = Workspace(settings.workspace.path)
        self._llm = llm
        self._llm_factory = llm_factory
        self.registry = registry
        self._run_turn = run_turn
        self._deps_factory = deps_factory
        self._open_index = index_factory
        self._index: Any = None
        self._index_lock = threading.Lock()
        self.index_status = IndexStatus()
        self._index_thread: threading.Thread | None = None
        # One turn at a time: local LLMs and the training engine are not re-entrant.
        self.turn_lock = threading.Lock()
        self.turns: dict[str, TurnControl] = {}
        self._turns_lock = threading.Lock()
        self._records_lock = threading.Lock()

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

    # -- the knowledge index: built once, in the background at start, shared by every turn ----------------
    def _open(self, deps: Any) -> Any:
        if self._open_index is not None:
            return self._open_index(deps)
        from synthehr.tools.engines.knowledge_index import open_index

        return open_index(deps)

    def build_index(self) -> None:
        """Open the index and bring its documents up to date (run in a background thread at server start)."""
        st = self.index_status
        st.state = "building"
        try:
            from synthehr.tools.deps import build_deps

            deps = build_deps(settings=self.settings, session="default")
            with self._index_lock:
                if self._index is None:
                    self._index = self._open(deps)
                index = self._index
            stats = index.build(st)
            st.embedded = int(getattr(stats, "embedded", 0) or 0)
            st.state = "ready"
        except Exception as exc:  # noqa: BLE001 - reported on the page; provenance questions will say so
            log.error("building the knowledge index failed: %s\n%s", type(exc).__name__, traceback.format_exc())
            st.state, st.error = "failed", type(exc).__name__
        finally:
            st.finished.set()

    def start_index(self) -> None:
        if self._index_thread is None:
            self._index_thread = threading.Thread(target=self.build_index, name="synthehr-index", daemon=True)
            self._index_thread.start()

    def _index_factory(self, deps: Any) -> Any:
        if self._index_thread is not None and not self.index_status.finished.is_set():
            note = getattr(deps.progress, "note", None)
            check = getattr(deps.progress, "check", None)
            if note is not None:
                note("Waiting for the knowledge base to finish preparing…")
            while not self.index_status.finished.wait(0.5):
                if check is not None:
                    check()
        with self._index_lock:
            if self._index is None:
                self._index = self._open(deps)
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

    # -- running turns ------------------------------------------------------------------------------------
    def new_turn(self, session: str) -> TurnControl:
        ctl = TurnControl(session)
        with self._turns_lock:
            self.turns[ctl.id] = ctl
        return ctl

    def end_turn(self, ctl: TurnControl) -> None:
        with self._turns_lock:
            self.turns.pop(ctl.id, None)

    # -- what the page showed for each turn (steps with thoughts, plots with alt text, sources) ------------
    def records_path(self, session: str) -> Path:
        return Path(self.workspace.root) / "web" / f"{session}.jsonl"

    def save_record(self, session: str, record: dict[str, Any]) -> None:
        path = self.records_path(session)
        with self._records_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, default=str) + "\n")

    def load_records(self, session: str) -> list[dict[str, Any]]:
        path = self.records_path(session)
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn last line (the server stopped mid-write)
            if isinstance(rec, dict):
                out.append(rec)
        return out


def _record_key(user: str, answer: str) -> str:
    return json.dumps([str(user).strip(), str(answer).strip()])


# ---- the data card as a page ----------------------------------------------------------------------
def card_page(row: dict[str, Any], workspace_root: Path) -> str:
    """The data card (card.md) as an HTML page: Markdown rendered with raw HTML disabled (everything in it is
    escaped), server paths shown relative to the workspace, links to the downloads."""
    import html

    from markdown_it import MarkdownIt

    d = Path(row["dir"])
    if not d.is_absolute():
        d = Path(workspace_root) / d
    try:
        text = (d / "card.md").read_text(encoding="utf-8")
    except OSError:
        text = f"# Data card: {row['id']}\n\nThe card file is missing; the workspace database still lists this data set."
    root = str(Path(workspace_root).resolve())
    text = text.replace(root + "/", "").replace(root, ".")
    md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
    body = md.render(text)
    body = URL_IN_HTML_RE.sub(lambda m: f'<a href="{m.group(0)}" rel="noopener noreferrer" target="_blank">{m.group(0)}</a>',
                              body)
    summary = dataset_summary(row, workspace_root)
    links = " ".join(
        f'<a class="btn small" href="{html.escape(url)}"{" download" if key in ("csv", "parquet") else ""}>{html.escape(label)}</a>'
        for key, label in (("csv", "Download CSV"), ("parquet", "Download Parquet"), ("card_md", "card.md"),
                           ("card_json", "card.json"))
        if (url := summary["links"].get(key)))
    title = html.escape(f"Data card · {row['id']}")
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{title}</title><link rel=\"stylesheet\" href=\"/app.css\"></head>"
        f"<body class=\"card-page\"><main class=\"card-doc\"><nav class=\"card-nav\"><a href=\"/\">← Back to the chat</a> {links}</nav>"
        f"<article>{body}</article></main></body></html>\n"
    )


# Plain URLs in rendered (already escaped) HTML text, not inside an attribute.
URL_IN_HTML_RE = re.compile(r"(?<![\"'=>])https?://[^\s<>\"']+[^\s<>\"'.,;:)]")


# ---- request bodies --------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413, whether announced (Content-Length)
    or streamed (counted as it arrives, so a chunked body is never read into memory past the limit)."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers") or []:
            if k == b"content-length":
                try:
                    too_big = int(v) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await self._refuse(send)
                    return
        seen = 0
        exceeded = False
        refused = False

        async def counted() -> Any:
            # Past the limit the body ends there (nothing more is read); the app's response is replaced by a 413.
            nonlocal seen, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg.get("type") == "http.request":
                seen += len(msg.get("body") or b"")
                if seen > self.limit:
                    exceeded = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return msg

        async def guarded_send(msg: Any) -> None:
            nonlocal refused
            if exceeded:
                if not refused:
                    refused = True
                    await self._refuse(send)
                return
            await send(msg)

        await self.app(scope, counted, guarded_send)
        if exceeded and not refused:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"error": f"request body too large (limit {self.limit} bytes; server.max_body_bytes)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


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
    index_factory: Callable[[Any], Any] | None = None,
    index_on_start: bool | None = None,
) -> Any:
    """Build the FastAPI app. `run_turn`, `llm`, `registry`, `deps_factory` and `index_factory` are for tests.

    With `index_on_start` (default: settings.server.index_on_start) the knowledge index is built in a
    background thread when the server starts (its state at GET /api/status), never inside a question.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse

    check_bind(host, token, settings.server.token_env)
    state = WebState(settings, llm=llm, llm_factory=llm_factory, registry=registry, run_turn=run_turn,
                     deps_factory=deps_factory, index_factory=index_factory)
    build_index = settings.server.index_on_start if index_on_start is None else index_on_start

    @asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        if build_index:
            state.start_index()
        yield
        for ctl in list(state.turns.values()):
            ctl.cancel("the server is stopping")

    app = FastAPI(title="synthehr", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
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

    app.add_middleware(BodyLimit, limit=settings.server.max_body_bytes)  # outermost: before anything reads the body

    async def json_object(request: Request) -> dict[str, Any] | Any:
        """The request's JSON body as a dict, or the error response to return (400 not JSON, 422 not an object)."""
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return JSONResponse({"error": "body must be JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "body must be a JSON object, e.g. {\"session\": \"...\", \"text\": \"...\"}"},
                                status_code=422)
        return body

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

    @app.get("/api/status")
    def status() -> dict[str, Any]:
        return {"knowledge": state.index_status.as_dict(),
                "turns": [{"id": t.id, "session": t.session} for t in list(state.turns.values())]}

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

    @app.get("/datasets/{dataset_id}/card")
    def dataset_card_page(dataset_id: str) -> Any:
        row = state.workspace.get("datasets", "id", dataset_id) if SESSION_NAME_RE.match(dataset_id) else None
        if row is None:
            return JSONResponse({"error": f"no data set '{dataset_id}'"}, status_code=404)
        return HTMLResponse(card_page(row, state.workspace.root), headers={"Cache-Control": "no-store"})

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
        """The turns of a conversation, shown again as they were: the answer (as `text`, like the live
        `answer` event), the steps with their thoughts, the data-set cards, plots (with alt text), downloads
        and sources. What the page showed is kept beside the session (web/<session>.jsonl); turns made
        elsewhere (the CLI) are rebuilt from the session history."""
        if not SESSION_NAME_RE.match(name):
            return JSONResponse({"error": "bad session name"}, status_code=400)
        _, history = state.workspace.load_session(name)
        records = {_record_key(r.get("user", ""), r.get("answer", "")): r for r in state.load_records(name)}
        root = state.workspace.root
        turns = []
        for h in history:
            if not isinstance(h, dict):
                continue
            steps = [s for s in (h.get("steps") or []) if isinstance(s, dict)]
            answer = str(h.get("answer") or "")
            rec = records.get(_record_key(h.get("user", ""), answer))
            if rec is not None:
                arts = {k: rec.get(k) or [] for k in ("plots", "downloads", "citations")}
                arts["datasets"] = [dataset_summary(row, root) for ds_id in rec.get("dataset_ids") or []
                                    if (row := state.workspace.get("datasets", "id", ds_id)) is not None]
                page_steps = rec.get("steps") or []
            else:
                arts = turn_artifacts(state.workspace, steps, answer, [str(f) for f in h.get("files") or []])
                page_steps = [step_for_page(s, root) for s in steps]
            text = link_files(answer, root)
            turns.append({"user": str(h.get("user") or ""), "text": text, "answer": text, "steps": page_steps, **arts})
        return {"name": name, "turns": turns}

    @app.post("/api/chat")
    async def chat(request: Request) -> Any:
        body = await json_object(request)
        if not isinstance(body, dict):
            return body
        text = str(body.get("text") or "").strip()
        session = str(body.get("session") or "default")
        if not text:
            return JSONResponse({"error": "empty message"}, status_code=400)
        if not SESSION_NAME_RE.match(session):
            return JSONResponse({"error": "bad session name (letters, digits, '-', '_', '.')"}, status_code=400)
        ctl = state.new_turn(session)
        return StreamingResponse(_turn_stream(state, ctl, text, request), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post("/api/turns/{turn_id}/cancel")
    async def cancel_turn(turn_id: str, request: Request) -> Any:
        """Stop a running turn (the page's Stop button). Before a tool starts nothing is charged; a training
        that already started keeps its charge (the full target is charged before the first record is read)."""
        body = await json_object(request)
        if not isinstance(body, dict):
            return body
        ctl = state.turns.get(turn_id)
        if ctl is None:
            return JSONResponse({"error": "no such running turn (it may have finished)"}, status_code=404)
        ctl.cancel("stopped by the user")
        return {"cancelled": True, "tool_started": ctl.tool_started}

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


def cancelled_text(ctl: TurnControl) -> str:
    """What a stop did, plainly: above all whether privacy budget was spent and stays spent."""
    if not ctl.tool_started:
        return "Stopped before any tool ran: nothing was generated and no privacy budget was spent."
    if ctl.running_tool is not None and ctl.training_started:
        return ("Stopped during the training of a generator. Its privacy charge stays on the ledger: the full budget "
                "is charged before any real record is read, so stopping cannot refund it. The training was discarded "
                "and no data set was written.")
    if ctl.running_tool is not None:
        return ("Stopped before the running step trained anything, so it spent no privacy budget. "
                "Steps that had finished before are shown above and kept.")
    return "Stopped. The steps that had finished are shown above and kept; nothing further was started."


def answer_stream_event(ev: Any, root_prefix: str = "") -> dict[str, Any] | None:
    """The page's event for a piece of the answer as it is written (StepEvent kinds answer_delta, answer_draft,
    answer_replace: see synthehr.agent.loop.StepEvent); None for any other kind. The `answer` event that
    follows always carries the whole, checked answer."""
    kind = _get(ev, "kind")
    text = str(_get(ev, "text") or "").replace(root_prefix, "") if root_prefix else str(_get(ev, "text") or "")
    if kind in ("answer_delta", "delta", "token"):
        return {"type": "delta", "text": text}
    if kind == "answer_draft":
        return {"type": "delta", "text": text, "provisional": True}
    if kind == "answer_replace":
        return {"type": "answer_replace", "text": text, "kept": bool((_get(ev, "args") or {}).get("kept"))}
    return None


async def _turn_stream(state: WebState, ctl: TurnControl, text: str, request: Any = None) -> Any:
    """Run one agent turn in a worker thread and yield its events as NDJSON lines as they happen.

    The turn stops (TurnCancelled raised in the worker at its next event or progress update) when the page
    presses Stop or goes away: a disconnected client is noticed within a second, before the next tool starts,
    so an abandoned request does not go on to train and charge the budget."""
    import asyncio

    events: queue.Queue[Any] = queue.Queue()
    session = ctl.session
    root_prefix = str(state.workspace.root) + "/"  # observations show workspace paths relative to it

    def emit(ev: Any) -> None:
        events.put(ev)

    pending_thought: list[str] = []

    def on_event(ev: Any) -> None:
        kind = _get(ev, "kind")
        ctl.check()  # every step is a point where a stopped turn ends (before the next tool starts)
        if kind == "answer":
            return  # the final answer is sent once, with the turn's artifacts
        streamed = answer_stream_event(ev, root_prefix)
        if streamed is not None:  # the answer as it is written
            emit(streamed)
            return
        if kind == "thought":
            pending_thought[:] = [str(_get(ev, "text") or "")]
        if kind == "action":
            ctl.tool_started = True
            ctl.running_tool = str(_get(ev, "tool") or "") or None
            ctl.training_started = False
        elif kind in ("observation", "error"):
            ctl.running_tool = None
        emit({"type": "step", "kind": kind, "tool": _get(ev, "tool"), "args": _json_safe(_get(ev, "args")),
              "text": str(_get(ev, "text") or "").replace(root_prefix, "")[:MAX_OBSERVATION_CHARS],
              "files": [str(f) for f in (_get(ev, "files") or [])]})

    def worker() -> None:
        locked = False
        try:
            if not state.turn_lock.acquire(blocking=False):
                emit({"type": "status", "text": "Waiting for another request to finish…"})
                while not state.turn_lock.acquire(timeout=0.5):
                    ctl.check()
            locked = True
            ctl.check()
            progress = WebProgress(emit, control=ctl)
            deps = state.deps(session, progress)
            if state._llm is None:
                emit({"type": "status", "text": "Loading the language model (once per server start)…"})
            llm = state.llm()
            ctl.check()
            emit({"type": "status", "text": "Reading your request…"})
            kwargs: dict[str, Any] = {"on_event": on_event}
            if state.registry is not None:
                kwargs["registry"] = state.registry
            result = state.run_turn_fn()(deps, llm, text, **kwargs)
            answer = str(_get(result, "answer") or "")
            steps = list(_get(result, "steps") or [])
            files = [str(f) for f in (_get(result, "files") or [])]
            arts = turn_artifacts(deps.workspace, steps, answer, files)
            root = deps.workspace.root
            page_steps = [step_for_page(s, root) for s in steps if _get(s, "tool")]
            state.save_record(session, {"user": text, "answer": answer, "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                        "steps": page_steps, "dataset_ids": [d["id"] for d in arts["datasets"]],
                                        "plots": arts["plots"], "downloads": arts["downloads"],
                                        "citations": arts["citations"]})
            emit({"type": "answer", "text": link_files(answer, root), "files": files, "steps": page_steps, **arts})
        except TurnCancelled as exc:
            log.info("turn %s in session %s stopped: %s", ctl.id, session, exc)
            emit({"type": "cancelled", "text": cancelled_text(ctl), "tool_started": ctl.tool_started,
                  "training_started": ctl.running_tool is not None and ctl.training_started})
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
            if locked:
                state.turn_lock.release()
            state.end_turn(ctl)
            emit(_DONE)

    async def watch_disconnect() -> None:
        while not ctl.cancelled.is_set():
            if request is not None and await request.is_disconnected():
                ctl.cancel("the page went away")
                return
            await asyncio.sleep(0.25)

    yield _line({"type": "start", "session": session, "turn": ctl.id})
    threading.Thread(target=worker, name=f"synthehr-turn-{session}", daemon=True).start()
    watcher = asyncio.ensure_future(watch_disconnect())
    loop = asyncio.get_running_loop()
    try:
        last = time.monotonic()
        while True:
            try:
                ev = await loop.run_in_executor(None, events.get, True, 0.5)
            except queue.Empty:
                if time.monotonic() - last > 15:
                    last = time.monotonic()
                    yield _line({"type": "ping"})  # keeps proxies and the page's stream alive during long training
                continue
            if ev is _DONE:
                break
            last = time.monotonic()
            yield _line(ev)
        yield _line({"type": "end"})
    finally:
        # The response is over (done, or the client went away and the generator was closed): stop the turn.
        if state.turns.get(ctl.id) is ctl:
            ctl.cancel("the page went away")
        watcher.cancel()


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
