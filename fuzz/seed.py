#!/usr/bin/env python3
"""Seeds fuzz/seeds/<target>/ from the repository's own test vectors and fixtures: the Wycheproof
and RFC 7520 JWS vectors, the test keys, the registry answers and configurations in the filters'
unit tests, the example configurations, and hand-built DNS messages. `make fuzz` fuzzes from these
and the committed corpus; `cargo fuzz cmin` then keeps what adds coverage in fuzz/corpus/.

Usage: python3 fuzz/seed.py   (from the repository root; rewrites fuzz/seeds/)
"""

import hashlib
import json
import pathlib
import re
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "seeds"
CLOCK = struct.pack(">Q", 1_700_000_000)


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def raw_strings(path):
    """The raw string literals (r#"…"#, r"…", br#"…"#) of a Rust source file."""
    text = (ROOT / path).read_text()
    out = re.findall(r'b?r#"(.*?)"#', text, re.S)
    out += re.findall(r'b?r"(.*?)"', text, re.S)
    return out


def json_docs(path, must=None):
    docs = []
    for s in raw_strings(path):
        if "{{" in s:  # a format! string
            s = s.replace("{{", "{").replace("}}", "}")
        try:
            json.loads(s)
        except ValueError:
            continue
        if must is None or must in s:
            docs.append(s)
    return docs


def jws():
    w = json.loads((ROOT / "tests/vectors/wycheproof/json_web_signature_test.subset.json").read_text())
    for g in w["testGroups"]:
        put("jwks", json.dumps({"keys": [g["public"]]}))
        for t in g["tests"]:
            put("jws_validate", CLOCK + t["jws"].encode())
    for f in sorted((ROOT / "tests/vectors/rfc7520").glob("*.json")):
        v = json.loads(f.read_text())
        put("jws_validate", CLOCK + v["compact"].encode())
        put("jwks", json.dumps({"keys": [v["key"]]}))
    for f in sorted((ROOT / "filters/jwt-auth/tests/keys").glob("*.pem")):
        if "pub" in f.name or "pkcs1" in f.name:
            put("pem", f.read_text())
    put("pem", (ROOT / "examples/jwt-auth/example-key.pem").read_text())
    for doc in json_docs("filters/jwt-auth/src/jwks.rs", '"keys"'):
        put("jwks", doc)
    for doc in json_docs("filters/jwt-auth/src/introspection_tests.rs", '"active"'):
        put("introspection", CLOCK + doc.encode())
    for doc in ['{"active":true,"sub":"svc","scope":"admin read","exp":1700000060,"realm":{"groups":["ops"]}}',
                '{"active":false}', '{"active":true,"iss":"https://iss","aud":["api"],"nbf":1699999999}']:
        put("introspection", CLOCK + doc.encode())
    # jwt_claims reads structured input: a few arbitrary byte strings get it started.
    for i in range(8):
        put("jwt_claims", hashlib.sha256(bytes([i])).digest() * (i + 1))


def configs():
    for name, target in [("meshwasm_jwt_auth", "config_jwt_auth"), ("meshwasm_token_injector", "config_token_injector"),
                         ("meshwasm_discovery", "config_discovery"), ("meshwasm_balancer", "config_balancer"),
                         ("meshwasm_authz", "config_authz")]:
        put(target, (ROOT / f"examples/istio/config/{name}.json").read_text())
    put("config_discovery", (ROOT / "examples/discovery/all-sources.json").read_text())
    # The JSON examples of each filter's README.
    for readme, target in [("jwt-auth", "config_jwt_auth"), ("token-injector", "config_token_injector"),
                           ("discovery", "config_discovery"), ("balancer", "config_balancer"), ("authz", "config_authz")]:
        text = (ROOT / "filters" / readme / "README.md").read_text()
        for block in re.findall(r"```json[c]?\n(.*?)```", text, re.S):
            block = re.sub(r"(?m)(^|\s)//[^\n]*", r"\1", block)
            try:
                json.loads(block)
            except ValueError:
                continue
            put(target, block)
    for src, target, must in [
        ("filters/jwt-auth/src/config/tests.rs", "config_jwt_auth", "providers"),
        ("filters/jwt-auth/src/engine_tests.rs", "config_jwt_auth", "providers"),
        ("filters/token-injector/src/config.rs", "config_token_injector", "token_endpoint"),
        ("filters/discovery/src/config.rs", "config_discovery", "services"),
        ("filters/balancer/src/config.rs", "config_balancer", None),
        ("filters/authz/src/config.rs", "config_authz", "policies"),
        ("filters/authz/src/tests.rs", "config_authz", "policies"),
    ]:
        for doc in json_docs(src, must):
            put(target, doc)


def registries():
    for src, target in [("filters/discovery/src/sources/etcd.rs", "etcd"),
                        ("filters/discovery/src/sources/consul.rs", "consul"),
                        ("filters/discovery/src/sources/eureka.rs", "eureka"),
                        ("filters/discovery/src/sources/nacos.rs", "nacos"),
                        ("filters/discovery/src/sources/kubernetes.rs", "kubernetes"),
                        ("filters/discovery/src/sources/file.rs", "file_source")]:
        for doc in json_docs(src):
            put(target, doc)
            if target == "consul":
                put(target, "#x-consul-index: 42\n" + doc)
            if target == "file_source":
                put(target, '#etag: "v1"\n' + doc)
    # The registry fakes of the integration tests.
    for src, target in [("tests/src/fakes/eureka.rs", "eureka"), ("tests/src/fakes/nacos.rs", "nacos"),
                        ("tests/src/fakes/kubernetes.rs", "kubernetes")]:
        for doc in json_docs(src):
            put(target, doc)
    import base64
    b = lambda s: base64.b64encode(s.encode()).decode()
    put("etcd", json.dumps({"header": {"revision": "7"}, "kvs": [
        {"key": b("/services/api/a"), "value": b('{"address":"10.0.0.1:8080","weight":2,"zone":"a","tags":["x"],"metadata":{"k":"v"}}')},
        {"key": b("/services/api/b"), "value": b("10.0.0.2:8080")},
        {"key": b("/services/api/c"), "value": b("[fd00::1]:80")}]}))


