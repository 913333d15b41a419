"""Shared by every test: a clean environment.

Variables a developer's shell may carry (DATABASE_URL pointing at real data, a CA
bundle override) must not leak into a test run; integration tests set their own.
"""

import os

for _name in list(os.environ):
    if _name.startswith("NOTIFIER_") or _name in {"REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"}:
        del os.environ[_name]
