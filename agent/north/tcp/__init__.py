"""The TCP platform uplink (`protocol = "tcp"`): templated JSON frames ended by a delimiter."""
