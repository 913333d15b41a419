"""Protocol-faithful push-service simulators on 127.0.0.1.

Used by tests, ``notifier demo`` and ``notifier bench``; never by production code.
They import nothing from ``notifier`` or ``workers``, so a misread protocol cannot
hide on both sides of the wire. :mod:`simulators.apns`, :mod:`simulators.fcm` and
:mod:`simulators.webpush` share one lifecycle, recorder, scripts, outage and
``wait_for``, under the same names: :mod:`simulators.base`.
"""
