"""docs/runbook.md and docs/deploy.md say only what is true of the code and the Terraform.

Every name, number, command, log message, metric and alarm the two pages cite is
extracted and checked against the thing it names:

- inline code spans (`...`), double-quoted prose ("..."), fenced blocks and table rows are
  extracted from the Markdown;
- each span is classified, and each class has its own check:

  - command (`claude-proxy keys rotate ID`, `aws ecs wait services-stable ...`): the CLI's
    own parser (`claude_proxy.cli.main.build_parser()`) accepts it; the AWS CLI's service models
    (botocore) know the operation or waiter and every option; terraform's `-var`,
    `-target` and `output` name variables, modules and outputs of the production root;
  - setting (`CLAUDE_PROXY_DRAIN_SECONDS`, `DATABASE_URL`): a `Settings` field or a variable
    the code reads from the environment; in `NAME=VALUE`, a value `Settings` accepts;
  - metric (`claude_proxy_log_rows_total{outcome="spilled"}`): registered by metrics.py,
    with that label, and a label value metrics.py uses;
  - AWS name (`claude-proxy-cpu-high`, `/ecs/claude-proxy-service`): in the Terraform under
    deploy/terraform, comments excluded, `${var.x}` and `${local.x}` resolved;
  - logger (`claude_proxy.breaker`): a `logging.getLogger` name of src/;
  - route (`/ready`, `POST /admin/api/keys/{id}/rotate`): a path the app answers, or a route
    (and method) of the admin API;
  - log message, quoted prose (`circuit breaker: closed -> open`, "cannot connect to the
    upstream API"): part of a string literal of src/claude_proxy, whose `%s` and `{...}`
    placeholders stand for any text;
  - header, status (`x-should-retry: false`, `503 api_error`): header names and values,
    statuses and error types the code uses;
  - path (`deploy/Dockerfile`, `/var/lib/claude-proxy/spill`): in the repository, or a path
    of deploy/;
  - host (`aws-0-<region>.pooler.supabase.com`): named by the other docs (README, docs/);
  - option (`--force-new-deployment`): used by a fenced command (which is checked);
  - anything else (`least_outstanding_requests`, `ActiveStreams`): a word of the code, the
    Terraform, the Dockerfile or the workflows, or a member of the AWS APIs' models;

- fenced blocks: every shell command is checked as a command span is (env assignments as
  settings, `curl` URLs as routes, `docker build -f` as a file, `make` targets); an `hcl`
  block (terraform.tfvars) names variables of the production root; a `python` block calls
  `anthropic.Anthropic` with arguments it has; a Logs Insights query is a copy of one in
  docs/observability.md or filters on messages the code logs; every claude-proxy-* and
  /ecs/ name in any block is in the Terraform; every model id is in the price table;

- numbers: a table with a `default` column must give the `Settings` default of the row's
  setting, a "container" column the value the task definition (or the image) sets, and
  a `threshold` or `target` column the number in the Terraform block of the row's alarm or
  policy; every other number with a unit (`110 s`, `85 %`, `30 days`) must be a default of
  `Settings`, a number of the Terraform or of the Dockerfile.

`test_drain_fits_the_stop_timeout_and_the_load_balancer` checks what the deployment section
rests on: the container's pre-stop + drain + log flush < `stopTimeout`, = the target group's
deregistration delay, and the keep-alive > the ALB's idle timeout.

What cannot be checked here (AWS's own error strings, GitHub's OIDC host ...) is in
ALLOWED below, with the reason: anything new that no check recognises fails the test.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import io
import json
import re
import shlex
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "claude_proxy"
DOCS = ("docs/runbook.md", "docs/deploy.md")
TF_DIR = ROOT / "deploy" / "terraform"
TF_ROOT = TF_DIR / "environments" / "production"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
WORKFLOWS = ROOT / ".github" / "workflows"

# What no check here can verify, and why it is true all the same.
ALLOWED: dict[str, str] = {
    "OutOfMemoryError": "an ECS stopped-container reason (ECS documentation)",
    "CannotPullContainerError": "an ECS stopped-task reason (ECS documentation)",
    "ResourceInitializationError": "an ECS stopped-task reason (ECS documentation)",
    "@logStream": "a CloudWatch Logs Insights system field",
    "db.<ref>.supabase.co": "Supabase's direct-connection host (Supabase documentation)",
    "token.actions.githubusercontent.com": "GitHub Actions' OIDC issuer (GitHub documentation)",
    "terraform.tfvars": "the file the reader writes; Terraform loads it by that name",
    "repo:<owner>/<repo>:environment:production": "GitHub's OIDC subject for a job in an "
    "environment (GitHub documentation)",
    "us-east-1": "the AWS region where S3's CreateBucket takes no LocationConstraint (S3 docs)",
    "sts.amazonaws.com": "the audience of GitHub's OIDC token for AWS (GitHub documentation)",
}
# Programs the fenced commands may run besides claude-proxy, aws, terraform, docker, curl
# and make (each checked): these are everyday tools whose use here is plain.
OTHER_PROGRAMS = {"cd", "export", "jq", "git", "pip", "openssl", "claude", "echo", "cp"}
# Placeholders: reserved example domain and AWS account, and <...> slots.
PLACEHOLDER = re.compile(r"example\.com|123456789012|<[a-z_-]+>|\.\.\.$|…")
PLACEHOLDER_SLOTS = {"<region>", "<ref>", "<tag>", "<sha>", "<repository>"}
# How the docs write a key id, a task id ... in a command.
ARG_PLACEHOLDERS = {"ID": "key_0123456789abcdef", "NAME": "name"}


# ======================================================================== extraction


@dataclass(frozen=True)
class Claim:
    doc: str
    line: int
    text: str
    kind: str  # "code", "quote", "fence:<lang>", "table", "prose"

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text!r}"


@dataclass
class Table:
    doc: str
    line: int
    header: list[str]
    rows: list[tuple[int, list[str]]] = field(default_factory=list)


@dataclass
class Doc:
    name: str
    text: str
    spans: list[Claim] = field(default_factory=list)
    quotes: list[Claim] = field(default_factory=list)
    fences: list[Claim] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    prose: str = ""  # the text outside fences and code spans (line numbers kept)


FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
QUOTE = re.compile(r'"([^"]+)"')


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _blank(text: str, start: int, end: int) -> str:
    """Blank text[start:end] out, keeping its newlines (and so every line number)."""
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def _cells(row: str) -> list[str]:
    """A table row's cells; a `|` inside a code span or escaped does not split."""
    cells, cell, in_code = [], "", False
    body = row.strip().removeprefix("|").removesuffix("|")
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body) and body[i + 1] == "|":
            cell += "|"
            i += 2
            continue
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
        i += 1
    cells.append(cell.strip())
    return cells


