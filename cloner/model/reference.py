"""Image references: parsing, normalization and owned names. Pure: no I/O.

Called by ``workloads`` and ``reconcile`` to decide what an image is and what
its owned copy is called. It must stay free of ``kubernetes`` and ``docker``.

The grammar is the one of the distribution ``reference`` package
(github.com/distribution/reference ``reference.go`` and ``regexp.go``), applied
the way Docker's ``ParseNormalizedNamed`` (``normalize.go``) applies it::

    reference       := name [ ":" tag ] [ "@" digest ]
    name            := [domain '/'] remote-name
    domain          := host [':' port-number]
    host            := domain-name | IPv4address | \\[ IPv6address \\]
    domain-name     := domain-component ['.' domain-component]*
    domain-component:= /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
    port-number     := /[0-9]+/
    remote-name     := path-component ['/' path-component]*
    path-component  := alpha-numeric [separator alpha-numeric]*
    alpha-numeric   := /[a-z0-9]+/
    separator       := /[_.]|__|[-]+/
    tag             := /[\\w][\\w.-]{0,127}/
    digest          := digest-algorithm ":" digest-hex
    digest-algorithm:= component [ separator component ]*    (here: sha256, sha384, sha512)
    digest-hex      := /[0-9a-f]{64}/ for sha256, {96} sha384, {128} sha512 (go-digest)

The repository path (after normalization, so ``library/`` counts) may be at
most 255 characters; the registry does not count (upstream
``RepositoryNameTotalLengthMax``). One deliberate difference from upstream: a
first component taken as a registry (it has a ``.``) that is not a valid host,
such as ``foo_bar.com/app``, is refused here, where upstream's regexp falls back
to a reference with an empty domain, which has no registry to pull from.

Python ``re`` traps avoided: ``fullmatch`` instead of ``$`` (which accepts a
trailing newline) and explicit ASCII classes instead of ``\\w`` and ``\\d``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from cloner.errors import InvalidReference

DEFAULT_REGISTRY = "docker.io"
LEGACY_DEFAULT_REGISTRY = "index.docker.io"
OFFICIAL_REPOSITORY_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255  # distribution: RepositoryNameTotalLengthMax, path only
TAG_MAX = 128

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[_.]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE_RE = re.compile(
    rf"(?P<name>(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_REMOTE_NAME}))"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?"
)
_DOMAIN_RE = re.compile(_DOMAIN)
_REMOTE_NAME_RE = re.compile(_REMOTE_NAME)
_TAG_RE = re.compile(_TAG)
_HEX64_RE = re.compile(r"[a-f0-9]{64}")
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}
_LOWER_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalized image reference.

    Attributes:
        registry: registry host with optional port, for example ``docker.io``,
            ``quay.io``, ``localhost:5000``, ``[::1]:5000``.
        repository: path within the registry, for example ``library/nginx``.
        tag: the tag, or None when the reference has none (no implicit
            ``latest``; see ``tag_or_default``).
        digest: ``algorithm:hex``, or None.

    ``str(ref)`` is the canonical form ``registry/repository[:tag][@digest]``.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def tag_or_default(self) -> str:
        """The tag, or ``latest`` when there is none (Docker's implicit tag)."""
        return self.tag or DEFAULT_TAG

    @property
    def pull_reference(self) -> str:
        """What to pull: ``name@digest`` when there is a digest, else ``name:tag``.

        A digest pins content, so it wins over a tag, as container runtimes do.
        """
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag_or_default}"

    def with_tag(self, tag: str | None) -> Reference:
        """A copy with ``tag`` and no digest."""
        return Reference(self.registry, self.repository, tag, None)

    def with_digest(self, digest: str | None) -> Reference:
        """A copy that keeps the tag and carries ``digest``."""
        return Reference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def validate_digest(digest: str) -> None:
    """Check a digest as go-digest's ``Digest.Validate`` does.

    Args:
        digest: ``algorithm:hex``.

    Raises:
        InvalidReference: unknown algorithm (only sha256, sha384, sha512 are
            registered), wrong hex length, or uppercase or non-hex characters.
    """
    algorithm, sep, encoded = digest.partition(":")
    if not sep:
        raise InvalidReference(digest, "digest has no algorithm")
    length = _DIGEST_HEX_LENGTH.get(algorithm)
    if length is None:
        raise InvalidReference(digest, f"unsupported digest algorithm {algorithm!r}")
    if len(encoded) != length or not set(encoded) <= _LOWER_HEX:
        raise InvalidReference(
            digest, f"{algorithm} digest must be {length} lowercase hex characters"
        )


