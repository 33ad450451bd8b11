"""A chunk ref's location: plain URLs are taken as they are, the rest percent-encoded, both the same way."""

from __future__ import annotations

import pytest

from lib.storage import _encoded, ref_location

URLS = [
    "file:///data/archive/polygon_001/month_03/step_0042.nc",
    "s3://bucket/run 7/a,b;c=d@e:f+g$h&i!j'k(l)m*n~o.nc",
    "s3://bucket/already%20encoded.nc",
    "s3://bucket/what?is#this.nc",
    "file:///data/température/ü.nc",
    "s3://bucket/tab\there.nc",
    "s3://bucket/brackets[0]{1}.nc",
]


@pytest.mark.parametrize("url", URLS)
def test_the_fast_path_gives_what_the_encoder_gives(url: str) -> None:
    assert ref_location(url) == _encoded(url)


def test_reserved_characters_are_encoded_and_plain_ones_kept() -> None:
    assert ref_location("s3://bucket/a%b?c#d.nc") == "s3://bucket/a%25b%3Fc%23d.nc"
    assert ref_location(URLS[0]) == URLS[0]
