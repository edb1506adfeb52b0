"""Rewrite the Inputs and Outputs tables of the modules' and the root's README.md.

    .venv/bin/python deploy/terraform/readme_tables.py

The tables sit between <!-- BEGIN_TF_DOCS --> and <!-- END_TF_DOCS --> (terraform-docs'
markers; `terraform-docs markdown table` output is accepted too). tests/deploy/
test_terraform.py fails when a table does not list exactly the variables and outputs.
Needs python-hcl2 (a dev dependency).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import hcl2

HERE = Path(__file__).resolve().parent
MARKERS = re.compile(r"<!-- BEGIN_TF_DOCS -->.*?<!-- END_TF_DOCS -->", re.S)


def _clean(value: Any) -> Any:
    """python-hcl2 keeps the quotes of strings and keys: drop them."""
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"')
    return value


def _expression(value: str) -> str:
    return value[2:-1] if value.startswith("${") and value.endswith("}") else value


def _hcl(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return _expression(value) if value.startswith("${") else json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_hcl(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_hcl(v)}" for k, v in value.items()) + "}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "\\<")


def tables(directory: Path) -> str:
    variables: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as fh:
            doc = _clean(hcl2.load(fh))
        for block in doc.get("variable", []):
            variables.update(block)
        for block in doc.get("output", []):
            outputs.update(block)
    lines = [
        "## Inputs",
        "",
        "| Name | Description | Type | Default | Required |",
        "|------|-------------|------|---------|:--------:|",
    ]
    for name in sorted(variables):
        spec = variables[name]
        kind = _expression(spec.get("type", "any"))
        default = f"`{_cell(_hcl(spec['default']))}`" if "default" in spec else "n/a"
        required = "no" if "default" in spec else "yes"
        description = _cell(spec.get("description", ""))
        lines.append(f"| `{name}` | {description} | `{_cell(kind)}` | {default} | {required} |")
    lines += ["", "## Outputs", "", "| Name | Description |", "|------|-------------|"]
    for name in sorted(outputs):
        lines.append(f"| `{name}` | {_cell(outputs[name].get('description', ''))} |")
    return "\n".join(lines)


def main() -> None:
    directories = [HERE / "environments" / "production", *sorted((HERE / "modules").iterdir())]
    for directory in directories:
        readme = directory / "README.md"
        if not (directory / "main.tf").is_file() or not readme.is_file():
            continue
        text = readme.read_text()
        found = MARKERS.search(text)
        if not found:
            sys.exit(f"{readme}: no <!-- BEGIN_TF_DOCS --> / <!-- END_TF_DOCS --> markers")
        block = f"<!-- BEGIN_TF_DOCS -->\n{tables(directory)}\n<!-- END_TF_DOCS -->"
        start, end = found.span()
        readme.write_text(text[:start] + block + text[end:])
        print(f"wrote {readme.relative_to(HERE.parents[1])}")


if __name__ == "__main__":
    main()