def _split_domain(text: str) -> tuple[str, str]:
    """Split off the registry as Docker's ``splitDockerDomain`` does.

    The first component is a registry only if it contains ``.`` or ``:``, is
    ``localhost``, or has an uppercase letter; otherwise the registry is
    Docker Hub and single-component repositories get ``library/``.
    """
    first, sep, rest = text.partition("/")
    if not sep or (
        not any(c in first for c in ".:") and first != "localhost" and first == first.lower()
    ):
        registry, remainder = DEFAULT_REGISTRY, text
    else:
        registry, remainder = first, rest
    if registry == LEGACY_DEFAULT_REGISTRY:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in remainder:
        remainder = OFFICIAL_REPOSITORY_PREFIX + remainder
    return registry, remainder


@lru_cache(maxsize=8192)
def parse_reference(text: str) -> Reference:
    """Parse and normalize an image reference as written in a pod spec.

    Args:
        text: for example ``nginx``, ``nginx:1.25``, ``quay.io/a/b@sha256:...``.

    Returns:
        The normalized ``Reference``: ``nginx`` becomes registry ``docker.io``,
        repository ``library/nginx``, tag None, digest None.

    Raises:
        InvalidReference: the text does not follow the grammar (see the module
            docstring), the first component is taken as a registry but is not a
            valid host (``foo_bar.com/app``), the repository has uppercase
            letters, the repository path is longer than 255 characters, the
            digest is not valid, or the text is a bare 64-character hex
            identifier (refused by ``ParseNormalizedNamed``).
    """
    if not isinstance(text, str) or not text:
        raise InvalidReference(str(text), "reference is empty")
    if _HEX64_RE.fullmatch(text):
        raise InvalidReference(text, "a 64-character hex string is an image ID, not a reference")
    registry, remainder = _split_domain(text)
    repository_part = remainder.split("@", 1)[0].split(":", 1)[0]
    if repository_part != repository_part.lower():
        raise InvalidReference(text, "repository name must be lowercase")
    match = _REFERENCE_RE.fullmatch(f"{registry}/{remainder}")
    # The domain group is optional, so a registry that is not a valid host but is
    # a valid path component (``foo_bar.com``) would match as part of the path.
    if match is None or match["domain"] != registry:
        raise InvalidReference(text, _explain(registry, remainder))
    path = match["path"]
    if len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(
            text, f"repository name must not be longer than {NAME_TOTAL_LENGTH_MAX} characters"
        )
    digest = match["digest"]
    if digest is not None:
        try:
            validate_digest(digest)
        except InvalidReference as err:
            raise InvalidReference(text, err.problem) from None
    return Reference(registry, path, match["tag"], digest)


def _explain(registry: str, remainder: str) -> str:
    """Say which part of a reference the grammar rejects (for error messages)."""
    if not _DOMAIN_RE.fullmatch(registry):
        return f"invalid registry {registry!r}"
    rest, _, digest = remainder.partition("@")
    path, _, tag = rest.partition(":")
    if not _REMOTE_NAME_RE.fullmatch(path):
        return f"invalid repository {path!r}"
    if ":" in rest and not _TAG_RE.fullmatch(tag):
        if len(tag) > TAG_MAX:
            return f"tag is longer than {TAG_MAX} characters"
        return f"invalid tag {tag!r}"
    if "@" in remainder:
        return f"invalid digest {digest!r}"
    return "invalid reference format"


