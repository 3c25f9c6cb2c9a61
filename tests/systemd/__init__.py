"""The systemd unit test's machinery: a cached Debian booted under systemd-nspawn.

``cache.sh`` builds the cached inputs (the Debian tree, the wheels), ``nspawn.py`` boots
and reaches the container, ``held_simulators.py`` runs inside it.
"""
