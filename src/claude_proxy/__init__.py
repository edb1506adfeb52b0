"""claude-proxy: a self-hosted, byte-transparent gateway for the Anthropic API."""

__version__ = "0.1.0"