def parse_doc(name: str, text: str) -> Doc:
    doc = Doc(name, text)
    outside = text
    for m in FENCE.finditer(text):
        body_line = _line_of(text, m.start(2))
        doc.fences.append(Claim(name, body_line, m.group(2), f"fence:{m.group(1) or 'text'}"))
        outside = _blank(outside, m.start(), m.end())
    prose = outside
    for m in SPAN.finditer(outside):
        span = " ".join(m.group(1).split())
        doc.spans.append(Claim(name, _line_of(outside, m.start()), span, "code"))
        prose = _blank(prose, m.start(), m.end())
    # Quotes in prose, not in code or links; a quote may wrap over lines.
    for m in QUOTE.finditer(prose):
        quoted = " ".join(m.group(1).split())
        doc.quotes.append(Claim(name, _line_of(prose, m.start()), quoted, "quote"))
    doc.prose = prose
    # Tables (outside fences).
    table: Table | None = None
    for number, line in enumerate(outside.splitlines(), 1):
        if line.lstrip().startswith("|"):
            cells = _cells(line)
            if table is None:
                table = Table(name, number, [c.lower() for c in cells])
            elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
                table.rows.append((number, cells))
        elif table is not None:
            doc.tables.append(table)
            table = None
    if table is not None:
        doc.tables.append(table)
    return doc


@cache
def docs() -> dict[str, Doc]:
    return {name: parse_doc(name, (ROOT / name).read_text()) for name in DOCS}


# ================================================================== what the code has


@cache
def settings_env() -> dict[str, Any]:
    """Environment variable -> Settings field info."""
    from claude_proxy.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    out: dict[str, Any] = {}
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        choices = getattr(alias, "choices", None)
        names = [str(c) for c in choices] if choices else [f"{prefix}{name}".upper()]
        for env in names:
            out[env] = (name, info)
    return out


@cache
def source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


@cache
def code_text() -> str:
    parts = [p.read_text() for p in source_files()]
    parts += [p.read_text() for p in SRC.rglob("*.json")]
    return "\n".join(parts)


@cache
def env_read_by_code() -> set[str]:
    """Variables the code reads straight from os.environ (outside Settings)."""
    return set(re.findall(r"environ(?:\.get)?\s*[(\[]\s*\"([A-Z][A-Z0-9_]+)\"", code_text()))


@dataclass(frozen=True)
class Literal:
    segments: tuple[str, ...]  # text between placeholders

    @property
    def text(self) -> str:
        return "".join(self.segments)


PERCENT_FORMAT = re.compile(r"%(?:\([^)]*\))?[-+ #0]*\d*(?:\.\d+)?[sdifgrxXeE]")


