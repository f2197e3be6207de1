"""Table-driven tests of ``cloner.model.reference`` against the upstream grammar.

Expected results are those of Docker's ``ParseNormalizedNamed`` (current
github.com/distribution/reference). Vectors are taken from upstream test files
and tagged with where they come from:

- ``ref``:  distribution/reference ``reference_test.go`` (TestReferenceParse,
            TestSerialization); inputs there go to ``Parse``, so here they show
            their normalized form (``test_com`` -> ``docker.io/library/test_com``).
- ``norm``: distribution/reference ``normalize_test.go`` (TestValidateReferenceName,
            TestValidateRemoteName, TestParseRepositoryInfo,
            TestParseReferenceWithTagAndDigest, TestParseAnyReference,
            TestNormalizedSplitHostname, TestInvalidReferenceComponents).
- ``re``:   distribution/reference ``regexp_test.go`` (TestDomainRegexp,
            TestFullNameRegexp, TestReferenceRegexp, TestIdentifierRegexp).
- ``ggcr``: google/go-containerregistry ``pkg/name/tag_test.go`` and
            ``pkg/name/digest_test.go`` (the vectors ``ref_test.go`` runs).
- ``new``:  constructed here for rules that upstream vectors do not pin
            exactly (limits at 128/129 and 255/256, sha384, whitespace,
            unicode digits).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloner.errors import InvalidReference
from cloner.model.artifacts import is_reserved_tag
from cloner.model.reference import (
    DIGEST_AFTER_COPY,
    Reference,
    Target,
    digest_tag,
    image_matches,
    parse_reference,
    parse_target,
    patched_image,
    planned_image,
    registry_path_component,
    validate_digest,
)

# Digests that appear in the upstream tests.
F64 = "f" * 64
SHA256_F = f"sha256:{F64}"  # ref
SHA512_F = "sha512:" + "f" * 128  # ref
REDIS = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"  # norm
BUSYBOX = "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa"  # norm
BE178 = "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912"  # re
SERIAL = "sha256:1234567890098765432112345667890098765432112345667890098765432112"  # ref
GGCR = "sha256:" + "deadb33f" * 8  # ggcr validDigest
SHA384 = "sha384:" + "0123456789abcdef" * 6  # new
HEX64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"  # norm

A255 = "a" * 255

# (input, canonical str(ref), registry, repository, tag, digest)
VALID: list[tuple[str, str, str, str, str | None, str | None]] = [
    # --- ref: TestReferenceParse
    ("test_com", "docker.io/library/test_com", "docker.io", "library/test_com", None, None),
    (
        "test.com:tag",
        "docker.io/library/test.com:tag",
        "docker.io",
        "library/test.com",
        "tag",
        None,
    ),
    (
        "test.com:5000",
        "docker.io/library/test.com:5000",
        "docker.io",
        "library/test.com",
        "5000",
        None,
    ),
    ("test.com/repo:tag", "test.com/repo:tag", "test.com", "repo", "tag", None),
    ("test:5000/repo", "test:5000/repo", "test:5000", "repo", None, None),
    ("test:5000/repo:tag", "test:5000/repo:tag", "test:5000", "repo", "tag", None),
    (
        f"test:5000/repo@{SHA256_F}",
        f"test:5000/repo@{SHA256_F}",
        "test:5000",
        "repo",
        None,
        SHA256_F,
    ),
    (
        f"test:5000/repo:tag@{SHA256_F}",
        f"test:5000/repo:tag@{SHA256_F}",
        "test:5000",
        "repo",
        "tag",
        SHA256_F,
    ),
    (
        "lowercase:Uppercase",
        "docker.io/library/lowercase:Uppercase",
        "docker.io",
        "library/lowercase",
        "Uppercase",
        None,
    ),
    # Path of exactly 255 characters (the first "a" has no "." so it is a path
    # component on docker.io, not the domain Parse sees).
    (
        "a/" * 127 + "a:tag-puts-this-over-max",
        "docker.io/" + "a/" * 127 + "a:tag-puts-this-over-max",
        "docker.io",
        "a/" * 127 + "a",
        "tag-puts-this-over-max",
        None,
    ),
    # Current upstream limits the path only: the domain does not count.
    (
        f"example.com/{A255}:tag",
        f"example.com/{A255}:tag",
        "example.com",
        A255,
        "tag",
        None,
    ),
    (
        "sub-dom1.foo.com/bar/baz/quux",
        "sub-dom1.foo.com/bar/baz/quux",
        "sub-dom1.foo.com",
        "bar/baz/quux",
        None,
        None,
    ),
    (
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "sub-dom1.foo.com",
        "bar/baz/quux",
        "some-long-tag",
        None,
    ),
    (
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "b.gcr.io",
        "test.example.com/my-app",
        "test.example.com",
        None,
    ),
    (
        "xn--n3h.com/myimage:xn--n3h.com",
        "xn--n3h.com/myimage:xn--n3h.com",
        "xn--n3h.com",
        "myimage",
        "xn--n3h.com",
        None,
    ),
    (
        f"xn--7o8h.com/myimage:xn--7o8h.com@{SHA512_F}",
        f"xn--7o8h.com/myimage:xn--7o8h.com@{SHA512_F}",
        "xn--7o8h.com",
        "myimage",
        "xn--7o8h.com",
        SHA512_F,
    ),
    (
        "foo_bar.com:8080",
        "docker.io/library/foo_bar.com:8080",
        "docker.io",
        "library/foo_bar.com",
        "8080",
        None,
    ),
    (
        "foo/foo_bar.com:8080",
        "docker.io/foo/foo_bar.com:8080",
        "docker.io",
        "foo/foo_bar.com",
        "8080",
        None,
    ),
    (
        "192.168.1.1",
        "docker.io/library/192.168.1.1",
        "docker.io",
        "library/192.168.1.1",
        None,
        None,
    ),
    (
        "192.168.1.1:tag",
        "docker.io/library/192.168.1.1:tag",
        "docker.io",
        "library/192.168.1.1",
        "tag",
        None,
    ),
    (
        "192.168.1.1:5000",
        "docker.io/library/192.168.1.1:5000",
        "docker.io",
        "library/192.168.1.1",
        "5000",
        None,
    ),
    ("192.168.1.1/repo", "192.168.1.1/repo", "192.168.1.1", "repo", None, None),
    ("192.168.1.1:5000/repo", "192.168.1.1:5000/repo", "192.168.1.1:5000", "repo", None, None),
    (
        "192.168.1.1:5000/repo:5050",
        "192.168.1.1:5000/repo:5050",
        "192.168.1.1:5000",
        "repo",
        "5050",
        None,
    ),
    ("[2001:db8::1]/repo", "[2001:db8::1]/repo", "[2001:db8::1]", "repo", None, None),
    (
        "[2001:db8:1:2:3:4:5:6]/repo:tag",
        "[2001:db8:1:2:3:4:5:6]/repo:tag",
        "[2001:db8:1:2:3:4:5:6]",
        "repo",
        "tag",
        None,
    ),
    (
        "[2001:db8::1]:5000/repo",
        "[2001:db8::1]:5000/repo",
        "[2001:db8::1]:5000",
        "repo",
        None,
        None,
    ),
    (
        "[2001:db8::1]:5000/repo:tag",
        "[2001:db8::1]:5000/repo:tag",
        "[2001:db8::1]:5000",
        "repo",
        "tag",
        None,
    ),
    (
        f"[2001:db8::1]:5000/repo@{SHA256_F}",
        f"[2001:db8::1]:5000/repo@{SHA256_F}",
        "[2001:db8::1]:5000",
        "repo",
        None,
        SHA256_F,
    ),
    (
        f"[2001:db8::1]:5000/repo:tag@{SHA256_F}",
        f"[2001:db8::1]:5000/repo:tag@{SHA256_F}",
        "[2001:db8::1]:5000",
        "repo",
        "tag",
        SHA256_F,
    ),
    ("[2001:db8::]:5000/repo", "[2001:db8::]:5000/repo", "[2001:db8::]:5000", "repo", None, None),
    ("[::1]:5000/repo", "[::1]:5000/repo", "[::1]:5000", "repo", None, None),
    # --- ref: TestSerialization
    (
        "example.com:8000/named:tagged",
        "example.com:8000/named:tagged",
        "example.com:8000",
        "named",
        "tagged",
        None,
    ),
    (f"other.com/named@{SERIAL}", f"other.com/named@{SERIAL}", "other.com", "named", None, SERIAL),
    # --- norm: TestValidateReferenceName / TestValidateRemoteName
    ("docker/docker", "docker.io/docker/docker", "docker.io", "docker/docker", None, None),
    ("library/debian", "docker.io/library/debian", "docker.io", "library/debian", None, None),
    ("debian", "docker.io/library/debian", "docker.io", "library/debian", None, None),
    ("docker.io/debian", "docker.io/library/debian", "docker.io", "library/debian", None, None),
    (
        "docker.io/library/debian",
        "docker.io/library/debian",
        "docker.io",
        "library/debian",
        None,
        None,
    ),
    (
        "index.docker.io/docker/docker",
        "docker.io/docker/docker",
        "docker.io",
        "docker/docker",
        None,
        None,
    ),
    (
        "index.docker.io/debian",
        "docker.io/library/debian",
        "docker.io",
        "library/debian",
        None,
        None,
    ),
    (
        "127.0.0.1:5000/library/debian",
        "127.0.0.1:5000/library/debian",
        "127.0.0.1:5000",
        "library/debian",
        None,
        None,
    ),
    (
        "192.168.0.1:80",
        "docker.io/library/192.168.0.1:80",
        "docker.io",
        "library/192.168.0.1",
        "80",
        None,
    ),
    ("192.168.0.1:8/debian", "192.168.0.1:8/debian", "192.168.0.1:8", "debian", None, None),
    (
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "docker.io/library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "docker.io",
        "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        None,
        None,
    ),
    (
        "[fc00::1]:5000/docker/docker",
        "[fc00::1]:5000/docker/docker",
        "[fc00::1]:5000",
        "docker/docker",
        None,
        None,
    ),
    (
        "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
        "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
        "[fc00:1:2:3:4:5:6:7]:5000",
        "library/debian",
        None,
        None,
    ),
    # 64 hex is refused only bare; with a domain it is a repository name.
    (
        f"docker.io/{HEX64}",
        f"docker.io/library/{HEX64}",
        "docker.io",
        f"library/{HEX64}",
        None,
        None,
    ),
    # Uppercase first component: a domain (current upstream).
    ("Docker/docker", "Docker/docker", "Docker", "docker", None, None),
    ("DOCKER/docker", "DOCKER/docker", "DOCKER", "docker", None, None),
    (
        "docker-rules/docker",
        "docker.io/docker-rules/docker",
        "docker.io",
        "docker-rules/docker",
        None,
        None,
    ),
    (
        "docker---rules/docker",
        "docker.io/docker---rules/docker",
        "docker.io",
        "docker---rules/docker",
        None,
        None,
    ),
    ("dock__er/docker", "docker.io/dock__er/docker", "docker.io", "dock__er/docker", None, None),
    ("d/docker", "docker.io/d/docker", "docker.io", "d/docker", None, None),
    ("jess/t", "docker.io/jess/t", "docker.io", "jess/t", None, None),
    # --- norm: TestParseRepositoryInfo
    ("fooo/bar", "docker.io/fooo/bar", "docker.io", "fooo/bar", None, None),
    ("index.docker.io/fooo/bar", "docker.io/fooo/bar", "docker.io", "fooo/bar", None, None),
    ("library/ubuntu", "docker.io/library/ubuntu", "docker.io", "library/ubuntu", None, None),
    ("other/library", "docker.io/other/library", "docker.io", "other/library", None, None),
    (
        "127.0.0.1:8000/private/moonbase",
        "127.0.0.1:8000/private/moonbase",
        "127.0.0.1:8000",
        "private/moonbase",
        None,
        None,
    ),
    (
        "127.0.0.1:8000/privatebase",
        "127.0.0.1:8000/privatebase",
        "127.0.0.1:8000",
        "privatebase",
        None,
        None,
    ),
    (
        "example.com/privatebase",
        "example.com/privatebase",
        "example.com",
        "privatebase",
        None,
        None,
    ),
    (
        "example.com:8000/private/moonbase",
        "example.com:8000/private/moonbase",
        "example.com:8000",
        "private/moonbase",
        None,
        None,
    ),
    (
        "ubuntu-12.04-base",
        "docker.io/library/ubuntu-12.04-base",
        "docker.io",
        "library/ubuntu-12.04-base",
        None,
        None,
    ),
    (
        "index.docker.io/library/ubuntu-12.04-base",
        "docker.io/library/ubuntu-12.04-base",
        "docker.io",
        "library/ubuntu-12.04-base",
        None,
        None,
    ),
    ("docker.io/foo", "docker.io/library/foo", "docker.io", "library/foo", None, None),
    ("library/foo/bar", "docker.io/library/foo/bar", "docker.io", "library/foo/bar", None, None),
    ("store/foo/bar", "docker.io/store/foo/bar", "docker.io", "store/foo/bar", None, None),
    ("Foo/bar", "Foo/bar", "Foo", "bar", None, None),
    ("FOO/bar", "FOO/bar", "FOO", "bar", None, None),
    # --- norm: TestParseReferenceWithTagAndDigest (both tag and digest)
    (
        f"busybox:latest@{BUSYBOX}",
        f"docker.io/library/busybox:latest@{BUSYBOX}",
        "docker.io",
        "library/busybox",
        "latest",
        BUSYBOX,
    ),
    # --- norm: TestParseAnyReference (the named ones)
    ("redis", "docker.io/library/redis", "docker.io", "library/redis", None, None),
    (
        "redis:latest",
        "docker.io/library/redis:latest",
        "docker.io",
        "library/redis",
        "latest",
        None,
    ),
    (
        f"redis@{REDIS}",
        f"docker.io/library/redis@{REDIS}",
        "docker.io",
        "library/redis",
        None,
        REDIS,
    ),
    (
        "dmcgowan/myapp:latest",
        "docker.io/dmcgowan/myapp:latest",
        "docker.io",
        "dmcgowan/myapp",
        "latest",
        None,
    ),
    (
        f"docker.io/dmcgowan/myapp@{REDIS}",
        f"docker.io/dmcgowan/myapp@{REDIS}",
        "docker.io",
        "dmcgowan/myapp",
        None,
        REDIS,
    ),
    # 63 hex characters: not an identifier, so an ordinary name.
    (
        REDIS[7:-1],
        f"docker.io/library/{REDIS[7:-1]}",
        "docker.io",
        f"library/{REDIS[7:-1]}",
        None,
        None,
    ),
    ("dbcc1", "docker.io/library/dbcc1", "docker.io", "library/dbcc1", None, None),
    # ParseAnyReference takes "sha256:<hex>" as a digest, but ParseNormalizedNamed
    # (what this parser follows) reads it as library/sha256 tagged <hex>.
    (REDIS, f"docker.io/library/{REDIS}", "docker.io", "library/sha256", REDIS[7:], None),
    # --- norm: TestNormalizedSplitHostname
    ("test-com:8080/foo", "test-com:8080/foo", "test-com:8080", "foo", None, None),
    ("xn--n3h.com:18080/foo", "xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo", None, None),
    ("docker/migrator", "docker.io/docker/migrator", "docker.io", "docker/migrator", None, None),
    ("test.com/foo", "test.com/foo", "test.com", "foo", None, None),
    # --- re: TestFullNameRegexp / TestReferenceRegexp / TestDomainRegexp
    ("localhost:8080/bar", "localhost:8080/bar", "localhost:8080", "bar", None, None),
    (
        "registry.io/foo/project--id.module--name.ver---sion--name",
        "registry.io/foo/project--id.module--name.ver---sion--name",
        "registry.io",
        "foo/project--id.module--name.ver---sion--name",
        None,
        None,
    ),
    (
        "example.com/some_separator__underscore/myimage",
        "example.com/some_separator__underscore/myimage",
        "example.com",
        "some_separator__underscore/myimage",
        None,
        None,
    ),
    (
        "example.com/xn--7o8h.com/myimage",
        "example.com/xn--7o8h.com/myimage",
        "example.com",
        "xn--7o8h.com/myimage",
        None,
        None,
    ),
    ("Asdf.com/foo/bar", "Asdf.com/foo/bar", "Asdf.com", "foo/bar", None, None),
    ("aa-a/a", "docker.io/aa-a/a", "docker.io", "aa-a/a", None, None),
    ("aa/aa/bb/bb/bb", "docker.io/aa/aa/bb/bb/bb", "docker.io", "aa/aa/bb/bb/bb", None, None),
    (
        f"registry.com:8080/myapp:tag2@{BE178}",
        f"registry.com:8080/myapp:tag2@{BE178}",
        "registry.com:8080",
        "myapp",
        "tag2",
        BE178,
    ),
    # localhost without a slash is a name, 8080 its tag.
    (
        f"localhost:8080@{BE178}",
        f"docker.io/library/localhost:8080@{BE178}",
        "docker.io",
        "library/localhost",
        "8080",
        BE178,
    ),
    (
        f"localhost@{BE178}",
        f"docker.io/library/localhost@{BE178}",
        "docker.io",
        "library/localhost",
        None,
        BE178,
    ),
    ("ab.c-om/x", "ab.c-om/x", "ab.c-om", "x", None, None),
    ("0101.com/x", "0101.com/x", "0101.com", "x", None, None),
    ("b.gbc.io:443/x", "b.gbc.io:443/x", "b.gbc.io:443", "x", None, None),
    # The grammar does not range-check ports ("it will fail on validation", later).
    ("192.168.1.1:75050/x", "192.168.1.1:75050/x", "192.168.1.1:75050", "x", None, None),
    ("[fd00:1:2::3]:75050/x", "[fd00:1:2::3]:75050/x", "[fd00:1:2::3]:75050", "x", None, None),
    (
        "[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:75050/x",
        "[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:75050/x",
        "[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:75050",
        "x",
        None,
        None,
    ),
    # --- ggcr: tag_test.go / digest_test.go
    (
        "gcr.io/google.com/g-convoy/hello-world:latest",
        "gcr.io/google.com/g-convoy/hello-world:latest",
        "gcr.io",
        "google.com/g-convoy/hello-world",
        "latest",
        None,
    ),
    (
        "gcr.io/project-id/image:w1th-alpha_num3ric.PLUScaps",
        "gcr.io/project-id/image:w1th-alpha_num3ric.PLUScaps",
        "gcr.io",
        "project-id/image",
        "w1th-alpha_num3ric.PLUScaps",
        None,
    ),
    (
        "us.gcr.io/project-id/image:with.period.in.tag",
        "us.gcr.io/project-id/image:with.period.in.tag",
        "us.gcr.io",
        "project-id/image",
        "with.period.in.tag",
        None,
    ),
    (
        "domain.with.port:9001/image:latest",
        "domain.with.port:9001/image:latest",
        "domain.with.port:9001",
        "image",
        "latest",
        None,
    ),
    (
        "www.example.test:12345/repo/path",
        "www.example.test:12345/repo/path",
        "www.example.test:12345",
        "repo/path",
        None,
        None,
    ),
    (
        "namespace/pathcomponent/image",
        "docker.io/namespace/pathcomponent/image",
        "docker.io",
        "namespace/pathcomponent/image",
        None,
        None,
    ),
    (
        f"example.text:8443/foo/bar:latest@{GGCR}",
        f"example.text:8443/foo/bar:latest@{GGCR}",
        "example.text:8443",
        "foo/bar",
        "latest",
        GGCR,
    ),
    (
        f"nginx:latest@{GGCR}",
        f"docker.io/library/nginx:latest@{GGCR}",
        "docker.io",
        "library/nginx",
        "latest",
        GGCR,
    ),
    # --- new: normalization, separators, tag and path limits, sha384
    ("nginx", "docker.io/library/nginx", "docker.io", "library/nginx", None, None),
    ("index.docker.io/x", "docker.io/library/x", "docker.io", "library/x", None, None),
    ("docker.io/foo/bar", "docker.io/foo/bar", "docker.io", "foo/bar", None, None),
    ("foo/bar", "docker.io/foo/bar", "docker.io", "foo/bar", None, None),
    ("localhost/foo", "localhost/foo", "localhost", "foo", None, None),
    (
        "localhost:5000/foo/bar:1.0",
        "localhost:5000/foo/bar:1.0",
        "localhost:5000",
        "foo/bar",
        "1.0",
        None,
    ),
    ("x/a.b_c__d---e-f", "docker.io/x/a.b_c__d---e-f", "docker.io", "x/a.b_c__d---e-f", None, None),
    ("x:_tag", "docker.io/library/x:_tag", "docker.io", "library/x", "_tag", None),
    (
        "x:" + "T" * 128,
        "docker.io/library/x:" + "T" * 128,
        "docker.io",
        "library/x",
        "T" * 128,
        None,
    ),
    (
        "x:a" + "-._" * 42 + "b",
        "docker.io/library/x:a" + "-._" * 42 + "b",
        "docker.io",
        "library/x",
        "a" + "-._" * 42 + "b",
        None,
    ),
    (f"quay.io/a/b@{SHA384}", f"quay.io/a/b@{SHA384}", "quay.io", "a/b", None, SHA384),
    # docker.io adds "library/" first: 247 + 8 = 255 characters.
    ("a" * 247, "docker.io/library/" + "a" * 247, "docker.io", "library/" + "a" * 247, None, None),
]

# (input, where it comes from)
INVALID: list[tuple[str, str]] = [
    # --- ref: TestReferenceParse / TestWithNameFailure
    ("", "ref"),
    (":justtag", "ref"),
    (f"@{SHA256_F}", "ref"),
    ("repo@sha256:" + "f" * 34, "ref: digest too short"),
    (f"validname@invaliddigest:{F64}", "ref: unsupported algorithm"),
    ("Uppercase:tag", "ref"),
    ("test:5000/Uppercase/lowercase:tag", "ref"),
    ("domain/" + "a" * 256 + ":tag", "ref: path too long"),
    ("aa/asdf$$^/aa", "ref"),
    ("[2001:db8::1]", "ref"),
    ("[2001:db8::1]:5000", "ref"),
    ("[2001:db8::1]:tag", "ref"),
    ("[fe80::1%eth0]:5000/repo", "ref: IPv6 zone"),
    ("[fe80::1%@invalidzone]:5000/repo", "ref"),
    # --- norm
    ("https://github.com/docker/docker", "norm"),
    ("docker/Docker", "norm"),
    ("-docker", "norm"),
    ("-docker/docker", "norm"),
    ("-docker.io/docker/docker", "norm"),
    ("docker///docker", "norm"),
    ("docker.io/docker/Docker", "norm"),
    ("docker.io/docker///docker", "norm"),
    ("[fc00::1]", "norm"),
    ("[fc00::1]:5000", "norm"),
    ("fc00::1:5000/debian", "norm: IPv6 without brackets"),
    ("[fe80::1%eth0]:5000/debian", "norm"),
    ("[2001:db8:3:4::192.0.2.33]:5000/debian", "norm: IPv4-mapped IPv6"),
    (HEX64, "norm: bare 64-hex identifier"),
    ("docker-/docker", "norm"),
    ("-docker-/docker", "norm"),
    ("____/____", "norm"),
    ("_docker/_docker", "norm"),
    ("dock..er/docker", "norm"),
    ("dock_.er/docker", "norm"),
    ("dock-.er/docker", "norm"),
    ("docker/", "norm"),
    (
        "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_"
        "namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_"
        "its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_"
        "than_255/docker",
        "norm: namespace too long",
    ),
    ("-foo", "norm: TestInvalidReferenceComponents"),
    # --- re
    ("a/a/a/a/", "re"),
    ("a//a/a", "re"),
    ("foo.com/", "re"),
    ("foo.com:http/bar", "re"),
    ("a^a", "re"),
    ("asdf$$^/aa", "re"),
    ("a-/a/a/a", "re"),
    ("foo.com/a-/a/a", "re"),
    ("foo/bar-", "re"),
    ("foo-/bar", "re"),
    ("foo/-bar", "re"),
    ("_foo/bar", "re"),
    ("docker_/docker_", "re"),
    ("foo_bar.com:8080/app", "re"),
    ("example.com/__underscore/myimage", "re"),
    ("example.com/..dots/myimage", "re"),
    ("example.com/.dots/myimage", "re"),
    ("example.com/nodouble..dots/myimage", "re"),
    ("docker./docker", "re"),
    (".docker/docker", "re"),
    ("do..cker/docker", "re"),
    ("do__cker:8080/docker", "re"),
    ("Foo/FarB", "re: uppercase repository"),
    ("registry.com:8080/myapp@sha256:badbadbadbad", "re"),
    ("registry.com:8080/myapp:invalid~tag", "re"),
    ("bad_hostname.com:8080/myapp:tag", "re"),
    (f"localhost:http/name@{BE178}", "re"),
    ("registry.com:8080/myapp@bad", "re"),
    ("registry.com:8080/myapp@2bad", "re"),
    ("7EC43B381E5AEFE6E04EFB0B3F0693FF2A4A50652D64AEC573905F2DB5889A1C", "re: uppercase hex"),
    ("-ab.com/x", "re: TestDomainRegexp"),
    ("ab-.com/x", "re: TestDomainRegexp"),
    ("ab.-com/x", "re: TestDomainRegexp"),
    ("ab.com-/x", "re: TestDomainRegexp"),
    ("test.com:http/x", "re: TestDomainRegexp"),
    ("[fd00:1:2::3]75050/x", "re: TestDomainRegexp"),
    ("[fd00:1:2::3]::75050/x", "re: TestDomainRegexp"),
    ("[fd00:1:2::3%eth0]:75050/x", "re: TestDomainRegexp"),
    ("fd00:1:2::3:75050/x", "re: TestDomainRegexp"),
    # --- ggcr
    ("gcr.io/project-id/bad_chars:c@n'tuse", "ggcr"),
    ("gcr.io/project-id/wrong-length:white space", "ggcr"),
    (
        "gcr.io/project-id/too-many-chars:thisisthetagthatneverendsitgoesonandonmyfriendsome"
        "peoplestartedtaggingitnotknowingwhatitwasandtheyllcontinuetaggingitforeverjustbecause"
        "thisisthetagthatneverends",
        "ggcr: 160-character tag",
    ),
    ("gcr.io/project-id/unknown-alg@unknown:abc123", "ggcr"),
    ("gcr.io/project-id/wrong-length@sha256:d34db33fd34db33f", "ggcr"),
    ("gcr.io/project-id/missing-digest@", "ggcr"),
    # --- new
    ("foo_bar.com/app", "new: '.' makes it a registry, '_' is not a host (upstream: no domain)"),
    ("my_registry.local:5000/app", "new: '_' in a registry with port"),
    ("a.b_c__d---e-f/g", "new: '.' makes it a registry, '_' is not a host"),
    ("x/a___b", "new: three underscores"),
    ("x/a_.b", "new: two separators in a row"),
    ("x/a.-b", "new: two separators in a row"),
    ("NGINX", "new: uppercase repository"),
    ("docker.io/Library/nginx", "new: uppercase repository"),
    ("localhost:5000/Foo", "new: uppercase repository"),
    ("x:" + "a" * 129, "new: 129-character tag"),
    ("x:.tag", "new: tag starts with '.'"),
    ("x:-tag", "new: tag starts with '-'"),
    ("x:", "new: empty tag"),
    ("x:tag:tag", "new: ':' in tag"),
    ("x@", "new: empty digest"),
    ("x@sha256:" + "a" * 63, "new: sha256 63 hex"),
    ("x@sha256:" + "a" * 65, "new: sha256 65 hex"),
    ("x@sha256:" + "A" * 64, "new: uppercase hex"),
    ("x@sha512:" + "a" * 127, "new: sha512 127 hex"),
    ("x@sha512:" + "a" * 64, "new: sha512 with sha256 length"),
    ("x@sha384:" + "a" * 64, "new: sha384 with sha256 length"),
    ("x@md5:" + "a" * 32, "new: unknown algorithm"),
    ("x@sha1:" + "a" * 40, "new: unknown algorithm"),
    ("x@SHA256:" + "a" * 64, "new: algorithm is case-sensitive"),
    (f"x@{SHA256_F}@{SHA256_F}", "new: two digests"),
    (f"x@{SHA256_F}:tag", "new: tag after digest"),
    ("a" * 248, "new: library/ + 248 = 256 characters"),
    ("example.com/" + "a" * 256, "new: 256-character path"),
    ("example.com/" + "a/" * 127 + "ab", "new: 256-character path of components"),
    ("nginx\n", "new: trailing newline"),
    ("nginx:1.25\n", "new: trailing newline after tag"),
    (f"nginx@{SHA256_F}\n", "new: trailing newline after digest"),
    ("\nnginx", "new: leading newline"),
    ("nginx ", "new: trailing space"),
    (" nginx", "new: leading space"),
    ("ngi nx", "new: inner space"),
    ("nginx\t", "new: tab"),
    ("nginx:\uff11", "new: fullwidth digit in tag"),
    ("nginx:\u0663", "new: Arabic-Indic digit in tag"),
    ("ngin\u0663x", "new: Arabic-Indic digit in repository"),
    ("registry.example.com:\u0665\u0660\u0660\u0660/app", "new: unicode digits in port"),
    ("r\u00e9gistry.example.com/app", "new: non-ASCII host"),
    ("caf\u00e9", "new: non-ASCII repository"),
    ("/nginx", "new: empty registry"),
    ("example.com:/app", "new: empty port"),
    ("[]/app", "new: empty IPv6"),
]

# Coverage floor: at least 50 valid and 30 invalid references.
assert len(VALID) >= 50
assert len(INVALID) >= 30


@pytest.mark.parametrize(
    ("text", "canonical", "registry", "repository", "tag", "digest"),
    VALID,
    ids=[row[0][:80] for row in VALID],
)
def test_valid_reference(
    text: str,
    canonical: str,
    registry: str,
    repository: str,
    tag: str | None,
    digest: str | None,
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert str(ref) == canonical
    assert ref.name == f"{registry}/{repository}"
    # The canonical form is a fixed point.
    assert parse_reference(canonical) == ref


@pytest.mark.parametrize(("text", "source"), INVALID, ids=[row[0][:80] for row in INVALID])
def test_invalid_reference(text: str, source: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err)
    assert err.problem
    # The error names the reference as written, not only the part that failed.
    assert err.text == text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("x:" + "a" * 129, "128"),
        ("docker.io/Library/nginx", "lowercase"),
        (HEX64, "image ID"),
        ("foo_bar.com/app", "registry"),
        ("example.com/" + "a" * 256, "255"),
        ("x@md5:" + "a" * 32, "md5"),
        ("x@sha256:" + "A" * 64, "lowercase hex"),
    ],
)
def test_invalid_reference_says_why(text: str, words: str) -> None:
    with pytest.raises(InvalidReference, match=words):
        parse_reference(text)


def test_not_a_string_is_invalid() -> None:
    with pytest.raises(InvalidReference):
        parse_reference(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "digest",
    [SHA256_F, SHA512_F, SHA384, REDIS],
)
def test_validate_digest_accepts(digest: str) -> None:
    validate_digest(digest)


@pytest.mark.parametrize(
    "digest",
    [
        F64,
        "sha256:",
        ":" + F64,
        "sha256:" + "f" * 63,
        "sha256:" + "F" * 64,
        "sha256:" + "g" * 64,
        "sha512:" + F64,
        "md5:" + "f" * 32,
    ],
)
def test_validate_digest_refuses(digest: str) -> None:
    with pytest.raises(InvalidReference):
        validate_digest(digest)


# --- Reference helpers


def test_reference_helpers() -> None:
    ref = parse_reference(f"quay.io/a/b:1.0@{SHA256_F}")
    assert ref.tag_or_default == "1.0"
    assert ref.pull_reference == f"quay.io/a/b@{SHA256_F}"
    assert ref.with_tag("2.0") == Reference("quay.io", "a/b", "2.0", None)
    assert ref.with_tag(None).with_digest(REDIS) == Reference("quay.io", "a/b", None, REDIS)
    bare = parse_reference("nginx")
    assert bare.tag_or_default == "latest"
    assert bare.pull_reference == "docker.io/library/nginx:latest"


# --- digest_tag and registry_path_component


def test_digest_tag_sha256() -> None:
    assert digest_tag(REDIS) == "sha256_" + REDIS[7:]
    assert not is_reserved_tag(digest_tag(REDIS))
    assert len(digest_tag(REDIS)) == 71


def test_digest_tag_sha512_is_cut_to_128() -> None:
    tag = digest_tag(SHA512_F)
    assert tag == "sha512_" + "f" * 121
    assert len(tag) == 128


@pytest.mark.parametrize("digest", [SHA256_F, SHA384, SHA512_F, BUSYBOX])
def test_digest_tag_is_a_valid_tag(digest: str) -> None:
    ref = parse_reference(f"example.com/x:{digest_tag(digest)}")
    assert ref.tag == digest_tag(digest)


@pytest.mark.parametrize(
    ("registry", "component"),
    [
        ("quay.io", "quay.io"),
        ("docker.io", "docker.io"),
        ("localhost", "localhost"),
        ("localhost:5000", "localhost-5000"),
        ("registry.example.com:443", "registry.example.com-443"),
        ("127.0.0.1:5000", "127.0.0.1-5000"),
        ("[::1]:5000", "1-5000"),
        ("[2001:db8::1]", "2001-db8-1"),
        ("Asdf.com", "asdf.com"),
        ("xn--n3h.com:18080", "xn--n3h.com-18080"),
        ("[::]", "registry"),
    ],
)
def test_registry_path_component(registry: str, component: str) -> None:
    assert registry_path_component(registry) == component


# --- Target


@pytest.mark.parametrize(
    ("text", "registry", "prefix"),
    [
        ("registry.example.com", "registry.example.com", ""),
        ("registry.example.com/mirror", "registry.example.com", "mirror"),
        ("registry.example.com/team/mirror/", "registry.example.com", "team/mirror"),
        ("  registry.example.com/mirror  ", "registry.example.com", "mirror"),
        ("127.0.0.1:5000", "127.0.0.1:5000", ""),
        ("localhost", "localhost", ""),
        ("localhost:5000/cache", "localhost:5000", "cache"),
        ("[::1]:5000/m", "[::1]:5000", "m"),
        ("index.docker.io/me", "docker.io", "me"),
    ],
)
def test_target_parse(text: str, registry: str, prefix: str) -> None:
    target = Target.parse(text)
    assert target == Target(registry, prefix)
    assert parse_target(text) == (registry, prefix)
    assert str(target) == (f"{registry}/{prefix}" if prefix else registry)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "mirror",
        "mirror/images",
        "https://registry.example.com",
        "registry.example.com/Mirror",
        "registry.example.com//mirror",
        "registry.example.com/mirror:tag",
        "foo_bar.com/mirror",
        "-registry.example.com",
        "registry.example.com:http",
    ],
)
def test_target_parse_refuses(text: str) -> None:
    with pytest.raises(InvalidReference) as info:
        Target.parse(text)
    assert isinstance(info.value, ValueError)
    assert str(info.value)


@pytest.mark.parametrize(
    ("target", "reference", "owned"),
    [
        (
            "registry.example.com/mirror",
            "registry.example.com/mirror/docker.io/library/nginx",
            True,
        ),
        ("registry.example.com/mirror", "registry.example.com/mirror/x:1", True),
        ("registry.example.com/mirror", "registry.example.com/mirror2/x", False),
        ("registry.example.com/mirror", "registry.example.com/other/x", False),
        ("registry.example.com/mirror", "registry.example.com/mirror", False),
        ("registry.example.com/mirror", "quay.io/mirror/x", False),
        ("registry.example.com/mirror", "registry.example.com:443/mirror/x", False),
        ("registry.example.com", "registry.example.com/anything", True),
        ("registry.example.com", "nginx", False),
        ("localhost:5000", "localhost:5000/docker.io/library/nginx:latest", True),
        ("localhost:5000", "localhost/x", False),
        ("index.docker.io/me", "me/x", True),
        ("docker.io/me", "docker.io/library/nginx", False),
    ],
)
def test_target_owns(target: str, reference: str, owned: bool) -> None:
    assert Target.parse(target).owns(parse_reference(reference)) is owned


@pytest.mark.parametrize(
    ("target", "source", "owned"),
    [
        (
            "registry.example.com/mirror",
            "nginx",
            "registry.example.com/mirror/docker.io/library/nginx:latest",
        ),
        (
            "registry.example.com/mirror",
            "nginx:1.25",
            "registry.example.com/mirror/docker.io/library/nginx:1.25",
        ),
        (
            "registry.example.com/mirror",
            "quay.io/prometheus/node-exporter:v1.8.0",
            "registry.example.com/mirror/quay.io/prometheus/node-exporter:v1.8.0",
        ),
        ("127.0.0.1:5000", "foo/bar", "127.0.0.1:5000/docker.io/foo/bar:latest"),
        (
            "registry.example.com",
            f"localhost:5000/app@{SHA256_F}",
            f"registry.example.com/localhost-5000/app:sha256_{F64}",
        ),
        (
            "registry.example.com",
            f"[::1]:5000/repo:tag@{SHA256_F}",
            "registry.example.com/1-5000/repo:tag",
        ),
        (
            "localhost:5000/cache",
            f"busybox:latest@{BUSYBOX}",
            "localhost:5000/cache/docker.io/library/busybox:latest",
        ),
        (
            "registry.example.com",
            f"gcr.io/a/b@{SHA512_F}",
            "registry.example.com/gcr.io/a/b:sha512_" + "f" * 121,
        ),
        ("registry.example.com", "Foo/bar:x", "registry.example.com/foo/bar:x"),
        (
            "registry.example.com",
            "192.168.1.1:5000/repo:5050",
            "registry.example.com/192.168.1.1-5000/repo:5050",
        ),
        # Owned path "docker.io/" + 245 = 255 characters: the registry does not count.
        (
            "registry.example.com",
            "x/" + "a" * 243,
            "registry.example.com/docker.io/x/" + "a" * 243 + ":latest",
        ),
    ],
)
def test_target_owned_name(target: str, source: str, owned: str) -> None:
    t = Target.parse(target)
    result = t.owned_name(parse_reference(source))
    assert str(result) == owned
    assert result.digest is None
    assert result == parse_reference(owned)
    assert t.owns(result)


def test_target_owned_name_distinct_sources_do_not_collide() -> None:
    t = Target.parse("registry.example.com/mirror")
    a = t.owned_name(parse_reference("docker.io/a/nginx"))
    b = t.owned_name(parse_reference("quay.io/a/nginx"))
    assert a != b


def test_registry_path_component_keeps_dash_runs() -> None:
    # Collapsing "--" would map the punycode host xn--n3h.com onto xn-n3h.com.
    assert registry_path_component("xn--n3h.com") != registry_path_component("xn-n3h.com")
    t = Target.parse("registry.example.com")
    a = t.owned_name(parse_reference("xn--n3h.com/app"))
    b = t.owned_name(parse_reference("xn-n3h.com/app"))
    assert a != b


def test_target_owned_name_too_long() -> None:
    source = parse_reference("x/" + "a" * 244)  # docker.io/x/aaa: owned path 256
    with pytest.raises(InvalidReference, match="255"):
        Target.parse("registry.example.com").owned_name(source)


# --- Properties over references built from the grammar's pieces

_ALNUM = st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)
_SEPARATOR = st.sampled_from([".", "_", "__", "-", "--", "---"])


@st.composite
def _path_components(draw: st.DrawFn) -> str:
    text = draw(_ALNUM)
    for _ in range(draw(st.integers(0, 2))):
        text += draw(_SEPARATOR) + draw(_ALNUM)
    return text


_PATHS = st.lists(_path_components(), min_size=1, max_size=4).map("/".join)
_DOMAIN_COMPONENT = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
_DOMAIN_NAMES = st.lists(_DOMAIN_COMPONENT, min_size=1, max_size=3).map(".".join)
_IPV4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
# Bracketed, with at least one ":" (a bracketed host without one is not a domain).
_IPV6 = st.from_regex(r"\[[a-fA-F0-9]{0,4}:[a-fA-F0-9:]{0,16}\]", fullmatch=True)
_HOSTS = st.one_of(
    _DOMAIN_NAMES,
    _IPV4,
    _IPV6,
    st.sampled_from(["localhost", "docker.io", "index.docker.io"]),
)
_PORTS = st.one_of(st.just(""), st.from_regex(r":[0-9]{1,6}", fullmatch=True))
_DOMAINS = st.builds(lambda host, port: host + port, _HOSTS, _PORTS)
_TAGS = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
_DIGESTS = st.sampled_from([("sha256", 64), ("sha384", 96), ("sha512", 128)]).flatmap(
    lambda alg: st.text("0123456789abcdef", min_size=alg[1], max_size=alg[1]).map(
        lambda hex_: f"{alg[0]}:{hex_}"
    )
)
_EXPLICIT_HOSTS = st.one_of(
    _DOMAIN_NAMES.filter(lambda d: "." in d), _IPV4, _IPV6, st.just("localhost")
)
_TARGETS = st.builds(
    lambda host, port, prefix: host + port + (f"/{prefix}" if prefix else ""),
    _EXPLICIT_HOSTS,
    _PORTS,
    st.one_of(st.just(""), st.lists(_path_components(), min_size=1, max_size=2).map("/".join)),
)


def _build(domain: str | None, path: str, tag: str | None, digest: str | None) -> str:
    text = f"{domain}/{path}" if domain is not None else path
    if tag is not None:
        text += f":{tag}"
    if digest is not None:
        text += f"@{digest}"
    return text


def _expected_name(domain: str | None, path: str) -> tuple[str, str] | None:
    """(registry, repository) by the rules of ``splitDockerDomain``; None if refused."""
    name = f"{domain}/{path}" if domain is not None else path
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        # The generated hosts never hold "_"; a path component taken as a
        # registry (it has a ".") is a valid host unless it holds "_".
        if "_" in first:
            return None
        registry, repository = first, rest
    else:
        registry, repository = "docker.io", name
    if registry == "index.docker.io":
        registry = "docker.io"
    if registry == "docker.io" and "/" not in repository:
        repository = "library/" + repository
    if len(repository) > 255:
        return None
    return registry, repository


_REFERENCE_PIECES = {
    "domain": st.none() | _DOMAINS,
    "path": _PATHS,
    "tag": st.none() | _TAGS,
    "digest": st.none() | _DIGESTS,
}


@settings(max_examples=400, deadline=None, database=None)
@given(**_REFERENCE_PIECES)
def test_property_parse_round_trips(
    domain: str | None, path: str, tag: str | None, digest: str | None
) -> None:
    text = _build(domain, path, tag, digest)
    expected = _expected_name(domain, path)
    if expected is None:
        with pytest.raises(InvalidReference):
            parse_reference(text)
        return
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (*expected, tag, digest)
    assert parse_reference(str(ref)) == ref


_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*")


@settings(max_examples=400, deadline=None, database=None)
@given(domain=_DOMAINS)
def test_property_registry_path_component_is_a_path_component(domain: str) -> None:
    assert _PATH_COMPONENT_RE.fullmatch(registry_path_component(domain))


@settings(max_examples=400, deadline=None, database=None)
@given(target_text=_TARGETS, **_REFERENCE_PIECES)
def test_property_owned_name(
    target_text: str, domain: str | None, path: str, tag: str | None, digest: str | None
) -> None:
    expected = _expected_name(domain, path)
    if expected is None:
        return
    ref = parse_reference(_build(domain, path, tag, digest))
    target = Target.parse(target_text)
    owned_path = "/".join(
        p for p in (target.prefix, registry_path_component(ref.registry), ref.repository) if p
    )
    if len(owned_path) > 255:
        with pytest.raises(InvalidReference):
            target.owned_name(ref)
        return
    owned = target.owned_name(ref)
    assert parse_reference(str(owned)) == owned
    assert target.owns(owned)
    assert owned.registry == target.registry
    assert owned.repository == owned_path
    assert owned.digest is None
    if tag is not None:
        assert owned.tag == tag
    elif digest is not None:
        assert owned.tag == digest_tag(digest)
    else:
        assert owned.tag == "latest"


# --- flat naming ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "separator", "source", "owned"),
    [
        ("docker.io/myorg", "_", "nginx", "docker.io/myorg/docker.io_library_nginx:latest"),
        ("quay.io/team", "_", "quay.io/a/b:1", "quay.io/team/quay.io_a_b:1"),
        ("ecr.example.com", "_", "localhost:5000/x", "ecr.example.com/localhost-5000_x:latest"),
        ("r.example.com/m", "__", "ghcr.io/o/r:2", "r.example.com/m/ghcr.io__o__r:2"),
        ("r.example.com", "-", "ghcr.io/o/r:2", "r.example.com/ghcr.io-o-r:2"),
    ],
)
def test_flat_owned_name(target: str, separator: str, source: str, owned: str) -> None:
    t = Target.parse(target, naming="flat", separator=separator)
    assert str(t.owned_name(parse_reference(source))) == owned


def test_flat_ambiguous_joins_get_distinct_hash_suffixes() -> None:
    t = Target.parse("docker.io/myorg", naming="flat", separator="_")
    a = t.owned_name(parse_reference("quay.io/a_b/c:1"))
    b = t.owned_name(parse_reference("quay.io/a/b_c:1"))
    assert a.repository.startswith("myorg/quay.io_a_b_c-")
    assert b.repository.startswith("myorg/quay.io_a_b_c-")
    assert a != b
    assert a.repository.count("/") == 1 and b.repository.count("/") == 1


@pytest.mark.parametrize("separator", ["/", "", "___", "-_", "x"])
def test_flat_separator_must_be_a_grammar_separator(separator: str) -> None:
    with pytest.raises(ValueError, match="separator"):
        Target.parse("r.example.com", naming="flat", separator=separator)


def test_unknown_naming_is_refused() -> None:
    with pytest.raises(ValueError, match="naming"):
        Target.parse("r.example.com", naming="deep")


@settings(max_examples=400, deadline=None, database=None)
@given(
    target_text=_TARGETS,
    separator=st.sampled_from(["_", ".", "__", "-", "--"]),
    **_REFERENCE_PIECES,
)
def test_property_flat_owned_name_is_valid_and_one_component(
    target_text: str,
    separator: str,
    domain: str | None,
    path: str,
    tag: str | None,
    digest: str | None,
) -> None:
    if _expected_name(domain, path) is None:
        return
    ref = parse_reference(_build(domain, path, tag, digest))
    target = Target.parse(target_text, naming="flat", separator=separator)
    try:
        owned = target.owned_name(ref)
    except InvalidReference as exc:
        assert "longer than" in exc.problem
        return
    assert parse_reference(str(owned)) == owned
    assert target.owns(owned)
    below = owned.repository[len(target.prefix) + 1 :] if target.prefix else owned.repository
    assert "/" not in below


# --- image globs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "reference", "matches"),
    [
        ("docker.io/library/*", "nginx:1.25", True),
        ("docker.io/library/*", "docker.io/bitnami/redis", False),
        ("docker.io/library/nginx", "nginx:1.25", True),
        ("docker.io/library/nginx:1.*", "nginx:1.25", True),
        ("docker.io/library/nginx:1.*", "nginx:2.0", False),
        ("*/bitnami/*", "bitnami/redis:7", True),
        ("*/bitnami/*", "quay.io/bitnami/redis:7", True),
        ("*/bitnami/*", "quay.io/org/bitnami/redis", False),
        ("quay.io/**", "quay.io/org/team/app:2", True),
        ("quay.io/**", "ghcr.io/quay.io/app", False),
        ("**/app@sha256:*", "ghcr.io/o/app@sha256:" + "a" * 64, True),
        ("ghcr.io/o/ap?", "ghcr.io/o/app", True),
        ("ghcr.io/o/a.p", "ghcr.io/o/app", False),
    ],
)
def test_image_glob(pattern: str, reference: str, matches: bool) -> None:
    assert image_matches(pattern, parse_reference(reference)) is matches


# --- the reference a workload is patched to (cycle) and shows in plan ------------------

SOURCE_DIGEST = "sha256:" + "d" * 64
COPY_DIGEST = "sha256:" + "e" * 64  # the owned copy's own digest (Docker engine copy)
MIRROR = Target.parse("reg.example.com/m")
REPO_OWNED = "reg.example.com/m/quay.io/x/y"
AFTER = "<digest after copy>"


@pytest.mark.parametrize(
    ("source", "pin", "expected"),
    [
        ("quay.io/x/y:1", False, f"{REPO_OWNED}:1"),
        ("quay.io/x/y:1", True, f"{REPO_OWNED}:1@{COPY_DIGEST}"),
        # digest only: the owned tag sha256_<hex> is dropped, the digest names the content
        (f"quay.io/x/y@{SOURCE_DIGEST}", False, f"{REPO_OWNED}@{COPY_DIGEST}"),
        (f"quay.io/x/y@{SOURCE_DIGEST}", True, f"{REPO_OWNED}@{COPY_DIGEST}"),
        (f"quay.io/x/y:1@{SOURCE_DIGEST}", False, f"{REPO_OWNED}:1@{COPY_DIGEST}"),
        (f"quay.io/x/y:1@{SOURCE_DIGEST}", True, f"{REPO_OWNED}:1@{COPY_DIGEST}"),
    ],
)
def test_patched_image_keeps_a_pin_and_pins_a_tag_with_pin_digest(
    source: str, pin: bool, expected: str
) -> None:
    ref = parse_reference(source)
    assert patched_image(ref, MIRROR.owned_name(ref), COPY_DIGEST, pin) == expected


TAG, BY_DIGEST, BOTH = (
    "quay.io/x/y:1",
    f"quay.io/x/y@{SOURCE_DIGEST}",
    f"quay.io/x/y:1@{SOURCE_DIGEST}",
)
SKOPEO_KEEPS, DOCKER_NEW = True, False  # keeps_digests of the backend


@pytest.mark.parametrize(
    ("source", "pin", "keeps_digests", "owned_digest", "expected"),
    [
        # by tag: no digest in the reference unless pinDigest
        (TAG, False, SKOPEO_KEEPS, None, f"{REPO_OWNED}:1"),
        (TAG, False, DOCKER_NEW, None, f"{REPO_OWNED}:1"),
        (TAG, False, DOCKER_NEW, COPY_DIGEST, f"{REPO_OWNED}:1"),
        # pinDigest pins to what the copy holds: known once an owned copy exists
        (TAG, True, SKOPEO_KEEPS, None, f"{REPO_OWNED}:1@{AFTER}"),
        (TAG, True, SKOPEO_KEEPS, SOURCE_DIGEST, f"{REPO_OWNED}:1@{SOURCE_DIGEST}"),
        (TAG, True, DOCKER_NEW, None, f"{REPO_OWNED}:1@{AFTER}"),
        (TAG, True, DOCKER_NEW, COPY_DIGEST, f"{REPO_OWNED}:1@{COPY_DIGEST}"),
        # by digest: skopeo keeps it, whatever the owned tag holds now
        (BY_DIGEST, False, SKOPEO_KEEPS, None, f"{REPO_OWNED}@{SOURCE_DIGEST}"),
        (BY_DIGEST, True, SKOPEO_KEEPS, None, f"{REPO_OWNED}@{SOURCE_DIGEST}"),
        (BY_DIGEST, False, SKOPEO_KEEPS, COPY_DIGEST, f"{REPO_OWNED}@{SOURCE_DIGEST}"),
        # ... the Docker engine gives the copy a digest of its own
        (BY_DIGEST, False, DOCKER_NEW, None, f"{REPO_OWNED}@{AFTER}"),
        (BY_DIGEST, True, DOCKER_NEW, None, f"{REPO_OWNED}@{AFTER}"),
        (BY_DIGEST, False, DOCKER_NEW, COPY_DIGEST, f"{REPO_OWNED}@{COPY_DIGEST}"),
        # tag and digest: the tag stays, the digest as above
        (BOTH, False, SKOPEO_KEEPS, None, f"{REPO_OWNED}:1@{SOURCE_DIGEST}"),
        (BOTH, True, SKOPEO_KEEPS, None, f"{REPO_OWNED}:1@{SOURCE_DIGEST}"),
        (BOTH, False, DOCKER_NEW, None, f"{REPO_OWNED}:1@{AFTER}"),
        (BOTH, True, DOCKER_NEW, None, f"{REPO_OWNED}:1@{AFTER}"),
        (BOTH, True, DOCKER_NEW, COPY_DIGEST, f"{REPO_OWNED}:1@{COPY_DIGEST}"),
    ],
)
def test_planned_image_is_the_patched_image_or_says_the_digest_comes_with_the_copy(
    source: str, pin: bool, keeps_digests: bool, owned_digest: str | None, expected: str
) -> None:
    ref = parse_reference(source)
    owned = MIRROR.owned_name(ref)
    assert DIGEST_AFTER_COPY == AFTER
    assert planned_image(ref, owned, pin, keeps_digests, owned_digest) == expected
    if AFTER not in expected:  # exact: what the cycle writes with the copy's digest
        digest = SOURCE_DIGEST if keeps_digests and ref.digest else owned_digest
        assert digest is not None or not pin
        assert expected == patched_image(ref, owned, digest or "unused", pin)
