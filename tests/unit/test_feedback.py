"""The feedback table: exhaustive over the outcomes, and what each one does."""

from notifier.feedback import FEEDBACK, Kind, TokenEffect, clean_reason, feedback, outcome
from notifier.outcomes import DeadToken, TokenMismatch
from tests.unit.tables import EXPECTED, storable


def test_every_kind_becomes_its_outcome_and_every_outcome_has_feedback() -> None:
    assert set(EXPECTED) == set(Kind)
    assert set(EXPECTED.values()) == set(FEEDBACK)
    for kind, cls in EXPECTED.items():
        assert type(outcome(kind, app="a", reason="r", status=400)) is cls


def test_only_verdicts_on_the_token_touch_it() -> None:
    touching = {cls: fb.token for cls, fb in FEEDBACK.items() if fb.token is not TokenEffect.KEEP}
    assert touching == {DeadToken: TokenEffect.DEAD, TokenMismatch: TokenEffect.HOLD}
    assert feedback(TokenMismatch("a", "r")).alert and not feedback(DeadToken("r")).alert
    assert feedback(DeadToken("r")).target_status == "failed"  # an FCM topic is never dead


def test_clean_reason_takes_anything() -> None:
    for raw in (b"\xff\x00\xfe", "a\x00b\ud800", 42, ["Unregistered"], "x" * 10_000, None):
        storable(clean_reason(raw))
    assert clean_reason(["Unregistered"]) != "Unregistered"  # never matches a reason table
