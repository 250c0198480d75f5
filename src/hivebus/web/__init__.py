"""The HTTP face: Sage's data API, the SAGE object store, live streams (``hivebus web``)."""
