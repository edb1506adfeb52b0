"""`claude-proxy keys create | list | show | revoke | rotate` (placeholder, being written)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    return None