@cache
def literals() -> list[Literal]:
    """Every string (and bytes) literal in src/claude_proxy, placeholders split out."""
    out: list[Literal] = []
    for path in source_files():
        tree = ast.parse(path.read_text())
        inside_fstring: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                segs, cur = [], ""
                for part in node.values:
                    inside_fstring.add(id(part))
                    if isinstance(part, ast.Constant) and isinstance(part.value, str):
                        cur += part.value
                    else:
                        segs.append(cur)
                        cur = ""
                segs.append(cur)
                out.append(Literal(tuple(segs)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and id(node) not in inside_fstring:
                value = node.value
                if isinstance(value, bytes):
                    value = value.decode("latin-1")
                if isinstance(value, str) and value:
                    out.append(Literal(tuple(PERCENT_FORMAT.split(value))))
    return out


def _alternatives(options: Iterable[str]) -> str:
    return "(?:" + "|".join(re.escape(o) for o in sorted(set(options), key=len, reverse=True)) + ")"


def fragment_in_code(fragment: str) -> bool:
    """Is `fragment` part of a message the code can produce? Placeholders (%s, {x}) stand for
    any text, but at least half of the fragment must be the literal's own text."""
    fragment = re.sub(r"\s*(\.\.\.|…)$", "", fragment).strip()
    if not fragment:
        return False
    for lit in literals():
        segs = lit.segments
        if any(fragment in s for s in segs):
            return True
        if len(segs) < 2 or not any(len(s.strip()) >= 3 and s.strip() in fragment for s in segs):
            continue
        for i in range(len(segs)):
            for j in range(i + 1, len(segs)):
                head = _alternatives(segs[i][k:] for k in range(len(segs[i]) + 1))
                tail = _alternatives(segs[j][:k] for k in range(len(segs[j]) + 1))
                middle = ".*?".join(re.escape(s) for s in segs[i + 1 : j])
                pattern = f"({head}).*?" + (f"{middle}.*?" if middle else "") + f"({tail})"
                m = re.fullmatch(pattern, fragment, re.S)
                if not m:
                    continue
                head_text, tail_text = m.group(1), m.group(2)
                if j == i + 1 and (head_text != segs[i] or tail_text != segs[j]):
                    # One placeholder: only "<text> X <text>", both texts whole. Otherwise
                    # "circuit breaker: sideways" would match "circuit breaker: %s -> %s".
                    continue
                covered = len(head_text) + len(tail_text) + sum(map(len, segs[i + 1 : j]))
                if covered >= max(4, len(fragment) / 2):
                    return True
    return False


@cache
def logger_names() -> set[str]:
    names = set(re.findall(r"getLogger\(\s*\"([\w.]+)\"\s*\)", code_text()))
    for path in source_files():
        if "getLogger(__name__)" in path.read_text():
            rel = path.relative_to(SRC.parent).with_suffix("")
            names.add(".".join(rel.parts).removesuffix(".__init__"))
    return names


@cache
def metrics() -> dict[str, set[str]]:
    """Metric name -> label names, from the metric objects metrics.py registers."""
    from prometheus_client import Counter, Gauge, Histogram

    import claude_proxy.telemetry.metrics as m

    found: dict[str, set[str]] = {}
    for holder in (m.ProxyMetrics(),):
        for value in vars(holder).values():
            if isinstance(value, Counter | Gauge | Histogram):
                name = value._name + ("_total" if isinstance(value, Counter) else "")
                found[name] = set(value._labelnames)
    return found


@cache
def app_paths() -> set[str]:
    """The paths app.py answers itself (exact, or as prefixes)."""
    text = (SRC / "app.py").read_text()
    return set(re.findall(r"(?:path|raw)(?: ==|\.startswith\()\s*b?\"(/[^\"]*)\"", text))


@cache
def admin_routes() -> set[tuple[str, str]]:
    """(method, path with {} for parameters) of every admin API route."""
    from claude_proxy.admin.api import _build_fastapi

    app = _build_fastapi(None, None)  # type: ignore[arg-type]  # routes only, never called
    out = {("GET", str(app.openapi_url))}
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            out.add((method.upper(), re.sub(r"\{[^}]+\}", "{}", path)))
    return out


def route_ok(path: str, method: str | None = None) -> str | None:
    path = path.split("?")[0]
    normal = re.sub(r"\{[^}]+\}|\bID\b|key_[0-9a-f]{16}", "{}", path)
    if path in app_paths() or path.rstrip("/") in app_paths():
        return None
    from claude_proxy.signin.routes import PATHS as SIGNIN_PATHS

    if path in SIGNIN_PATHS:
        return None
    if path.startswith("/v1/"):
        from claude_proxy.telemetry.tally import KNOWN_ROUTES

        if normal.replace("{}", "{id}") in KNOWN_ROUTES:
            return None
        return f"{path}: not an API route the proxy knows (tally.KNOWN_ROUTES)"
    if path.startswith("/admin/"):
        routes = admin_routes()
        if method is None and any(p.startswith(normal) for _, p in routes):
            return None
        if (method, normal) in routes:
            return None
        return f"{method or ''} {path}: no such admin API route".strip()
    return f"{path}: no such route"


@cache
def makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


@cache
def workflow_text() -> str:
    return "\n".join(p.read_text() for p in sorted(WORKFLOWS.glob("*.yml")))


@cache
def dockerfile_env() -> dict[str, str]:
    if not DOCKERFILE.is_file():
        return {}
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            for word in shlex.split(line.strip()[4:]):
                key, _, value = word.partition("=")
                env[key] = value
    return env


@cache
def price_models() -> set[str]:
    return set(json.loads((SRC / "formats" / "anthropic" / "prices.json").read_text())["models"])


# ===================================================================== the Terraform


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _strip_comments(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            _unquote(k): _strip_comments(v)
            for k, v in value.items()
            if k not in ("__comments__", "__inline_comments__", "__is_block__")
        }
    if isinstance(value, list):
        return [_strip_comments(v) for v in value]
    return _unquote(value)


@dataclass
class Module:
    path: Path
    body: list[dict[str, Any]]  # one parsed document per .tf file, comments dropped
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)  # module name -> args


@cache
def terraform() -> dict[Path, Module]:
    import hcl2

    modules: dict[Path, Module] = {}
    files = [p for p in sorted(TF_DIR.rglob("*.tf")) if ".terraform" not in p.parts]
    for path in files:
        with path.open() as fh:
            parsed = _strip_comments(hcl2.load(fh))
        mod = modules.setdefault(path.parent, Module(path.parent, []))
        mod.body.append(parsed)
        for block in parsed.get("variable", []):
            mod.variables.update(block)
        for block in parsed.get("locals", []):
            mod.locals.update(block)
        for block in parsed.get("output", []):
            mod.outputs.update(block)
        for block in parsed.get("module", []):
            mod.calls.update(block)
    return modules


REF = re.compile(r"\$\{(var|local)\.(\w+)\}|\b(var|local)\.(\w+)\b")


@cache
def variable_values() -> dict[tuple[Path, str], tuple[Any, ...]]:
    """(module dir, variable) -> the values it can have: its default, and what each
    module block that calls the module passes (resolved in the caller's scope)."""
    values: dict[tuple[Path, str], list[Any]] = {}
    mods = terraform()
    for path, mod in mods.items():
        for name, spec in mod.variables.items():
            if "default" in spec and spec["default"] is not None:
                values.setdefault((path, name), []).append(spec["default"])
    # Callers pass values down; two rounds reach a module two calls deep.
    for _ in range(2):
        for path, mod in mods.items():
            for args in mod.calls.values():
                source = (path / str(args.get("source", ""))).resolve()
                for name, value in args.items():
                    if name in ("source", "version", "providers", "depends_on", "count"):
                        continue
                    for resolved in resolve(value, path, values):
                        bucket = values.setdefault((source, name), [])
                        if resolved not in bucket:
                            bucket.append(resolved)
    return {k: tuple(v) for k, v in values.items()}


def resolve(
    value: Any, scope: Path, values: dict[tuple[Path, str], Any] | None = None, depth: int = 0
) -> list[Any]:
    """The values an expression can take, with var.x and local.x substituted where known."""
    if not isinstance(value, str) or depth > 6:
        return [value]
    values = variable_values() if values is None else values
    whole = re.fullmatch(r"\$\{(?:tostring\()?(var|local)\.(\w+)\)?\}", value)
    if whole:
        return _ref_values(whole.group(1), whole.group(2), scope, values, depth) or [value]
    results = [value]
    for m in re.finditer(r"\$\{(var|local)\.(\w+)\}", value):
        options = _ref_values(m.group(1), m.group(2), scope, values, depth)
        if options:
            results = [
                r.replace(m.group(0), str(o))
                for r in results
                for o in options
                if isinstance(o, str | int | float)
            ]
    return results


def _ref_values(
    kind: str, name: str, scope: Path, values: dict[tuple[Path, str], Any], depth: int
) -> list[Any]:
    if kind == "var":
        return [
            r for v in values.get((scope, name), ()) for r in resolve(v, scope, values, depth + 1)
        ]
    local = terraform().get(scope, Module(scope, [])).locals.get(name)
    return resolve(local, scope, values, depth + 1) if local is not None else []


def _walk(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)
    else:
        yield value


@cache
def terraform_strings() -> tuple[str, ...]:
    """Every string of the Terraform (keys and values), comments excluded, resolved."""
    out: list[str] = []
    for path, mod in terraform().items():
        for doc in mod.body:
            for value in _walk(doc):
                if isinstance(value, str):
                    out.extend(str(r) for r in resolve(value, path))
    return tuple(out)


@cache
def terraform_text() -> str:
    return "\n".join(terraform_strings())


def _numbers_in(value: Any) -> set[float]:
    found: set[float] = set()
    for v in _walk(value):
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            found.add(float(v))
        elif isinstance(v, str):
            found.update(float(n) for n in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", v))
    return found


@cache
def terraform_numbers() -> frozenset[float]:
    found: set[float] = set()
    for mod in terraform().values():
        found |= _numbers_in(mod.body)
    for values in variable_values().values():
        found |= _numbers_in(list(values))
    return frozenset(found)


def block_numbers(name: str) -> set[float] | None:
    """The numbers of the Terraform blocks that name `name`, variables resolved (None: no
    block names it)."""
    found: set[float] | None = None
    named = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
    for path, mod in terraform().items():
        for doc in mod.body:
            for kind in ("resource", "module"):
                for block in doc.get(kind, []):
                    for body in _blocks(block, 2 if kind == "resource" else 1):
                        strings = [
                            str(r)
                            for v in _walk(body)
                            if isinstance(v, str)
                            for r in resolve(v, path)
                        ]
                        if not any(named.search(s) for s in strings):
                            continue
                        found = found or set()
                        found |= _numbers_in(body)
                        for v in _walk(body):
                            if isinstance(v, str):
                                for m in REF.finditer(v):
                                    kind_, ref = (
                                        (m.group(1), m.group(2))
                                        if m.group(1)
                                        else (m.group(3), m.group(4))
                                    )
                                    found |= _numbers_in(
                                        _ref_values(kind_, ref, path, variable_values(), 0)
                                    )
    return found


def _blocks(block: dict[str, Any], depth: int) -> Iterator[dict[str, Any]]:
    for value in block.values():
        if depth == 1:
            if isinstance(value, dict):
                yield value
        elif isinstance(value, dict):
            yield from _blocks(value, depth - 1)


def terraform_has(name: str) -> bool:
    pattern = re.compile(rf"(?<![\w./-]){re.escape(name)}(?![\w-])")
    return any(pattern.search(s) for s in terraform_strings())


def container_env() -> dict[str, list[str]]:
    """Environment the task definition (or, else, the image) gives the container."""
    env: dict[str, list[str]] = {k: [v] for k, v in dockerfile_env().items()}
    for path, mod in terraform().items():
        for holder in _dicts([mod.locals, mod.body]):
            for key, value in holder.items():
                if isinstance(key, str) and key.startswith("CLAUDE_PROXY_"):
                    env[key] = [str(r) for r in resolve(value, path)]
    return env


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from _dicts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _dicts(v)
    elif isinstance(value, str) and "CLAUDE_PROXY_" in value:
        # An object literal inside an expression (merge({...})): read its pairs.
        pairs = dict(re.findall(r"(CLAUDE_PROXY_\w+)\s*=\s*(\"[^\"]*\"|[\w.()]+)", value))
        if pairs:
            yield {
                k: _unquote(v) if v.startswith('"') else "${" + v + "}" for k, v in pairs.items()
            }


def terraform_root() -> Module | None:
    return terraform().get(TF_ROOT)


# ========================================================================== checks


def words_known(word: str) -> bool:
    """A word of the code, the Terraform, the Dockerfile, the workflows or the Makefile."""
    pattern = re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])")
    texts = [code_text(), terraform_text(), workflow_text(), (ROOT / "Makefile").read_text()]
    if DOCKERFILE.is_file():
        texts.append(DOCKERFILE.read_text())
    return any(pattern.search(t) for t in texts)