def parse_target(text: str) -> tuple[str, str]:
    """Parse the owned target: a registry host with an optional path prefix.

    Args:
        text: for example ``registry.example.com/mirror`` or ``127.0.0.1:5000``.

    Returns:
        ``(registry, prefix)``; ``prefix`` is ``""`` when there is none.

    Raises:
        InvalidReference: the registry part is not a valid domain (it must be
            explicit: contain ``.`` or ``:`` or be ``localhost``), or the prefix
            is not a valid repository path.
    """
    text = text.strip().rstrip("/")
    registry, _, prefix = text.partition("/")
    if not _DOMAIN_RE.fullmatch(registry) or not (
        any(c in registry for c in ".:") or registry == "localhost"
    ):
        raise InvalidReference(
            text, "target must start with a registry host such as registry.example.com"
        )
    if prefix and not _REMOTE_NAME_RE.fullmatch(prefix):
        raise InvalidReference(text, f"invalid path prefix {prefix!r}")
    if registry == LEGACY_DEFAULT_REGISTRY:
        registry = DEFAULT_REGISTRY
    return registry, prefix


def digest_tag(digest: str) -> str:
    """The tag an image referenced only by digest is pushed under.

    ``sha256:abc...`` becomes ``sha256_abc...`` (a valid tag of at most 128
    characters: sha512's 128 hex characters are cut to fit), so registries
    whose lifecycle rules delete untagged manifests keep the copy. Not
    ``sha256-abc...``: the distribution spec's referrers tag schema reserves
    that name for the index of the digest's referrers, and cosign adds
    ``.sig``, ``.att`` and ``.sbom`` to it (``model.artifacts.is_reserved_tag``),
    so referrer clients would read the image there as a list of referrers.
    Workloads patched to an earlier ``sha256-`` copy name its digest and keep
    working.
    """
    return digest.replace(":", "_", 1)[:TAG_MAX]


#: What ``planned_image`` writes for a digest that only the copy will give.
DIGEST_AFTER_COPY = "<digest after copy>"


def patched_image(source: Reference, owned: Reference, digest: str, pin: bool) -> str:
    """The reference a workload is patched to: the one rule of the cycle and of ``plan``.

    A source pinned by digest stays pinned: ``owned@digest`` (and the tag too
    when the source had one). A tagged source points to ``owned:tag``, or to
    ``owned:tag@digest`` with ``pin`` (``pinDigest``), so that a later move of
    the owned tag cannot change what runs.

    Args:
        source: the source reference.
        owned: its owned name (``Target.owned_name``: a tag, no digest).
        digest: the owned copy's manifest digest, as verified in the owned
            registry (``algorithm:hex``; ``planned_image`` passes
            ``DIGEST_AFTER_COPY`` when it is not known yet).
        pin: ``pinDigest``.

    Returns:
        For ``owned`` = ``reg/m/docker.io/library/nginx:1``: ``reg/m/...:1``
        (tag), ``reg/m/...:1@<digest>`` (tag with ``pin``, or tag+digest) or
        ``reg/m/...@<digest>`` (digest only: the owned tag ``sha256_<hex>``
        is dropped, the digest names the content).
    """
    if source.digest is None:
        return str(owned.with_digest(digest)) if pin else str(owned)
    if source.tag is None:
        return str(owned.with_tag(None).with_digest(digest))
    return str(owned.with_digest(digest))


