"""mirror.redis_connection: one builder for every Redis connection; what it says about itself."""

import ssl

import pytest

from mirror.redis_connection import describe, redacted_url, redis_for, redis_from_url, tls_mode
from mirror.settings import Settings


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:pw@127.0.0.1:6379/2", "redis://***@127.0.0.1:6379/2"),
        ("rediss://h:secret-pass@ec2-1-2.example.com:25580", "rediss://***@ec2-1-2.example.com:25580"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
    ],
)
def test_redacted_url_masks_the_credentials(url, expected):
    assert redacted_url(url) == expected


def test_tls_mode_and_description():
    assert tls_mode(Settings(redis_url="redis://h:1/0")) == "none"
    assert tls_mode(Settings(redis_url="rediss://h:1/0")) == "verified"
    heroku = Settings(
        redis_url="rediss://:pw@h:1/0", redis_tls_verify=False, redis_tls_verify_source="Heroku (DYNO set)"
    )
    assert describe(heroku) == "rediss://***@h:1/0 tls=unverified (Heroku (DYNO set))"


def test_one_set_of_timeouts_and_tls_options():
    plain = redis_from_url("redis://127.0.0.1:1/0").connection_pool.connection_kwargs
    assert (plain["socket_connect_timeout"], plain["socket_timeout"], plain["health_check_interval"]) == (5, 10, 30)
    unverified = redis_for(Settings(redis_url="rediss://127.0.0.1:1/0", redis_tls_verify=False))
    kwargs = unverified.connection_pool.connection_kwargs
    assert kwargs["ssl_cert_reqs"] == ssl.CERT_NONE and kwargs["ssl_check_hostname"] is False
    verified = redis_for(Settings(redis_url="rediss://127.0.0.1:1/0")).connection_pool.connection_kwargs
    assert verified.get("ssl_cert_reqs", "required") not in (ssl.CERT_NONE, "none")


def test_status_report_and_page_say_which_redis_and_tls_mode(settings, db, redis_conn):
    import dataclasses

    from receiver import create_app
    from workers import status

    heroku = dataclasses.replace(
        settings,
        redis_url="rediss://:a-redis-password@h.example.com:25580",
        redis_tls_verify=False,
        redis_tls_verify_source="Heroku (DYNO set)",
    )
    report = status.collect(heroku, redis_conn, jira=False)  # the connection is the test's own
    assert report["redis"] == {"url": "rediss://***@h.example.com:25580", "tls": "unverified (Heroku (DYNO set))"}
    app = create_app(dataclasses.replace(settings, admin_token="page-token-123-of-at-least-32-characters"))
    page = app.test_client().get("/", headers={"Authorization": "Bearer page-token-123-of-at-least-32-characters"})
    assert page.status_code == 200
    assert 'id="redis-connection">Redis redis://127.0.0.1:6379/' in page.get_data(as_text=True)
    assert "TLS: none" in page.get_data(as_text=True)
