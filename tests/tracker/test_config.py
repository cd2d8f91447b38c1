"""Settings: defaults, environment, overrides; the secret key rules; trusted proxies."""

from __future__ import annotations

import pytest

from tracker.config import load
from tracker.errors import ConfigError
from tracker.netaddr import client_ip, parse_trusted


def test_defaults_environment_then_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("INGEST_BATCH", "250")
    monkeypatch.setenv("BASE_URL", "https://tracker.acme.test/")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    config = load(tmp_path, {"INGEST_BLOCK_MS": 5})
    assert config["INGEST_BATCH"] == 250
    assert config["INGEST_BLOCK_MS"] == 5
    assert config["BASE_URL"] == "https://tracker.acme.test"
    assert config["DATABASE_URL"] == f"sqlite:///{tmp_path / 'closedloop.db'}"


def test_a_malformed_number_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("INGEST_BATCH", "lots")
    with pytest.raises(ConfigError, match="INGEST_BATCH='lots' is not a whole number"):
        load(tmp_path)


def test_dev_secret_key_is_generated_once_and_kept(tmp_path, monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("ENV", raising=False)
    first = load(tmp_path)["SECRET_KEY"]
    assert len(first) >= 40
    assert load(tmp_path)["SECRET_KEY"] == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_production_requires_a_secret_key(tmp_path, monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.setenv("ENV", "production")
    with pytest.raises(ConfigError, match="SECRET_KEY is required"):
        load(tmp_path)
    assert not (tmp_path / "secret_key").exists()


def test_trusted_proxies_are_parsed_and_bad_ones_named():
    assert [str(n) for n in parse_trusted("10.0.0.1, 192.168.0.0/16,::1")] == [
        "10.0.0.1/32",
        "192.168.0.0/16",
        "::1/128",
    ]
    with pytest.raises(ConfigError, match=r"'proxy\.local'"):
        parse_trusted("proxy.local")


@pytest.mark.parametrize(
    "remote,forwarded,trusted,expected",
    [
        ("203.0.113.1", "1.2.3.4", "", "203.0.113.1"),  # nobody trusted
        ("203.0.113.1", "1.2.3.4", "10.0.0.0/8", "203.0.113.1"),  # peer is not a proxy
        ("10.0.0.2", "198.51.100.9", "10.0.0.0/8", "198.51.100.9"),
        ("10.0.0.2", "1.2.3.4, 198.51.100.9, 10.0.0.3", "10.0.0.0/8", "198.51.100.9"),
        ("10.0.0.2", "10.0.0.9, 10.0.0.3", "10.0.0.0/8", "10.0.0.9"),  # all hops trusted
        ("10.0.0.2", "garbage", "10.0.0.0/8", "10.0.0.2"),
    ],
)
def test_client_ip_reads_forwarded_for_right_to_left(remote, forwarded, trusted, expected):
    assert client_ip(remote, forwarded, parse_trusted(trusted)) == expected
