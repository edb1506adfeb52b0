"""The admin API under /admin/api/ (keys, usage, request logs), behind CLAUDE_PROXY_ADMIN_KEY."""

from claude_proxy.admin.api import build_admin_app

__all__ = ["build_admin_app"]