def planned_image(
    source: Reference,
    owned: Reference,
    pin: bool,
    keeps_digests: bool,
    owned_digest: str | None = None,
) -> str:
    """The reference a cycle would patch to, as far as it is known before it runs.

    ``plan``'s owned column: ``patched_image`` with the digest the cycle would
    pass it.

    - A backend that keeps digests (skopeo) copies a source pinned by digest
      to that very digest (its copy check refuses any other), so the
      reference is exact.
    - Otherwise the digest is that of the owned copy the cycle would use,
      ``owned_digest``, when one is known (the owned registry serves it now).
    - Otherwise it exists only after the copy: the Docker engine gives the
      copy a new digest (TESTBED, "What a Docker engine does"), and a tag
      with ``pinDigest`` is pinned to whatever the tag names when copied.
      ``DIGEST_AFTER_COPY`` stands in for it, so no reference is shown that
      will not be written. A tag without ``pinDigest`` needs no digest.

    Args:
        source, owned: as for ``patched_image``.
        pin: ``pinDigest``.
        keeps_digests: ``copyBackend`` keeps manifest digests
            (``identity.BackendName.keeps_digests``).
        owned_digest: the manifest digest of the owned copy a cycle would
            reuse, None when there is none or it is not known.

    Returns:
        For example ``reg/m/quay.io/x/y@sha256:...`` or
        ``reg/m/quay.io/x/y:1@<digest after copy>``.
    """
    digest = source.digest if keeps_digests and source.digest else owned_digest
    return patched_image(source, owned, digest or DIGEST_AFTER_COPY, pin)


def registry_path_component(registry: str) -> str:
    """A registry host as one repository path component.

    ``quay.io`` stays ``quay.io``; ``xn--n3h.com`` stays ``xn--n3h.com`` (runs
    of ``-`` are a valid separator, so they are kept); ``localhost:5000`` becomes
    ``localhost-5000``; ``[::1]:5000`` becomes ``1-5000``. Letters are lowered
    and every run of characters a path component cannot hold (``:``, ``[``,
    ``]``) becomes one ``-``, so for any valid registry host the result matches
    ``path-component`` of the grammar.
    """
    runs = [r for r in re.split(r"[^a-z0-9.-]+", registry.lower()) if r]
    return "-".join(runs) or "registry"


class NamingStrategy(StrEnum):
    """How owned names are formed (``naming``; see ``Target.owned_name``)."""

    NESTED = "nested"  #: keep the source path as path components
    FLAT = "flat"  #: join the source path into one path component


NAMING_STRATEGIES = tuple(NamingStrategy)
_SEPARATOR_RE = re.compile(_SEPARATOR)


@dataclass(frozen=True, slots=True)
class Target:
    """The owned target: where copies go and how they are named.

    Attributes:
        registry: the owned registry host, for example ``registry.example.com``.
        prefix: a repository path prefix under it, ``""`` for none.
        naming: ``nested`` (keep the source path as path components) or
            ``flat`` (join it into one path component); see ``owned_name``.
        separator: what ``flat`` joins with; one of the grammar's separators
            (``_``, ``.``, ``__`` or a run of ``-``).

    Build it with ``Target.parse("registry.example.com/mirror")``.

    Raises:
        ValueError: unknown ``naming`` or a ``separator`` the grammar rejects.
    """

    registry: str
    prefix: str = ""
    naming: str = "nested"
    separator: str = "_"

    def __post_init__(self) -> None:
        if self.naming not in NAMING_STRATEGIES:
            raise ValueError(f"naming must be one of {', '.join(NAMING_STRATEGIES)}")
        if not _SEPARATOR_RE.fullmatch(self.separator):
            raise ValueError("separator must be '_', '.', '__' or a run of '-'")

    @classmethod
    def parse(cls, text: str, naming: str = "nested", separator: str = "_") -> Target:
        """``Target`` from ``host[/prefix]``.

        Raises:
            InvalidReference: see ``parse_target``.
            ValueError: see the class docstring.
        """
        registry, prefix = parse_target(text)
        return cls(registry, prefix, naming, separator)

    def __str__(self) -> str:
        return f"{self.registry}/{self.prefix}" if self.prefix else self.registry

    def owns(self, ref: Reference) -> bool:
        """True when ``ref`` already lives under this target (no clone needed)."""
        if ref.registry != self.registry:
            return False
        return not self.prefix or ref.repository.startswith(self.prefix + "/")

    def owned_name(self, ref: Reference) -> Reference:
        """The owned name of a source image.

        ``nested`` (default): ``<target>/<source registry>/<repository>:<tag>``.
        The whole source path is kept (as skopeo sync ``--scoped`` does), so
        ``docker.io/a/nginx`` and ``quay.io/b/nginx`` cannot collide.

        ``flat``: ``<target>/<source registry><sep><path with / as sep>:<tag>``,
        one path component under the target, for registries that allow only
        one or two (Docker Hub, some Quay and ECR setups); with ``_``,
        ``docker.io/library/nginx`` becomes ``docker.io_library_nginx``. When a
        source component itself contains the separator the join would be
        ambiguous (``a_b/c`` and ``a/b_c``), so ``-`` and the first 12 hex
        characters of the SHA-256 of the source name are appended, which keeps
        distinct sources apart.

        Either way a reference without a tag gets ``latest``, one with only a
        digest gets the tag ``digest_tag(digest)``, and the result carries no
        digest (the pushed digest is added by the caller).

        Args:
            ref: the normalized source reference.

        Returns:
            The owned reference, always one the grammar accepts.

        Raises:
            InvalidReference: the owned repository path would exceed 255
                characters.
        """
        return _owned_name(self, ref)


