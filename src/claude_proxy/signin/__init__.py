"""Sign-in: OpenID Connect for admins and developers, the device flow Claude Code
speaks, and the proxy-minted tokens it ends in."""
