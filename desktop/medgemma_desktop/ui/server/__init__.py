"""The local server panel."""
