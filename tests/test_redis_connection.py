"""mirror.redis_connection: one builder for every Redis connection; what it says about itself."""
import ssl

import pytest

from mirror.redis_connection import describe, redacted_url, redis_for, redis_from_url, tls_mode
from mirror.settings import Settings


@pytest.mark.parametrize("url, expected", [
    ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ("redis://:pw@127.0.0.1:6379/2", "redis://***@127.0.0.1:6379/2"),
    ("rediss://h:secret-pass@ec2-1-2.example.com:25580", "rediss://***@ec2-1-2.example.com:25580"),
    ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
])
def test_redacted_url_masks_the_credentials(url, expected):
    assert redacted_url(url) == expected


def test_tls_mode_and_description():
    assert tls_mode(Settings(redis_url="redis://h:1/0")) == "none"
    assert tls_mode(Settings(redis_url="rediss://h:1/0")) == "verified"
    heroku = Settings(redis_url="rediss://:pw@h:1/0", redis_tls_verify=False,
                      redis_tls_verify_source="Heroku (DYNO set)")
    assert describe(heroku) == "rediss://***@h:1/0 tls=unverified (Heroku (DYNO set))"


def test_one_set_of_timeouts_and_tls_options():
    plain = redis_from_url("redis://127.0.0.1:1/0").connection_pool.connection_kwargs
    assert (plain["socket_connect_timeout"], plain["socket_timeout"], plain["health_check_interval"]) == (5, 10, 30)
    unverified = redis_for(Settings(redis_url="rediss://127.0.0.1:1/0", redis_tls_verify=False))
    kwargs = unverified.connection_pool.connection_kwargs
    assert kwargs["ssl_cert_reqs"] == ssl.CERT_NONE and kwargs["ssl_check_hostname"] is False
    verified = redis_for(Settings(redis_url="rediss://127.0.0.1:1/0")).connection_pool.connection_kwargs
    assert verified.get("ssl_cert_reqs", "required") not in (ssl.CERT_NONE, "none")
