"""The sender's passphrase tag: found in the subject however it is encoded, replaced by the
plain ``[secure]`` keyword in what is sent on, honoured by ``subject_contains: [secure]``, and a
content key that opens only with the right phrase."""

from __future__ import annotations

import pytest

from gateway.passphrase import find, normalise, take
from gateway.rules.ruleset import MessageFacts, matches
from portal import crypto


@pytest.mark.parametrize(("raw", "subject", "phrase"), [
    (b"From: a@example.org\r\nSubject: Results [Secure: Blue  Heron 42]\r\nTo: b@x.test\r\n"
     b"\r\nbody [secure: stays]\r\n", b"Subject: Results [secure]\r\nTo:", "blue heron 42"),
    (b"Subject: Results\r\n [secure passphrase=x y]\r\n\r\nbody", b"Subject: Results [secure]\r\n",
     "x y"),
    (b"Subject: =?utf-8?q?R=C3=A9sultats_=5Bsecure=3A_caf=C3=A9_noir=5D?=\r\n\r\nx",
     b"Subject: =?utf-8?q?R=C3=A9sultats_=5Bsecure=5D?=\r\n", "caf\u00e9 noir"),
    (b"Subject: hi [SECURE password: w]\n\nx", b"Subject: hi [secure]\n\nx", "w"),
    (b"Subject: hi [secure:]\r\n\r\nx", b"Subject: hi [secure]\r\n", None),  # empty: dropped
])
def test_tag_taken_out_of_the_subject(raw: bytes, subject: bytes, phrase: str | None) -> None:
    out, found = take(raw)
    assert found == phrase
    assert subject in out
    assert out.endswith(raw[raw.index(b"\n\n") + 2:] if b"\r\n\r\n" not in raw
                        else raw[raw.index(b"\r\n\r\n") + 4:])


@pytest.mark.parametrize("raw", [
    b"Subject: plain [secure] message\r\n\r\nbody",
    b"Subject: nothing here\r\n\r\nbody [secure: in the body is not a tag]",
    b"From: x\r\n\r\n",
])
def test_messages_without_a_tag_are_left_alone(raw: bytes) -> None:
    assert take(raw) == (raw, None)


def test_normalised_for_phones_and_speech() -> None:
    assert normalise("  Blue\u00a0HERON  42 ") == "blue heron 42"
    assert find("x [secure: \uff22\uff4c\uff55\uff45]") == "blue"  # full-width (NFKC)


def test_policy_keyword_matches_a_tagged_subject() -> None:
    facts = MessageFacts(sender="a@example.org", subject="Referral [secure: a phrase]",
                         headers={}, attachment_types=(), size=10, finding_counts={},
                         score=0.0, phi=False)
    assert matches({"subject_contains": ["[secure]"]}, facts, "b@x.test", lambda d: False)


def test_content_key_needs_link_and_phrase() -> None:
    link = crypto.derive("s" * 43, "pickup", "pid")
    key = crypto.passphrase_key(link, "copper lantern", "pid")
    sealed = crypto.seal(key, b"content", "pid")
    assert crypto.unseal(crypto.passphrase_key(link, "copper lantern", "pid"), sealed,
                         "pid") == b"content"
    for wrong in (link, crypto.passphrase_key(link, "copper lanterns", "pid"),
                  crypto.passphrase_key(crypto.derive("t" * 43, "pickup", "pid"),
                                        "copper lantern", "pid")):
        with pytest.raises(crypto.SealError):
            crypto.unseal(wrong, sealed, "pid")
