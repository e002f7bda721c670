"""An etcd store over TLS, as a production cluster runs it: the members'
certificates signed by a private CA (``store.tls.ca``) and a client
certificate each node presents (``store.tls.cert``/``key``, for etcd's
``--client-cert-auth``). A real etcd with certificates made by openssl."""

import os
import re
import ssl
import subprocess
import uuid

import pytest

from dataplane.config import parse_config
from dataplane.errors import ConfigError
from tests.etcdhost import EtcdServer, have_etcd

pytestmark = [pytest.mark.skipif(not have_etcd(), reason="needs /usr/bin/etcd (etcd-server)")]


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate
    signed by it, and a second CA that signed neither - with the extensions
    strict X.509 checking asks for (Python 3.13's default: a CA's key usage,
    a certificate's authority key identifier)."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key",
                 "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN=dptest-{ca}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip
    leaf = "basicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid\n"
    (d / "server.ext").write_text(leaf + "subjectAltName=IP:127.0.0.1\n")
    (d / "client.ext").write_text(leaf + "extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out",
                 f"{who}.csr", "-subj", f"/CN=dptest-{who}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{who}.crt", "-days", "2", "-extfile",
                 f"{who}.ext", cwd=d)  # fmt: skip
    return d


class TLSEtcd(EtcdServer):
    """etcd serving clients over https, requiring a client certificate."""

    def __init__(self, pki):
        super().__init__(name="dptest-tls")
        self.pki = pki

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    def _cmd(self):
        p = self.pki
        return super()._cmd() + [
            "--cert-file", str(p / "server.crt"), "--key-file", str(p / "server.key"),
            "--trusted-ca-file", str(p / "ca.crt"), "--client-cert-auth",
        ]  # fmt: skip

    def _ssl_context(self):
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "client.crt"), str(self.pki / "client.key"))
        return ctx


@pytest.fixture(scope="module")
def etcd_tls(pki):
    srv = TLSEtcd(pki)
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def _config(tmp_path, url, tls):
    return {
        "node": "node1",
        "vtep": {"address": "10.0.0.1/24", "uplink": "eth1"},
        "networks": [{"name": "net1", "vni": 100, "plane": "std", "subnet": "192.168.10.0/24"}],
        "state_dir": str(tmp_path / "state"),
        "store": {
            "kind": "etcd",
            "endpoints": [url],
            "prefix": f"/dptest/{uuid.uuid4().hex}",
            **({"tls": tls} if tls is not None else {}),
        },
    }


def test_a_store_over_tls_with_a_client_certificate(tmp_path, etcd_tls, pki):
    from dataplane.store import open_store

    tls = {"ca": str(pki / "ca.crt"), "cert": str(pki / "client.crt"), "key": "client.key"}
    cfg = parse_config(_config(tmp_path, etcd_tls.url, tls), base_dir=str(pki))
    assert cfg.store.tls_key == str(pki / "client.key")  # relative: the config's directory
    assert parse_config(cfg.to_dict()).store == cfg.store  # written back as read
    store = open_store(cfg.store, cfg.node)
    try:
        store.set_meta("tls-check", "yes")
        assert store.get_meta("tls-check") == "yes"
    finally:
        store.close()


@pytest.mark.parametrize(
    "tls, says",
    [
        # no client certificate: refused (etcd 3.5 says so in TLS 1.3's own
        # alert, 3.4 with a bad-certificate one)
        ({"ca": "ca.crt"}, "it re"),
        (
            {"ca": "other-ca.crt", "cert": "client.crt", "key": "client.key"},
            "its TLS certificate is not signed by a CA in store.tls.ca",
        ),
        # the system's CAs do not know the private one
        (None, "its TLS certificate is not signed by a CA in store.tls.ca"),
    ],
)
def test_a_store_the_node_cannot_authenticate_to_is_refused_naming_why(
    tmp_path, etcd_tls, pki, tls, says
):
    from dataplane.store import open_store

    cfg = parse_config(_config(tmp_path, etcd_tls.url, tls), base_dir=str(pki))
    with pytest.raises(ConnectionError) as e:
        open_store(cfg.store, cfg.node, timeout=3)
    assert etcd_tls.url in str(e.value) and says in str(e.value), e.value
    if says == "it re":
        assert re.search(
            r"it requires a client certificate \(store\.tls\.cert and key\)|it refuses this "
            r"node's client certificate, or requires one",
            str(e.value),
        ), e.value
    assert e.value.tls, e.value  # a configuration to fix, not etcd down
    # dataplane check fails on it (an outage is only a warning)
    from dataplane.startchecks import check_store

    report = check_store(cfg)
    assert len(report.errors) == 1 and says in report.errors[0], report
    assert "fix store.tls" in report.errors[0]


def test_a_member_whose_certificate_does_not_name_the_host_is_said_so(tmp_path, etcd_tls, pki):
    """The member's certificate names 127.0.0.1 only; the URL says localhost."""
    from dataplane.store import open_store

    url = etcd_tls.url.replace("127.0.0.1", "localhost")
    tls = {"ca": "ca.crt", "cert": "client.crt", "key": "client.key"}
    cfg = parse_config(_config(tmp_path, url, tls), base_dir=str(pki))
    with pytest.raises(ConnectionError, match="its TLS certificate does not name the URL's host"):
        open_store(cfg.store, cfg.node, timeout=3)


@pytest.mark.parametrize(
    "url, tls, says",
    [
        ("http://127.0.0.1:2379", {"ca": "ca.crt"}, "store.tls: is for https endpoints"),
        ("https://127.0.0.1:2379", {"cert": "client.crt"}, "store.tls.key: is required with"),
        ("https://127.0.0.1:2379", {"key": "client.key"}, "store.tls.cert: is required with"),
        ("https://127.0.0.1:2379", {"ca": "nope.crt"}, "nope.crt: no such file"),
        ("https://127.0.0.1:2379", {"ca": "ca.crt", "crl": "x"}, "store.tls"),
        ("https://127.0.0.1:2379", {}, "store.tls: names none of ca, cert, key"),
    ],
)
def test_bad_tls_settings_are_refused_naming_them(tmp_path, pki, url, tls, says):
    with pytest.raises(ConfigError) as e:
        parse_config(_config(tmp_path, url, tls), base_dir=str(pki))
    assert says in str(e.value), e.value
    assert os.path.exists(pki / "ca.crt")
