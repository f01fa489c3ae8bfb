"""`chatd.e2e`: the client side of end-to-end encryption (docs/e2e.md)."""
