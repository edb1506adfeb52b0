"""Talking to the upstream: the HTTP/1.1 client pool and the credential seam."""
