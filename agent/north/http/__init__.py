"""The HTTP platform uplink (`protocol = "http"`): templated JSON bodies POSTed over http or https."""
