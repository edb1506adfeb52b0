"""Wire formats: how each API names its model and reports its usage (gateway/wire_format.py)."""
