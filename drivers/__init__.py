"""Protocol drivers ("south" side): read-only, one module per protocol."""
