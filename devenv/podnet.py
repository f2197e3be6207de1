"""Pod networking without hostNetwork and without touching the machine's network namespace.

The single-node test cluster (devenv/cluster.py) runs every pod on the
host network (TESTBED variant a). A namespace that enforces the
``restricted`` (or ``baseline``) Pod Security Standard refuses that:
``spec.hostNetwork`` must be unset, and since Kubernetes 1.34 so must the
``host`` of an httpGet probe (pod-security-admission ``hostNamespaces`` and
``hostProbesAndHostLifecycle`` checks). Such a pod needs a network namespace
of its own, yet everything it talks to (API server, registries) listens on
the machine's 127.0.0.1, and the kubelet probes it from the machine.

This module connects the two without any bridge, veth, route, address or
iptables rule, in either namespace. It is a CNI plugin (type ``ic-podnet``,
CNI spec 0.4.0) backed by one daemon the harness starts (and stops, by pid):

- on ADD, in the pod's network namespace (created by containerd), the daemon
  opens listening sockets on 127.0.0.1 for each *outbound* port it was given
  (the API server's and the registries'); a connection to one is relayed to
  the same port on the machine's 127.0.0.1. So a pod reaches
  ``127.0.0.1:PORT`` exactly as a hostNetwork pod does;
- it gives the pod an address of the machine's own loopback range
  (127.0.10.N, local on every Linux host, nothing is added) and listens on
  that address, in the machine's namespace, on every TCP ``containerPort``
  of the pod; a connection is relayed to the same port on 127.0.0.1 inside
  the pod. So the kubelet's probes of ``podIP:port`` reach the container;
- on DEL it closes all of the pod's sockets.

A socket belongs to the network namespace its creating thread was in
(``setns(2)`` with CLONE_NEWNET, then back), which is what lets one process
listen in the pod and connect in the machine. The reported interface
``eth0`` is not created: the CRI plugin only reads the result's address.
Limits: TCP only; a pod address in 127/8 is refused by the Endpoints API
(the endpoints controller logs it), so Services do not route to such pods.

Run as ``python podnet.py serve CONFIG.json`` (the daemon) or
``python podnet.py plugin CONTROL.sock`` (the plugin, executed by containerd
with the CNI_* environment and the network config on stdin). Standard
library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CNI_VERSION = "0.4.0"
SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0"]
CLONE_NEWNET = 0x40000000  # <sched.h>
LOOPBACK = "127.0.0.1"
_CHUNK = 65536  # bytes per relay read

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd`` (setns(2)).

    Raises:
        OSError: the kernel refused (errno from setns).
    """
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


@contextlib.contextmanager
def in_netns(fd: int, home: int) -> Iterator[None]:
    """Run the block in the namespace at ``fd``, then return to the one at ``home``."""
    setns(fd)
    try:
        yield
    finally:
        setns(home)


def parse_cni_args(text: str) -> dict[str, str]:
    """``CNI_ARGS`` (``K=V;K=V``, CNI spec "Parameters") as a dict."""
    pairs = (item.split("=", 1) for item in text.split(";") if "=" in item)
    return {key: value for key, value in pairs}


def container_ports(pod: dict[str, Any]) -> list[int]:
    """The distinct TCP ``containerPort`` numbers of a pod's containers, sorted.

    Args:
        pod: a Pod object as the API returns it.

    Returns:
        Port numbers; ``protocol`` defaults to TCP (Kubernetes API convention).
    """
    ports = set()
    spec = pod.get("spec") or {}
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        for port in container.get("ports") or []:
            if port.get("protocol", "TCP") == "TCP":
                ports.add(int(port["containerPort"]))
    return sorted(ports)


def cni_result(ip: str, ifname: str, netns: str) -> dict[str, Any]:
    """The ADD result (CNI 0.4.0 "Result"): one interface in the sandbox, one IPv4 address."""
    return {
        "cniVersion": CNI_VERSION,
        "interfaces": [{"name": ifname, "sandbox": netns}],
        "ips": [{"version": "4", "address": f"{ip}/32", "interface": 0}],
        "dns": {},
    }


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _relay(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    try:
        await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))
    finally:
        for writer in (a[1], b[1]):
            writer.close()


