"""--transport and --auth (elf_async.dataplane.auth): what each choice means, bad input refused
with one line, and a custom authorizer's username as AWS IoT documents it for MQTT."""

from __future__ import annotations

from typing import Any

import pytest

from elf_async.dataplane.auth import CustomAuth, label, parse_access
from elf_async.errors import UsageError


def test_defaults_follow_the_transport() -> None:
    assert parse_access(transport="mqtts", auth=None) == ("mqtts", "x509", None)
    assert parse_access(transport="wss", auth=None) == ("wss", "sigv4", None)
    assert parse_access(transport="WSS", auth="sigv4") == ("wss", "sigv4", None)


def test_a_custom_authorizer_with_a_password_or_a_token() -> None:
    _, kind, custom = parse_access(
        transport="mqtts", auth="custom:my-auth", username="u", password="p"
    )
    assert kind == "custom"
    assert custom == CustomAuth(name="my-auth", username="u", password="p")
    _, _, custom = parse_access(transport="mqtts", auth="custom:a", token="t", token_key_name="tok")
    assert custom is not None
    assert custom.token == "t"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"transport": "ws"}, "--transport ws: AWS IoT takes MQTT over WebSocket only with TLS"),
        ({"transport": "tcp"}, "--transport tcp: choose mqtts or wss"),
        ({"auth": "custom:"}, "--auth custom: needs the authorizer's name"),
        ({"auth": "custom:a b", "password": "p"}, "an authorizer's name is 1-128 of"),
        ({"auth": "oauth"}, "--auth oauth: choose x509, sigv4"),
        ({"auth": "sigv4"}, "--auth sigv4 signs a WebSocket upgrade: add --transport wss"),
        ({"transport": "wss", "auth": "x509"}, "--auth x509 with --transport wss"),
        ({"transport": "wss", "auth": "custom:a", "password": "p"}, "with --transport wss"),
        ({"auth": "custom:a"}, "--auth custom:a needs credentials for the authorizer"),
        ({"auth": "custom:a", "username": "u"}, "needs credentials for the authorizer"),
        ({"auth": "custom:a", "token": "t"}, "--token needs --token-key-name"),
        ({"auth": "custom:a", "password": "p", "token_key_name": "k"}, "--token-key-name needs"),
        ({"auth": "custom:a", "password": "p", "token_signature": "s"}, "--token-signature needs"),
        ({"password": "p"}, "--password is for a custom authorizer: add --auth custom:NAME"),
        ({"token": "t"}, "--token is for a custom authorizer"),
    ],
)
def test_bad_combinations_are_refused_in_one_line(given: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("+", r"\+")):
        parse_access(**{"transport": "mqtts", "auth": None, **given})


def test_the_username_carries_the_authorizer_and_the_token() -> None:
    by_password = CustomAuth(name="elf-local", username="elf", password="p")
    assert by_password.username_for("thing-1") == "elf?x-amz-customauthorizer-name=elf-local"
    by_token = CustomAuth(
        name="auth", token="a/b=c", token_key_name="tok", token_signature="s+ig=="
    )
    assert by_token.username_for("thing-1") == (
        "thing-1?x-amz-customauthorizer-name=auth"
        "&x-amz-customauthorizer-signature=s%2Big%3D%3D&tok=a%2Fb%3Dc"
    )


def test_the_report_label() -> None:
    assert label("mqtts", None) == "mqtts+x509"
    assert label("mqtts", CustomAuth(name="a", password="p")) == "mqtts+custom"
