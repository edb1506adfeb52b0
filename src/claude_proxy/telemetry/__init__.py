"""Logging, metrics, EMF, tracing and live counts: what the proxy tells its operators."""
