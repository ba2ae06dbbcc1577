"""HJ 212-2017 (environmental online monitoring) uplink: framing, data segments, replies."""
