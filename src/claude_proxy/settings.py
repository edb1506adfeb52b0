"""Settings from the environment.

Secrets keep their conventional names (ANTHROPIC_API_KEY, DATABASE_URL);
every other setting is CLAUDE_PROXY_*. Each default says why it is what it is.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_UPSTREAM = "https://api.anthropic.com"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLAUDE_PROXY_", extra="ignore")

    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str = Field(
        default=DEFAULT_UPSTREAM, validation_alias=AliasChoices("ANTHROPIC_BASE_URL")
    )
    # SQLite by default so a laptop needs nothing else; postgresql://... in production.
    database_url: str = Field(
        default="sqlite:///claude-proxy.db", validation_alias=AliasChoices("DATABASE_URL")
    )
    # Comma-separated static client keys (the bootstrap option; `claude-proxy keys create`
    # and the admin API make database keys with limits).
    api_keys: SecretStr = SecretStr("")
    # Bearer token for /admin/api/. Unset: the admin API answers 404 and does nothing.
    admin_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("CLAUDE_PROXY_ADMIN_KEY")
    )
    # Set by `claude-proxy serve` when it runs the built-in emulator as upstream.
    demo: bool = False
    # Set by `claude-proxy serve` once it has bound its socket; announced when ready.
    listen_url: str = ""

    # The API's own limit for /v1/messages and count_tokens (larger bodies get 413).
    max_body_bytes: int = 32 * 1024 * 1024
    # Request-body bytes one process holds at once (each body is held whole until it has
    # been forwarded). Past it a body waits up to _BODY_WAIT_SECONDS for room, then gets
    # 529 overloaded_error with retry-after: slow or hostile uploads cannot exhaust memory.
    max_buffered_body_bytes: int = Field(default=128 * 1024 * 1024, ge=1)
    # How clients reach the proxy (https://claude-proxy.example.com), for the results_url of
    # message batches; unset: the request's scheme (X-Forwarded-Proto from a trusted load
    # balancer) and Host.
    public_url: str | None = None
    # How often unsettled message batches are polled until they end (docs/access-control.md).
    batch_poll_seconds: float = Field(default=60.0, gt=0)
    body_wait_seconds: float = Field(default=5.0, ge=0)
    # --- timeouts (docs/reliability.md): each fires as a 504 timeout_error before any byte
    # reached the client, or an SSE error event after; the log line says "Timeout (which)".
    # Reaching api.anthropic.com takes milliseconds; 10 s only trips on a real outage.
    connect_timeout_seconds: float = 10.0
    # From the request sent to the response headers. A streamed answer starts within
    # seconds, but a non-streaming one arrives whole, after the model has written all of it:
    # minutes for a long answer. 600 s is the SDKs' own default request timeout.
    first_byte_timeout_seconds: float = 600.0
    # Longest silence between upstream bytes once the response started. The API sends
    # pings during long thinking pauses, and Claude Code itself gives up after 300 s.
    idle_timeout_seconds: float = Field(
        default=300.0,
        validation_alias=AliasChoices(
            "CLAUDE_PROXY_IDLE_TIMEOUT_SECONDS", "CLAUDE_PROXY_READ_TIMEOUT_SECONDS"
        ),
    )
    # Whole request, first byte to last. 128k output tokens at ~40 tokens/s take ~55 min;
    # anything longer is stuck, and holds a connection and a slot in the drain.
    total_timeout_seconds: float = 3600.0

    # --- retries, before the first byte only (docs/reliability.md) -----------------------
    # What the proxy retries itself: `connect_error` (the request never left: refused,
    # unreachable, connect timeout, TLS failure) and HTTP statuses. 529 is the API's
    # "overloaded", which a second attempt usually gets past. Not retried: a connection lost
    # after the request was sent (the API may have run it; the client's SDK decides).
    retry_on: str = "connect_error,529"
    retry_max_attempts: int = 3  # attempts in all, the first included
    retry_backoff_initial_seconds: float = 0.5
    # Longest wait before a retry. An upstream retry-after longer than this is passed to
    # the client instead, whose SDK waits and retries on its own.
    retry_backoff_max_seconds: float = 8.0
    # Retries may be at most this share of requests over the last 10 s (plus a few per
    # second at low volume), so that an outage is not multiplied by the proxy.
    retry_budget_ratio: float = 0.2
    retry_budget_min_per_second: float = 1.0

    # --- circuit breaker on the upstream -------------------------------------------------
    # Opens when at least this share of the attempts in the window failed (connection
    # errors, timeouts, 5xx, 529), once there were at least breaker_min_requests of them.
    breaker_failure_ratio: float = 0.5
    breaker_min_requests: int = 20
    breaker_window_seconds: float = 30.0
    # Open: answer 529 overloaded_error at once for this long, then let probes through.
    breaker_open_seconds: float = 15.0
    breaker_half_open_probes: int = 3

    # --- graceful drain on SIGTERM (docs/reliability.md) -----------------------------------
    # /health answers 503 at once, and requests are still served for this long, so the
    # load balancer stops sending new ones before the listener closes: for a SIGTERM that
    # comes while the task is still routed to (a Spot interruption). After a deregistration
    # (a deployment) it only waits; it takes no time from streams, which run meanwhile.
    pre_stop_seconds: float = 10.0
    # Then in-flight requests get this long to finish; what is left gets an SSE error
    # event. pre-stop + drain + the writer's flush (10 s) = 110 s < ECS stopTimeout 120 s
    # (Fargate's maximum; a Spot task is killed about 2 minutes after its SIGTERM).
    drain_seconds: float = 90.0
    # Kernel receive buffer per upstream connection (Linux doubles it); 0 = kernel default.
    # 64 KiB keeps a slow client's backlog in the kernel small and still allows ~6 MB/s per
    # download at 20 ms RTT; raise it if large batch-result or file downloads are slow.
    upstream_recv_buffer_bytes: int = 65536
    # Idle keep-alive towards clients. Must exceed the load balancer's idle timeout
    # (ALB: 300 s here), or the ALB reuses closed connections and answers 502.
    keepalive_seconds: int = 310
    # A client's request head must be whole this long after its first byte, and a body the
    # relay waits for must not stop for longer (nginx's client_header/body_timeout): 408.
    client_header_timeout_seconds: float = Field(default=30.0, gt=0)
    client_body_timeout_seconds: float = Field(default=60.0, gt=0)
    # A client that takes none of a response for this long (its connection's write buffer
    # stays full) is disconnected, as by nginx's send_timeout: else a client that stops
    # reading without closing holds its task, connection and log row forever.
    client_send_timeout_seconds: float = Field(default=60.0, gt=0)
    # Addresses whose X-Forwarded-For/-Proto are trusted (the ALB's subnets, e.g. "10.0.0.0/16"
    # or "*" inside a VPC where only the ALB can reach the task). Empty: headers ignored.
    forwarded_allow_ips: str = ""

    # --- access control (docs/access-control.md) ---------------------------------------
    # How often each process re-reads changed keys: a revocation made elsewhere takes
    # effect within this plus a query (the promise is 5 s).
    key_refresh_seconds: float = 2.0
    # How often each process shares its RPM/TPM counts and reads everyone else's and the
    # spend. The limits' overshoot across replicas is about one interval of traffic.
    limits_sync_seconds: float = 1.0
    # Per client address: this many failed key checks, then this many per minute.
    bad_key_burst: int = 20
    bad_key_per_minute: int = 20

    # --- observability (docs/observability.md) -----------------------------------------
    # json: one JSON object per line (CloudWatch Logs Insights parses the fields);
    # console: human-friendly lines. Read by the logging setup itself, from the environment.
    log_format: str = "json"
    log_level: str = "INFO"
    # If set, /metrics wants `Authorization: Bearer <token>`.
    metrics_token: SecretStr | None = None
    # Where the processes write their Prometheus samples (emptied at start). Default: a
    # fresh temporary directory; must be writable (a tmpfs volume on a read-only root).
    metrics_dir: str | None = None
    # CloudWatch Embedded Metric Format lines on stdout, every emf_interval_seconds, per
    # worker: ActiveStreams (for autoscaling), ActiveConnections, RequestCount, ...
    emf_enabled: bool = False
    emf_interval_seconds: float = Field(default=60.0, gt=0)
    emf_namespace: str = "ClaudeProxy"
    service_name: str = "claude-proxy-service"
    # OpenTelemetry traces over OTLP (endpoint from OTEL_EXPORTER_OTLP_ENDPOINT, e.g. an
    # ADOT collector sidecar at http://localhost:4318). Off: nothing is imported or done.
    tracing: bool = False

    # --- request log pipeline -------------------------------------------------------
    # Record every request in the database. Off only for benchmarks and debugging: without
    # it there is no usage, cost or audit trail.
    log_requests: bool = True
    # Migrate at startup (under a PostgreSQL advisory lock, so replicas starting together
    # are safe). Turn off when migrations run as a separate deploy step.
    auto_migrate: bool = True
    # Connections per process. Size for (max tasks + deploy overlap) x workers x (size +
    # overflow) staying under the database's (or Supabase pooler's) connection limit.
    db_pool_size: int = 3
    db_max_overflow: int = 2
    db_statement_timeout_seconds: float = 15.0
    # Records waiting for the writer; beyond this they go straight to the spill file.
    log_queue_size: int = 10_000
    log_batch_size: int = 500
    log_flush_interval_seconds: float = 1.0
    # Where records go while the database is unreachable; replayed when it is back and at
    # startup. Must be on a writable volume that survives the process (not the task).
    spill_dir: str = "./spill"
    # Shutdown: time the writer gets to flush; what is left is spilled, never dropped.
    log_flush_timeout_seconds: float = 10.0
    # Off by default: bodies hold users' prompts. When on, each is capped at this size.
    log_bodies: bool = False
    log_body_max_bytes: int = 64 * 1024
    # A JSON price table merged over the packaged one (see docs/request-logs.md).
    prices_file: str | None = None

    # --- people and sign-in (docs/people.md) --------------------------------------------
    # OpenID Connect sign-in for admins (the admin API, the console) and developers
    # (Claude Code's /login, `claude-proxy login`). Unset issuer: sign-in is off.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_scopes: str = "openid profile email offline_access"
    # Where the ID token (or userinfo) lists the user's groups: a claim name, or a JSON
    # pointer such as /resource_access/claude/roles.
    oidc_groups_claim: str = "groups"
    # Comma-separated IdP group names: members may administer the proxy.
    oidc_admin_groups: str = ""
    # Comma-separated IdP group names: only members may sign in. Empty: everyone the IdP
    # signs in.
    oidc_allowed_groups: str = ""
    # Signs the proxy's access tokens and admin sessions (at least 32 characters). Every
    # replica needs the same value.
    session_secret: SecretStr | None = None
    # Lifetime of a minted access token; also the most an offboarded user keeps access.
    token_ttl_seconds: float = Field(default=3600.0, ge=60, le=86400)
    # A Slack-compatible webhook for budget alerts at 50, 80 and 100 % (a secret: the URL
    # carries the webhook's token).
    alert_webhook_url: SecretStr | None = None
    # How often each process compares spend with every budget for those alerts.
    alert_check_seconds: float = Field(default=5.0, gt=0)

    @field_validator("anthropic_base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @field_validator("log_format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v.lower() not in ("json", "console"):
            raise ValueError("CLAUDE_PROXY_LOG_FORMAT is json or console")
        return v.lower()

    @field_validator("retry_on")
    @classmethod
    def _known_retry_tokens(cls, v: str) -> str:
        bad = [t for t in _tokens(v) if t != "connect_error" and not t.isdigit()]
        if bad:
            raise ValueError(f"CLAUDE_PROXY_RETRY_ON takes connect_error and HTTP statuses: {bad}")
        return v

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, v: str) -> str:
        scheme = v.split("://", 1)[0].split("+", 1)[0]
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError("DATABASE_URL must be sqlite:///path or postgresql://...")
        return v

    @model_validator(mode="after")
    def _signin_complete(self) -> Settings:
        """Sign-in needs all of its parts; a half-configured one fails the start, clearly."""
        if self.oidc_issuer:
            missing = [
                name
                for name, value in (
                    ("CLAUDE_PROXY_OIDC_CLIENT_ID", self.oidc_client_id),
                    ("CLAUDE_PROXY_OIDC_CLIENT_SECRET", self.oidc_client_secret),
                    ("CLAUDE_PROXY_PUBLIC_URL", self.public_url),
                    ("CLAUDE_PROXY_SESSION_SECRET", self.session_secret),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"CLAUDE_PROXY_OIDC_ISSUER is set: also set {', '.join(missing)}")
        if self.session_secret is not None and len(self.session_secret.get_secret_value()) < 32:
            raise ValueError("CLAUDE_PROXY_SESSION_SECRET must be at least 32 characters")
        return self

    def client_keys(self) -> list[str]:
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    def retry_statuses(self) -> frozenset[int]:
        return frozenset(int(t) for t in _tokens(self.retry_on) if t.isdigit())

    def retry_connect_errors(self) -> bool:
        return "connect_error" in _tokens(self.retry_on)

    def admin_token(self) -> str:
        return self.admin_key.get_secret_value() if self.admin_key else ""

    def admin_groups(self) -> frozenset[str]:
        return frozenset(_names(self.oidc_admin_groups))

    def allowed_groups(self) -> frozenset[str]:
        return frozenset(_names(self.oidc_allowed_groups))

    def upstream_key(self) -> str:
        return self.anthropic_api_key.get_secret_value() if self.anthropic_api_key else ""


def _tokens(text: str) -> list[str]:
    return [t.strip().lower() for t in text.split(",") if t.strip()]


def _names(text: str) -> list[str]:
    """Comma-separated names, exact and case-sensitive (IdP group names)."""
    return [t.strip() for t in text.split(",") if t.strip()]
