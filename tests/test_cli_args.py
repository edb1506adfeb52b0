"""Command-line values a person can mistype: a clear usage error, never a traceback."""

from __future__ import annotations

import pytest

from claude_proxy.cli.main import main


@pytest.mark.parametrize(
    "argv",
    [
        ["usage", "--since", "99999999999d"],
        ["usage", "--since", "99999999999999999999999999w"],
        ["keys", "create", "--name", "n", "--expires", "99999999999d"],
    ],
)
def test_huge_durations_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2  # argparse's usage error
    err = capsys.readouterr().err
    assert "longer than 100 years" in err and "Traceback" not in err