def check_env(text: str) -> str | None:
    name, eq, value = text.partition("=")
    known = settings_env()
    if name not in known and name not in env_read_by_code():
        return f"{name}: not a setting (config.Settings) nor read from the environment"
    if eq and name in known and not PLACEHOLDER.search(value):
        from pydantic import TypeAdapter, ValidationError

        field_name, info = known[name]
        try:
            TypeAdapter(info.annotation).validate_python(value)
        except ValidationError:
            return f"{text}: {value!r} is not a valid {field_name}"
    return None


def check_metric(text: str) -> str | None:
    m = re.fullmatch(r"(claude_proxy_\w+?)(?:_bucket|_sum|_count)?(?:\{(.*)\})?", text)
    assert m
    name, labels = m.group(1), m.group(2)
    known = metrics()
    if name not in known:
        return f"{name}: not a metric of metrics.py ({', '.join(sorted(known))})"
    for label, value in re.findall(r"(\w+)=\"([^\"]*)\"", labels or ""):
        if label not in known[name]:
            return f"{text}: {name} has no label {label!r}"
        if not re.search(
            rf"\b{re.escape(value)}\b", (SRC / "telemetry" / "metrics.py").read_text()
        ):
            return f"{text}: metrics.py never sets {label}={value!r}"
    return None


def check_aws_name(text: str) -> str | None:
    if terraform_has(text):
        return None
    where = "deploy/terraform" if terraform() else "deploy/terraform (no .tf file yet)"
    return f"{text}: not in {where}"


def check_logger(text: str) -> str | None:
    return None if text in logger_names() else f"{text}: no logger of that name in src/"


def check_path(text: str) -> str | None:
    if text.startswith(("/var/", "/tmp", "/opt/")):
        dockerfile = DOCKERFILE.read_text() if DOCKERFILE.is_file() else ""
        found = terraform_has(text) or text in dockerfile
        return None if found else f"{text}: not a path of deploy/ (Terraform or Dockerfile)"
    if (ROOT / text).exists() or (TF_ROOT / text).exists():  # deploy.md works in TF_ROOT
        return None
    if list(ROOT.glob(f".github/workflows/{text}")):
        return None
    if terraform_has(text):  # a name with a slash: alias/claude-proxy, aws/ecr
        return None
    return f"{text}: no such file or directory in the repository, nor a name in deploy/terraform"


def check_header(text: str) -> str | None:
    name, _, value = text.partition(":")
    texts = [lit.text.lower() for lit in literals()]
    mentioned = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", code_text(), re.I)
    if name.lower() not in texts and not mentioned:
        return f"{name}: no such header in src/"
    if value.strip() and value.strip().lower() not in texts:
        return f"{text}: the code never sends {value.strip()!r}"
    return None


def check_status(text: str) -> str | None:
    status, _, error_type = text.partition(" ")
    if status.endswith("xx"):
        return None if words_known(status) else f"{status}: not a status class of the code"
    if not re.search(rf"(?<![\w.]){status}(?![\w.])", code_text()):
        return f"{status}: the code never uses that status"
    if error_type and error_type not in {lit.text for lit in literals()}:
        return f"{error_type}: not an error type of the code"
    return None


def check_json(text: str) -> str | None:
    if fragment_in_code(text):
        return None
    for key, value in re.findall(r"\"(\w+)\"\s*:\s*(\"[^\"]*\"|true|false|null|[\d.]+)", text):
        if not words_known(key):
            return f"{text}: no field {key!r} in the code"
        if value.startswith('"') and not words_known(value.strip('"')):
            return f"{text}: the code never says {value!r}"
    return None


@cache
def aws_api_words() -> frozenset[str]:
    """Every member name and enum value of the AWS APIs the docs use (botocore's models)."""
    session = _botocore_session()
    words: set[str] = set()
    services = ("ecs", "ecr", "elbv2", "cloudwatch", "logs", "application-autoscaling", "sns")
    for service in (*services, "secretsmanager"):
        model = session.get_service_model(service)
        for shape_name in model.shape_names:
            shape = model.shape_for(shape_name)
            words.update(getattr(shape, "members", {}) or {})
            words.update(getattr(shape, "enum", []) or [])
    return frozenset(words)


def check_generic(text: str) -> str | None:
    assignment = re.fullmatch(r"([A-Za-z_]\w*)=(\w+)", text)
    if assignment:
        name, value = assignment.groups()
        known = words_known(name) or name in aws_api_words()
        if known and (words_known(value) or value in ("true", "false")):
            return None
        return f"{text}: {name}={value} is not a name and value of the code or the AWS APIs"
    if text in aws_api_words():
        return None
    bare = re.sub(r"\s*(\.\.\.|…)$", "", text)
    if bare != text and (fragment_in_code(bare) or words_known(bare)):
        return None
    if words_known(text) or fragment_in_code(text):
        return None
    slots = re.findall(r"<([a-z_]+)>", text)
    if slots and all(f"<{s}>" in PLACEHOLDER_SLOTS or words_known(s) for s in slots):
        rest = re.sub(r"<[a-z_]+>", "", text).strip(":/.")
        if not rest or words_known(rest) or fragment_in_code(rest):
            return None
    if "." in text and re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", text):
        parts = text.split(".")
        if all(any(lit.text == p for lit in literals()) for p in parts):
            return None  # a path into the JSON of /ready: upstream.circuit.state
    return f"{text}: found in neither the code, the Terraform, the Dockerfile nor the workflows"


# ------------------------------------------------------------------------ commands

CLI_OPTIONS_GLOBAL = {
    "region",
    "output",
    "query",
    "profile",
    "no-cli-pager",
    "debug",
    "endpoint-url",
    "no-paginate",
    "cli-input-json",
}
# AWS CLI commands written by hand in the CLI (no service model): their options.
AWS_CUSTOM = {
    ("logs", "tail"): {"follow", "since", "format", "filter-pattern", "log-stream-names"},
    ("ecr", "get-login-password"): set(),
}
# Options of a resource's name that must name a Terraform resource.
# AWS CLI command names whose service model has another name.
AWS_SERVICES = {"s3api": "s3"}
# Options the AWS CLI renames from the API's member names (awscli customizations/argrename).
AWS_RENAMES = {("sns", "subscribe"): {"endpoint": "notification-endpoint"}}
AWS_NAME_OPTIONS = {"cluster", "service", "services", "service-name", "repository-name"}
TERRAFORM_COMMANDS = {"init", "plan", "apply", "output", "fmt", "validate", "show", "state"}


