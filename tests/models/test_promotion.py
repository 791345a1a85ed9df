import pytest

from models.promotion import decide


def test_no_champion_promotes():
    d = decide("exact_match", 0.5, None)
    assert d.promote and d.reason == "no champion yet"


@pytest.mark.parametrize(
    ("metric", "challenger", "champion", "min_gain", "promote"),
    [
        ("exact_match", 0.6, 0.5, 0.0, True),
        ("exact_match", 0.5, 0.5, 0.0, False),  # a tie keeps the champion
        ("exact_match", 0.4, 0.5, 0.0, False),
        ("exact_match", 0.55, 0.5, 0.1, False),  # better, but not by enough
        ("eval_loss", 1.0, 1.2, 0.0, True),  # lower loss is better
        ("eval_loss", 1.3, 1.2, 0.0, False),
        ("perplexity", 3.0, 3.5, 0.0, True),
    ],
)
def test_gate_respects_direction_and_margin(metric, challenger, champion, min_gain, promote):
    d = decide(metric, challenger, champion, min_gain)
    assert d.promote is promote
    assert (d.challenger, d.champion) == (challenger, champion)
    assert ("not better" in d.reason) is (not promote)
