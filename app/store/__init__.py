"""The store: backends, the state core, and the only code that knows stored key formats."""