def split_commands(script: str) -> list[list[str]]:
    """Simple commands of a shell snippet: continuations joined, comments and prompts
    dropped, pipelines and lists split, each $(...) a command of its own."""
    script = re.sub(r"\\\n", " ", script)
    out: list[list[str]] = []
    for raw in script.splitlines():
        line = raw.strip().removeprefix("$ ")
        if not line or line.startswith("#"):
            continue
        # Command substitutions: pull each out (balanced parentheses) and mark its place.
        while "$(" in line:
            start = line.index("$(")
            depth, end = 0, start + 1
            for end in range(start + 1, len(line)):
                depth += {"(": 1, ")": -1}.get(line[end], 0)
                if depth == 0:
                    break
            out.extend(split_commands(line[start + 2 : end]))
            line = line[:start] + "SUBST" + line[end + 1 :]
        lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for token in lexer:
            if token in ("|", "||", "&&", ";", "&"):
                out.append(words)
                words = []
            else:
                words.append(token)
        out.append(words)
    return [w for w in out if w]


def check_command(words: list[str], prefix_only: bool = False) -> list[str]:
    """Problems with one simple command (an empty list: none)."""
    errors: list[str] = []
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        name = words[0].split("=", 1)[0]
        if name.startswith(("CLAUDE_PROXY_", "ANTHROPIC_")) or name == "DATABASE_URL":
            errors += filter(None, [check_env(words[0])])
        words = words[1:]
    if not words:
        return errors
    program, args = words[0], words[1:]
    if program == "export":
        for word in args:
            errors += check_command([word]) if "=" in word else []
        return errors
    if program == "claude-proxy":
        return errors + check_claude_proxy(args, prefix_only)
    if program == "aws":
        return errors + check_aws(args)
    if program == "terraform":
        return errors + check_terraform(args)
    if program == "docker":
        if args[:1] == ["build"] and "-f" in args:
            path = args[args.index("-f") + 1]
            if not (ROOT / path).is_file():
                errors.append(f"docker build -f {path}: no such file")
        return errors
    if program == "curl":
        method = args[args.index("-X") + 1] if "-X" in args else None
        for arg in args:
            m = re.match(r"https?://[^/\s]+(/\S*)?$", arg)
            if m and m.group(1):
                has_body = "-d" in args or "--data" in args
                problem = route_ok(m.group(1), method or ("POST" if has_body else "GET"))
                errors += [problem] if problem else []
        return errors
    if program == "make":
        return errors + [f"make {t}: no such target" for t in args if t not in makefile_targets()]
    if program in OTHER_PROGRAMS:
        return errors
    return [*errors, f"{program}: a program the docs may not run (add it to OTHER_PROGRAMS?)"]


def check_claude_proxy(args: list[str], prefix_only: bool = False) -> list[str]:
    from claude_proxy.cli.main import build_parser

    args = [ARG_PLACEHOLDERS.get(a, a) for a in args]
    args = [a.split("|")[0] if "|" in a and not a.startswith("-") else a for a in args]
    if prefix_only or (args and args[-1] in ("...", "…")):
        parser = build_parser()
        for word in [a for a in args if a not in ("...", "…")]:
            subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
            if not subs or word not in subs[0].choices:  # type: ignore[attr-defined]
                return [f"claude-proxy {' '.join(args)}: no command {word!r}"]
            parser = subs[0].choices[word]  # type: ignore[attr-defined]
        return []
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            message = err.getvalue().strip().splitlines()[-1:]
            return [f"claude-proxy {' '.join(args)}: {' '.join(message)}"]
    return []


@cache
def _botocore_session() -> Any:
    import botocore.session

    return botocore.session.get_session()


def check_aws(args: list[str]) -> list[str]:
    from botocore import xform_name
    from botocore.exceptions import UnknownServiceError

    if len(args) < 2:
        return [f"aws {' '.join(args)}: no operation"]
    service, operation, rest = args[0], args[1], args[2:]
    session = _botocore_session()
    options = {a[2:] for a in rest if a.startswith("--")}
    errors = []
    custom = AWS_CUSTOM.get((service, operation))
    if custom is not None:
        allowed = custom
    else:
        try:
            model = session.get_service_model(AWS_SERVICES.get(service, service))
        except UnknownServiceError:
            return [f"aws {service}: no such service"]
        if operation == "wait":
            waiter = rest[0] if rest else ""
            waiter_model = session.get_waiter_model(AWS_SERVICES.get(service, service))
            waiters = waiter_model.waiter_names
            names = {xform_name(w, "-"): w for w in waiters}
            if waiter not in names:
                return [f"aws {service} wait {waiter}: no such waiter"]
            op_name = waiter_model.get_waiter(names[waiter]).operation
        else:
            ops = {xform_name(o, "-"): o for o in model.operation_names}
            if operation not in ops:
                return [f"aws {service} {operation}: no such operation"]
            op_name = ops[operation]
        shape = model.operation_model(op_name).input_shape
        members = shape.members if shape is not None else {}
        renames = AWS_RENAMES.get((service, operation), {})
        allowed = {renames.get(xform_name(m, "-"), xform_name(m, "-")) for m in members}
        allowed |= {f"no-{m}" for m in allowed}
    for option in sorted(options - allowed - CLI_OPTIONS_GLOBAL):
        errors.append(f"aws {service} {operation}: no option --{option}")
    for i, arg in enumerate(rest[:-1]):
        if arg.startswith("--") and arg[2:] in AWS_NAME_OPTIONS:
            for value in rest[i + 1].split(","):
                if not value.startswith(("$", "SUBST")) and not terraform_has(value):
                    errors.append(f"aws ... {arg} {value}: {value!r} is not in deploy/terraform")
    return errors


def check_terraform(args: list[str]) -> list[str]:
    if not args or args[0] not in TERRAFORM_COMMANDS:
        return [f"terraform {' '.join(args)}: not a terraform command these docs use"]
    root = terraform_root()
    if root is None:
        return [f"terraform {' '.join(args)}: {TF_ROOT.relative_to(ROOT)} has no .tf file yet"]
    errors = []
    rest = args[1:]
    for i, arg in enumerate(rest):
        value = None
        if arg in ("-var", "-target") and i + 1 < len(rest):
            value = (arg, rest[i + 1])
        elif arg.startswith(("-var=", "-target=")):
            value = tuple(arg.split("=", 1))
        if value is None:
            continue
        flag, what = value
        if flag == "-var":
            name = what.split("=", 1)[0]
            if name not in root.variables:
                errors.append(f"terraform -var {name}: no variable {name!r} in the production root")
        else:
            module = re.match(r"module\.(\w+)", what)
            if not module or module.group(1) not in root.calls:
                errors.append(f"terraform -target {what}: no such module in the production root")
    if args[0] == "output":
        names = [a for a in rest if not a.startswith("-")]
        errors += [f"terraform output {n}: no such output" for n in names if n not in root.outputs]
    return errors


# ---------------------------------------------------------------- classification

ENV = re.compile(r"(CLAUDE_PROXY_\w+|ANTHROPIC_[A-Z_]+|DATABASE_URL|OTEL_[A-Z_]+)(=\S*)?")
METRIC = re.compile(r"claude_proxy_\w+(\{[^}]*\})?")
AWS_NAME = re.compile(r"claude-proxy(-[a-z0-9]+)+|/ecs/[\w-]+|claude-proxy")
LOGGER = re.compile(r"claude_proxy(\.\w+)+")
HTTP_METHOD = re.compile(r"(GET|POST|PATCH|DELETE|PUT) (/\S*)")
STATUS = re.compile(r"(\d{3}|[1-5]xx)( [a-z_]+_error)?")
HEADER = re.compile(r"(x-[a-z0-9-]+|retry-after|request-id)(: \S+)?", re.I)
PROGRAMS = ("claude-proxy ", "aws ", "terraform ", "docker ", "curl ", "make ", "pip ", "openssl ")
CLI_RELATIVE = re.compile(r"(keys|logs|db|usage) [a-z]+")


