"""The EMF lines: checked against the CloudWatch Embedded Metric Format specification.

https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html

`EMF_SCHEMA` is the specification's document structure as a JSON Schema; `emf_problems`
adds the rules a schema cannot express (the members that the directives name must be
there, with the right types). tests/e2e/test_emf.py validates a real proxy's lines with
`check_line`.
"""

from __future__ import annotations

import asyncio
import copy
import io
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from claude_proxy.telemetry.emf import EmfReporter, emf_line
from claude_proxy.telemetry.reporter import LiveCounts

NAMESPACE = "ClaudeProxy"
SERVICE = "claude-proxy-service"
GAUGES = ("ActiveStreams", "ActiveConnections")
COUNTERS = ("RequestCount", "Upstream5xx", "ProxyErrors")

# The units CloudWatch accepts (MetricDatum.Unit), the only ones the specification allows.
EMF_UNITS = [
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
]

# "Unless otherwise noted, objects defined by this specification MUST NOT contain any
# additional members": the metadata, MetricDirective and MetricDefinition objects. The
# root object MAY hold any other member (the target members among them).
EMF_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "CloudWatch Embedded Metric Format document",
    "type": "object",
    "required": ["_aws"],
    "properties": {
        "_aws": {
            "title": "Metadata",
            "type": "object",
            "required": ["Timestamp", "CloudWatchMetrics"],
            "additionalProperties": False,
            "properties": {
                # Milliseconds since 1970-01-01T00:00:00Z.
                "Timestamp": {"type": "integer", "minimum": 0},
                "CloudWatchMetrics": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/MetricDirective"},
                },
            },
        }
    },
    "$defs": {
        "MetricDirective": {
            "type": "object",
            "required": ["Namespace", "Dimensions", "Metrics"],
            "additionalProperties": False,
            "properties": {
                "Namespace": {"type": "string", "minLength": 1, "maxLength": 1024},
                "Dimensions": {"type": "array", "items": {"$ref": "#/$defs/DimensionSet"}},
                "Metrics": {
                    "type": "array",
                    "maxItems": 100,
                    "items": {"$ref": "#/$defs/MetricDefinition"},
                },
            },
        },
        # Names of root members whose (string) values are the dimension values.
        "DimensionSet": {
            "type": "array",
            "maxItems": 30,
            "items": {"type": "string", "minLength": 1, "maxLength": 250},
        },
        "MetricDefinition": {
            "type": "object",
            "required": ["Name"],
            "additionalProperties": False,
            "properties": {
                "Name": {"type": "string", "minLength": 1, "maxLength": 1024},
                "Unit": {"enum": EMF_UNITS},
                "StorageResolution": {"type": "integer", "enum": [1, 60]},
            },
        },
    },
}

_VALIDATOR = Draft202012Validator(EMF_SCHEMA)


