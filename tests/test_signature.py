import hashlib
import hmac

import pytest

from receiver.signature import SignatureError, sign, verify

BODY = b'{"webhookEvent":"jira:issue_updated"}'


def test_verify_accepts_valid_signature():
    verify(BODY, header=sign(BODY, "s3cret"), secrets=("s3cret",))


def test_sign_matches_hmac_sha256_hex():
    assert sign(BODY, "k") == "sha256=" + hmac.new(b"k", BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    "header, reason",
    [
        (None, "missing"),
        ("", "missing"),
        ("sha1=" + "0" * 40, "malformed"),
        ("sha256=", "malformed"),
        ("sha256=" + "zz" * 32, "malformed"),
        ("sha256=" + "0" * 63, "malformed"),
        ("garbage", "malformed"),
    ],
)
def test_verify_refuses_missing_or_malformed_header(header, reason):
    with pytest.raises(SignatureError, match=reason):
        verify(BODY, header=header, secrets=("s3cret",))


def test_verify_refuses_wrong_secret():
    with pytest.raises(SignatureError, match="does not match"):
        verify(BODY, header=sign(BODY, "other"), secrets=("s3cret",))


def test_verify_refuses_signature_over_different_body():
    with pytest.raises(SignatureError, match="does not match"):
        verify(BODY + b" ", header=sign(BODY, "s3cret"), secrets=("s3cret",))


def test_verify_fails_closed_without_secret():
    with pytest.raises(SignatureError, match="no webhook secret"):
        verify(BODY, header=sign(BODY, ""), secrets=())


def test_verify_accepts_any_of_rotated_secrets():
    verify(BODY, header=sign(BODY, "new"), secrets=("old", "new"))
    verify(BODY, header=sign(BODY, "old"), secrets=("old", "new"))


def test_verify_accepts_uppercase_hex():
    header = "sha256=" + hmac.new(b"s3cret", BODY, hashlib.sha256).hexdigest().upper()
    verify(BODY, header=header, secrets=("s3cret",))
