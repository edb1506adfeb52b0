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


@pytest.mark.parametrize(
    ("env", "said"),
    [
        (
            {"CLAUDE_PROXY_OIDC_ISSUER": "https://idp.example.com"},
            "also set CLAUDE_PROXY_OIDC_CLIENT_ID, CLAUDE_PROXY_OIDC_CLIENT_SECRET, "
            "CLAUDE_PROXY_PUBLIC_URL, CLAUDE_PROXY_SESSION_SECRET",
        ),
        ({"CLAUDE_PROXY_SESSION_SECRET": "too-short"}, "at least 32 characters"),
    ],
)
def test_half_configured_sign_in_stops_the_start_with_what_is_missing(
    env: dict[str, str],
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--port", "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert "too-short" not in err  # the secret itself is never echoed
