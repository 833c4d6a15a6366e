"""The demo workloads: kinds a fresh install can run, built only on the platform API.

Nothing in ``tasks`` or ``web`` outside ``demo`` modules imports from here except the
places that register the demo kinds.
"""
