"""A bundle or collector URL may carry a credential: what logs show of it has none."""

import logging

import pytest

from llm_authz.bundle.source import BundleSource
from llm_authz.urls import loggable_url


@pytest.mark.parametrize("url, shown", [
    ("https://ci:s3cr3t-token@bundles.example/llm.tar.gz", "https://bundles.example/llm.tar.gz"),
    ("https://bucket.s3.example/b.tar.gz?X-Amz-Signature=abcd&X-Amz-Credential=AKID", "https://bucket.s3.example/b.tar.gz"),
    ("http://[::1]:8080/logs#frag", "http://[::1]:8080/logs"),
    ("/etc/llm-authz/bundle.tar.gz", "/etc/llm-authz/bundle.tar.gz"),
])
def test_loggable_url_drops_user_info_query_and_fragment(url, shown):
    assert loggable_url(url) == shown


def test_a_failed_bundle_download_logs_no_credential_of_its_url(caplog):
    source = BundleSource("http://ci:s3cr3t-token@127.0.0.1:9/b.tar.gz?sig=hunter2", None, 30)
    with caplog.at_level(logging.ERROR):
        try:
            source.read()
        except Exception as exc:  # the start-up read raises; its message is logged by the caller
            logging.getLogger("llm_authz").error("%s", exc)
    assert caplog.text and "s3cr3t" not in caplog.text and "hunter2" not in caplog.text