@contextlib.contextmanager
def _tracked(pod: _Pod) -> Iterator[None]:
    """Register the running relay task with its pod; a cancel (DEL, shutdown) ends it quietly."""
    task = asyncio.current_task()
    assert task is not None
    pod.relays.add(task)
    try:
        yield
    except asyncio.CancelledError:
        pass
    finally:
        pod.relays.discard(task)


@dataclass
class _Pod:
    ip: str
    netns: str
    fd: int
    servers: list[asyncio.base_events.Server] = field(default_factory=list)
    relays: set[asyncio.Task[None]] = field(default_factory=set)


class PodNetwork:
    """The daemon's state: one entry per sandbox (CNI_CONTAINERID).

    Args:
        out_ports: ports on the machine's 127.0.0.1 that pods may reach.
        prefix: the first three octets of pod addresses, e.g. ``127.0.10``.
        kubectl: argv prefix of an admin kubectl, to read a pod's ports.
        state: file the daemon appends every netns path it saw to (teardown).
    """

    def __init__(self, out_ports: list[int], prefix: str, kubectl: list[str], state: Path) -> None:
        """Open the daemon's own namespace; nothing else happens until :meth:`add`."""
        self.out_ports = out_ports
        self.prefix = prefix
        self.kubectl = kubectl
        self.state = state
        self.home = os.open("/proc/self/ns/net", os.O_RDONLY)
        self.pods: dict[str, _Pod] = {}

    def _free_ip(self) -> str:
        used = {p.ip for p in self.pods.values()}
        for last in range(2, 255):
            ip = f"{self.prefix}.{last}"
            if ip not in used:
                return ip
        raise RuntimeError("no free pod address")

    async def _pod_ports(self, args: dict[str, str]) -> list[int]:
        namespace, name = args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")
        if not namespace or not name:
            return []
        process = await asyncio.create_subprocess_exec(
            *self.kubectl,
            "-n",
            namespace,
            "get",
            "pod",
            name,
            "-o",
            "json",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"kubectl get pod {namespace}/{name}: {err.decode()[-300:]}")
        return container_ports(json.loads(out))

    def _listen_in(self, pod: _Pod, host: str, port: int) -> socket.socket:
        with in_netns(pod.fd, self.home):
            sock = socket.create_server((host, port), backlog=128)
        sock.setblocking(False)
        return sock

    async def add(self, container_id: str, netns: str, ifname: str, args: dict[str, str]) -> dict:
        """Set up a sandbox: outbound listeners in it, inbound ones on its address.

        Returns:
            The CNI result. Idempotent for a container id already added.

        Raises:
            OSError: a port is taken or the namespace cannot be entered.
            RuntimeError: kubectl failed or no address is left.
        """
        if container_id in self.pods:
            existing = self.pods[container_id]
            return cni_result(existing.ip, ifname, existing.netns)
        ports = await self._pod_ports(args)
        with self.state.open("a") as handle:
            handle.write(netns + "\n")
        subprocess.run(
            ["nsenter", f"--net={netns}", "ip", "link", "set", "lo", "up"],
            check=True,
            capture_output=True,
            timeout=10,
        )
        pod = _Pod(self._free_ip(), netns, os.open(netns, os.O_RDONLY))
        self.pods[container_id] = pod
        try:
            for port in self.out_ports:
                sock = self._listen_in(pod, LOOPBACK, port)
                pod.servers.append(
                    await asyncio.start_server(self._outbound(pod, port), sock=sock, limit=_CHUNK)
                )
            for port in ports:
                sock = socket.create_server((pod.ip, port), backlog=128)
                sock.setblocking(False)
                pod.servers.append(
                    await asyncio.start_server(self._inbound(pod, port), sock=sock, limit=_CHUNK)
                )
        except BaseException:
            self.delete(container_id)
            raise
        return cni_result(pod.ip, ifname, netns)

    def delete(self, container_id: str) -> None:
        """Close every socket of a sandbox (CNI DEL; unknown ids are fine)."""
        pod = self.pods.pop(container_id, None)
        if pod is None:
            return
        for server in pod.servers:
            server.close()
        for task in pod.relays:
            task.cancel()
        os.close(pod.fd)

    def _outbound(self, pod: _Pod, port: int) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with _tracked(pod):
                try:
                    upstream = await asyncio.open_connection(LOOPBACK, port, limit=_CHUNK)
                except OSError:
                    writer.close()
                    return
                await _relay((reader, writer), upstream)

        return handle

    def _inbound(self, pod: _Pod, port: int) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with _tracked(pod):
                loop = asyncio.get_running_loop()
                with in_netns(pod.fd, self.home):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, (LOOPBACK, port))
                    upstream = await asyncio.open_connection(sock=sock, limit=_CHUNK)
                except OSError:
                    sock.close()
                    writer.close()
                    return
                await _relay((reader, writer), upstream)

        return handle

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer one plugin request (a JSON object) with ``{"ok", "result"|"error"}``."""
        request: dict[str, Any] = {}
        try:
            request = json.loads(await reader.read())
            command = request["command"]
            if command == "ADD":
                result = await self.add(
                    request["container_id"],
                    request["netns"],
                    request.get("ifname") or "eth0",
                    parse_cni_args(request.get("args", "")),
                )
                answer: dict[str, Any] = {"ok": True, "result": result}
            elif command == "DEL":
                self.delete(request["container_id"])
                answer = {"ok": True, "result": None}
            else:  # CHECK
                answer = {"ok": request["container_id"] in self.pods, "result": None}
                if not answer["ok"]:
                    answer["error"] = "unknown sandbox"
        except Exception as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(
            f"podnet: {request.get('command')} {request.get('container_id', '')[:12]} -> {answer}"
        )
        sys.stdout.flush()
        writer.write(json.dumps(answer).encode())
        await writer.drain()
        writer.close()


async def serve(config_path: Path) -> None:
    """The daemon: serve plugin requests on the control socket until SIGTERM.

    ``config_path`` is JSON: ``control`` (unix socket path), ``out_ports``
    (list of ports), ``prefix`` (``127.0.10``), ``kubectl`` (argv prefix),
    ``state`` (file of netns paths seen).
    """
    config = json.loads(config_path.read_text())
    network = PodNetwork(
        [int(p) for p in config["out_ports"]],
        config["prefix"],
        list(config["kubectl"]),
        Path(config["state"]),
    )
    control = Path(config["control"])
    with contextlib.suppress(FileNotFoundError):
        control.unlink()
    server = await asyncio.start_unix_server(network.control, path=str(control))
    control.chmod(0o600)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"podnet: serving on {control}, outbound ports {network.out_ports}")
    sys.stdout.flush()
    await stop.wait()
    server.close()
    for container_id in list(network.pods):
        network.delete(container_id)


def plugin(control: str) -> int:
    """The CNI plugin: forward the request to the daemon, print its result (CNI spec).

    Returns:
        The exit code: 0, or 1 with a CNI error object on stdout.
    """
    command = os.environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        print(json.dumps({"cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED_VERSIONS}))
        return 0
    config = json.loads(sys.stdin.read() or "{}")
    request = {
        "command": command,
        "container_id": os.environ.get("CNI_CONTAINERID", ""),
        "netns": os.environ.get("CNI_NETNS", ""),
        "ifname": os.environ.get("CNI_IFNAME", "eth0"),
        "args": os.environ.get("CNI_ARGS", ""),
    }
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(60)
            sock.connect(control)
            sock.sendall(json.dumps(request).encode())
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(_CHUNK):
                data += chunk
        answer = json.loads(data)
    except (OSError, ValueError) as exc:
        if command == "DEL":  # the daemon is gone: nothing of this sandbox is left
            return 0
        answer = {"ok": False, "error": f"podnet daemon: {exc}"}
    if not answer.get("ok"):
        version = config.get("cniVersion", CNI_VERSION)
        print(json.dumps({"cniVersion": version, "code": 999, "msg": answer.get("error")}))
        return 1
    if answer.get("result") is not None:
        result = dict(answer["result"], cniVersion=config.get("cniVersion", CNI_VERSION))
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        asyncio.run(serve(Path(sys.argv[2])))
    elif len(sys.argv) == 3 and sys.argv[1] == "plugin":
        sys.exit(plugin(sys.argv[2]))
    else:
        sys.exit("usage: podnet.py serve CONFIG.json | plugin CONTROL.sock")
