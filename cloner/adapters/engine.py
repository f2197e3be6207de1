"""Registry adapter: the only module that imports ``docker``.

Called by ``reconcile`` through the ``ImageRegistry`` protocol and built by
``controller.py``. It asks the owned registry for a manifest digest without
pulling layers (the engine's distribution inspect), and clones an image by
pull, tag and push through a Docker engine. Credentials come from a docker
``config.json`` (``credentials.DockerConfig``) and are passed per call, never
logged. Every docker or transport error becomes a ``RegistryError`` whose
``reason`` says what went wrong; no library exception leaves this module.

The engine reports pull and push failures inside an HTTP 200 stream (docker-py
issues 3161 and 3277), so both streams are read to the end and an ``error``
line is a failure.

Registry TLS is verified unless a registry is listed in ``insecureRegistries``:
the engine verifies TLS for every registry except those it is configured to
treat as insecure (``dockerd --insecure-registry`` and, by default, loopback
addresses), so before any pull, push or manifest inspection the engine's
registry configuration (``/info`` -> ``RegistryConfig``, read once per engine
client) is checked with ``cloner.model.tls`` and a registry it would reach without
verification is refused with reason ``insecure_registry`` unless listed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests
import urllib3

from cloner.adapters.credential_store import CredentialStore
from cloner.adapters.proxying import ProxyDecided
from cloner.errors import ClonerError, FailureReason, RegistryError, registry_error
from cloner.model.credentials import Credential
from cloner.model.identity import BackendName, Copied, platform_name
from cloner.model.proxy import ProxyConfig
from cloner.model.reference import Reference
from cloner.model.tls import EngineRegistryConfig, listed_insecure

log = logging.getLogger(__name__)


class PushProgress:
    """Follows a push stream: layer bytes pushed, and a progress log line at most every few seconds.

    Args:
        what: the image, for the log line.
        every: seconds between two progress lines.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self, what: str, every: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._what = what
        self._every = every
        self._clock = clock
        self._started = clock()
        self._last_log = self._started
        self._layers: dict[str, tuple[int, int]] = {}  # layer id -> (current, total) bytes
        self._pushed: set[str] = set()

    def __call__(self, line: Mapping[str, Any]) -> None:
        layer = str(line.get("id") or "")
        status = str(line.get("status") or "")
        detail = line.get("progressDetail") or {}
        if layer and status == "Pushing" and detail.get("total"):
            self._layers[layer] = (int(detail.get("current") or 0), int(detail["total"]))
        elif layer and status == "Pushed":
            self._pushed.add(layer)
        now = self._clock()
        if now - self._last_log >= self._every and self._layers:
            self._last_log = now
            done = sum(
                total if layer in self._pushed else current
                for layer, (current, total) in self._layers.items()
            )
            total = sum(t for _, t in self._layers.values())
            log.info("pushing %s: %d of %d bytes", self._what, done, total)

    @property
    def pushed_bytes(self) -> int:
        """Bytes of the layers this push uploaded (layers the registry had are not counted)."""
        return sum(self._layers.get(layer, (0, 0))[1] for layer in self._pushed)


def _stream_errors(
    lines: Iterable[Mapping[str, Any]],
    what: str,
    registry: str | None = None,
    on_line: Callable[[Mapping[str, Any]], None] | None = None,
) -> list[Mapping[str, Any]]:
    """Read a decoded pull/push stream to the end; raise on an error line.

    Args:
        lines: the decoded stream.
        what: the operation, for the message.
        registry: the registry the stream talks to (recorded on the error).
        on_line: called with every line (progress).

    Returns:
        Every ``aux`` payload seen (the push's ``Digest`` and ``Size``).

    Raises:
        RegistryError: an ``error`` / ``errorDetail`` line.
    """
    aux = []
    for line in lines:
        error = line.get("error") or (line.get("errorDetail") or {}).get("message")
        if error:
            raise registry_error(str(error), what, registry)
        if on_line is not None:
            on_line(line)
        if "aux" in line:
            aux.append(line["aux"])
    return aux


