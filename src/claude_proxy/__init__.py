"""claude-proxy: a self-hosted, byte-transparent gateway for the Anthropic API.

The package root holds only entry points: `app` (routing and lifespan), `wiring` (builds
every component once and passes it in), `settings`, `child` (the child processes) and
`__main__`. Everything else lives in one folder per layer, and a layer imports only the
layers below it (docs/architecture.md; `lint-imports` enforces it):

    cli        the command line
    admin      the admin API
    formats    wire formats: anthropic/ (the pass-through relay, SSE observer, endpoints,
               prices, batches, error shapes) and openai/ (Chat Completions); independent
    gateway    the format-neutral request path: keys, limits, body budget, dispatch with
               retries and breaker, one error value, the wire-format seam
    upstream   the HTTP/1.1 client pool and the upstream-auth seam  } know no wire format
    http       our HTTP/1.1 server protocol, runner, drain           }
    telemetry  logging, metrics, EMF, tracing, live counts
    store      the database and the request record: a leaf

The emulator stands apart: it shares only the HTTP layer's gc setup with the proxy.
"""

__version__ = "0.1.0"
