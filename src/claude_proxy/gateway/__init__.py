"""The format-neutral request path: keys, limits, body budget, dispatch, one error value."""
