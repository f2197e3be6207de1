"""A real single-node Kubernetes cluster on loopback, for the e2e tests and ``make demo-cluster``.

On top of an :class:`~devenv.harness.Environment` started with
``node=True`` (etcd, kube-apiserver with Node,RBAC, dockerd, the "public" and
"owned" registries) this starts, each as a child process whose pid is kept:

- containerd (Debian's 1.6, CRI plugin) with its own config, root, state and
  grpc socket, ``restrict_oom_score_adj`` (no CAP_SYS_RESOURCE here) and a
  ``hosts.toml`` per loopback registry;
- kube-controller-manager and kube-scheduler (client certificates, 127.0.0.1);
- the kubelet (node name ``127.0.0.1``, cgroupfs under a cgroup root of its
  own, ports on 127.0.0.1, webhook authn/authz).

Network variant (a) of /work/shared/TESTBED.md: pods use ``hostNetwork``,
so no bridge, route or address is ever created; all traffic is to 127.0.0.1.
A pod that may not use the host network (a namespace enforcing the
``restricted`` Pod Security Standard) gets its own network namespace from
the ``ic-podnet`` CNI plugin (devenv/podnet.py, a daemon of this cluster):
it reaches the API server and the registries on 127.0.0.1 as usual, and the
kubelet probes it on a 127.0.10.N address, through relayed sockets only.

Images come from no public registry: the sandbox image is a static Go binary
(``hack/pause/pause.go``) imported with ``ctr``; the controller image is built
by ``make image`` from a Debian rootfs made by debootstrap
(``hack/base-image.sh``); a docker-in-docker stand-in (``hack/dind``) is built
the same way. Both go to a third loopback registry ("infra") whose storage is
kept in the cache (``~/.cache/image-cloner/cluster-registry``), tagged by a hash
of their inputs, so a warm machine builds nothing.

Teardown follows TESTBED's order: namespaces and pods, kubelet, ``ctr`` tasks,
containerd, shims started with ``-address`` of this containerd, the podnet
daemon and any pod network namespace it saw left behind, mounts left under
the work dir, then the control plane.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devenv import images
from devenv.harness import (
    HACK,
    LOOPBACK,
    REPO_ROOT,
    ComponentError,
    Environment,
    Process,
    Registry,
    _run,
    free_ports,
)
from devenv.workloads import workload

CACHE = Path(os.environ.get("IMAGE_CLONER_CACHE", Path.home() / ".cache" / "image-cloner"))
#: The sandbox image; fully qualified, a short name would resolve to docker.io.
PAUSE_IMAGE = "localhost/pause:3.10"
NODE_NAME = LOOPBACK
CONTROLLER_NAMESPACE = "image-cloner"
CGROUP_V1 = Path("/sys/fs/cgroup")
#: Pods with a network namespace of their own get 127.0.10.N (devenv/podnet.py).
POD_ADDRESS_PREFIX = "127.0.10"
PODNET = Path(__file__).with_name("podnet.py")
#: Files whose content decides the controller image (Dockerfile COPY lines).
CONTROLLER_INPUTS = ("Dockerfile", "requirements.txt", "controller.py", "cloner", "config")


def content_hash(root: Path, paths: tuple[str, ...], extra: str = "") -> str:
    """Return 12 hex digits of sha256 over the named files (recursively) and ``extra``.

    Used as image tags and cache keys: a change to any input gives a new tag.
    ``__pycache__`` and ``*.pyc`` are ignored.
    """
    digest = hashlib.sha256(extra.encode())
    for name in paths:
        path = root / name
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if not file.is_file() or "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            digest.update(str(file.relative_to(root)).encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pause_binary() -> Path:
    """Build ``hack/pause/pause.go`` statically (CGO_ENABLED=0) once per recipe; return it."""
    source = HACK / "pause" / "pause.go"
    key = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    out = CACHE / f"pause-{key}" / "pause"
    with _flock(CACHE / f"pause-{key}.lock"):
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, CGO_ENABLED="0")
            _run(
                ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(out), str(source)],
                env=env,
                cwd=str(source.parent),
            )
    return out


def base_image_tarball() -> Path:
    """Return the cached debootstrap rootfs tarball (``hack/base-image.sh`` builds it once)."""
    result = _run([str(HACK / "base-image.sh")])
    return Path(result.stdout.strip().splitlines()[-1])


def _kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> Path:
    """Write a kubeconfig that authenticates with a client certificate; return its path."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "e2e", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}
        ],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
        "current-context": "e2e",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