def dns_name(name):
    out = b""
    for label in name.strip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def dns_msg(qname, qtype, answers, additionals=(), flags=0x8180):
    m = struct.pack(">HHHHHH", 0, flags, 1, len(answers), 0, len(additionals))
    m += dns_name(qname) + struct.pack(">HH", qtype, 1)
    for owner, rtype, rdata in list(answers) + list(additionals):
        m += (b"\xc0\x0c" if owner is None else dns_name(owner)) + struct.pack(">HHIH", rtype, 1, 30, len(rdata)) + rdata
    return m


def framed(choice, *msgs):
    return bytes([choice]) + b"".join(struct.pack(">H", len(m)) + m for m in msgs)


def doh():
    a = dns_msg("api.svc.test", 1, [(None, 1, bytes([10, 0, 0, 1])), (None, 1, bytes([10, 0, 0, 2]))])
    put("doh", framed(0, a))
    cname = dns_msg("api.svc.test", 1, [(None, 5, dns_name("real.svc.test")), ("real.svc.test", 1, bytes([10, 0, 0, 3]))])
    put("doh", framed(0, cname))
    aaaa = dns_msg("api.svc.test", 28, [(None, 28, bytes(15) + b"\x01")])
    put("doh", framed(1, aaaa))
    srv_rdata = lambda prio, w, port, t: struct.pack(">HHH", prio, w, port) + dns_name(t)
    srv_q = "_http._tcp.api.svc.test"
    srv = dns_msg(srv_q, 33, [(None, 33, srv_rdata(0, 5, 8080, "a.svc.test")), (None, 33, srv_rdata(0, 0, 8081, "b.svc.test")),
                              (None, 33, srv_rdata(1, 1, 9090, "c.svc.test"))],
                  [("a.svc.test", 1, bytes([10, 0, 1, 1]))])
    follow = dns_msg("b.svc.test", 1, [(None, 1, bytes([10, 0, 1, 2]))])
    follow6 = dns_msg("b.svc.test", 28, [(None, 28, b"\xfd" + bytes(14) + b"\x02")])
    put("doh", framed(2, srv, follow))
    put("doh", framed(3, srv, follow, follow6, follow6))
    put("doh", framed(2, dns_msg(srv_q, 33, [], flags=0x8183)))
    put("doh", framed(0, dns_msg("api.svc.test", 1, [], flags=0x8380)))


def shared_and_paths():
    sets = [
        {"f": 1, "v": 3, "e": [{"a": "10.0.0.1:8080"}]},
        {"f": 1, "v": 9, "e": [{"a": "10.0.0.1:80", "w": 3, "z": "a"}, {"a": "10.0.0.2:80", "w": 1, "z": "b"},
                               {"a": "[fd00::1]:80", "w": 5, "t": ["x"], "m": {"k": "v"}}]},
    ]
    for i, s in enumerate(sets):
        for choice in range(0, 0x20, 3):
            put("endpoint_set", bytes([choice + i]) + json.dumps(s).encode())
    put("endpoint_set", b"\x00" + json.dumps(["meshwasm.endpoints.v1.notify.1"]).encode())
    text = (ROOT / "filters/path/src/lib.rs").read_text()
    paths = set(re.findall(r'"(/[^"\s]*)"', text))
    for p in sorted(paths):
        put("path", p.replace("\\\\", "\\"))
        put("route", p + "\0api.internal:8080\0session=abc; x=y")
    put("route", "/api/v1?x=1\0[fd00::1]:443\0")


def serve_configs():
    """examples/serve/*.yaml, the YAML blocks of its README and of host/README.md, the example in the
    parser's doc comment, and the configurations in its unit tests (paths resolve against examples/serve/)."""
    for p in sorted((ROOT / "examples" / "serve").glob("*.yaml")):
        put("serve_config", p.read_text())
    for readme in ["examples/serve/README.md", "host/README.md"]:
        path = ROOT / readme
        if path.exists():
            for block in re.findall(r"```ya?ml\n(.*?)```", path.read_text(), re.S):
                put("serve_config", block)
    doc = (ROOT / "host" / "src" / "serve_config.rs").read_text()
    m = re.search(r"//! ```yaml\n(.*?)//! ```", doc, re.S)
    if m:
        put("serve_config", re.sub(r"(?m)^//! ?", "", m.group(1)))
    for text in raw_strings("host/src/serve_config.rs"):
        if "listeners" in text:
            put("serve_config", text)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    serve_configs()
    jws()
    configs()
    registries()
    doh()
    shared_and_paths()
    put("token_response", b"\x00\xc8" + b'{"access_token":"abc.def-_~+/==","token_type":"Bearer","expires_in":3600}')
    for doc in json_docs("filters/token-injector/src/token.rs"):
        put("token_response", b"\x00\xc8" + doc.encode())
        put("token_response", b"\x01\x90" + doc.encode())
    for d in sorted(OUT.iterdir()):
        print(f"{d.name}: {len(list(d.iterdir()))}")


if __name__ == "__main__":
    main()
