"""The admin API under /admin/api/ (keys, people, audit, usage, request logs) and the
Claude apps gateway's spend-limit routes under /v1/organizations/spend_limits, behind
the admin key or a signed-in admin."""

from claude_proxy.admin.api import build_admin_app
from claude_proxy.admin.spend_limits import build_spend_limits_app

__all__ = ["build_admin_app", "build_spend_limits_app"]
