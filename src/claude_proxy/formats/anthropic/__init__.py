"""The Anthropic Messages API: the pass-through relay and everything shaped like the API."""
