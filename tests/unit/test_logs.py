"""JSON log lines (NOTIFIER_LOG_FORMAT=json): one object a line, redacted like text lines."""

import io
import json
import logging

from notifier.logs import secure_logging


def test_a_batch_line_is_one_json_object_with_its_fields_and_no_token() -> None:
    logger = logging.getLogger("test.json_lines")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        secure_logging(logger, json_lines=True)
        fields = {"notification": "n-1", "channel": "apns", "outcomes": {"Delivered": 3}, "slowest_answer_ms": 12.5}
        logger.info("batch %(notification)s %(channel)s", fields, extra={"batch": fields})
        logger.warning("apns token %s refused", "ab" * 32)
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "batch n-1 apns" and first["level"] == "INFO"
    assert first["outcomes"] == {"Delivered": 3} and first["slowest_answer_ms"] == 12.5
    assert "ab" * 32 not in second["message"] and second["message"].endswith("…ababab refused")
