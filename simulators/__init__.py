"""Protocol-faithful push-service simulators on 127.0.0.1.

Used by tests, ``notifier demo`` and ``notifier bench``; never by production code.
They import nothing from ``notifier`` or ``workers``, so a misread protocol cannot
hide on both sides of the wire.
"""
