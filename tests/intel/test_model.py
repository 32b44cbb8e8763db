"""Indicator values are checked and brought to one canonical form."""

from __future__ import annotations

import pytest

from vigil.intel import IndicatorType as T
from vigil.intel import InvalidIndicator, normalize
from vigil.intel.model import detect_type


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        (
            T.SHA256,
            " EF537F25C895BFA782526529A9B63D97AA631564D5D789C2B765448C8635FB6C ",
            (T.SHA256, "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c"),
        ),
        (T.MD5, "0749BAE92CA336A02C83D126E04EC628", (T.MD5, "0749bae92ca336a02c83d126e04ec628")),
        (T.IPV4, "10.0.0.1", (T.IPV4, "10.0.0.1")),
        (T.IPV4, "10.0.0.1/32", (T.IPV4, "10.0.0.1")),
        (T.IPV4, "223.166.0.0/15", (T.CIDR, "223.166.0.0/15")),
        (T.CIDR, "10.1.2.3/8", (T.CIDR, "10.0.0.0/8")),
        (T.IPV6, "2001:DB8:0:0::1", (T.IPV6, "2001:db8::1")),
        (T.IPV6, "2001:db8::/32", (T.CIDR, "2001:db8::/32")),
        (T.DOMAIN, "WWW.Example.ORG.", (T.DOMAIN, "www.example.org")),
        (T.DOMAIN, "bücher.de", (T.DOMAIN, "xn--bcher-kva.de")),
        (T.URL, "HTTP://X4Z9ARB.cn:80/4712/#frag", (T.URL, "http://x4z9arb.cn/4712/")),
        (T.URL, "http://paypa1.banking.com", (T.URL, "http://paypa1.banking.com/")),
        (T.URL, "https://a.example:8443/P?q=1", (T.URL, "https://a.example:8443/P?q=1")),
        (T.FILENAME, "C:\\Temp\\evil.exe", (T.FILENAME, "evil.exe")),
        (T.REGKEY, "HKLM\\Software\\Run|X.exe", (T.REGKEY, "software\\run|x.exe")),
    ],
    ids=lambda v: str(v)[:30],
)
def test_normalize(kind: T, value: str, expected: tuple[T, str]) -> None:
    assert normalize(kind, value) == expected


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        (T.SHA256, "abc", "not a sha256 hash"),
        (T.MD5, "z" * 32, "not a md5 hash"),
        (T.IPV4, "10.0.0.256", "not an IP address"),
        (T.IPV4, "::1", "is an ipv6 address, not ipv4"),
        (T.DOMAIN, "domain autuo.xicp.net", "not a domain name"),
        (T.DOMAIN, "localhost", "not a domain name"),
        (T.URL, "/just/a/path", "not an absolute URL"),
        (T.FILENAME, "  ", "empty"),
    ],
)
def test_invalid_values_say_why(kind: T, value: str, message: str) -> None:
    with pytest.raises(InvalidIndicator, match=message):
        normalize(kind, value)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("d41d8cd98f00b204e9800998ecf8427e", T.MD5),
        ("da39a3ee5e6b4b0d3255bfef95601890afd80709", T.SHA1),
        ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", T.SHA256),
        ("8.8.8.8", T.IPV4),
        ("2001:db8::1", T.IPV6),
        ("10.0.0.0/8", T.CIDR),
        ("https://x.example/a", T.URL),
        ("evil.example.com", T.DOMAIN),
        ("bitsadmin.exe", T.FILENAME),
        ("Invoke-Mimikatz.PS1", T.FILENAME),
        ("payload.zip", T.DOMAIN),  # .zip is a top-level domain too
        ("x.com", T.DOMAIN),
        ("C:\\Windows\\evil.exe", None),
        ("not a value", None),
        ("abcdef", None),
    ],
)
def test_detect_type(value: str, kind: T | None) -> None:
    assert detect_type(value) is kind
