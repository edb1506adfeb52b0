"""The checkov gate: deploy/terraform has no failed checkov check.

    checkov -d deploy/terraform --framework terraform --skip-download --quiet --compact -o json

must report zero failed checks, with no parsing error. A check that does not apply is
skipped in the Terraform itself, inside the resource, with the reason:

    # checkov:skip=CKV_AWS_123: why this check does not apply here

and nowhere else: checkov runs with no configuration file (none may be in the repository
or in deploy/terraform, and HOME is a scratch directory), no CKV_* environment variable,
and no --skip-check. Every inline skip must give its reason, and every one must be used
(checkov counts as many skipped checks as there are skip comments).

checkov lives in a venv of its own (its python-hcl2 pin clashes with the project's):
`make test` builds .venv-checkov and sets CLAUDE_PROXY_CHECKOV. Without it this test
FAILS, never skips: it is the only security scan of the Terraform. --skip-download keeps
it offline (no Prisma Cloud guidelines, no module downloads).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "deploy" / "terraform"
# `make test` passes it relative to the repository.
CHECKOV = ROOT / (os.environ.get("CLAUDE_PROXY_CHECKOV") or ".venv-checkov/bin/checkov")
TIMEOUT = 300

# checkov's own pattern (checkov/common/comment/enum.py), for a comment line.
SKIP = re.compile(
    r"^\s*(?:#|//)\s*(?:checkov|bridgecrew|cortex):skip=\s*([A-Za-z_\d-]+(?:,[A-Za-z_\d-]+)*)?"
    r"(?::(.*))?$"
)
MIN_REASON_WORDS = 3

pytestmark = pytest.mark.checkov


@dataclass(frozen=True)
class Skip:
    path: Path
    line: int
    check_ids: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.check_ids}: {self.reason!r}"


def _inline_skips() -> list[Skip]:
    skips = []
    for path in sorted(TF_DIR.rglob("*.tf")):
        if ".terraform" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if match := SKIP.match(line):
                skips.append(Skip(path, number, match[1] or "", (match[2] or "").strip()))
    return skips


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not CHECKOV.is_file():
        pytest.fail(
            f"\n{'!' * 78}\ncheckov is not at {CHECKOV}. The checkov gate cannot run: build "
            "its venv with\n  make .venv-checkov/.installed-stamp\n(or point "
            f"CLAUDE_PROXY_CHECKOV at a checkov binary) and run again.\n{'!' * 78}",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("checkov-home")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),  # no ~/.checkov.yaml
        "LANG": "C.UTF-8",
        "LOG_LEVEL": "WARNING",
    }
    proc = subprocess.run(
        [
            str(CHECKOV),
            "-d", str(TF_DIR),
            "--framework", "terraform",
            "--skip-download",
            "--quiet",
            "--compact",
            "-o", "json",
            # local .terraform/ directories (an operator's `terraform init`) are not ours
            "--skip-path", r"\.terraform",
        ],
        cwd=home,  # no .checkov.yaml from the working directory either
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )  # fmt: skip
    try:
        parsed = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"checkov (exit {proc.returncode}) printed no JSON report:\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}",
            pytrace=False,
        )
    reports = parsed if isinstance(parsed, list) else [parsed]
    assert [r.get("check_type") for r in reports] == ["terraform"], reports
    result: dict[str, Any] = reports[0]
    result["returncode"] = proc.returncode
    result["stderr"] = proc.stderr
    return result


def test_checkov_finds_no_failed_check(report: dict[str, Any]) -> None:
    failed = report["results"].get("failed_checks", [])
    lines = [
        f"  {c['check_id']} {c['check_name']}\n"
        f"      {c['resource']} in deploy/terraform{c['file_path']}:{c['file_line_range'][0]}"
        + (f"\n      {c['guideline']}" if c.get("guideline") else "")
        for c in failed
    ]
    assert not failed, (
        f"checkov: {len(failed)} failed check(s). Fix the Terraform, or, if a check does not "
        "apply, skip it inside the resource with the reason:\n"
        "    # checkov:skip=CKV_...: why it does not apply\n" + "\n".join(lines)
    )
    summary = report["summary"]
    assert summary["failed"] == 0, summary
    assert summary["parsing_errors"] == 0, f"checkov could not parse some files: {summary}"
    # It did look at the whole configuration (a wrong -d finds nothing and passes).
    assert summary["resource_count"] >= 50, summary
    assert summary["passed"] >= 50, summary
    assert report["returncode"] == 0, report["stderr"][-3000:]


def test_every_inline_skip_gives_a_reason() -> None:
    bad = [
        str(s)
        for s in _inline_skips()
        if not s.check_ids or len(re.findall(r"[A-Za-z]{2,}", s.reason)) < MIN_REASON_WORDS
    ]
    assert not bad, (
        "checkov skips need the check ID and a reason (a few words on why the check does not "
        "apply): `# checkov:skip=CKV_AWS_123: the reason`. These do not:\n  " + "\n  ".join(bad)
    )


def test_every_inline_skip_is_used(report: dict[str, Any]) -> None:
    """A skip comment outside any resource suppresses nothing: checkov counts one skipped
    check per skip comment that applies. Fewer means a stale or misplaced comment; more,
    a skip from somewhere other than the Terraform."""
    skips = _inline_skips()
    ids = sum(len(s.check_ids.split(",")) for s in skips)
    assert report["summary"]["skipped"] == ids, (
        f"checkov skipped {report['summary']['skipped']} check(s), the .tf files have {ids} "
        "skip comment(s) (a module called more than once counts its skips once per call):\n  "
        + "\n  ".join(map(str, skips))
    )


def test_no_checkov_configuration_file() -> None:
    """Skips live in the Terraform, next to their reason, not in a config file."""
    found = [str(p.relative_to(ROOT)) for d in (ROOT, TF_DIR) for p in d.glob(".checkov.y*ml")]
    assert not found, f"checkov configuration files are not allowed (skip inline): {found}"
