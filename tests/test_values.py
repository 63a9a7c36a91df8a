"""Strict parsing of client integers and texts."""

import pytest

from nixie.errors import InvalidInput
from nixie.values import INT64_MAX, INT64_MIN, decode_text, parse_int64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("42", 42),
        ("+7", 7),
        ("-7", -7),
        ("  12\n", 12),
        ("\t-3 ", -3),
        ("007", 7),
        ("0" * 5000 + "1", 1),
        (str(INT64_MAX), INT64_MAX),
        (str(INT64_MIN), INT64_MIN),
    ],
)
def test_accepts_ascii_integers(text: str, expected: int) -> None:
    """Signed ASCII decimal with surrounding whitespace parses exactly."""
    assert expected == parse_int64(text, "value")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "abc",
        "1.5",
        "1_000",
        "1e3",
        "0x10",
        "٣",  # ARABIC-INDIC DIGIT THREE
        "²",
        "\uff11\uff12",  # fullwidth digits
        "+-1",
        "1 2",
        "\u00a01",  # no-break space is not ASCII whitespace
        str(INT64_MAX + 1),
        str(INT64_MIN - 1),
        "9" * 5000,  # longer than int() converts at all
        "-" + "0" * 5000 + "1" * 20,
    ],
)
def test_refuses_everything_else(text: str) -> None:
    """Anything but a signed 64-bit ASCII integer is refused, naming the field."""
    with pytest.raises(InvalidInput) as caught:
        parse_int64(text, "Nixie-Step")

    assert str(caught.value).startswith("Nixie-Step: ")


def test_error_message_stays_short() -> None:
    """A huge input is shortened in the error message."""
    with pytest.raises(InvalidInput) as caught:
        parse_int64("x" * 10_000, "value")

    assert len(str(caught.value)) < 100


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"plain", "plain"), ("café ☕".encode(), "café ☕"), (b"", "")],
)
def test_decodes_utf8_text(raw: bytes, expected: str) -> None:
    """Header bytes decode as UTF-8."""
    assert expected == decode_text(raw, "Nixie-Name", 10)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\xff\xfe", "not valid UTF-8"),
        (b"a\x00b", "control characters"),
        (b"a\x7fb", "control characters"),
        (b"tab\there", "control characters"),
        (("é" * 11).encode(), "at most 10"),
    ],
)
def test_refuses_bad_text(raw: bytes, problem: str) -> None:
    """Invalid UTF-8, control characters and overlong text are refused."""
    with pytest.raises(InvalidInput) as caught:
        decode_text(raw, "Nixie-Name", 10)

    assert problem in str(caught.value)