class DockerRegistry:
    """Image inspection and cloning through a Docker engine.

    Args:
        docker_host: engine address, for example ``unix:///var/run/docker.sock``.
        credentials: the registry credentials in force (read per call).
        timeout: seconds one engine API call may block (a pull or push stream
            may take longer in total; each read is bounded).
        insecure_registries: ``insecureRegistries``: ``host[:port]`` glob
            patterns (``tls.listed_insecure``) of registries that may be used
            although the engine reaches them without TLS verification. Every
            other such registry is refused with reason ``insecure_registry``.
        cache_bytes: ``engineCacheBytes``: bytes of layers (``/system/df``
            ``LayersSize``) the engine keeps after pushes, so shared base
            layers are pulled once; beyond it the least recently used images
            that no clone in flight uses are removed. 0 removes the images of
            each clone after its push.
        proxy: the proxy settings (``model.proxy``) for the connection to the
            engine itself (a ``tcp://`` ``DOCKER_HOST``; a unix socket and a
            loopback address are never proxied). The engine reaches
            registries through its own environment (the dind sidecar's
            ``HTTPS_PROXY``), not through this. Default: no proxy.
    """

    #: pull, tag and push re-serialise the manifest for the engine's platform.
    keeps_digests = BackendName.DOCKER.keeps_digests

    def __init__(
        self,
        docker_host: str,
        credentials: CredentialStore,
        timeout: float = 600.0,
        *,
        insecure_registries: Sequence[str] = (),
        cache_bytes: int = 0,
        proxy: ProxyConfig | None = None,
    ) -> None:
        self._docker_host = docker_host
        self._proxy = proxy or ProxyConfig()
        self._cache_bytes = cache_bytes
        self._cache_lock = threading.Lock()  # one trim at a time
        self._in_use: Counter[str] = Counter()  # image IDs of clones in flight
        self._last_used: dict[str, float] = {}  # image ID -> monotonic time of its last clone
        self._store = credentials
        self._timeout = timeout
        self._insecure_registries = tuple(insecure_registries)
        #: operations so far by (operation, outcome) and layer bytes pushed (for metrics)
        self.requests: Counter[tuple[str, str]] = Counter()
        self.pushed_bytes = 0
        self._client: docker.APIClient | None = None
        self._engine_config: EngineRegistryConfig | None = None
        self._platform: str | None = None
        self._lock = threading.Lock()
        # Layers (diff IDs) that a push in flight is uploading; see _push_turn.
        self._pushing: set[str] = set()
        self._push_turn_changed = threading.Condition()

    # Credentials -----------------------------------------------------------

    def _auth(self, registry: str) -> dict[str, str] | None:
        credential: Credential | None = self._store.current.for_registry(registry)
        return credential.docker_auth_config() if credential else None

    # Engine ----------------------------------------------------------------

    def _api(self) -> docker.APIClient:
        """The engine client, created on first use (API version negotiated)."""
        with self._lock:
            if self._client is None:
                self._client = _EngineClient(
                    self._proxy, base_url=self._docker_host, version="auto", timeout=self._timeout
                )
            return self._client

    def _reset(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None
            self._engine_config = None

    def engine_registry_config(self) -> EngineRegistryConfig:
        """The engine's registry configuration, read once per engine client.

        ``APIClient.info()["RegistryConfig"]`` (``IndexConfigs``,
        ``InsecureRegistryCIDRs``, ``Mirrors``) is read on first use and again
        after the client was reset (an engine or transport failure), since
        the engine may have been restarted with other settings.

        Returns:
            The ``tls.EngineRegistryConfig``.

        Raises:
            RegistryError: ``network`` when the engine cannot be asked;
                ``registry_error`` when its answer has no usable
                ``RegistryConfig`` (then nothing can be checked, so nothing
                is pulled or pushed).
        """
        with self._lock:
            if self._engine_config is not None:
                return self._engine_config
        what = "read the Docker engine's registry configuration"
        try:
            api = self._api()
            info = api.info()
        except Exception as exc:  # translated; nothing else leaves this module
            raise self._fail(exc, what) from None
        raw = info.get("RegistryConfig") if isinstance(info, Mapping) else None
        try:
            if raw is None:
                raise ValueError("the engine's /info has no RegistryConfig")
            config = EngineRegistryConfig.from_info(raw)
        except ValueError as exc:
            raise RegistryError(
                FailureReason.REGISTRY_ERROR,
                f"{what}: {exc}; cannot tell which registries it reaches without TLS "
                "verification, so none is used",
            ) from None
        log.debug(
            "Docker engine registry configuration: insecure CIDRs %s, indexes %s, mirrors %s",
            ",".join(config.insecure_cidrs) or "none",
            ",".join(
                f"{name}(secure={entry.get('Secure')})"
                for name, entry in config.index_configs.items()
            )
            or "none",
            ",".join(host for host, _ in config.mirrors) or "none",
        )
        with self._lock:
            if self._client is api:  # not reset meanwhile: the answer is the current engine's
                self._engine_config = config
        return config

    def _require_tls(self, registry: str, pull: bool) -> None:
        """Refuse ``registry`` if the engine skips TLS verification for it and it is not listed.

        Args:
            registry: ``host[:port]`` of the reference about to be used.
            pull: True for a pull or manifest inspection (``docker.io`` pulls
                also go to the engine's mirrors), False for a push.

        Raises:
            RegistryError: ``insecure_registry`` naming the first unlisted host
                the engine would reach without TLS verification (``registry``
                itself, or a ``docker.io`` mirror); or the errors of
                ``engine_registry_config``.
        """
        for host in self.engine_registry_config().unverified_hosts(registry, pull):
            if listed_insecure(host, self._insecure_registries):
                continue
            name = host if host == registry else f"{host} (mirror of {registry})"
            raise RegistryError(
                FailureReason.INSECURE_REGISTRY,
                f"{name} is reached without TLS verification by the Docker engine "
                "(insecure registry or loopback); list it in insecureRegistries to allow this",
                registry=registry,
            )

    def _fail(self, exc: Exception, what: str, registry: str | None = None) -> RegistryError:
        """Translate a docker or transport exception into a ``RegistryError``.

        Args:
            exc: the exception.
            what: the operation, for the message.
            registry: the registry the operation talks to; engine and
                transport failures concern the engine, not a registry.
        """
        if isinstance(exc, RegistryError):
            return exc
        if isinstance(exc, docker.errors.APIError):
            explanation = str(exc.explanation or exc)
            error = registry_error(explanation, what, registry)
            if error.reason == "registry_error" and exc.status_code == 404:
                error = RegistryError(FailureReason.NOT_FOUND, str(error), registry=registry)
            return error
        if isinstance(
            exc, (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)
        ):
            self._reset()
            return RegistryError(FailureReason.NETWORK, f"{what}: Docker engine unreachable: {exc}")
        if isinstance(exc, docker.errors.DockerException):
            self._reset()
            return RegistryError(FailureReason.NETWORK, f"{what}: Docker engine error: {exc}")
        raise exc

    # Operations ------------------------------------------------------------

    def engine_platform(self) -> str:
        """``os/arch`` of the Docker engine (``/version`` ``Os`` and ``Arch``), read once.

        This is the one platform the engine pulls from a multi-platform index.

        Raises:
            RegistryError: ``network`` when the engine cannot be asked.
        """
        with self._lock:
            if self._platform is not None:
                return self._platform
        try:
            version = self._api().version()
        except Exception as exc:  # translated; nothing else leaves this module
            raise self._fail(exc, "read the Docker engine's platform") from None
        platform = platform_name(str(version.get("Os") or "linux"), str(version.get("Arch")))
        with self._lock:
            self._platform = platform
        return platform

    def manifest_digest(self, ref: Reference) -> str | None:
        """Ask the registry for the manifest digest of ``ref`` without pulling layers.

        Args:
            ref: a reference with a tag or digest.

        Returns:
            ``sha256:...``, or None when the registry has no such manifest.

        Raises:
            RegistryError: the registry could not be asked (auth, network...);
                ``insecure_registry`` when the engine would reach it without
                TLS verification and it is not in ``insecureRegistries``
                (checked before the registry is contacted).
        """
        self._require_tls(ref.registry, pull=True)
        what = f"inspect {ref}"
        try:
            data = self._api().inspect_distribution(str(ref), auth_config=self._auth(ref.registry))
        except Exception as exc:  # translated below; nothing else leaves this module
            error = self._fail(exc, what, ref.registry)
            self.requests["inspect", error.reason] += 1
            if error.reason == "not_found":
                return None
            raise error from None
        self.requests["inspect", "success"] += 1
        digest = (data.get("Descriptor") or {}).get("digest")
        if not digest:
            raise RegistryError(
                FailureReason.REGISTRY_ERROR, f"{what}: the engine returned no digest", ref.registry
            )
        return str(digest)

    def preflight(self, source: Reference, owned: Reference) -> None:
        """Refuse registries the engine would reach without TLS verification, before any request.

        Raises:
            RegistryError: ``insecure_registry`` (see ``_require_tls``), or
                ``network`` when the engine cannot be asked.
        """
        self._require_tls(owned.registry, pull=False)
        self._require_tls(source.registry, pull=True)

    def abandon(self) -> None:
        """Nothing to end here: a pull or push in flight is the engine's.

        The engine ends it when the controller's process exits and its
        connection closes; nothing is tagged or pushed for it after that.
        """

    def clone(self, source: Reference, owned: Reference) -> Copied:
        """Copy an image: pull ``source``, tag it ``owned``, push, verify.

        Args:
            source: the source reference (pulled by digest when it has one).
            owned: the owned name with a tag and no digest.

        Returns:
            ``Copied``: the digest of the pushed manifest, as the engine
            reported it, and the image ID (the config digest the engine
            verified while pulling); ``cloning.ImageCloner`` then checks that
            the owned registry serves that digest with that config.

        Raises:
            RegistryError: pull, push or verification failed; nothing that
                failed is reported as success. ``insecure_registry`` when the
                engine would reach the source or the owned registry without
                TLS verification and it is not in ``insecureRegistries``
                (checked before anything is pulled).
            ValueError: ``owned`` has no tag or has a digest.
        """
        if owned.tag is None or owned.digest is not None:
            raise ValueError(f"owned reference must have a tag and no digest: {owned}")
        self._require_tls(source.registry, pull=True)
        self._require_tls(owned.registry, pull=False)
        pulled = source.pull_reference
        api = None
        image_id: str | None = None
        phase, registry, operation = f"pull {pulled}", source.registry, "pull"
        progress = PushProgress(str(owned))
        try:
            api = self._api()
            log.info("pulling %s", pulled)
            _stream_errors(
                api.pull(
                    source.name,
                    tag=source.digest or source.tag_or_default,
                    stream=True,
                    decode=True,
                    auth_config=self._auth(source.registry),
                ),
                phase,
                registry,
            )
            self.requests["pull", "success"] += 1
            image_id, layers = self._hold(api, pulled)
            phase, registry, operation = f"tag {pulled} as {owned}", None, "tag"
            api.tag(pulled, owned.name, owned.tag, force=True)
            phase, registry, operation = f"push {owned}", owned.registry, "push"
            with self._push_turn(layers):
                log.info("pushing %s", owned)
                aux = _stream_errors(
                    api.push(
                        owned.name,
                        tag=owned.tag,
                        stream=True,
                        decode=True,
                        auth_config=self._auth(owned.registry),
                    ),
                    phase,
                    registry,
                    progress,
                )
            self.requests["push", "success"] += 1
            self.pushed_bytes += progress.pushed_bytes
        except RegistryError as exc:
            self.requests[operation, exc.reason] += 1
            raise
        except ClonerError:
            raise
        except Exception as exc:
            error = self._fail(exc, phase, registry)
            self.requests[operation, error.reason] += 1
            raise error from None
        finally:
            if api is not None:
                self._release(api, image_id, (str(owned), pulled))
        digests = [a["Digest"] for a in aux if isinstance(a, Mapping) and a.get("Digest")]
        if not digests:
            raise RegistryError(
                FailureReason.REGISTRY_ERROR,
                f"push {owned}: the engine reported no digest",
                owned.registry,
            )
        # The caller checks what the owned registry serves (cloning._check_copy).
        return Copied(str(digests[-1]), image_id)

    def _hold(self, api: docker.APIClient, pulled: str) -> tuple[str | None, frozenset[str]]:
        """Mark the pulled image as in use by a clone.

        Returns:
            Its ID (the config digest; None when it cannot be inspected) and
            the diff IDs of its layers (``RootFS.Layers``; empty when unknown).
        """
        try:
            inspected = api.inspect_image(pulled)
            image_id = str(inspected["Id"])
        except Exception as exc:  # best effort: only the cache bookkeeping needs it
            log.debug("could not inspect %s: %s", pulled, exc)
            return None, frozenset()
        layers = frozenset(str(d) for d in (inspected.get("RootFS") or {}).get("Layers") or ())
        with self._lock:
            self._in_use[image_id] += 1
            self._last_used[image_id] = time.monotonic()
        return image_id, layers

    @contextmanager
    def _push_turn(self, layers: frozenset[str]) -> Iterator[None]:
        """Wait until no push in flight uploads any of ``layers``, then hold them.

        Two pushes of images that share a base layer, into repositories of
        the owned registry that do not hold it yet, would both upload it:
        the engine learns that a registry has a layer only when a push of
        it ends. Taking turns on shared layers makes the later push find the
        layer there (the engine mounts it from the repository the earlier
        push wrote, or sees it exists) instead of sending it again; pushes
        that share no layer still run at the same time. All of an image's
        layers are taken at once, so two pushes never wait on each other.
        """
        with self._push_turn_changed:
            while self._pushing & layers:
                self._push_turn_changed.wait()
            self._pushing |= layers
        try:
            yield
        finally:
            with self._push_turn_changed:
                self._pushing -= layers
                self._push_turn_changed.notify_all()

    def _release(
        self, api: docker.APIClient, image_id: str | None, references: Iterable[str]
    ) -> None:
        """A clone is done with its image: remove it (budget 0) or trim the cache to the budget."""
        if image_id is not None:
            with self._lock:
                self._in_use[image_id] -= 1
                if self._in_use[image_id] <= 0:
                    del self._in_use[image_id]
        if self._cache_bytes <= 0:
            for reference in references:
                try:
                    api.remove_image(reference)
                except Exception as exc:  # best effort: a leftover tag is not a failure
                    log.debug("could not remove local image %s: %s", reference, exc)
            return
        self._trim(api)

    def _trim(self, api: docker.APIClient) -> None:
        """Remove least recently used images until the layers fit ``cache_bytes``.

        An image a clone in flight uses is never removed. Images the engine
        holds that this process never cloned count as least recently used.
        Best effort: a failure is logged and the next clone tries again.
        """
        with self._cache_lock:
            try:
                used = int(api.df().get("LayersSize") or 0)
                if used <= self._cache_bytes:
                    return
                with self._lock:
                    busy = set(self._in_use)
                    last = dict(self._last_used)
                candidates = sorted(
                    (str(image["Id"]) for image in api.images() if image["Id"] not in busy),
                    key=lambda image_id: last.get(image_id, 0.0),
                )
                for image_id in candidates:
                    api.remove_image(image_id, force=True)
                    with self._lock:
                        self._last_used.pop(image_id, None)
                    used = int(api.df().get("LayersSize") or 0)
                    log.info(
                        "engine cache: removed %s, %d of %d bytes of layers in use",
                        image_id[:19],
                        used,
                        self._cache_bytes,
                    )
                    if used <= self._cache_bytes:
                        return
            except Exception as exc:  # best effort: the next clone trims again
                log.warning("engine cache: could not trim to %d bytes: %s", self._cache_bytes, exc)


class _EngineClient(ProxyDecided, docker.APIClient):
    """The Docker engine client, whose proxy is ``model.proxy``'s decision.

    Set before ``APIClient.__init__``, which already asks the engine for its
    API version.
    """

    def __init__(self, proxy: ProxyConfig, **kwargs: Any) -> None:
        self.proxy_config = proxy
        super().__init__(**kwargs)
