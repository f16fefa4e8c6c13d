"""The credentials a WebSocket is signed with (elf_async.jobs.signing): the usual chain, read
per connect, pickled as the profile's name for worker processes; none is one clear line."""

from __future__ import annotations

import os
import pickle

import pytest

from elf_async.dataplane.sigv4 import SigningKeys
from elf_async.errors import UsageError
from elf_async.jobs.signing import NO_CREDENTIALS, AwsKeys, signing_region


@pytest.fixture
def no_aws_config(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def test_keys_come_from_the_environment_and_survive_pickling(
    no_aws_config: pytest.MonkeyPatch,
) -> None:
    no_aws_config.setenv("AWS_ACCESS_KEY_ID", "AKIDX")
    no_aws_config.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    no_aws_config.setenv("AWS_SESSION_TOKEN", "token")
    keys = AwsKeys(None)
    assert keys.keys() == SigningKeys("AKIDX", "secret", "token")
    copy = pickle.loads(pickle.dumps(keys))
    assert copy.profile is None
    assert copy.keys() == SigningKeys("AKIDX", "secret", "token")


def test_no_credentials_is_a_usage_error(no_aws_config: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="none were found") as refused:
        AwsKeys(None).keys()
    assert str(refused.value) == NO_CREDENTIALS
    with pytest.raises(UsageError, match="--profile nope: no such profile"):
        AwsKeys("nope").keys()


def test_the_region_comes_from_an_aws_endpoint_name() -> None:
    assert signing_region("abc-ats.iot.eu-central-1.amazonaws.com", "us-east-1") == "eu-central-1"
    assert signing_region("127.0.0.1", "us-west-2") == "us-west-2"