def _is_log_line(text: str) -> bool:
    """`claude-proxy 0.1.0 started` is a log line, not a command: no such subcommand."""
    from claude_proxy.cli.main import build_parser

    words = text.split()
    if words[0] != "claude-proxy" or len(words) < 2 or words[1].startswith("-"):
        return False
    subs = [a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    return words[1] not in subs[0].choices  # type: ignore[attr-defined]


HOST = re.compile(r"[\w<>-]+(\.[\w<>-]+)+\.(com|co|io|net|org)")


def check_host(text: str) -> str | None:
    """A host name the code cannot know (Supabase's): the other docs must give it."""
    others = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    documented = [p for p in others if p.name not in {Path(d).name for d in DOCS}]
    if any(text in p.read_text() for p in documented):
        return None
    return f"{text}: a host that neither the code nor the other docs name"


SHELL_FENCES = ("fence:bash", "fence:sh", "fence:console", "fence:shell")


def check_option(text: str) -> str | None:
    """An option cited in prose must be one the fenced commands use (which are checked)."""
    for doc in docs().values():
        for fence in doc.fences:
            if fence.kind in SHELL_FENCES and any(
                text in words for words in split_commands(fence.text)
            ):
                return None
    return f"{text}: no fenced command uses this option"


def classify(text: str) -> tuple[str, Callable[[], list[str]]]:
    """The class of a code span, and its check."""

    def one(fn: Callable[[str], str | None]) -> Callable[[], list[str]]:
        return lambda: [e for e in [fn(text)] if e]

    if text in ALLOWED:
        return "allowed", list
    if PLACEHOLDER.search(text) and re.fullmatch(r"[\w.:/@-]*example\.com[\w/.-]*", text):
        return "placeholder", list
    if text.startswith(PROGRAMS) and not _is_log_line(text):
        return "command", lambda: [e for c in split_commands(text) for e in check_command(c)]
    if text.startswith("-var ") or text == "-backend-config":
        return "terraform flag", lambda: check_terraform(["apply", *text.split()[:2]])
    if CLI_RELATIVE.fullmatch(text):
        return "command", lambda: check_claude_proxy(text.split(), prefix_only=True)
    if ENV.fullmatch(text):
        return "setting", one(check_env)
    if METRIC.fullmatch(text):
        return "metric", one(check_metric)
    if AWS_NAME.fullmatch(text):
        return "aws name", one(check_aws_name)
    if LOGGER.fullmatch(text):
        return "logger", one(check_logger)
    if m := HTTP_METHOD.fullmatch(text):
        return "route", lambda: [e for e in [route_ok(m.group(2), m.group(1))] if e]
    if text.startswith("/") and not text.startswith(("/var/", "/tmp", "/opt/")):
        return "route", one(route_ok)
    if re.fullmatch(r"[\w.-]+/[\w./-]+|[\w-]+\.(yml|md|py|tf)|/(var|tmp|opt)\S*", text) and not (
        re.fullmatch(r"[A-Z]+/\w+", text) or re.fullmatch(r"[\d.]+/\d+", text)
    ):
        return "path", one(check_path)
    if STATUS.fullmatch(text):
        return "status", one(check_status)
    if HEADER.fullmatch(text):
        return "header", one(check_header)
    if text.startswith(("{", '"')):
        return "json", one(check_json)
    if HOST.fullmatch(text):
        return "host", one(check_host)
    if re.fullmatch(r"--[a-z][a-z-]*", text):
        return "option", one(check_option)
    if " " in text or text.endswith(":"):
        return (
            "log message",
            lambda: (
                []
                if fragment_in_code(text)
                else [f"{text}: no string in src/claude_proxy says this"]
            ),
        )
    return "word", one(check_generic)


def all_claims() -> Iterator[Claim]:
    for doc in docs().values():
        yield from doc.spans


# ===================================================================== the tests

DOC_IDS = list(DOCS)


def _report(errors: list[str]) -> str:
    return "\n".join(["", *errors])


def test_docs_exist_and_have_claims() -> None:
    for name, doc in docs().items():
        assert len(doc.spans) > 40, f"{name}: the extractor found only {len(doc.spans)} code spans"
        assert doc.fences, f"{name}: no fenced block found"
        assert doc.tables, f"{name}: no table found"


@pytest.mark.parametrize("kind", ["setting", "metric", "logger", "route", "status", "header"])
@pytest.mark.parametrize("doc", DOC_IDS)
def test_code_spans_of_the_code(doc: str, kind: str) -> None:
    errors = []
    for claim in docs()[doc].spans:
        found, check = classify(claim.text)
        if found == kind:
            errors += [f"{claim}: {e}" for e in check()]
    assert not errors, _report(errors)


@pytest.mark.parametrize("doc", DOC_IDS)
def test_log_messages_and_quotes_are_in_the_code(doc: str) -> None:
    errors = []
    for claim in docs()[doc].spans:
        found, check = classify(claim.text)
        if found in ("log message", "json"):
            errors += [f"{claim}: {e}" for e in check()]
    for claim in docs()[doc].quotes:
        if not fragment_in_code(claim.text):
            errors.append(f"{claim}: no string in src/claude_proxy says this")
    assert not errors, _report(errors)


@pytest.mark.parametrize("doc", DOC_IDS)
def test_commands_in_code_spans(doc: str) -> None:
    errors = []
    for claim in docs()[doc].spans:
        found, check = classify(claim.text)
        if found in ("command", "terraform flag"):
            errors += [f"{claim}: {e}" for e in check()]
    assert not errors, _report(errors)


@pytest.mark.parametrize("doc", DOC_IDS)
def test_aws_names_are_in_the_terraform(doc: str) -> None:
    """Every claude-proxy-* and /ecs/... name, in spans, prose, tables and fences alike."""
    errors = []
    d = docs()[doc]
    seen: set[str] = set()
    for claim in d.spans:
        found, check = classify(claim.text)
        if found == "aws name":
            seen.add(claim.text)
            errors += [f"{claim}: {e}" for e in check()]
    for claim in d.fences:
        for m in re.finditer(r"(?<![\w/.-])(claude-proxy(?:-[a-z0-9]+)+|/ecs/[\w-]+)", claim.text):
            name = m.group(1)
            if name not in seen and name.split("-")[-1] not in ("key", "url"):
                seen.add(name)
                problem = check_aws_name(name)
                line = claim.line + claim.text.count("\n", 0, m.start())
                errors += [f"{doc}:{line}: {problem}"] if problem else []
    assert not errors, _report(errors)


@pytest.mark.parametrize("doc", DOC_IDS)
def test_other_spans_are_known_words_paths_or_allowed(doc: str) -> None:
    errors = []
    for claim in docs()[doc].spans:
        found, check = classify(claim.text)
        if found in ("word", "path", "option"):
            errors += [f"{claim}: {e}" for e in check()]
    assert not errors, _report(errors)


@pytest.mark.parametrize("doc", DOC_IDS)
def test_fenced_commands(doc: str) -> None:
    """Shell blocks: every command is one the tools accept, with names that exist."""
    errors = []
    for fence in docs()[doc].fences:
        if fence.kind not in SHELL_FENCES:
            continue
        for words in split_commands(fence.text):
            errors += [f"{fence.doc}:{fence.line}: {e}" for e in check_command(words)]
    assert not errors, _report(errors)


@pytest.mark.parametrize("doc", DOC_IDS)
def test_other_fences(doc: str) -> None:
    """tfvars name root variables; Python compiles and calls the SDK as it is; Logs Insights
    queries are copies of observability.md's or filter on messages the code logs."""
    import anthropic

    observability = (ROOT / "docs" / "observability.md").read_text()
    errors = []
    for fence in docs()[doc].fences:
        where = f"{fence.doc}:{fence.line}"
        if fence.kind == "fence:hcl":
            root = terraform_root()
            for name in re.findall(r"^\s*(\w+)\s*=", fence.text, re.M):
                if root is None or name not in root.variables:
                    errors.append(f"{where}: {name}: not a variable of the production root")
        elif fence.kind == "fence:python":
            tree = ast.parse(fence.text)
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "anthropic.Anthropic":
                    params = set(anthropic.Anthropic.__init__.__code__.co_varnames)
                    for kw in node.keywords:
                        if kw.arg not in params:
                            errors.append(f"{where}: anthropic.Anthropic has no {kw.arg!r}")
        elif fence.kind == "fence:text":
            if fence.text.strip() in observability:
                continue
            for pattern in re.findall(r"like /((?:\\/|[^/])+)/", fence.text):
                if not fragment_in_code(re.sub(r"\\(.)", r"\1", pattern)):
                    errors.append(f"{where}: /{pattern}/ matches no message of the code")
            for quoted in re.findall(r'= "([^"]+)"', fence.text):
                if not fragment_in_code(quoted):
                    errors.append(f"{where}: {quoted!r}: the code never logs it")
            for m in re.finditer(r"claude-[a-z]+-[\d.-]+\b", fence.text):
                errors += [] if m.group(0) in price_models() else [f"{where}: {m.group(0)}"]
    assert not errors, _report(errors)


@pytest.mark.parametrize("doc", DOC_IDS)
def test_model_names_are_known(doc: str) -> None:
    """Model ids cited anywhere are in the price table (patterns match one)."""
    errors = []
    text = docs()[doc].text
    for m in re.finditer(r"\bclaude-(?:opus|sonnet|haiku)-[\w.*-]*[\w*]", text):
        model = m.group(0)
        if not any(fnmatch.fnmatchcase(known, model) for known in price_models()):
            errors.append(f"{doc}:{_line_of(text, m.start())}: {model}: not in the price table")
    assert not errors, _report(errors)


def _first_number(cell: str) -> float | None:
    m = re.search(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.])", cell.replace("`", ""))
    return float(m.group(1)) if m else None


def _row_name(cells: list[str]) -> str | None:
    m = re.match(r"`([^`]+)`", cells[0]) if cells else None
    return m.group(1) if m else None


def terraform_default(name: str) -> tuple[bool, Any]:
    """(found, default) of a Terraform variable: the production root's, else a module's
    (when every module that declares it agrees)."""
    root = terraform_root()
    if root is not None and name in root.variables:
        return True, root.variables[name].get("default")
    defaults = {
        json.dumps(mod.variables[name].get("default"))
        for mod in terraform().values()
        if name in mod.variables
    }
    if len(defaults) == 1:
        return True, json.loads(defaults.pop())
    return False, None


def _same(cited: str, default: Any) -> bool:
    cited = cited.strip().strip("`").strip()
    if isinstance(default, bool):
        return cited == str(default).lower()
    if isinstance(default, int | float):
        number = _first_number(cited)
        return number is not None and number == float(default)
    return isinstance(default, str) and cited == default


@pytest.mark.parametrize("doc", DOC_IDS)
def test_table_defaults_are_the_code_and_terraform_defaults(doc: str) -> None:
    """A `default` column gives the Settings default of a setting, or the default of a
    Terraform variable."""
    errors = []
    for table in docs()[doc].tables:
        if "default" not in table.header:
            continue
        col = table.header.index("default")
        for line, cells in table.rows:
            name = _row_name(cells)
            if name is not None and name in settings_env():
                default = settings_env()[name][1].default
                where = "config.Settings"
            else:
                found, default = terraform_default(name or "")
                where = "deploy/terraform"
                if not found:
                    errors.append(f"{doc}:{line}: a default for {cells[0]!r}: no such setting")
                    continue
            if not _same(cells[col], default):
                errors.append(f"{doc}:{line}: {name}: default {cells[col]!r}, {where}: {default!r}")
    assert not errors, _report(errors)


@pytest.mark.parametrize("doc", DOC_IDS)
def test_table_container_values_are_the_task_definitions(doc: str) -> None:
    errors = []
    for table in docs()[doc].tables:
        cols = [i for i, h in enumerate(table.header) if "container" in h]
        for col in cols:
            for line, cells in table.rows:
                name = _row_name(cells)
                values = container_env().get(name or "", [])
                cited = cells[col].strip("` ")
                if cited not in values:
                    errors.append(f"{doc}:{line}: {name}={cited}: the container sets {values}")
    assert not errors, _report(errors)


@pytest.mark.parametrize("doc", DOC_IDS)
def test_table_thresholds_are_the_terraforms(doc: str) -> None:
    """A threshold or target cited next to an alarm or policy is in its Terraform block."""
    errors = []
    for table in docs()[doc].tables:
        cols = [i for i, h in enumerate(table.header) if h in ("threshold", "target")]
        for line, cells in table.rows:
            name = _row_name(cells)
            if not cols or name is None or not AWS_NAME.fullmatch(name):
                continue
            numbers = block_numbers(name)
            for col in cols:
                cited = _first_number(cells[col])
                if cited is None:
                    continue
                if numbers is None:
                    errors.append(f"{doc}:{line}: {name}: no Terraform block names it")
                elif cited not in numbers:
                    errors.append(
                        f"{doc}:{line}: {name}: {cited:g} is not in its Terraform block "
                        f"({sorted(numbers)})"
                    )
    assert not errors, _report(errors)


UNIT_NUMBER = re.compile(
    r"(?<![\w.$/-])(\d+(?:\.\d+)?)\s?(s|ms|%|seconds|minutes|days|MiB|GiB|KiB)(?![\w])"
)


@cache
def known_numbers() -> frozenset[float]:
    found: set[float] = set(terraform_numbers())
    for _, info in settings_env().values():
        d = info.default
        if isinstance(d, int | float) and not isinstance(d, bool):
            found.add(float(d))
            if isinstance(d, float) and 0 < d < 1:
                found.add(round(d * 100, 6))  # a ratio cited as a percentage
    for value in dockerfile_env().values():
        found.update(float(n) for n in re.findall(r"^\d+(?:\.\d+)?$", value))
    return frozenset(found)


@pytest.mark.parametrize("doc", DOC_IDS)
def test_numbers_with_units_are_known(doc: str) -> None:
    """`110 s`, `85 %`, `30 days`: each is a default of Settings or a number of the
    Terraform or the Dockerfile. Sums are checked too: a + b + c = d."""
    d = docs()[doc]
    errors = []
    texts = [(d.prose, 1)] + [(f.text, f.line) for f in d.fences if f.kind == "fence:text"]
    for text, offset in texts:
        # The total of a sum whose terms are known is known too (110 s in 10 s + 90 s +
        # 10 s = 110 s), once the sum is right.
        totals = set()
        for m in re.finditer(r"((?:\d+ s \+ )+\d+ s) = (\d+) s", text):
            terms = [int(n) for n in re.findall(r"\d+", m.group(1))]
            if sum(terms) != int(m.group(2)):
                errors.append(f"{doc}: {m.group(0)}: the sum is {sum(terms)}")
            elif all(float(t) in known_numbers() for t in terms):
                totals.add(float(m.group(2)))
        for m in UNIT_NUMBER.finditer(text):
            number = float(m.group(1))
            if number not in known_numbers() | totals:
                line = offset + text.count("\n", 0, m.start())
                errors.append(f"{doc}:{line}: {m.group(0)}: neither a setting nor in deploy/")
    assert not errors, _report(errors)


def _one(values: Iterable[float], what: str) -> float:
    found = set(values)
    assert len(found) == 1, f"{what}: expected one value in deploy/terraform, found {found}"
    return found.pop()


def _attribute_values(attribute: str) -> list[float]:
    """The values `attribute = ...` takes anywhere in the Terraform (objects inside
    expressions, such as a container definition, included), variables resolved."""
    out = []
    inside = re.compile(rf"(?<![\w.]){re.escape(attribute)}\s*=\s*([\w.()]+)")
    for path, mod in terraform().items():
        expressions: list[Any] = []
        for holder in _dicts(mod.body):
            if attribute in holder:
                expressions.append(holder[attribute])
        for value in _walk(mod.body):
            if isinstance(value, str):
                expressions += ["${" + m + "}" for m in inside.findall(value)]
        for expression in expressions:
            if isinstance(expression, str):
                expression = re.sub(r"^\$\{(\d+(?:\.\d+)?)\}$", r"\1", expression)
            for value in resolve(expression, path):
                with contextlib.suppress(TypeError, ValueError):
                    out.append(float(value))
    return out


def test_drain_fits_the_stop_timeout_and_the_load_balancer() -> None:
    """What the runbook's deployment section rests on: pre-stop + drain + log flush (as the
    container sets them) < stopTimeout <= 120 s (Fargate's maximum); the target group's
    deregistration delay (what a deployment gives a stream before SIGTERM) 600-3600 s and
    above every idle timeout; the keep-alive above the ALB's idle timeout, the upstream idle
    timeout below it."""
    env = container_env()

    def setting(name: str) -> float:
        values = env.get(name)
        if values:
            return float(values[0])
        return float(settings_env()[name][1].default)

    drain = sum(
        setting(n)
        for n in (
            "CLAUDE_PROXY_PRE_STOP_SECONDS",
            "CLAUDE_PROXY_DRAIN_SECONDS",
            "CLAUDE_PROXY_LOG_FLUSH_TIMEOUT_SECONDS",
        )
    )
    stop_timeout = _one(_attribute_values("stopTimeout"), "stopTimeout")
    deregistration = _one(_attribute_values("deregistration_delay"), "deregistration_delay")
    idle = _one(_attribute_values("idle_timeout"), "the ALB's idle_timeout")
    keepalive = setting("CLAUDE_PROXY_KEEPALIVE_SECONDS")
    upstream_idle = setting("CLAUDE_PROXY_IDLE_TIMEOUT_SECONDS")
    assert drain < stop_timeout <= 120, (drain, stop_timeout)
    assert 600 <= deregistration <= 3600, deregistration
    assert deregistration > max(idle, keepalive, upstream_idle), (deregistration, idle, keepalive)
    assert upstream_idle < idle < keepalive, (upstream_idle, idle, keepalive)
    # The whole shutdown budget is the task definition's, not left to the image.
    set_by_terraform = {
        key
        for mod in terraform().values()
        for holder in _dicts([mod.locals, mod.body])
        for key in holder
        if isinstance(key, str) and key.startswith("CLAUDE_PROXY_")
    }
    for name in ("CLAUDE_PROXY_PRE_STOP_SECONDS", "CLAUDE_PROXY_DRAIN_SECONDS",
                 "CLAUDE_PROXY_LOG_FLUSH_TIMEOUT_SECONDS"):  # fmt: skip
        assert name in set_by_terraform, f"the task definition does not set {name}"


def test_the_allowlist_holds_only_what_the_docs_cite() -> None:
    """ALLOWED is for claims no check can verify; an entry no page cites any more goes."""
    texts = {claim.text for claim in all_claims()}
    unused = sorted(set(ALLOWED) - texts)
    assert not unused, f"ALLOWED entries no page cites any more: {unused}"


# ------------------------------------------------------------- the checker itself


INVENTED = """\
# A made-up page

| setting | default |
|---|---|
| `CLAUDE_PROXY_DRAIN_SECONDS` | 60 |

| alarm | threshold |
|---|---|
| `claude-proxy-cpu-high` | 99 |

Alarm `claude-proxy-invented-alarm`, metric `claude_proxy_invented_total`, setting
`CLAUDE_PROXY_NO_SUCH_SETTING`, logger `claude_proxy.nowhere`, route `/healthz`,
`POST /admin/api/keys/{id}/undelete`, log line `circuit breaker: sideways`, label
`claude_proxy_log_rows_total{outcome="lost"}`, `claude-proxy keys frobnicate ID`,
`x-invented-header`, `frobnicated_widget`, and "a message nobody logs". A drain of 77 s.

```bash
aws ecs wait services-exploded --cluster claude-proxy-cluster
aws ecs update-service --cluster claude-proxy-cluster --service claude-proxy-service --force
claude-proxy usage --by week
terraform apply -var no_such_variable=1
rm -rf /
```
"""


def test_the_checks_reject_invented_claims() -> None:
    """Each check fails on a claim made up for it: a check that passes everything proves
    nothing. (The Terraform-backed checks fail here while the Terraform is missing too.)"""
    doc = parse_doc("invented.md", INVENTED)
    problems: dict[str, list[str]] = {}
    for claim in doc.spans:
        if claim.text in ("CLAUDE_PROXY_DRAIN_SECONDS", "claude-proxy-cpu-high"):
            continue  # true names, with false numbers in the tables
        _, check = classify(claim.text)
        problems[claim.text] = check()
    for text, found in problems.items():
        assert found, f"{text!r} passed its check"
    assert not fragment_in_code(doc.quotes[0].text)
    fence_problems = [e for c in split_commands(doc.fences[0].text) for e in check_command(c)]
    for expected in ("services-exploded", "--force", "--by", "no_such_variable", "rm"):
        assert any(expected in p for p in fence_problems), (expected, fence_problems)
    assert 77.0 not in known_numbers()
    default_table, alarm_table = doc.tables
    _, cells = default_table.rows[0]
    assert settings_env()[_row_name(cells) or ""][1].default != _first_number(cells[1])
    _, cells = alarm_table.rows[0]
    numbers = block_numbers("claude-proxy-cpu-high")
    assert numbers is None or 99.0 not in numbers


def test_fragment_matching_handles_placeholders() -> None:
    assert fragment_in_code("circuit breaker: closed -> open")  # "%s -> %s" in breaker.py
    assert fragment_in_code("Streaming error")
    assert fragment_in_code("Timeout (idle)")
    assert not fragment_in_code("circuit breaker: exploded")
    assert not fragment_in_code("Timeout (forever)")
