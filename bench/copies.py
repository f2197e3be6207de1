"""Copy benchmark: the controller's two copy backends against plain skopeo and docker loops.

Runs on real components: one ``devenv.harness.Environment`` (etcd,
kube-apiserver, dockerd, an anonymous "public" and an htpasswd "owned"
distribution registry, all on 127.0.0.1), a corpus of images sharing base
layers pushed into the public registry (``bench/corpus.py``), and these
contenders, each run ``--reps`` times in alternating order (forward, then
backward, ...):

- ``controller.py --once`` with ``copyBackend: docker`` and with
  ``copyBackend: skopeo``, at ``cloneConcurrency`` 2 and 4 (the default; with
  ``registryConcurrency`` 4 too, since every image comes from one registry); one
  Deployment per image in a namespace of its own, ``namespaces.include``
  scoped to it, as the image-cloner ServiceAccount (shipped RBAC);
- a plain ``skopeo copy --all --preserve-digests`` loop: a thread pool of N
  skopeo processes (N = 1, 2, 4), each with the command line and the 0600
  auth file the skopeo backend makes (``cloner/adapters/skopeo.py``:
  ``copy_argv``, ``auth_document``), one blob info cache per run
  (``XDG_DATA_HOME``);
- a sequential ``docker pull; docker tag; docker push`` loop through the same
  engine (the docker CLI).

Every skopeo contender (the controller with ``copyBackend: skopeo`` and the
loop) runs as uid 10001, the shipped image's user
(``devenv.support.SHIPPED_USER``), so skopeo's blob info cache is the one
the contender keeps, empty at the start of each run, not root's, which every
earlier run would have filled.

Every run copies into a fresh owned path prefix, and before every run the
owned registry is stopped, its storage emptied and started again, and every
image is removed from the engine, so no run reuses a blob of another (no
cross-repository mount from an earlier run's repositories).

Figures per run (``bench/measure.py`` says how each is derived): wall time;
bytes uploaded to the owned registry (completed blob uploads in its access
log, each with the blob's size in its storage); bytes pulled from the public
registry (its access log's response sizes of ``GET`` blob requests);
requests per registry and method; for the controller the times of the first
and last patch and of the first and last verified copy after process start,
and the largest number of copies that were in flight at once.

Then a warm cycle per backend: a run with ``controllerNamespace:
image-cloner`` (durable state in ConfigMaps ``image-cloner-state-*``), then
``--once`` again with the same config over a new namespace of Deployments
using the same sources: the public registry should see no request. The same
again without ``controllerNamespace`` shows what the state saves.

``--signed`` (issue 28) signs every corpus image in the public registry
after it is pushed (``devenv.signing.sign_image``, ``referrers="fallback"``:
distribution 2.8 has no referrers API; see ``sign_corpus``): ``.sig``, ``.att``,
``.sbom`` and its ``.sig``, and two OCI referrers per image; 8 artifact
manifests for an index, 6 for a single-platform image. It adds two contenders,
the skopeo backend at the default ``cloneConcurrency`` with ``signatures: off``
and with ``signatures: copy``, and reports for each the requests the
artifacts cost (referrers API and ``sha256-<hex>[.sig|.att|.sbom]`` manifest
requests, per registry and method), the artifact manifests written to the
owned registry (its access log's manifest ``PUT``s) and those it serves after
the run, and the difference copy - off (wall time, every request: per image
and per signed manifest). The skopeo warm cycle then names ``signatures:
copy``, and its warm run must make no artifact request. There is no ratio
target: the figures are reported (JSON key ``signed``). The other contenders
run on the signed corpus too (the controller's default is ``signatures: copy``).

Prints one table, writes every figure to
``bench/results/copy-<timestamp>.json`` (``--results-dir``) and draws the
timelines of the median run of each contender (images copied and, for the
controller, workloads patched, against seconds since the start) into a PNG
beside it (``bench/plot.py``; ``--no-plot`` skips it).

dockerd runs with ``--storage-driver=vfs`` as in the tests; ``--storage-driver
overlay2`` gives it the driver the docker-in-docker sidecar uses on a node
(on this project's test machine the figures barely moved: the engine's time
is pull, decompress and gzip on push, not the storage driver).

    .venv/bin/python -m bench.copies              # full size: 20 images, 222 MB unique, 3 reps
    .venv/bin/python -m bench.copies --smoke      # 4 tiny images, 1 rep (the e2e smoke test)
    .venv/bin/python -m bench.copies --only skopeo --warm   # the skopeo contenders, no warm cycle
    .venv/bin/python -m bench.copies --signed --only skopeo   # plus signatures off / copy

Targets checked: skopeo backend wall time (median) at most 1.1x the plain
skopeo loop's with the same parallelism; docker backend at most 0.6x the
sequential docker loop's. Exit status 0 when every run
copied every image (the figures are printed either way), 1 when a run
failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import kubernetes.client

from bench import measure
from bench.corpus import Corpus, build_corpus, corpus_spec
from cloner.adapters.skopeo import auth_document, copy_argv
from cloner.model.credentials import Credential
from cloner.model.reference import parse_reference
from devenv.harness import Environment, ensure_components
from devenv.support import (
    SHIPPED_USER,
    create,
    create_namespace,
    install_controller_rbac,
    run_controller,
    write_config,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DEFAULT_CONCURRENCY = 4  # cloneConcurrency's default (docs/configuration.md)
DEFAULT_REGISTRY_CONCURRENCY = 3  # registryConcurrency's default (docs/configuration.md)
TARGET_RATIO = 1.10  # skopeo backend / plain skopeo loop, same parallelism (issue 9)
DOCKER_TARGET_RATIO = 0.60  # docker backend / sequential docker loop (issue 11)
RUN_TIMEOUT = 1800.0  # seconds one contender run may take
INSECURE_REGISTRIES = ("127.0.0.1:*",)  # the loopback registries, as devenv.support.write_config
MB = 1_000_000
_SUMMARY_DURATION_RE = re.compile(r"reconcile: .* duration=(?P<seconds>[0-9.]+)s")
SIGNATURE_MODES = ("off", "copy")  # the --signed contenders, in this order
# An artifact request (--signed): the referrers API, or a manifest under a
# cosign tag (sha256-<hex>.sig/.att/.sbom) or a referrers fallback tag (sha256-<hex>).
_REFERRERS_PATH_RE = re.compile(r"/referrers/")
_ARTIFACT_TAG_RE = re.compile(r"/manifests/sha256-[0-9a-f]{64}(?:\.(?P<suffix>sig|att|sbom))?$")


@dataclass(frozen=True, slots=True)
class Contender:
    """One way of copying the corpus.

    Attributes:
        key: short identifier, used in the JSON (``controller-skopeo-c2``).
        label: the table's row label.
        kind: ``controller``, ``skopeo-loop`` or ``docker-loop``.
        backend: ``docker`` or ``skopeo`` for the controller, else None.
        parallelism: cloneConcurrency or thread-pool size (1 for the docker loop).
        explicit: for the controller, whether ``cloneConcurrency`` is written
            to the config (False: the default is left to the controller).
        signatures: for the controller, the ``signatures`` setting written to
            the config (``off``, ``copy``); None leaves the default (``copy``).
    """

    key: str
    label: str
    kind: str
    backend: str | None
    parallelism: int
    explicit: bool = True
    signatures: str | None = None


def contenders(
    concurrencies: list[int], loop_parallelism: list[int], only: str | None = None
) -> list[Contender]:
    """The contenders, controller first. Pure.

    Args:
        concurrencies: cloneConcurrency values; ``DEFAULT_CONCURRENCY`` is
            run without the key (the controller's default).
        loop_parallelism: thread-pool sizes of the plain skopeo loop.
        only: ``docker`` (the docker backend and the docker loop) or
            ``skopeo`` (the skopeo backend and the skopeo loops); None for all.
    """
    out = []
    for backend in ("docker", "skopeo"):
        if only is not None and backend != only:
            continue
        for c in concurrencies:
            default = c == DEFAULT_CONCURRENCY
            out.append(
                Contender(
                    f"controller-{backend}-c{c}",
                    f"controller {backend} c={c}{' (default)' if default else ''}",
                    "controller",
                    backend,
                    c,
                    explicit=not default,
                )
            )
    if only in (None, "skopeo"):
        for n in loop_parallelism:
            out.append(Contender(f"skopeo-loop-{n}", f"skopeo loop x{n}", "skopeo-loop", None, n))
    if only in (None, "docker"):
        out.append(Contender("docker-loop", "docker pull/tag/push loop", "docker-loop", None, 1))
    return out


def signed_contenders(concurrency: int = DEFAULT_CONCURRENCY) -> list[Contender]:
    """The two contenders of ``--signed``: the skopeo backend with ``signatures: off``, ``copy``.

    Both at the same ``cloneConcurrency`` (written to the config unless it is
    the default). Pure.
    """
    default = concurrency == DEFAULT_CONCURRENCY
    return [
        Contender(
            f"controller-skopeo-c{concurrency}-sig-{mode}",
            f"controller skopeo c={concurrency} sig {mode}",
            "controller",
            "skopeo",
            concurrency,
            explicit=not default,
            signatures=mode,
        )
        for mode in SIGNATURE_MODES
    ]


def run_order(items: list[Contender], rep: int) -> list[Contender]:
    """Round ``rep``'s order: forward on even rounds, backward on odd ones. Pure."""
    return list(items) if rep % 2 == 0 else list(reversed(items))


@dataclass(frozen=True, slots=True)
class SignedImage:
    """What ``--signed`` pushed beside one corpus image.

    Attributes:
        repository: the image's repository (``corpus/app-03``).
        subjects: the signed manifests: the image (or index), then each platform manifest.
        tags: cosign tag (``sha256-<hex>.sig``, ``.att``, ``.sbom``) -> the digest it names.
        referrers: digests of the manifests whose ``subject`` is one of ``subjects``.
    """

    repository: str
    subjects: tuple[str, ...]
    tags: dict[str, str]
    referrers: tuple[str, ...]

    @property
    def artifacts(self) -> int:
        """The artifact manifests a copy with ``signatures: copy`` must write."""
        return len(set(self.tags.values()) | set(self.referrers))


@dataclass(frozen=True, slots=True)
class SignedSet:
    """The signed corpus (``--signed``): every image's artifacts, and how long signing took."""

    images: tuple[SignedImage, ...]
    seconds: float

    @property
    def digests(self) -> frozenset[str]:
        """Every artifact manifest digest (cosign tags' and referrers')."""
        return frozenset(d for i in self.images for d in (*i.tags.values(), *i.referrers))

    def figures(self) -> dict[str, Any]:
        """Counts of what was signed (``manifests``: the signed image manifests)."""
        return {
            "images": len(self.images),
            "manifests": sum(len(i.subjects) for i in self.images),
            "artifacts": sum(i.artifacts for i in self.images),
            "cosign_tags": sum(len(i.tags) for i in self.images),
            "referrers": sum(len(i.referrers) for i in self.images),
            "sign_s": self.seconds,
        }


def sign_corpus(env: Environment, corpus: Corpus) -> SignedSet:
    """Sign every corpus image in the public registry as ``devenv.signing.sign_image`` does.

    An index gets ``.sig`` on it and on each platform manifest (``cosign sign
    --recursive``), ``.att``, ``.sbom`` and a ``.sig`` of the ``.sbom`` on it,
    a Sigstore bundle referrer on it and an SBOM referrer on its first
    platform manifest. ``sign_image`` refuses an empty platform list, so a
    single-platform image is passed as its own only platform manifest: it
    gets the same set (its ``.sig`` is pushed twice, the tag names the second;
    the first stays untagged, never seen by the controller, which asks tags).
    Distribution 2.8 has no referrers API: ``referrers="fallback"`` (the
    ``sha256-<hex>`` tag index).
    """
    from devenv import images as img
    from devenv import signing

    started = time.time()
    signer = signing.Signer()
    out = []
    for image in corpus.images:
        if image.spec.is_index:
            _, body = img.get_manifest(env.public, image.repository, image.digest)
            children = [m["digest"] for m in json.loads(body)["manifests"]]
        else:
            children = [image.digest]
        signed = signing.sign_image(
            env.public, image.repository, image.digest, children, signer, referrers="fallback"
        )
        tags = {
            tag: digest
            for tag, digest in signed.tag_digests.items()
            if tag.endswith((".sig", ".att", ".sbom"))
        }
        referrers = tuple(d for listed in signed.referrers.values() for d in listed)
        subjects = tuple(dict.fromkeys((image.digest, *children)))
        out.append(SignedImage(image.repository, subjects, tags, referrers))
    return SignedSet(tuple(out), time.time() - started)


def artifact_requests(accesses: list[measure.Access]) -> list[measure.Access]:
    """The artifact requests: the referrers API, manifests under cosign or fallback tags. Pure."""
    out = []
    for access in accesses:
        path = access.path.split("?", 1)[0]
        if _REFERRERS_PATH_RE.search(path) or _ARTIFACT_TAG_RE.search(path):
            out.append(access)
    return out


def manifest_puts(accesses: list[measure.Access], artifacts: frozenset[str]) -> dict[str, int]:
    """Manifests written (``PUT`` answered 201), by what they are. Pure.

    Returns:
        ``artifact`` (by the digest of a signed artifact), ``cosign_tag``
        (``sha256-<hex>.sig/.att/.sbom``), ``fallback_index`` (``sha256-<hex>``),
        ``image_digest`` (another digest: a platform manifest of the image)
        and ``image_tag`` (another tag: the image).
    """
    counts = dict.fromkeys(
        ("artifact", "cosign_tag", "fallback_index", "image_digest", "image_tag"), 0
    )
    for access in accesses:
        if access.method != "PUT" or access.kind != "manifest" or access.status != 201:
            continue
        path = access.path.split("?", 1)[0]
        reference = path.rsplit("/manifests/", 1)[1]
        tag = _ARTIFACT_TAG_RE.search(path)
        if reference.startswith("sha256:"):
            counts["artifact" if reference in artifacts else "image_digest"] += 1
        elif tag:
            counts["cosign_tag" if tag.group("suffix") else "fallback_index"] += 1
        else:
            counts["image_tag"] += 1
    return counts


def artifact_figures(
    public: list[measure.Access], owned: list[measure.Access], artifacts: frozenset[str]
) -> dict[str, Any]:
    """The artifact figures of one run from both registries' requests. Pure.

    Returns:
        ``requests``: per registry, ``artifact_requests`` by method (with
        ``total``); ``by_digest``: per registry, manifest requests by method
        for a signed artifact's digest; ``manifest_puts``: the owned
        registry's ``manifest_puts``.
    """

    def by_digest(accesses: list[measure.Access]) -> dict[str, int]:
        return measure.request_counts(
            a
            for a in accesses
            if a.kind == "manifest"
            and a.path.split("?", 1)[0].rsplit("/manifests/", 1)[1] in artifacts
        )

    return {
        "requests": {
            "public": measure.request_counts(artifact_requests(public)),
            "owned": measure.request_counts(artifact_requests(owned)),
        },
        "by_digest": {"public": by_digest(public), "owned": by_digest(owned)},
        "manifest_puts": manifest_puts(owned, artifacts),
    }


@dataclass
class Bench:
    """The environment, the corpus and the runs of one benchmark invocation.

    Attributes:
        env: a started ``Environment``.
        corpus: the pushed corpus (in ``env.public``).
        kubeconfig: the image-cloner ServiceAccount's kubeconfig.
        workdir: where configs and controller logs of each run are kept.
        signed: the signed corpus (``--signed``); every run's figures then
            hold ``artifacts`` (``artifact_figures``).
        runs: the runs so far.
    """

    env: Environment
    corpus: Corpus
    kubeconfig: Path
    workdir: Path
    signed: SignedSet | None = None
    runs: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        (self.workdir / "runs").mkdir(parents=True, exist_ok=True)

    # --- isolation -----------------------------------------------------------------

    def reset(self) -> None:
        """Empty the owned registry (stop, remove storage, start) and the engine's images."""
        owned = self.env.owned
        owned.stop()
        shutil.rmtree(owned.root / "storage", ignore_errors=True)
        owned.start()
        with closing(self.env.docker_client()) as client:
            for image in client.images.list(all=True):
                with contextlib.suppress(docker.errors.NotFound):
                    client.images.remove(image.id, force=True)

    def run_id(self, what: str) -> str:
        """A fresh name for a run: namespace and owned path prefix."""
        self.runs += 1
        return f"b{self.runs:02d}-{what}"[:50].rstrip("-")

    def owned_name(self, prefix: str, repository: str, tag: str) -> str:
        """The owned reference, as the controller's ``nested`` naming makes it."""
        host = self.env.public.host.replace(":", "-")
        return f"{self.env.owned.host}/{prefix}/{host}/{repository}:{tag}"

    # --- figures -------------------------------------------------------------------

    def offsets(self) -> tuple[int, int]:
        """Current sizes of the public and owned registry logs (bytes)."""
        return (
            self.env.public.log_path.stat().st_size,
            self.env.owned.log_path.stat().st_size,
        )

    def stored_blobs(self) -> dict[str, int]:
        """digest -> size of every blob in the owned registry's storage (manifests included)."""
        root = self.env.owned.root / "storage" / "docker" / "registry" / "v2" / "blobs" / "sha256"
        out = {}
        for data in root.glob("*/*/data"):
            out["sha256:" + data.parent.name] = data.stat().st_size
        return out

    def registry_figures(self, offsets: tuple[int, int]) -> dict[str, Any]:
        """The registry figures of the requests logged since ``offsets``."""
        time.sleep(0.3)  # the access log line is written after the response
        public = measure.parse_access(_read_from(self.env.public.log_path, offsets[0]))
        owned = measure.parse_access(_read_from(self.env.owned.log_path, offsets[1]))
        stored = self.stored_blobs()
        figures: dict[str, Any] = {
            "uploaded_bytes": measure.uploaded_bytes(owned, stored),
            "uploads": len(measure.completed_uploads(owned)),
            "mounts": measure.mounts(owned),
            "stored_bytes": sum(stored.values()),
            "pulled_blob_bytes": measure.blob_bytes_served(public),
            "pulled_manifest_bytes": measure.manifest_bytes_served(public),
            "requests": {
                "public": measure.request_counts(public),
                "owned": measure.request_counts(owned),
            },
            "profile": {
                "public": measure.request_profile(public),
                "owned": measure.request_profile(owned),
            },
        }
        if self.signed is not None:
            figures["artifacts"] = artifact_figures(public, owned, self.signed.digests)
        return figures

    # --- contenders ----------------------------------------------------------------

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: the harness components, this process's children, the machine.

        Components from ``/proc/PID/stat`` (``dockerd``, ``apiserver``,
        ``etcd``, ``registry-public``, ``registry-owned``); ``children``: the
        reaped children of this process (the controller, skopeo and docker
        CLI processes of a run); ``machine``: busy time of all CPUs,
        ``machine_steal``: time the hypervisor took (``measure.machine_cpu``).
        """
        processes = dict(getattr(self.env, "_processes", {}))
        for registry in (self.env.public, self.env.owned):
            processes[f"registry-{registry.name}"] = getattr(registry, "_process", None)
        used: dict[str, float] = {}
        ticks = os.sysconf("SC_CLK_TCK")
        for name, process in processes.items():
            popen = getattr(process, "popen", None)
            if popen is None:
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
                used[name] = (int(stat[11]) + int(stat[12])) / ticks
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        used["children"] = children.ru_utime + children.ru_stime
        used["machine"], used["machine_steal"] = measure.machine_cpu(
            Path("/proc/stat").read_text(), ticks
        )
        return used

    def run(self, contender: Contender, rep: int) -> dict[str, Any]:
        """One run of a contender into a fresh prefix; returns its figures.

        ``cpu_s`` holds the CPU seconds each component, the run's own
        processes (``children``) and the whole machine used during the run,
        and ``others`` what the machine spent beyond them (other load).
        """
        self.reset()
        before = self.cpu()
        run_id = self.run_id(contender.key)
        if contender.kind == "controller":
            figures = self._controller(contender, run_id)
        elif contender.kind == "skopeo-loop":
            figures = self._skopeo_loop(contender.parallelism, run_id)
        else:
            figures = self._docker_loop(run_id)
        after = self.cpu()
        if self.signed is not None and contender.signatures is not None:
            owned = self._owned_artifacts(run_id)
            figures["artifacts"]["in_owned"] = owned
            if contender.signatures == "copy" and owned != self.signed.figures()["artifacts"]:
                figures["ok"] = False
                figures.setdefault(
                    "error",
                    f"the owned registry serves {owned} of the "
                    f"{self.signed.figures()['artifacts']} signed artifacts",
                )
        cpu = {name: after[name] - before[name] for name in after if name in before}
        cpu["others"] = cpu.get("machine", 0.0) - sum(
            value for name, value in cpu.items() if not name.startswith("machine")
        )
        figures.update(contender=contender.key, round=rep, prefix=run_id, cpu_s=cpu)
        return figures

    def _workloads(self, namespace: str) -> None:
        create_namespace(self.env, namespace)
        with closing(self.env.api_client()) as api:
            for image in self.corpus.images:
                create(api, "Deployment", namespace, image.spec.name, {"main": image.reference})

    def _patched(self, namespace: str) -> int:
        """How many Deployments of the namespace run an owned image now."""
        with closing(self.env.api_client()) as api:
            response = kubernetes.client.AppsV1Api(api).list_namespaced_deployment(
                namespace, _preload_content=False
            )
        items = json.loads(response.data)["items"]
        owned = self.env.owned.host + "/"
        return sum(
            1
            for item in items
            if all(
                c["image"].startswith(owned) for c in item["spec"]["template"]["spec"]["containers"]
            )
        )

    def _controller(
        self,
        contender: Contender,
        run_id: str,
        *,
        prefix: str | None = None,
        state: bool = False,
        fresh_workloads: bool = True,
    ) -> dict[str, Any]:
        """``controller.py --once`` over a new namespace of one Deployment per image."""
        namespace = run_id
        if fresh_workloads:
            self._workloads(namespace)
        extra: dict[str, Any] = {
            "copyBackend": contender.backend,
            "namespaces": {"include": [namespace]},
        }
        if contender.explicit:
            extra["cloneConcurrency"] = contender.parallelism
        if contender.parallelism > DEFAULT_REGISTRY_CONCURRENCY:
            # Every image comes from one source registry: without this the
            # per-registry limit (default 3) caps c=4 at 3 copies at once, and
            # "the same parallelism" as the loop would not hold.
            extra["registryConcurrency"] = contender.parallelism
        if state:
            extra["controllerNamespace"] = "image-cloner"
        if contender.signatures is not None:
            extra["signatures"] = contender.signatures
        target = f"{self.env.owned.host}/{prefix or run_id}"
        config = write_config(self.workdir / "runs" / f"{run_id}.yaml", self.env, target, **extra)
        offsets = self.offsets()
        started = time.time()
        result = run_controller(
            self.env,
            config,
            kubeconfig=self.kubeconfig,
            timeout=RUN_TIMEOUT,
            wrapper=SHIPPED_USER if contender.backend == "skopeo" else (),
        )
        wall = time.time() - started
        figures = self.registry_figures(offsets)
        (self.workdir / "runs" / f"{run_id}.log").write_text(result.stderr)
        patches = sorted(t - started for t in measure.patch_times(result.stderr))
        spans = measure.copy_spans(result.stderr)
        copied = sorted(s.end - started for s in spans)
        cycle = _SUMMARY_DURATION_RE.search(result.stderr)
        patched = self._patched(namespace)
        ok = result.returncode == 0 and patched == len(self.corpus.images)
        figures.update(
            wall_s=wall,
            ok=ok,
            exit_code=result.returncode,
            patched=patched,
            first_patch_s=patches[0] if patches else None,
            last_patch_s=patches[-1] if patches else None,
            first_copy_s=copied[0] if copied else None,
            last_copy_s=copied[-1] if copied else None,
            copies=len(spans),
            copy_seconds=sum(s.end - s.start for s in spans),
            max_parallel_copies=measure.max_overlap([(s.start, s.end) for s in spans]),
            copy_times_s=copied,
            patch_times_s=patches,
            cycle_s=float(cycle.group("seconds")) if cycle else None,
            phases=measure.phases(result.stderr, started, started + wall),
        )
        if not ok:
            figures["error"] = result.stderr[-3000:]
        return figures

    def _skopeo_loop(self, parallelism: int, run_id: str) -> dict[str, Any]:
        """``parallelism`` ``skopeo copy`` processes at once, as the skopeo backend runs each."""
        owned = self.env.owned
        assert owned.username is not None and owned.password is not None
        workdir = Path(tempfile.mkdtemp(prefix="skopeo-loop-", dir=self.workdir))
        home = workdir / "home"
        home.mkdir(mode=0o700)
        auth_file = workdir / "auth.json"
        credential = Credential(owned.host, owned.username, owned.password)
        descriptor = os.open(auth_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(auth_document({owned.host: credential}), handle)
        # One blob info cache for the run's copies, empty at its start, as the
        # controller's skopeo backend keeps one per process.
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_DATA_HOME": str(workdir / "data")}
        skopeo = shutil.which("skopeo") or "skopeo"

        def copy_one(index: int) -> tuple[float, float, int, str]:
            image = self.corpus.images[index]
            began = time.time()
            destination = self.owned_name(run_id, image.repository, image.spec.tag)
            argv = copy_argv(
                skopeo,
                parse_reference(image.reference),
                parse_reference(destination),
                digest_file=workdir / f"digest-{index}",
                auth_file=auth_file,
                command_timeout=RUN_TIMEOUT,
                insecure_registries=INSECURE_REGISTRIES,
            )
            result = subprocess.run(
                [*SHIPPED_USER, *argv],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=env,
                timeout=RUN_TIMEOUT,
                check=False,
            )
            return began, time.time(), result.returncode, result.stderr

        offsets = self.offsets()
        started = time.time()
        with ThreadPoolExecutor(max_workers=parallelism) as pool:
            done = list(pool.map(copy_one, range(len(self.corpus.images))))
        wall = time.time() - started
        shutil.rmtree(workdir, ignore_errors=True)
        figures = self.registry_figures(offsets)
        errors = [stderr for _, _, code, stderr in done if code != 0]
        copied = self._copied(run_id, same_digest=True)
        figures.update(
            wall_s=wall,
            ok=not errors and copied == len(self.corpus.images),
            copied=copied,
            first_copy_s=min(end for _, end, _, _ in done) - started,
            last_copy_s=max(end for _, end, _, _ in done) - started,
            copies=len(done),
            copy_seconds=sum(end - began for began, end, _, _ in done),
            max_parallel_copies=measure.max_overlap([(b, e) for b, e, _, _ in done]),
            copy_times_s=sorted(end - started for _, end, code, _ in done if code == 0),
        )
        if errors:
            figures["error"] = errors[0][-3000:]
        return figures

    def _docker_loop(self, run_id: str) -> dict[str, Any]:
        """``docker pull``, ``docker tag``, ``docker push`` per image, one image after the other."""
        env = self.env.kubectl_env()
        docker = shutil.which("docker") or "docker"
        errors: list[str] = []
        ends: list[float] = []
        pushed: list[float] = []
        offsets = self.offsets()
        started = time.time()
        for image in self.corpus.images:
            destination = self.owned_name(run_id, image.repository, image.spec.tag)
            for argv in (
                [docker, "pull", "-q", image.reference],
                [docker, "tag", image.reference, destination],
                [docker, "push", "-q", destination],
            ):
                result = subprocess.run(
                    argv, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT, check=False
                )
                if result.returncode != 0:
                    errors.append(f"{' '.join(argv[1:])}: {result.stderr}")
                    break
            else:
                pushed.append(time.time() - started)
            ends.append(time.time())
        wall = time.time() - started
        figures = self.registry_figures(offsets)
        copied = self._copied(run_id, same_digest=False)
        figures.update(
            wall_s=wall,
            ok=not errors and copied == len(self.corpus.images),
            copied=copied,
            first_copy_s=min(ends) - started,
            last_copy_s=max(ends) - started,
            copy_times_s=pushed,
        )
        if errors:
            figures["error"] = errors[0][-3000:]
        return figures

    def _copied(self, prefix: str, *, same_digest: bool) -> int:
        """How many images the owned registry serves under ``prefix`` (with the source digest)."""
        count = 0
        for image in self.corpus.images:
            reference = self.owned_name(prefix, image.repository, image.spec.tag)
            repository = reference.split("/", 1)[1].rsplit(":", 1)[0]
            digest = self.env.owned.manifest_digest(repository, image.spec.tag)
            if digest is not None and (not same_digest or digest == image.digest):
                count += 1
        return count

    def _owned_artifacts(self, prefix: str) -> int:
        """How many signed artifacts the owned registry serves under ``prefix``.

        An artifact counts when every cosign tag naming it names it in the
        owned repository too, or, for a referrer, when it is there by digest.
        Asked after the run's figures were read (its requests are not counted).
        """
        assert self.signed is not None
        count = 0
        for image, signed in zip(self.corpus.images, self.signed.images, strict=True):
            reference = self.owned_name(prefix, image.repository, image.spec.tag)
            repository = reference.split("/", 1)[1].rsplit(":", 1)[0]
            served: dict[str, bool] = {}
            for tag, digest in signed.tags.items():
                there = self.env.owned.manifest_digest(repository, tag) == digest
                served[digest] = served.get(digest, True) and there
            for digest in signed.referrers:
                if digest not in served:
                    served[digest] = self.env.owned.manifest_digest(repository, digest) == digest
            count += sum(served.values())
        return count

    # --- warm cycle ----------------------------------------------------------------

    def warm(self, backend: str) -> dict[str, Any]:
        """A cold run with durable state, then a warm ``--once`` with and without the state.

        Returns:
            ``{"backend", "seed": figures, "warm": figures, "no_state": figures}``;
            the warm and no-state runs use new namespaces whose Deployments
            name the same sources, and the seed run's owned prefix.
        """
        self.reset()
        # --signed: the skopeo warm cycle names signatures: copy (the default) in its config.
        signatures = "copy" if self.signed is not None and backend == "skopeo" else None
        contender = Contender(
            f"warm-{backend}", f"warm {backend}", "controller", backend, 2, False, signatures
        )
        seed_id = self.run_id(f"seed-{backend}")
        seed = self._controller(contender, seed_id, state=True)
        warm = self._controller(
            contender, self.run_id(f"warm-{backend}"), prefix=seed_id, state=True
        )
        no_state = self._controller(
            contender, self.run_id(f"nostate-{backend}"), prefix=seed_id, state=False
        )
        return {"backend": backend, "seed": seed, "warm": warm, "no_state": no_state}


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


# --- summaries and the table ----------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Min and median wall time and the median of every other figure over a contender's runs.

    Args:
        runs: the figures of each run (``Bench.run``).

    Returns:
        ``runs``, ``ok`` (every run), ``wall_min_s``, ``wall_median_s``, and
        the median of ``uploaded_bytes``, ``pulled_blob_bytes``, request
        counts per registry and method, patch and copy times. Pure.
    """
    walls = [r["wall_s"] for r in runs]

    def med(key: str) -> float | None:
        return measure.median([r[key] for r in runs if r.get(key) is not None])

    requests: dict[str, dict[str, float | None]] = {}
    for registry in ("public", "owned"):
        methods = sorted({m for r in runs for m in r["requests"][registry]})
        requests[registry] = {
            m: measure.median([r["requests"][registry].get(m, 0) for r in runs]) for m in methods
        }
    phases = None
    if any(r.get("phases") for r in runs):
        phases = {
            name: measure.median(
                [r["phases"][name] for r in runs if r["phases"].get(name) is not None]
            )
            for name in measure.PHASES
        }
    return {
        "phases": phases,
        "runs": len(runs),
        "ok": all(r["ok"] for r in runs),
        "wall_min_s": min(walls),
        "wall_median_s": measure.median(walls),
        "uploaded_bytes": med("uploaded_bytes"),
        "uploads": med("uploads"),
        "mounts": med("mounts"),
        "pulled_blob_bytes": med("pulled_blob_bytes"),
        "requests": requests,
        "first_patch_s": med("first_patch_s"),
        "last_patch_s": med("last_patch_s"),
        "first_copy_s": med("first_copy_s"),
        "last_copy_s": med("last_copy_s"),
        "max_parallel_copies": med("max_parallel_copies"),
        "copy_seconds": med("copy_seconds"),
        "cycle_s": med("cycle_s"),
        "cpu_machine_s": measure.median(
            [r["cpu_s"]["machine"] for r in runs if "machine" in r.get("cpu_s", {})]
        ),
        "cpu_children_s": measure.median(
            [r["cpu_s"]["children"] for r in runs if "children" in r.get("cpu_s", {})]
        ),
    }


def targets(
    summaries: dict[str, dict[str, Any]], concurrencies: list[int], cpus: int = 0
) -> list[dict[str, Any]]:
    """The 1.1x check: skopeo backend vs plain skopeo loop at the same parallelism. Pure."""
    return [t for t in all_targets(summaries, concurrencies, cpus) if t["backend"] == "skopeo"]


def docker_targets(
    summaries: dict[str, dict[str, Any]], concurrencies: list[int], cpus: int = 0
) -> list[dict[str, Any]]:
    """The 0.6x check: docker backend vs the sequential docker loop. Pure."""
    return [t for t in all_targets(summaries, concurrencies, cpus) if t["backend"] == "docker"]


def all_targets(
    summaries: dict[str, dict[str, Any]], concurrencies: list[int], cpus: int = 0
) -> list[dict[str, Any]]:
    """Both checks, each row naming its ``backend``. Pure.

    ``cpu_floor`` (see ``measure.cpu_floor``) and ``cpu_bound`` (the controller's
    run's machine CPU seconds / ``cpus`` / the loop's median wall time) say
    how far CPU alone lets the ratio go on this machine.
    """
    pairs = [
        ("skopeo", c, f"skopeo-loop-{c}", f"skopeo loop x{c}", TARGET_RATIO) for c in concurrencies
    ] + [
        ("docker", c, "docker-loop", "sequential docker loop", DOCKER_TARGET_RATIO)
        for c in concurrencies
    ]
    out = []
    for backend_name, c, loop_key, loop_text, target in pairs:
        backend = summaries.get(f"controller-{backend_name}-c{c}")
        loop = summaries.get(loop_key)
        if backend is None or loop is None:
            continue
        ratio = backend["wall_median_s"] / loop["wall_median_s"]
        out.append(
            {
                "backend": backend_name,
                "what": f"controller {backend_name} c={c} / {loop_text} (median wall)",
                "backend_s": backend["wall_median_s"],
                "loop_s": loop["wall_median_s"],
                "ratio": ratio,
                "target": target,
                "met": ratio <= target,
                "cpu_floor": measure.cpu_floor(loop, backend_name, cpus),
                "cpu_bound": measure.cpu_ratio(
                    backend.get("cpu_machine_s"), cpus, loop["wall_median_s"]
                ),
                # informational, not the target: the cycle leaves out process
                # start-up and exit, which a running controller pays once
                "cycle_s": backend.get("cycle_s"),
                "cycle_ratio": (
                    None
                    if backend.get("cycle_s") is None
                    else backend["cycle_s"] / loop["wall_median_s"]
                ),
            }
        )
    return out


def _median_counts(counts: list[dict[str, Any]]) -> dict[str, float | None]:
    """The median of each key over ``counts`` (a key missing from one counts 0). Pure."""
    keys = sorted({k for c in counts for k in c})
    return {k: measure.median([c.get(k, 0) for c in counts]) for k in keys}


def _minus(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """``a - b`` key by key (a missing key counts 0). Pure."""
    return {k: (a.get(k) or 0) - (b.get(k) or 0) for k in sorted(set(a) | set(b))}


def signed_summary(
    runs: list[dict[str, Any]],
    field: list[Contender],
    warm: list[dict[str, Any]],
    signed: dict[str, Any],
) -> dict[str, Any]:
    """What the artifacts add: ``signatures: off`` against ``copy`` (``--signed``). Pure.

    Args:
        runs: every run's figures (the signed contenders' hold ``artifacts``).
        field: the contenders; the two with ``signatures`` set are compared.
        warm: the warm cycles (``Bench.warm``), with ``artifacts`` figures.
        signed: ``SignedSet.figures()`` (``images``, ``manifests``, ``artifacts``).

    Returns:
        ``corpus`` (= ``signed``), ``concurrency``, per mode (``off``,
        ``copy``): ``key``, ``runs``, ``ok``, ``wall_min_s``,
        ``wall_median_s``, the medians of ``requests`` (per registry and
        method, every request), ``artifact_requests`` (``artifact_requests``),
        ``artifact_by_digest``, ``manifest_puts`` and ``artifacts_in_owned``;
        ``difference`` (copy - off): ``wall_s``, ``wall_ratio``, ``requests``
        and ``artifact_requests`` per registry and method, the ``total`` of
        both registries ``per_image`` and ``per_manifest`` (the signed
        manifests: images and their platform manifests), ``artifacts_copied``
        (artifact manifests written by digest in the owned registry);
        ``warm``: per backend and run (``seed``, ``warm``, ``no_state``) the
        artifact requests per registry, and ``warm_artifact_requests`` (of
        the warm runs: 0 expected); ``off_vs_loop``: the ``off`` contender's
        median wall time over the plain skopeo loop's at the same parallelism,
        when that loop ran (the other controller contenders copy the
        artifacts, by the default ``signatures: copy``; the loop never does).
    """
    modes: dict[str, dict[str, Any]] = {}
    for contender in field:
        mine = [r for r in runs if r["contender"] == contender.key]
        if contender.signatures is not None and mine:
            modes[contender.signatures] = _signed_mode(contender.key, mine)
    out: dict[str, Any] = {"corpus": signed, **modes}
    if modes:
        out["concurrency"] = next(c.parallelism for c in field if c.signatures is not None)
    off, copy = modes.get("off"), modes.get("copy")
    if off is not None and copy is not None:
        out["difference"] = _signed_difference(off, copy, signed)
    if off is not None:
        loop_key = f"skopeo-loop-{out['concurrency']}"
        loop_s = measure.median([r["wall_s"] for r in runs if r["contender"] == loop_key])
        if loop_s:
            out["off_vs_loop"] = {
                "loop": loop_key,
                "off_s": off["wall_median_s"],
                "loop_s": loop_s,
                "ratio": off["wall_median_s"] / loop_s,
            }
    cycles = [_signed_warm(cycle) for cycle in warm]
    out["warm"] = cycles
    out["warm_artifact_requests"] = {
        c["backend"]: c["warm"]["artifact_requests"]["public"]["total"]
        + c["warm"]["artifact_requests"]["owned"]["total"]
        for c in cycles
        if "warm" in c
    }
    return out


def _signed_mode(key: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``--signed`` contender's medians (see ``signed_summary``). Pure."""
    walls = [r["wall_s"] for r in runs]
    entry: dict[str, Any] = {
        "key": key,
        "runs": len(runs),
        "ok": all(r["ok"] for r in runs),
        "wall_min_s": min(walls),
        "wall_median_s": measure.median(walls),
    }
    for name, pick in (
        ("requests", lambda r, g: r["requests"][g]),
        ("artifact_requests", lambda r, g: r["artifacts"]["requests"][g]),
        ("artifact_by_digest", lambda r, g: r["artifacts"]["by_digest"][g]),
    ):
        entry[name] = {g: _median_counts([pick(r, g) for r in runs]) for g in ("public", "owned")}
    entry["manifest_puts"] = _median_counts([r["artifacts"]["manifest_puts"] for r in runs])
    entry["artifacts_in_owned"] = measure.median(
        [r["artifacts"]["in_owned"] for r in runs if "in_owned" in r["artifacts"]]
    )
    return entry


def _signed_difference(
    off: dict[str, Any], copy: dict[str, Any], signed: dict[str, Any]
) -> dict[str, Any]:
    """``copy - off`` of the medians, and per image and per signed manifest. Pure."""
    registries = ("public", "owned")
    requests = {g: _minus(copy["requests"][g], off["requests"][g]) for g in registries}
    total = requests["public"].get("total", 0) + requests["owned"].get("total", 0)
    images, manifests = signed["images"] or 1, signed["manifests"] or 1
    return {
        "wall_s": copy["wall_median_s"] - off["wall_median_s"],
        "wall_ratio": copy["wall_median_s"] / off["wall_median_s"],
        "requests": requests,
        "artifact_requests": {
            g: _minus(copy["artifact_requests"][g], off["artifact_requests"][g]) for g in registries
        },
        "total": total,
        "per_image": total / images,
        "per_manifest": total / manifests,
        "per_image_by_registry": {g: requests[g].get("total", 0) / images for g in registries},
        "per_manifest_by_registry": {
            g: requests[g].get("total", 0) / manifests for g in registries
        },
        "artifacts_copied": copy["manifest_puts"].get("artifact"),
        "artifacts_expected": signed["artifacts"],
    }


def _signed_warm(cycle: dict[str, Any]) -> dict[str, Any]:
    """A warm cycle's artifact figures per run (``seed``, ``warm``, ``no_state``). Pure."""
    entry: dict[str, Any] = {"backend": cycle["backend"]}
    for name in ("seed", "warm", "no_state"):
        figures = cycle[name].get("artifacts")
        if figures is not None:
            entry[name] = {
                "wall_s": cycle[name]["wall_s"],
                "artifact_requests": figures["requests"],
                "manifest_puts": figures["manifest_puts"],
            }
    return entry


def family(contender: Contender) -> str:
    """``docker`` or ``skopeo``: the backend a contender is compared within. Pure."""
    if contender.backend is not None:
        return contender.backend
    return "skopeo" if contender.kind == "skopeo-loop" else "docker"


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run whose wall time is the median of ``runs`` (the lower one of an even count)."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    return ordered[(len(ordered) - 1) // 2] if ordered else None


def timelines(runs: list[dict[str, Any]], field: list[Contender]) -> dict[str, dict[str, Any]]:
    """The curves ``bench/plot.py`` draws: per backend, copies done and workloads patched.

    Args:
        runs: every run's figures (``Bench.run``: ``contender``, ``wall_s``,
            ``copy_times_s`` and, for the controller, ``patch_times_s``; seconds
            since the run's process or loop started).
        field: the contenders, in the order the curves are drawn.

    Returns:
        ``{"<backend>-copies": entry, "<backend>-patches": entry}`` for each
        backend with runs, each entry ``{"label", "ylabel", "xlabel",
        "series": {contender label: seconds}}`` from the median run of each
        contender (by wall time). Pure.
    """
    out: dict[str, dict[str, Any]] = {}
    for backend in ("docker", "skopeo"):
        copies: dict[str, list[float]] = {}
        patches: dict[str, list[float]] = {}
        for contender in field:
            if family(contender) != backend:
                continue
            run = median_run([r for r in runs if r["contender"] == contender.key])
            if run is None:
                continue
            copies[contender.label] = list(run.get("copy_times_s") or [])
            if contender.kind == "controller":
                patches[contender.label] = list(run.get("patch_times_s") or [])
        panels = (
            ("copies", "images copied (median run of each contender)", "images copied", copies),
            (
                "patches",
                "workloads patched by the controller (median run)",
                "workloads patched",
                patches,
            ),
        )
        for suffix, label, ylabel, series in panels:
            if series:
                out[f"{backend}-{suffix}"] = {
                    "label": f"{backend}: {label}",
                    "ylabel": ylabel,
                    "xlabel": "seconds since the process (or the loop) started",
                    "series": series,
                }
    return out


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / MB:.1f}"


def _n(value: float | None) -> str:
    return "-" if value is None else str(round(value))


def _req(counts: dict[str, Any], methods: tuple[str, ...]) -> str:
    return "/".join(str(round(counts.get(m) or 0)) for m in methods)


HEADER = (
    f"{'contender':<32} {'runs':>4} {'wall min':>8} {'wall med':>8} {'MB up':>7} "
    f"{'MB pulled':>9} {'public H/G':>11} {'owned H/G/PUT/POST/PATCH':>25} "
    f"{'cycle':>5} {'1st patch':>9} {'last patch':>10} {'last copy':>9} {'par':>3} {'ok':>3}"
)


def table_row(label: str, summary: dict[str, Any]) -> str:
    """One line of the table for a contender's summary. Pure."""
    return (
        f"{label:<32} {summary['runs']:>4} {_s(summary['wall_min_s']):>8} "
        f"{_s(summary['wall_median_s']):>8} {_mb(summary['uploaded_bytes']):>7} "
        f"{_mb(summary['pulled_blob_bytes']):>9} "
        f"{_req(summary['requests']['public'], ('HEAD', 'GET')):>11} "
        f"{_req(summary['requests']['owned'], measure.METHODS):>25} "
        f"{_s(summary['cycle_s']):>5} "
        f"{_s(summary['first_patch_s']):>9} {_s(summary['last_patch_s']):>10} "
        f"{_s(summary['last_copy_s']):>9} "
        f"{_n(summary['max_parallel_copies']):>3} "
        f"{'yes' if summary['ok'] else 'NO':>3}"
    )


def print_report(report: dict[str, Any], labels: dict[str, str]) -> None:
    """Print the corpus, the table, the targets, the warm cycles and the per-image profile."""
    figures = report["corpus"]["figures"]
    print(
        f"corpus: {figures['images']} images ({figures['indexes']} OCI indexes amd64+arm64), "
        f"{figures['unique_blobs']} unique blobs, {_mb(figures['unique_bytes'])} MB unique, "
        f"{_mb(figures['whole_bytes'])} MB if every image were copied whole "
        f"({_mb(figures['whole_bytes_amd64'])} MB amd64 only)"
    )
    print()
    print("copy benchmark (seconds; MB = 10^6 bytes; medians over runs except 'wall min')")
    print(HEADER)
    for key, summary in report["summaries"].items():
        print(table_row(labels[key], summary))
    print()
    for target in [*report["targets"], *report.get("docker_targets", [])]:
        print(
            f"target: {target['what']}: {target['backend_s']:.1f}s / {target['loop_s']:.1f}s = "
            f"{target['ratio']:.2f}x (target <= {target['target']:.2f}x): "
            f"{'met' if target['met'] else 'MISSED'}"
        )
        if target.get("cpu_floor") is not None and target.get("cpu_bound") is not None:
            print(
                f"        on {report['machine']['cpus']} CPUs, over the loop's wall time: "
                f"{target['cpu_floor']:.2f}x for the CPU the loop's run took that any "
                f"{target['backend']} contender takes too; {target['cpu_bound']:.2f}x for "
                "all the CPU the controller's run took"
            )
        if target.get("cycle_ratio") is not None:
            print(
                f"        the reconcile cycle alone (no process start-up or exit): "
                f"{target['cycle_s']:.1f}s = {target['cycle_ratio']:.2f}x of the loop"
            )
    for warm in report["warm"]:
        for name in ("seed", "warm", "no_state"):
            run = warm[name]
            public, owned = run["requests"]["public"], run["requests"]["owned"]
            print(
                f"warm {warm['backend']:<6} {name:<8}: wall {run['wall_s']:.1f}s, "
                f"public requests {public['total']} (HEAD/GET {_req(public, ('HEAD', 'GET'))}), "
                f"owned requests {owned['total']}, patched {run['patched']}, "
                f"copies {run['copies']}"
            )
    print()
    _print_profiles(report, labels, figures["images"])
    if report.get("signed"):
        print()
        _print_signed(report["signed"])


def _print_signed(signed: dict[str, Any]) -> None:
    """The ``--signed`` section: signatures off against copy, the warm cycle's artifact requests."""
    corpus = signed["corpus"]
    print(
        f"signed corpus: {corpus['images']} images, {corpus['manifests']} signed manifests, "
        f"{corpus['artifacts']} artifact manifests ({corpus['cosign_tags']} cosign tags, "
        f"{corpus['referrers']} referrers in fallback indexes), signed in {corpus['sign_s']:.1f}s"
    )
    for mode in SIGNATURE_MODES:
        entry = signed.get(mode)
        if entry is None:
            continue
        public, owned = entry["requests"]["public"], entry["requests"]["owned"]
        art_public = entry["artifact_requests"]["public"]
        art_owned = entry["artifact_requests"]["owned"]
        puts = entry["manifest_puts"]
        print(
            f"  sig {mode:<4} (c={signed['concurrency']}, {entry['runs']} runs"
            f"{'' if entry['ok'] else ', FAILED'}): wall med {_s(entry['wall_median_s'])}s "
            f"min {_s(entry['wall_min_s'])}s; requests public {_n(public.get('total'))} "
            f"(H/G {_req(public, ('HEAD', 'GET'))}), owned {_n(owned.get('total'))} "
            f"(H/G/PUT/POST/PATCH {_req(owned, measure.METHODS)}); artifact requests public "
            f"{_n(art_public.get('total'))} (H/G {_req(art_public, ('HEAD', 'GET'))}), owned "
            f"{_n(art_owned.get('total'))} (H/G/PUT {_req(art_owned, ('HEAD', 'GET', 'PUT'))}); "
            f"manifests written: {_n(puts.get('artifact'))} artifacts, "
            f"{_n(puts.get('cosign_tag'))} cosign tags, {_n(puts.get('fallback_index'))} "
            f"fallback indexes; owned serves {_n(entry['artifacts_in_owned'])}/"
            f"{corpus['artifacts']} artifacts"
        )
    diff = signed.get("difference")
    if diff is not None:
        requests = diff["requests"]
        print(
            f"  copy - off: wall {diff['wall_s']:+.1f}s ({diff['wall_ratio']:.2f}x); requests "
            f"{diff['total']:+.0f} (public {requests['public'].get('total', 0):+.0f} H/G "
            f"{_req(requests['public'], ('HEAD', 'GET'))}, owned "
            f"{requests['owned'].get('total', 0):+.0f} H/G/PUT/POST/PATCH "
            f"{_req(requests['owned'], measure.METHODS)}) = {diff['per_image']:.1f} per image "
            f"(public {diff['per_image_by_registry']['public']:.1f}, owned "
            f"{diff['per_image_by_registry']['owned']:.1f}), {diff['per_manifest']:.1f} per "
            f"signed manifest; artifacts copied {_n(diff['artifacts_copied'])}/"
            f"{diff['artifacts_expected']}"
        )
    versus = signed.get("off_vs_loop")
    if versus is not None and versus["ratio"] is not None:
        print(
            f"  sig off / {versus['loop']} (median wall): {versus['off_s']:.1f}s / "
            f"{versus['loop_s']:.1f}s = {versus['ratio']:.2f}x (the other controller rows copy "
            "the artifacts, signatures: copy being the default; the loops never do)"
        )
    for cycle in signed["warm"]:
        parts = []
        for name in ("seed", "warm", "no_state"):
            if name in cycle:
                counts = cycle[name]["artifact_requests"]
                parts.append(
                    f"{name} public {counts['public']['total']} owned {counts['owned']['total']}"
                )
        print(f"  warm {cycle['backend']:<6} artifact requests: {', '.join(parts)}")
    for backend, count in signed["warm_artifact_requests"].items():
        print(
            f"check: warm {backend} run with signatures on makes no artifact request: "
            f"{count} ({'met' if count == 0 else 'MISSED'})"
        )
    print(
        "artifact requests: the referrers API, and manifests under cosign tags "
        "(sha256-<hex>.sig/.att/.sbom) or fallback tags (sha256-<hex>); requests by an "
        "artifact's digest and its blobs are in the copy - off difference only."
    )


def _print_profiles(report: dict[str, Any], labels: dict[str, str], n: int) -> None:
    """Requests per image, phases, CPU seconds and copy time per image of each contender."""
    print(f"requests per image (median run / {n} images), METHOD kind:")
    for key in report["summaries"]:
        runs = [r for r in report["runs"] if r["contender"] == key]
        middle = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
        for registry in ("public", "owned"):
            profile = middle["profile"][registry]
            text = ", ".join(
                f"{k} {v / n:.2f}" for k, v in sorted(profile.items(), key=lambda kv: -kv[1])
            )
            print(f"  {labels[key]:<32} {registry:<6} {text}")
    print()
    print(
        "MB up: completed blob uploads in the owned registry's access log x blob size in its "
        "storage; MB pulled: bytes of GET blob responses in the public registry's access log; "
        "cycle: the controller's own reconcile duration (summary line); "
        "par: most copies in flight at once (controller log; loop: its processes)."
    )
    _print_costs(report, labels)


def _print_costs(report: dict[str, Any], labels: dict[str, str]) -> None:
    """Controller phases, CPU seconds per run and copy time per image of each contender."""
    print("controller phases (median s): startup / prepare / copies / patches / exit")
    for key, summary in report["summaries"].items():
        if summary.get("phases"):
            text = " / ".join(_s(summary["phases"][name]) for name in measure.PHASES)
            print(f"  {labels[key]:<32} {text}")
    print(
        "CPU seconds per run (median): run's processes / dockerd / registries / others"
        " / stolen by the hypervisor"
    )
    for key in report["summaries"]:
        runs = [r for r in report["runs"] if r["contender"] == key and r.get("cpu_s")]
        if runs:

            def med(*names: str, runs: list[dict[str, Any]] = runs) -> str:
                values = [sum(r["cpu_s"].get(n, 0.0) for n in names) for r in runs]
                return f"{measure.median(values):.1f}"

            print(
                f"  {labels[key]:<32} {med('children')} / {med('dockerd')} / "
                f"{med('registry-public', 'registry-owned')} / {med('others')} / "
                f"{med('machine_steal')}"
            )
    print("copy time per image (sum of copy durations / copies):")
    for key in report["summaries"]:
        runs = [r for r in report["runs"] if r["contender"] == key and r.get("copies")]
        per = [r["copy_seconds"] / r["copies"] for r in runs]
        if per:
            print(f"  {labels[key]:<32} {measure.median(per):.2f}s")


# --- main -----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options; ``--smoke`` sets the tiny defaults."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--smoke", action="store_true", help="4 tiny images, 1 repetition")
    parser.add_argument("--images", type=int, help="images in the corpus (default 20; smoke 4)")
    parser.add_argument("--scale", type=float, help="layer size factor (default 1.0; smoke 1/128)")
    parser.add_argument("--reps", type=int, help="repetitions per contender (default 3; smoke 1)")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        help="cloneConcurrency values of the controller runs (default 2 4; smoke 2)",
    )
    parser.add_argument(
        "--loop-parallelism",
        type=int,
        nargs="+",
        help="thread pools of the plain skopeo loop (default 1 2 4; smoke 2)",
    )
    parser.add_argument(
        "--warm",
        nargs="*",
        choices=["docker", "skopeo"],
        help="backends of the warm cycle (default docker skopeo; smoke skopeo)",
    )
    parser.add_argument(
        "--only",
        choices=["docker", "skopeo"],
        help="only this backend's contenders: the docker backend and loop, or skopeo's",
    )
    parser.add_argument(
        "--storage-driver",
        default="vfs",
        help="dockerd's storage driver (default vfs, as the tests; overlay2 is the sidecar's)",
    )
    parser.add_argument(
        "--signed",
        action="store_true",
        help="sign every corpus image (cosign tags, referrers) and add the skopeo backend "
        "with signatures: off and copy as two contenders",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and configs")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.images = args.images or (4 if smoke else 20)
    args.scale = args.scale or (1 / 128 if smoke else 1.0)
    if args.reps is None:
        args.reps = 1 if smoke else 3
    args.concurrency = args.concurrency or ([2] if smoke else [2, 4])
    args.loop_parallelism = args.loop_parallelism or ([2] if smoke else [1, 2, 4])
    if args.warm is None:
        args.warm = ["skopeo"] if smoke else ["docker", "skopeo"]
    if args.images < 1 or args.reps < 1 or args.scale <= 0:
        parser.error("--images and --reps must be at least 1, --scale positive")
    if min(args.concurrency + args.loop_parallelism) < 1:
        parser.error("--concurrency and --loop-parallelism must be at least 1")
    return args


def main(argv: list[str]) -> int:
    """Run the benchmark; returns the exit status (0 all runs ok, 1 a run failed)."""
    args = parse_args(argv)
    kube_bin = ensure_components()
    workdir = Path(tempfile.mkdtemp(prefix="ic-bench-", dir="/tmp"))
    started = time.time()
    env = Environment.start(workdir, kube_bin=kube_bin, storage_driver=args.storage_driver)
    ok = False
    try:
        print(f"environment up in {time.time() - started:.1f}s ({workdir})", flush=True)
        kubeconfig = install_controller_rbac(env)
        built = time.time()
        corpus = build_corpus(env.public, corpus_spec(args.images, args.scale))
        print(f"corpus pushed in {time.time() - built:.1f}s", flush=True)
        signed = sign_corpus(env, corpus) if args.signed else None
        if signed is not None:
            print(
                f"corpus signed in {signed.seconds:.1f}s "
                f"({signed.figures()['artifacts']} artifact manifests)",
                flush=True,
            )
        bench = Bench(env, corpus, kubeconfig, workdir, signed)
        field = contenders(args.concurrency, args.loop_parallelism, args.only)
        if signed is not None:
            field += signed_contenders()
        runs: list[dict[str, Any]] = []
        for rep in range(args.reps):
            for contender in run_order(field, rep):
                figures = bench.run(contender, rep)
                runs.append(figures)
                print(
                    f"  round {rep + 1} {contender.label:<30} {figures['wall_s']:7.1f}s"
                    f"{'' if figures['ok'] else '  FAILED'}",
                    flush=True,
                )
        warm = [bench.warm(backend) for backend in args.warm]
        summaries = {c.key: summarize([r for r in runs if r["contender"] == c.key]) for c in field}
        report = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "options": {
                "images": args.images,
                "scale": args.scale,
                "reps": args.reps,
                "concurrency": args.concurrency,
                "loop_parallelism": args.loop_parallelism,
                "smoke": args.smoke,
                "storage_driver": args.storage_driver,
            },
            "machine": {"cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
            "corpus": {
                "figures": corpus.figures(),
                "images": [
                    {
                        "reference": i.reference,
                        "digest": i.digest,
                        "index": i.spec.is_index,
                        "group": i.spec.group,
                        "bytes": sum(i.blobs.values()),
                    }
                    for i in corpus.images
                ],
            },
            "contenders": {c.key: {"label": c.label, "kind": c.kind} for c in field},
            "summaries": summaries,
            "targets": targets(summaries, args.concurrency, os.cpu_count() or 0),
            "docker_targets": docker_targets(summaries, args.concurrency, os.cpu_count() or 0),
            "warm": warm,
            "runs": runs,
            "title": "copy benchmark: cold copies of the corpus into an empty owned registry",
            "timelines": timelines(runs, field),
        }
        if signed is not None:
            report["options"]["signed"] = True
            report["signed"] = signed_summary(runs, field, warm, signed.figures())
        print()
        print_report(report, {c.key: c.label for c in field})
        args.results_dir.mkdir(parents=True, exist_ok=True)
        out = args.results_dir / f"copy-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
        print(f"\nwrote {out}")
        if not args.no_plot:
            from bench.plot import plot_result

            print(f"plot: {plot_result(out)}")
        ok = all(r["ok"] for r in runs) and all(
            w[name]["ok"] for w in warm for name in ("seed", "warm", "no_state")
        )
        for failed in [r for r in runs if not r["ok"]][:3]:
            print(f"\nrun {failed['prefix']} failed:\n{failed.get('error', '')}", file=sys.stderr)
        return 0 if ok else 1
    finally:
        env.stop()
        if args.keep_workdir or not ok:
            print(f"work dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
