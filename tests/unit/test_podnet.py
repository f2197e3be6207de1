"""The pure parts of the test cluster's pod network (devenv/podnet.py)."""

from __future__ import annotations

from devenv.podnet import cni_result, container_ports, parse_cni_args


def test_cni_args_are_split_into_pairs() -> None:
    args = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=image-cloner;K8S_POD_NAME=a=b;junk")
    assert args == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": "image-cloner",
        "K8S_POD_NAME": "a=b",
    }


def test_container_ports_are_the_tcp_ones_of_every_container() -> None:
    pod = {
        "spec": {
            "initContainers": [{"name": "i", "ports": [{"containerPort": 7000}]}],
            "containers": [
                {"name": "a", "ports": [{"containerPort": 9090, "protocol": "TCP"}]},
                {"name": "b", "ports": [{"containerPort": 53, "protocol": "UDP"}]},
                {"name": "c", "ports": [{"containerPort": 9090}]},
                {"name": "d"},
            ],
        }
    }
    assert container_ports(pod) == [7000, 9090]
    assert container_ports({"spec": {}}) == []


def test_cni_result_names_the_sandbox_interface_and_one_ipv4_address() -> None:
    result = cni_result("127.0.10.2", "eth0", "/var/run/netns/cni-x")
    assert result["cniVersion"] == "0.4.0"
    assert result["interfaces"] == [{"name": "eth0", "sandbox": "/var/run/netns/cni-x"}]
    assert result["ips"] == [{"version": "4", "address": "127.0.10.2/32", "interface": 0}]