@dataclass
class ClusterImages:
    """References of the images the cluster runs, all in the infra registry."""

    controller: str
    dind: str


@dataclass
class Cluster:
    """One node (127.0.0.1) with containerd, kubelet, controller-manager and scheduler.

    Started with :meth:`start` on an Environment made with ``node=True``;
    :meth:`stop` tears down in TESTBED's order and is safe to call twice.
    The Environment itself is stopped by its owner after :meth:`stop`.
    """

    env: Environment
    root: Path
    run: Path
    infra: Registry
    cgroup_root: str
    images: ClusterImages | None = None
    _processes: dict[str, Process] = field(default_factory=dict, repr=False)
    _stopped: bool = field(default=False, repr=False)

    # --- lifecycle --------------------------------------------------------------

    @classmethod
    def start(cls, env: Environment) -> Cluster:
        """Start containerd, the control-plane controllers and the kubelet; wait for Node Ready.

        Also builds (or finds in the cache) and pushes the controller and
        dind images (:attr:`images`). Raises ComponentError when a component
        does not come up; everything started is stopped first.
        """
        if not env.node:
            raise ValueError("Cluster needs Environment.start(..., node=True)")
        root = env.workdir / "node"
        root.mkdir(exist_ok=True)
        run = Path(tempfile.mkdtemp(prefix="ic-n-", dir="/tmp"))  # short unix socket paths
        (infra_port,) = free_ports(1)
        infra_root = env.workdir / "infra"
        infra_root.mkdir(exist_ok=True)
        storage = CACHE / "cluster-registry" / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        (infra_root / "storage").symlink_to(storage)
        infra = Registry("infra", f"{LOOPBACK}:{infra_port}", None, None, root=infra_root)
        cluster = cls(env, root, run, infra, cgroup_root=f"/image-cloner-{run.name}")
        try:
            cluster._start_all()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start_all(self) -> None:
        started = time.monotonic()
        self.infra.start()
        self._make_cgroup_root()
        podnet = self._podnet_process()
        self._processes["podnet"] = podnet
        podnet.start()
        podnet.wait_until(self.podnet_control.exists, 30, "serving")
        containerd = self._containerd_process()
        self._processes["containerd"] = containerd
        containerd.start()
        containerd.wait_until(lambda: self.ctr("version").returncode == 0, 30, "answering")
        self._import_pause_image()
        server = self.env.apiserver_url
        ca = self.env.ca_file
        cm_cert, cm_key = self.env.client_cert("controller-manager")
        sched_cert, sched_key = self.env.client_cert("scheduler")
        cm_port, sched_port, kubelet_port, healthz_port = free_ports(4)
        pki = self.env.workdir / "pki"
        cm_kubeconfig = _kubeconfig(self.root / "cm.kubeconfig", server, ca, cm_cert, cm_key, "cm")
        sched_kubeconfig = _kubeconfig(
            self.root / "sched.kubeconfig", server, ca, sched_cert, sched_key, "scheduler"
        )
        cm = Process(
            "kube-controller-manager",
            [
                str(self.env.kube_bin / "kube-controller-manager"),
                f"--kubeconfig={cm_kubeconfig}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={cm_port}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={ca}",
                "--use-service-account-credentials",
                "--leader-elect=false",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle",
                "--v=1",
            ],
            self.env.workdir / "logs" / "kube-controller-manager.log",
        )
        scheduler = Process(
            "kube-scheduler",
            [
                str(self.env.kube_bin / "kube-scheduler"),
                f"--kubeconfig={sched_kubeconfig}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={sched_port}",
                "--leader-elect=false",
                "--v=1",
            ],
            self.env.workdir / "logs" / "kube-scheduler.log",
        )
        kubelet = self._kubelet_process(kubelet_port, healthz_port)
        self._processes.update(
            {"controller-manager": cm, "scheduler": scheduler, "kubelet": kubelet}
        )
        cm.start()
        scheduler.start()
        kubelet.start()
        kubelet.wait_until(self._node_ready, 90, "Node Ready")
        print(f"cluster: node Ready {time.monotonic() - started:.1f}s after start")
        self.images = self.ensure_images()
        print(f"cluster: images ready {time.monotonic() - started:.1f}s after start")

    def stop(self) -> None:
        """Tear down in TESTBED's order; only what this cluster started, by pid. Safe twice."""
        if self._stopped:
            return
        self._stopped = True
        errors: list[str] = []

        def attempt(what: str, action: Any) -> None:
            try:
                action()
            except Exception as exc:  # keep tearing down
                errors.append(f"{what}: {exc!r}")

        if self._processes.get("kubelet") is not None and self._processes["kubelet"].running:
            attempt("delete namespaces", self._delete_workload_namespaces)
        for name in ("kubelet", "controller-manager", "scheduler"):
            if name in self._processes:
                attempt(f"stop {name}", self._processes[name].stop)
        if "containerd" in self._processes and self._processes["containerd"].running:
            attempt("ctr tasks", self._kill_tasks)
        if "containerd" in self._processes:
            attempt("stop containerd", self._processes["containerd"].stop)
        attempt("stop shims", self._stop_shims)
        if "podnet" in self._processes:
            attempt("stop podnet", self._processes["podnet"].stop)
        attempt("pod network namespaces", self._remove_pod_netns)
        attempt("unmount", self._unmount_all)
        attempt("cgroups", self._remove_cgroup_root)
        attempt("stop infra registry", self.infra.stop)
        shutil.rmtree(self.run, ignore_errors=True)
        if errors:
            raise ComponentError("errors while stopping the cluster: " + "; ".join(errors))

    # --- containerd -------------------------------------------------------------

    @property
    def containerd_socket(self) -> Path:
        """containerd's grpc socket (also the CRI endpoint of the kubelet)."""
        return self.run / "containerd.sock"

    def ctr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``ctr --address SOCK -n k8s.io ARGS`` (the CRI namespace); no check."""
        return subprocess.run(
            ["ctr", f"--address={self.containerd_socket}", "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    # --- pod network (devenv/podnet.py) ------------------------------------

    @property
    def podnet_control(self) -> Path:
        """The unix socket of the pod-network daemon (the ``ic-podnet`` CNI plugin's peer)."""
        return self.run / "podnet.sock"

    @property
    def _podnet_state(self) -> Path:
        return self.root / "podnet-netns.txt"

    def _podnet_process(self) -> Process:
        """The pod-network daemon: pods without hostNetwork reach 127.0.0.1 (podnet.py).

        Outbound ports: the API server and the public and owned registries.
        """
        api_port = int(self.env.apiserver_url.rsplit(":", 1)[1])
        ports = [api_port] + [
            int(r.host.rsplit(":", 1)[1]) for r in (self.env.public, self.env.owned)
        ]
        config = self.root / "podnet.json"
        config.write_text(
            json.dumps(
                {
                    "control": str(self.podnet_control),
                    "out_ports": ports,
                    "prefix": POD_ADDRESS_PREFIX,
                    "kubectl": [str(self.env.kubectl), f"--kubeconfig={self.env.kubeconfig}"],
                    "state": str(self._podnet_state),
                }
            )
        )
        return Process(
            "podnet",
            [sys.executable, str(PODNET), "serve", str(config)],
            self.env.workdir / "logs" / "podnet.log",
        )

    def _remove_pod_netns(self) -> None:
        """Unmount and remove the pod network namespaces this containerd left (podnet saw them).

        containerd removes a sandbox's ``/var/run/netns/cni-*`` when the
        sandbox stops; this only catches what a failed teardown left.
        """
        if not self._podnet_state.exists():
            return
        mounted = {
            line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
        }
        for path in set(self._podnet_state.read_text().split()):
            if path in mounted:
                subprocess.run(["umount", path], capture_output=True, check=False)
            with contextlib.suppress(OSError):
                Path(path).unlink()

    def _containerd_process(self) -> Process:
        cni = self.root / "cni"
        cni.mkdir(exist_ok=True)
        # hostNetwork pods (variant a) use no CNI plugin at all; pods with a
        # network namespace of their own get the ic-podnet plugin (podnet.py),
        # which adds no bridge, route or address anywhere. containerd adds
        # its built-in loopback network (the loopback plugin) to every sandbox.
        (cni / "10-ic-podnet.conflist").write_text(
            json.dumps(
                {"cniVersion": "0.4.0", "name": "ic-podnet", "plugins": [{"type": "ic-podnet"}]}
            )
        )
        cni_bin = self.root / "cni-bin"
        cni_bin.mkdir(exist_ok=True)
        (cni_bin / "loopback").symlink_to("/usr/lib/cni/loopback")
        plugin = cni_bin / "ic-podnet"
        plugin.write_text(
            f"#!/bin/sh\nexec {sys.executable} {PODNET} plugin {self.podnet_control}\n"
        )
        plugin.chmod(0o755)
        certs = self.certs_dir
        for registry in (self.env.public, self.env.owned, self.infra):
            self.add_registry_host(registry.host)
        root = self.root / "containerd"
        config = self.root / "containerd.toml"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config.write_text(
            f"""version = 2
root = "{root}"
state = "{self.run / "ctd"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.run / "containerd.sock.ttrpc"}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.root / "opt"}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "{LOOPBACK}"
  stream_server_port = "0"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{self.run / "runc"}"
  [{cri}.cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni}"
  [{cri}.registry]
    config_path = "{certs}"
"""
        )
        return Process(
            "containerd",
            ["containerd", f"--config={config}"],
            self.env.workdir / "logs" / "containerd.log",
            stop_timeout=20,
        )

    @property
    def certs_dir(self) -> Path:
        """containerd's ``config_path``: a ``HOST/hosts.toml`` per registry host."""
        return self.root / "certs.d"

    def add_registry_host(self, host: str) -> None:
        """Let containerd pull from ``host`` (``127.0.0.1:PORT``) over plain HTTP.

        Writes ``certs.d/HOST/hosts.toml``; containerd reads that directory at
        every pull, so a host added while the cluster runs (a test's proxy in
        front of a registry) is used from the next pull on.
        """
        host_dir = self.certs_dir / host
        host_dir.mkdir(parents=True, exist_ok=True)
        url = f"http://{host}"
        (host_dir / "hosts.toml").write_text(
            f'server = "{url}"\n[host."{url}"]\n  capabilities = ["pull", "resolve"]\n'
        )

    def _import_pause_image(self) -> None:
        """Build ``localhost/pause:3.10`` from the static binary and import it with ctr."""
        binary = pause_binary()
        with tempfile.TemporaryDirectory(prefix="ic-pause-", dir=self.env.workdir) as context:
            shutil.copy(binary, Path(context, "pause"))
            Path(context, "Dockerfile").write_text(
                'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n'
            )
            archive = Path(context, "pause.tar")
            with contextlib.closing(self.env.docker_client()) as client:
                client.images.build(path=context, tag=PAUSE_IMAGE, rm=True)
                with archive.open("wb") as handle:
                    for chunk in client.images.get(PAUSE_IMAGE).save(named=True):
                        handle.write(chunk)
            result = self.ctr("images", "import", str(archive))
            if result.returncode != 0:
                raise ComponentError(f"ctr images import: {result.stdout}{result.stderr}")

    def _kill_tasks(self) -> None:
        """SIGKILL and delete every task and container left in containerd's k8s.io namespace."""
        tasks = self.ctr("tasks", "ls", "-q").stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, timeout=20)
        for task in tasks:
            for _ in range(20):
                if self.ctr("tasks", "delete", "-f", task, timeout=20).returncode == 0:
                    break
                time.sleep(0.25)
        for container in self.ctr("containers", "ls", "-q").stdout.split():
            self.ctr("containers", "rm", container, timeout=20)

    def _stop_shims(self) -> None:
        """SIGKILL containerd-shim processes started with ``-address`` of this containerd."""
        address = str(self.containerd_socket)
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            args = [a.decode("utf-8", "replace") for a in argv]
            if not args or "containerd-shim" not in Path(args[0]).name:
                continue
            if "-address" in args and args[args.index("-address") + 1] == address:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)

    def _unmount_all(self) -> None:
        """Unmount every mount point under the work dir and the socket dir, deepest first."""
        prefixes = (str(self.env.workdir) + "/", str(self.run) + "/")
        for _ in range(3):
            points = []
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(prefixes):
                    points.append(point)
            if not points:
                return
            for point in sorted(points, key=len, reverse=True):
                if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
                    subprocess.run(["umount", "-l", point], capture_output=True, check=False)

    # --- cgroups ----------------------------------------------------------------

    def _cgroup_dirs(self) -> list[Path]:
        """The cgroup root's directory in every cgroup v1 hierarchy (or the v2 one)."""
        name = self.cgroup_root.lstrip("/")
        if (CGROUP_V1 / "cgroup.controllers").exists():  # cgroup v2
            return [CGROUP_V1 / name]
        return [
            hierarchy / name
            for hierarchy in sorted(CGROUP_V1.iterdir())
            if hierarchy.is_dir() and hierarchy.name != "unified" and (hierarchy / "tasks").exists()
        ]

    def _make_cgroup_root(self) -> None:
        """Create the kubelet's own cgroup root, so it never touches another kubelet's pods."""
        for directory in self._cgroup_dirs():
            directory.mkdir(exist_ok=True)

    def _remove_cgroup_root(self) -> None:
        """Remove the cgroup root and everything the kubelet and runc made below it."""
        for directory in self._cgroup_dirs():
            if not directory.exists():
                continue
            for sub in sorted(
                (d for d in directory.rglob("*") if d.is_dir()),
                key=lambda d: len(d.parts),
                reverse=True,
            ):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                directory.rmdir()

    # --- kubelet ----------------------------------------------------------------

    def _kubelet_process(self, port: int, healthz_port: int) -> Process:
        cert, key = self.env.client_cert("kubelet")
        kubeconfig = _kubeconfig(
            self.root / "kubelet.kubeconfig",
            self.env.apiserver_url,
            self.env.ca_file,
            cert,
            key,
            "kubelet",
        )
        (self.root / "pod-logs").mkdir(exist_ok=True)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": LOOPBACK,
            "port": port,
            "healthzBindAddress": LOOPBACK,
            "healthzPort": healthz_port,
            "readOnlyPort": 0,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "failSwapOn": False,
            "failCgroupV1": False,
            "makeIPTablesUtilChains": False,
            "podLogsDir": str(self.root / "pod-logs"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.env.ca_file)},
            },
            "authorization": {"mode": "Webhook"},
            "serializeImagePulls": False,
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "resolvConf": "/etc/resolv.conf",
        }
        path = self.root / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return Process(
            "kubelet",
            [
                str(self.env.kube_bin / "kubelet"),
                f"--config={path}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.root / 'kubelet'}",
                f"--cert-dir={self.root / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                "--v=1",
            ],
            self.env.workdir / "logs" / "kubelet.log",
            stop_timeout=20,
        )

    def _node_ready(self) -> bool:
        result = self.env.run_kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if result.returncode != 0:
            return False
        conditions = json.loads(result.stdout)["status"].get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    # --- images -----------------------------------------------------------------

    def _docker_env(self) -> dict[str, str]:
        env = self.env.kubectl_env()
        env["DOCKER_BUILDKIT"] = "0"
        return env

    def _docker(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["docker", *args],
            capture_output=True,
            text=True,
            env=self._docker_env(),
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise ComponentError(
                f"docker {args[0]} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result

    def _base_image(self) -> str:
        """Import the debootstrap tarball into the harness's dockerd; return its name."""
        tarball = base_image_tarball()
        name = f"image-cloner-base:{tarball.stem.rsplit('-', 1)[-1]}"
        self._docker(
            "import",
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
            str(tarball),
            name,
        )
        return name

    def ensure_images(self) -> ClusterImages:
        """Build and push the controller and dind images unless the infra registry has them.

        The controller image is built by ``make image`` (the path a user takes)
        with BASE_IMAGE set to the offline base; tags are content hashes of
        the inputs plus the base tarball's name. Returns their references.
        """
        base_tarball = base_image_tarball()
        controller_tag = content_hash(REPO_ROOT, CONTROLLER_INPUTS, extra=base_tarball.name)
        dind_tag = content_hash(HACK, ("dind",), extra=base_tarball.name)
        controller = f"{self.infra.host}/image-cloner:{controller_tag}"
        dind = f"{self.infra.host}/dind:{dind_tag}"
        with _flock(CACHE / "cluster-registry.lock"):
            missing = [
                ref
                for ref, repo, tag in (
                    (controller, "image-cloner", controller_tag),
                    (dind, "dind", dind_tag),
                )
                if self.infra.manifest_digest(repo, tag) is None
            ]
            if missing:
                base = self._base_image()
                if controller in missing:
                    started = time.monotonic()
                    result = subprocess.run(
                        [
                            "make",
                            "--no-print-directory",
                            "image",
                            f"IMAGE={controller}",
                            f"BASE_IMAGE={base}",
                            "DOCKER_BUILD_FLAGS=--network=host",
                        ],
                        cwd=REPO_ROOT,
                        capture_output=True,
                        text=True,
                        env=self._docker_env(),
                        timeout=1200,
                        check=False,
                    )
                    if result.returncode != 0:
                        raise ComponentError(
                            f"make image failed:\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
                        )
                    print(f"cluster: make image {time.monotonic() - started:.0f}s")
                    self._docker("push", controller)
                if dind in missing:
                    started = time.monotonic()
                    self._docker(
                        "build",
                        "--network=host",
                        f"--build-arg=BASE_IMAGE={base}",
                        "-t",
                        dind,
                        str(HACK / "dind"),
                    )
                    print(f"cluster: dind image {time.monotonic() - started:.0f}s")
                    self._docker("push", dind)
        return ClusterImages(controller=controller, dind=dind)

    def build_runnable_image(self, reference: str, seed: str) -> str:
        """Build a small image that runs (``/pause`` as entrypoint), push it, return its digest.

        Two layers: the static pause binary (shared by every such image) and
        a file with ``seed``, so different seeds give different digests.
        ``reference`` is ``HOST:PORT/repo:tag`` on the public registry; the
        container waits for SIGTERM, or with args ``["exit"]`` exits 0.
        """
        repository, tag = reference.rsplit(":", 1)
        with tempfile.TemporaryDirectory(prefix="ic-app-", dir=self.env.workdir) as context:
            shutil.copy(pause_binary(), Path(context, "pause"))
            Path(context, "seed.txt").write_text(f"image-cloner cluster e2e seed={seed}\n")
            Path(context, "Dockerfile").write_text(
                'FROM scratch\nCOPY pause /pause\nCOPY seed.txt /seed.txt\nENTRYPOINT ["/pause"]\n'
            )
            with contextlib.closing(self.env.docker_client()) as client:
                client.images.build(path=context, tag=reference, rm=True)
                for line in client.images.push(repository, tag=tag, stream=True, decode=True):
                    if "error" in line or "errorDetail" in line:
                        raise ComponentError(f"push of {reference} failed: {line}")
        path = repository.split("/", 1)[1]
        digest = self.env.public.manifest_digest(path, tag)
        if digest is None:
            raise ComponentError(f"{reference} pushed but the public registry has no manifest")
        return digest

    def build_runnable_index(
        self,
        reference: str,
        seed: str,
        platforms: tuple[images.Platform, ...] = (("linux", "amd64"), ("linux", "arm64")),
    ) -> images.Index:
        """Push a multi-platform OCI image index whose children run ``/pause``; return it.

        Built through the registry API like :func:`devenv.images.build_index`
        (children by digest, then the index under the tag), but every child
        has the static pause binary as its base layer (shared blob) plus a
        layer of its own, so the node's child (amd64) can run. The configs
        set no entrypoint: pods give ``command: ["/pause"]``. The binary is
        amd64 in every child; the arm64 child is only ever copied.
        ``reference`` is ``HOST:PORT/repo:tag`` on the public registry.
        Raises images.ImageBuildError when the registry refuses a push.
        """
        repository, tag = reference.split("/", 1)[1].rsplit(":", 1)
        base = _pause_layer()
        children: dict[str, images.Image] = {}
        descriptors = []
        for platform in platforms:
            key = images.platform_key(platform)
            child = images.build_image(
                self.env.public,
                repository,
                None,
                platform=platform,
                layers=[base, images.layer(f"{seed}/{key}")],
                label=f"seed={seed} {key}",
            )
            children[key] = child
            descriptors.append(
                {
                    "mediaType": child.media_type,
                    "digest": child.digest,
                    "size": child.size,
                    "platform": {"architecture": platform[1], "os": platform[0]},
                }
            )
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": images.OCI_INDEX, "manifests": descriptors},
            indent=3,
        ).encode()
        digest = images.push_manifest(self.env.public, repository, tag, body, images.OCI_INDEX)
        return images.Index(repository, tag, digest, images.OCI_INDEX, children)

    # --- workloads --------------------------------------------------------------

    def wait_namespace_ready(self, namespace: str, timeout: float = 60) -> None:
        """Wait for the ``default`` ServiceAccount and ``kube-root-ca.crt`` in ``namespace``.

        Pods created before both exist are refused by admission or cannot
        mount their token. Raises ComponentError on timeout.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sa = self.env.run_kubectl(
                "-n", namespace, "get", "serviceaccount", "default", check=False
            )
            cm = self.env.run_kubectl(
                "-n", namespace, "get", "configmap", "kube-root-ca.crt", check=False
            )
            if sa.returncode == 0 and cm.returncode == 0:
                return
            time.sleep(0.5)
        raise ComponentError(f"namespace {namespace}: no default ServiceAccount/kube-root-ca.crt")

    def _delete_workload_namespaces(self) -> None:
        """Delete every namespace but the system ones, and the pods in them; wait briefly."""
        result = self.env.run_kubectl("get", "namespaces", "-o", "name", check=False)
        keep = {
            "namespace/default",
            "namespace/kube-system",
            "namespace/kube-public",
            "namespace/kube-node-lease",
        }
        names = [n for n in result.stdout.split() if n not in keep]
        if names:
            self.env.run_kubectl("delete", *names, "--wait=false", check=False)
        self.env.run_kubectl(
            "delete",
            "pods",
            "--all",
            "--all-namespaces",
            "--grace-period=1",
            "--wait=true",
            "--timeout=30s",
            check=False,
        )


def host_workload(
    kind: str, namespace: str, name: str, main: str, init: str | None = None, **fields: Any
) -> dict[str, Any]:
    """A workload of ``kind`` whose pods this cluster runs on the host network, labelled app=NAME.

    Container ``main`` runs ``main`` and waits; with ``init``, an init
    container of that image exits at once (the images of
    :meth:`Cluster.build_runnable_image`). ``fields`` go to
    :func:`devenv.workloads.workload`: ``spec`` (``replicas``, a strategy...),
    ``pod`` (``serviceAccountName``...).
    """
    pod = {"hostNetwork": True, "terminationGracePeriodSeconds": 2, **fields.pop("pod", {})}
    pull = {"imagePullPolicy": "IfNotPresent"}
    return workload(
        kind,
        name,
        [{"name": "main", "image": main, **pull}],
        init=None if init is None else [{"name": "init", "image": init, "args": ["exit"], **pull}],
        namespace=namespace,
        labels={"app": name},
        pod=pod,
        **fields,
    )


@dataclass
class Deployment:
    """The controller as deployed by ``make deploy`` from an overlay of the shipped manifests."""

    overlay: Path
    image: str
    metrics_port: int
    target: str


def write_overlay(
    cluster: Cluster,
    directory: Path,
    *,
    replicas: int = 1,
    poll_interval: int = 5,
    skopeo: bool = False,
    config: dict[str, Any] | None = None,
    owned_host: str | None = None,
    push_account: tuple[str, str] | None = None,
    pull_account: tuple[str, str] | None = None,
) -> Deployment:
    """Write a kustomize overlay of ``manifests/`` for this cluster; return what it deploys.

    It changes only what a user changes plus the host-network settings of
    variant (a): the dind image name, ``target``, the owned registry's
    credentials, ``insecureRegistries`` (both loopback registries speak plain
    HTTP), ``pollInterval`` (seconds; short so the tests do not wait a
    minute), ``replicas``; and ``hostNetwork``, the metrics address/port
    (127.0.0.1, a free port, probes on 127.0.0.1), the API server's real
    address (no kube-proxy) and dind's ``--bridge=none --iptables=false``
    (no docker0, no rules on the node). The controller image is left to
    ``make deploy IMAGE=...``. Credentials go only into the overlay files
    (mode 0600), never onto a command line.

    With ``skopeo=True`` the overlay is of ``manifests/skopeo/`` (no dind
    container, a namespace that enforces the ``restricted`` Pod Security
    Standard). That standard refuses ``hostNetwork`` and probe ``host``
    fields, so the pod keeps its own network namespace and reaches
    127.0.0.1 through the cluster's pod network (devenv/podnet.py): of
    the host-network settings only the metrics address/port and the API
    server's address remain.

    ``config`` holds further settings for the controller's ``config.yaml``,
    merged key by key into the shipped file after the settings above (a
    nested mapping such as ``{"pullSecret": {"provision": False}}`` changes
    only the keys it names).

    ``owned_host`` is where the owned registry is reached, when not at its
    own address (a proxy in front of it): the ``target`` host, the key of the
    credentials and one more of ``insecureRegistries``. ``push_account``
    (user, password) is the account of ``docker-configuration``, the owned
    registry's own user by default. With ``pull_account`` the overlay adds
    the component ``manifests/read-only-pull/``, its ConfigMap
    ``docker-pull-configuration`` holding that account (``pullSecret.dockerConfig``).
    """
    if cluster.images is None:
        raise ComponentError("cluster images not built")
    env = cluster.env
    directory.mkdir(parents=True, exist_ok=True)
    shipped = REPO_ROOT / "manifests" / "base" / "configmap-config.yaml"
    settings = yaml.safe_load(yaml.safe_load(shipped.read_text())["data"]["config.yaml"])
    (metrics_port,) = free_ports(1)
    owned_host = owned_host or env.owned.host
    target = f"{owned_host}/mirror"
    insecure = [env.public.host, env.owned.host]
    settings.update(
        target=target,
        insecureRegistries=insecure + ([owned_host] if owned_host not in insecure else []),
        metricsAddress=LOOPBACK,
        metricsPort=metrics_port,
        pollInterval=poll_interval,
    )
    if config:
        _merge_settings(settings, config)
    assert env.owned.username is not None and env.owned.password is not None
    docker_config = _docker_config(
        owned_host, *(push_account or (env.owned.username, env.owned.password))
    )
    api_port = env.apiserver_url.rsplit(":", 1)[1]
    controller, dind = "/spec/template/spec/containers/0", "/spec/template/spec/containers/1"
    host_network: list[dict[str, Any]] = [
        {"op": "add", "path": "/spec/template/spec/hostNetwork", "value": True},
        {"op": "add", "path": "/spec/template/spec/dnsPolicy", "value": "ClusterFirstWithHostNet"},
        {"op": "add", "path": f"{controller}/readinessProbe/httpGet/host", "value": LOOPBACK},
        {"op": "add", "path": f"{controller}/livenessProbe/httpGet/host", "value": LOOPBACK},
    ]
    deployment_ops: list[dict[str, Any]] = [
        {"op": "replace", "path": "/spec/replicas", "value": replicas},
        *([] if skopeo else host_network),
        {"op": "replace", "path": f"{controller}/ports/0/containerPort", "value": metrics_port},
        {
            "op": "add",
            "path": f"{controller}/env/-",
            "value": {"name": "KUBERNETES_SERVICE_HOST", "value": LOOPBACK},
        },
        {
            "op": "add",
            "path": f"{controller}/env/-",
            "value": {"name": "KUBERNETES_SERVICE_PORT", "value": api_port},
        },
    ]
    if not skopeo:
        deployment_ops += [
            {"op": "add", "path": f"{dind}/args/-", "value": flag}
            for flag in (
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
            )
        ]
    dind_name, dind_tag = cluster.images.dind.rsplit(":", 1)
    base = REPO_ROOT / "manifests" / ("skopeo" if skopeo else "")
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(base, directory)],
        "images": [] if skopeo else [{"name": "docker", "newName": dind_name, "newTag": dind_tag}],
        "patches": [
            {
                "target": {"kind": "ConfigMap", "name": "image-cloner-config"},
                "patch": yaml.safe_dump(
                    [
                        {
                            "op": "replace",
                            "path": "/data/config.yaml",
                            "value": yaml.safe_dump(settings, sort_keys=False),
                        }
                    ]
                ),
            },
            {"path": "docker-configuration.yaml"},
            {
                "target": {"kind": "Deployment", "name": "image-cloner"},
                "patch": yaml.safe_dump(deployment_ops),
            },
        ],
    }
    (directory / "docker-configuration.yaml").write_text(
        _config_map("docker-configuration", docker_config)
    )
    if pull_account is not None:
        component = REPO_ROOT / "manifests" / "read-only-pull"
        kustomization["components"] = [os.path.relpath(component, directory)]
        kustomization["patches"].append({"path": "docker-pull-configuration.yaml"})
        (directory / "docker-pull-configuration.yaml").write_text(
            _config_map("docker-pull-configuration", _docker_config(owned_host, *pull_account))
        )
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    for path in directory.iterdir():
        path.chmod(0o600)
    return Deployment(directory, cluster.images.controller, metrics_port, target)


def _merge_settings(settings: dict[str, Any], changes: dict[str, Any]) -> None:
    """Merge ``changes`` into ``settings`` in place; nested mappings key by key."""
    for key, value in changes.items():
        current = settings.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            _merge_settings(current, value)
        else:
            settings[key] = value


def _pause_layer() -> bytes:
    """A deterministic gzip'd tar layer holding the static pause binary as ``/pause`` (0755)."""
    return images.file_layer("pause", pause_binary().read_bytes(), mode=0o755)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _docker_config(host: str, user: str, password: str) -> str:
    """A docker config.json with one ``auths`` entry, for ``host``."""
    return json.dumps({"auths": {host: {"auth": _b64(f"{user}:{password}")}}}, indent=2)


def _config_map(name: str, config_json: str) -> str:
    """The YAML of a ConfigMap ``name`` in the controller's namespace holding ``config.json``."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": CONTROLLER_NAMESPACE},
            "data": {"config.json": config_json},
        }
    )


def make(cluster: Cluster, target: str, deployment: Deployment) -> subprocess.CompletedProcess[str]:
    """Run ``make deploy`` / ``make undeploy`` with the overlay, IMAGE and the admin kubeconfig.

    Returns the completed process (not checked: callers assert on it).
    """
    env = cluster.env
    kubectl = (
        f"{env.kubectl} --kubeconfig={env.kubeconfig} --cache-dir={env.workdir / 'kubectl-cache'}"
    )
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            target,
            f"DEPLOY_DIR={deployment.overlay}",
            f"IMAGE={deployment.image}",
            f"KUBECTL={kubectl}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