def _is_number(value: object) -> bool:
    # JSON true/false are not numbers (Python's bool is an int).
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def emf_problems(doc: Any) -> list[str]:
    """Everything wrong with `doc` as an EMF document: the schema's errors, then the rules
    on target members (a dimension's member is a string, a metric's a number or an array of
    at most 100 numbers) that the schema cannot express."""
    problems = [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in _VALIDATOR.iter_errors(doc)
    ]
    if problems:
        return problems
    for directive in doc["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for name in dimension_set:
                value = doc.get(name)
                if not isinstance(value, str) or not 1 <= len(value) <= 1024:
                    problems.append(f"dimension {name!r}: no string member 1-1024 chars: {value!r}")
        for metric in directive["Metrics"]:
            name = metric["Name"]
            if name not in doc:
                problems.append(f"metric {name!r}: no member of that name")
                continue
            value = doc[name]
            ok = _is_number(value) or (
                isinstance(value, list)
                and 1 <= len(value) <= 100
                and all(_is_number(v) for v in value)
            )
            if not ok:
                problems.append(f"metric {name!r}: not a number or array of numbers: {value!r}")
    return problems


def check_line(line: str) -> dict[str, Any]:
    """Parse one line of output as the proxy's EMF line and check it; return the document."""
    assert line.endswith("\n") and line.count("\n") == 1, repr(line)
    doc: dict[str, Any] = orjson.loads(line)
    assert emf_problems(doc) == []
    # Integer milliseconds in the text itself, not 1.7e12 or 1700000000000.0.
    assert isinstance(doc["_aws"]["Timestamp"], int)
    [directive] = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == NAMESPACE
    assert directive["Dimensions"] == [["ServiceName"]]
    assert directive["Metrics"] == [{"Name": n, "Unit": "Count"} for n in GAUGES + COUNTERS]
    assert doc["ServiceName"] == SERVICE
    for name in GAUGES + COUNTERS:
        assert isinstance(doc[name], int) and doc[name] >= 0, (name, doc[name])
    assert set(doc) == {"_aws", "ServiceName", *GAUGES, *COUNTERS}
    return doc


def counts(**values: int) -> dict[str, int]:
    snap = LiveCounts().snapshot()
    snap.update(values)
    return snap


def a_line(**values: int) -> dict[str, Any]:
    return emf_line(counts(**values), counts(), NAMESPACE, SERVICE, time.time())


# --- the schema and the checks themselves --------------------------------------------


def test_the_schema_is_a_valid_json_schema() -> None:
    Draft202012Validator.check_schema(EMF_SCHEMA)


def test_the_specifications_own_example_passes() -> None:
    example = {
        "_aws": {
            "Timestamp": 1574109732004,
            "CloudWatchMetrics": [
                {
                    "Namespace": "lambda-function-metrics",
                    "Dimensions": [["functionVersion"]],
                    "Metrics": [{"Name": "time", "Unit": "Milliseconds", "StorageResolution": 60}],
                }
            ],
        },
        "functionVersion": "$LATEST",
        "time": 100,
        "requestId": "989ffbf8-9ace-4817-a57c-e4dd734019ee",
    }
    assert emf_problems(example) == []


def _break(path: tuple[str | int, ...], value: object) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        node: Any = doc
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return apply


AWS = ("_aws",)
DIRECTIVE = ("_aws", "CloudWatchMetrics", 0)
FIRST_METRIC = (*DIRECTIVE, "Metrics", 0)


@pytest.mark.parametrize(
    "mutate",
    [
        _break(AWS, KeyError),
        _break((*AWS, "Timestamp"), KeyError),
        _break((*AWS, "Timestamp"), 1.7e12 + 0.5),
        _break((*AWS, "Timestamp"), "1700000000000"),
        _break((*AWS, "CloudWatchMetrics"), KeyError),
        _break((*AWS, "CloudWatchMetrics"), {}),
        _break((*AWS, "Extra"), 1),
        _break((*DIRECTIVE, "Namespace"), KeyError),
        _break((*DIRECTIVE, "Namespace"), ""),
        _break((*DIRECTIVE, "Namespace"), "x" * 1025),
        _break((*DIRECTIVE, "Dimensions"), KeyError),
        _break((*DIRECTIVE, "Dimensions"), ["ServiceName"]),
        _break((*DIRECTIVE, "Dimensions"), [[f"d{i}" for i in range(31)]]),
        _break((*DIRECTIVE, "Metrics"), KeyError),
        _break((*DIRECTIVE, "Metrics"), [{"Name": f"m{i}"} for i in range(101)]),
        _break((*DIRECTIVE, "Extra"), 1),
        _break((*FIRST_METRIC, "Name"), KeyError),
        _break((*FIRST_METRIC, "Name"), ""),
        _break((*FIRST_METRIC, "Unit"), "count"),
        _break((*FIRST_METRIC, "Unit"), "Requests"),
        _break((*FIRST_METRIC, "StorageResolution"), 5),
        _break((*FIRST_METRIC, "Extra"), 1),
        # Target members: what the schema cannot see.
        _break(("ServiceName",), KeyError),
        _break(("ServiceName",), 7),
        _break(("ServiceName",), ""),
        _break(("ActiveStreams",), KeyError),
        _break(("ActiveStreams",), "3"),
        _break(("ActiveStreams",), True),
        _break(("ActiveStreams",), None),
        _break(("ActiveStreams",), []),
        _break(("ActiveStreams",), [1, "2"]),
        _break(("ActiveStreams",), list(range(101))),
    ],
)
def test_the_checks_catch_what_the_specification_forbids(
    mutate: Callable[[dict[str, Any]], None],
) -> None:
    doc = a_line(active_streams=1)
    assert emf_problems(doc) == []
    broken = copy.deepcopy(doc)
    mutate(broken)
    assert emf_problems(broken) != []


def test_an_array_of_values_and_a_storage_resolution_are_allowed() -> None:
    doc = a_line()
    doc["ActiveStreams"] = [1, 2.5, 3]
    doc["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["StorageResolution"] = 1
    assert emf_problems(doc) == []


# --- emf_line ------------------------------------------------------------------------


def test_a_line_follows_the_specification() -> None:
    doc = a_line(active_streams=2, active_connections=3, requests=10)
    line = orjson.dumps(doc).decode() + "\n"
    assert check_line(line) == doc


def test_gauges_are_current_values_and_counters_count_the_interval() -> None:
    previous = counts(active_streams=9, active_connections=9, requests=100, upstream_5xx=4)
    now = counts(
        active_streams=2, active_connections=5, requests=130, upstream_5xx=7, proxy_errors=1
    )
    doc = emf_line(now, previous, NAMESPACE, SERVICE, 1_700_000_000.0)
    assert {k: doc[k] for k in GAUGES + COUNTERS} == {
        "ActiveStreams": 2,
        "ActiveConnections": 5,
        "RequestCount": 30,
        "Upstream5xx": 3,
        "ProxyErrors": 1,
    }


def test_the_timestamp_is_integer_milliseconds_since_the_epoch() -> None:
    doc = emf_line(counts(), counts(), NAMESPACE, SERVICE, 1_700_000_000.1239)
    assert doc["_aws"]["Timestamp"] == 1_700_000_000_123


def test_namespace_and_service_come_from_the_arguments() -> None:
    doc = emf_line(counts(), counts(), "Other/Space", "svc-b", 0.0)
    assert doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Other/Space"
    assert doc["ServiceName"] == "svc-b"
    assert emf_problems(doc) == []


# --- EmfReporter ---------------------------------------------------------------------


class Lines:
    """A writer that keeps the lines and runs `on_write[i]` after the i-th one (to change
    the counts between two lines, deterministically), and wakes the test after `until`."""

    def __init__(
        self, until: int, on_write: list[Callable[[], None]] | None = None, fail: int = 0
    ) -> None:
        self.lines: list[str] = []
        self.calls = 0
        self.until = until
        self.on_write = on_write or []
        self.fail = fail  # the first `fail` writes raise
        self.done = asyncio.Event()

    def __call__(self, line: str) -> None:
        self.calls += 1
        if self.calls <= self.fail:
            raise OSError("stdout is gone")
        self.lines.append(line)
        i = len(self.lines) - 1
        if i < len(self.on_write):
            self.on_write[i]()
        if len(self.lines) >= self.until:
            self.done.set()

    def docs(self) -> list[dict[str, Any]]:
        return [check_line(line) for line in self.lines]


async def run_until_done(reporter: EmfReporter, lines: Lines) -> None:
    task = asyncio.create_task(reporter.run())
    try:
        await asyncio.wait_for(lines.done.wait(), 5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def bump(live: LiveCounts, **delta: int) -> Callable[[], None]:
    def apply() -> None:
        for name, d in delta.items():
            setattr(live, name, getattr(live, name) + d)

    return apply


async def test_each_line_counts_its_own_interval_from_start_on() -> None:
    live = LiveCounts(active_streams=1, active_connections=2, requests=4, upstream_5xx=1)
    lines = Lines(
        until=4,
        on_write=[
            bump(live, requests=3, active_streams=2, proxy_errors=1),
            bump(live, active_streams=-3, active_connections=-2),
            bump(live, requests=5, upstream_5xx=2),
        ],
    )
    reporter = EmfReporter(
        live=live, namespace=NAMESPACE, service=SERVICE, interval=0.01, write=lines
    )
    await run_until_done(reporter, lines)
    got = [tuple(d[k] for k in GAUGES + COUNTERS) for d in lines.docs()[:4]]
    assert got == [
        (1, 2, 4, 1, 0),  # the first line: since start
        (3, 2, 3, 0, 1),
        (0, 0, 0, 0, 0),
        (0, 0, 5, 2, 0),
    ]


async def test_a_failed_line_is_logged_and_its_counts_go_into_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    live = LiveCounts(requests=7, proxy_errors=2)
    lines = Lines(until=1, fail=2)
    reporter = EmfReporter(
        live=live, namespace=NAMESPACE, service=SERVICE, interval=0.01, write=lines
    )
    with caplog.at_level(logging.ERROR, logger="claude_proxy.emf"):
        await run_until_done(reporter, lines)
    assert [r.getMessage() for r in caplog.records].count("EMF line not written") == 2
    first = lines.docs()[0]
    assert (first["RequestCount"], first["ProxyErrors"]) == (7, 2)


async def test_a_line_that_cannot_be_built_is_logged_and_the_reporter_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock_calls = 0

    def clock() -> float:
        nonlocal clock_calls
        clock_calls += 1
        if clock_calls == 1:
            return math.nan  # int(nan * 1000) raises ValueError
        return time.time()

    lines = Lines(until=1)
    reporter = EmfReporter(
        live=LiveCounts(requests=1),
        namespace=NAMESPACE,
        service=SERVICE,
        interval=0.01,
        write=lines,
        clock=clock,
    )
    with caplog.at_level(logging.ERROR, logger="claude_proxy.emf"):
        await run_until_done(reporter, lines)
    assert "EMF line not written" in caplog.text
    assert lines.docs()[0]["RequestCount"] == 1


async def cancel_soon(reporter: EmfReporter, before_cancel: Callable[[], None]) -> None:
    """Start run() (interval long enough that no tick comes), then cancel it."""
    task = asyncio.create_task(reporter.run())
    await asyncio.sleep(0)  # one turn of the loop: run() is now waiting for its first tick
    before_cancel()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelled_it_writes_the_last_partial_interval_then_stops() -> None:
    live = LiveCounts(active_streams=1)
    lines = Lines(until=1)
    reporter = EmfReporter(
        live=live, namespace=NAMESPACE, service=SERVICE, interval=3600, write=lines
    )
    await cancel_soon(reporter, bump(live, requests=2, upstream_5xx=1))
    [doc] = lines.docs()
    assert (doc["ActiveStreams"], doc["RequestCount"], doc["Upstream5xx"]) == (1, 2, 1)


async def test_cancelled_with_no_counter_moved_it_writes_nothing() -> None:
    live = LiveCounts()
    lines = Lines(until=1)
    reporter = EmfReporter(
        live=live, namespace=NAMESPACE, service=SERVICE, interval=3600, write=lines
    )
    await cancel_soon(reporter, bump(live, active_streams=1, active_connections=1))
    assert lines.lines == []


async def test_the_interval_sets_the_pace() -> None:
    lines = Lines(until=3)
    reporter = EmfReporter(
        live=LiveCounts(), namespace=NAMESPACE, service=SERVICE, interval=0.05, write=lines
    )
    started = time.monotonic()
    await run_until_done(reporter, lines)
    assert time.monotonic() - started >= 0.15 - 0.01


def test_one_line_is_one_write_to_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stdout(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[str] = []
            self.flushes = 0

        def write(self, s: str) -> int:
            self.writes.append(s)
            return super().write(s)

        def flush(self) -> None:
            self.flushes += 1

    out = Stdout()
    monkeypatch.setattr("sys.stdout", out)
    reporter = EmfReporter(
        live=LiveCounts(requests=3), namespace=NAMESPACE, service=SERVICE, interval=60
    )
    assert reporter.emit()
    assert len(out.writes) == 1 and out.flushes == 1
    assert check_line(out.writes[0])["RequestCount"] == 3


@pytest.mark.parametrize("interval", [0, -1, math.nan])
def test_the_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        EmfReporter(live=LiveCounts(), namespace=NAMESPACE, service=SERVICE, interval=interval)
