"""North side: what leaves the gateway for the platforms (codecs, templates, framing, uplinks)."""