@lru_cache(maxsize=8192)
def _owned_name(target: Target, ref: Reference) -> Reference:
    """``Target.owned_name``, cached: workloads share few distinct images."""
    components = [registry_path_component(ref.registry), *ref.repository.split("/")]
    if target.naming == "flat":
        sep = target.separator
        joined = sep.join(components)
        if any(sep in c for c in components):
            digest = hashlib.sha256(ref.name.encode()).hexdigest()[:12]
            joined = f"{joined}-{digest}"
        components = [joined]
    parts = [target.prefix, *components] if target.prefix else components
    if ref.tag:
        tag = ref.tag
    elif ref.digest:
        tag = digest_tag(ref.digest)
    else:
        tag = DEFAULT_TAG
    owned = Reference(target.registry, "/".join(parts), tag, None)
    if len(owned.repository) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(
            str(ref),
            f"owned repository {owned.repository!r} is longer than"
            f" {NAME_TOTAL_LENGTH_MAX} characters",
        )
    # Defensive: the mapping must never produce a name the grammar rejects.
    return parse_reference(str(owned))


@lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile an image glob: ``**`` any text, ``*`` and ``?`` within one ``/`` segment."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def image_matches(pattern: str, ref: Reference) -> bool:
    """True when an image glob matches a reference.

    The pattern is matched against the canonical reference
    (``registry/repository[:tag][@digest]``) and against the name alone
    (``registry/repository``), so ``docker.io/library/nginx`` matches every
    tag of it. ``*`` and ``?`` stay within one ``/``-separated segment, ``**``
    crosses segments: ``docker.io/library/*``, ``*/bitnami/*``, ``quay.io/**``.

    Args:
        pattern: the glob, written against normalized references (``docker.io/...``).
        ref: the normalized reference.
    """
    regex = _glob_regex(pattern)
    return bool(regex.fullmatch(str(ref)) or regex.fullmatch(ref.name))


@dataclass(frozen=True, slots=True)
class Policy:
    """What is owned, how copies are named, and which images are in scope.

    Attributes:
        target: where copies go and how they are named.
        owned_registries: other registries (with optional path prefix) the
            team controls; images under them are never cloned.
        include_images: image globs to clone; empty means all (see ``image_matches``).
        exclude_images: image globs never cloned; exclusion wins.
    """

    target: Target
    owned_registries: tuple[Target, ...] = ()
    include_images: tuple[str, ...] = ()
    exclude_images: tuple[str, ...] = ()

    def owns(self, ref: Reference) -> bool:
        """True when ``ref`` is under the target or one of ``owned_registries``."""
        return self.target.owns(ref) or any(o.owns(ref) for o in self.owned_registries)

    def image_exclusion(self, ref: Reference) -> str | None:
        """Why ``ref`` is out of scope (the rule, for logs and plans), or None."""
        for pattern in self.exclude_images:
            if image_matches(pattern, ref):
                return f"images.exclude {pattern!r}"
        if self.include_images and not any(image_matches(p, ref) for p in self.include_images):
            return "not in images.include"
        return None
