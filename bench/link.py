"""Seconds a round's messages take on a capped hospital link: FedMRG against dense FedAvg of LoRA.

    sudo python bench/link.py                      # 10 Mbit/s, the demo's measured message sizes
    sudo python bench/link.py --rate 2 --results data/demo/fedmrg/results.json

Two network namespaces (a hospital and the server) joined by a bridge as ``fedmrg consortium`` builds
them, the hospital's link capped each way with ``tc tbf``. For each job, one round of one hospital
is sent over TCP as FLARE sends it: the train task down (server to hospital), then the result up, the
sizes being the bytes ``results.json`` records on the wire (``bytes_down`` / ``bytes_up``, FLARE's
framing included). Each transfer is timed at the receiver, three times, and the median is printed.
This is the transfer part of a round; the rest (validation, training, merging) does not depend on
the link.

Default sizes: a round after the first of ``make demo`` (fedmrg: 91,609 B up and 161,415 B down per
site; ``bench/comm.py`` gives 701,630 B up and 701,613 B down for the dense fedavg_lora baseline of
the same model, and 157,702 B each way with FLARE's NF4 filters); ``--results`` reads a run's
``results.json`` instead for the fedmrg line. Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from fedmrg.ops.consortium import Link, Network

JOBS = {  # (bytes up, bytes down) of one site's round, as results.json records them
    "fedmrg": (91_609, 161_415),
    "fedavg_lora, dense fp32": (701_630, 701_613),
    "fedavg_lora + FLARE normfloat4": (157_702, 157_702),
}
PORT = 9555

RECEIVER = textwrap.dedent(
    """
    import socket, sys, time
    size = int(sys.argv[1])
    with socket.create_server(("0.0.0.0", int(sys.argv[2]))) as server:
        print("ready", flush=True)
        connection, _ = server.accept()
        with connection:
            got, started = 0, None
            while got < size:
                chunk = connection.recv(1 << 16)
                if not chunk:
                    break
                started = started or time.perf_counter()
                got += len(chunk)
            print(f"{time.perf_counter() - started:.4f} {got}", flush=True)
    """
)
SENDER = textwrap.dedent(
    """
    import socket, sys
    with socket.create_connection((sys.argv[1], int(sys.argv[3])), timeout=120) as connection:
        connection.sendall(b"x" * int(sys.argv[2]))
    """
)


def transfer(network: Network, source: str, target: str, size: int) -> float:
    """Seconds from the first byte to the last at ``target`` for ``size`` bytes from ``source``."""
    receiver = subprocess.Popen(
        network.command(target, sys.executable, "-c", RECEIVER, str(size), str(PORT)), stdout=subprocess.PIPE, text=True
    )
    assert receiver.stdout.readline().strip() == "ready"
    subprocess.run(
        network.command(source, sys.executable, "-c", SENDER, network.address(target), str(size), str(PORT)), check=True
    )
    seconds, got = receiver.stdout.readline().split()
    receiver.wait(timeout=30)
    if int(got) != size:
        raise RuntimeError(f"{got} of {size} bytes arrived")
    return float(seconds)


def measured_sizes(path: Path) -> tuple[int, int]:
    """fedmrg's bytes up and down of one site in the last round of a run."""
    last = json.loads(path.read_text(encoding="utf-8"))["rounds"][-1]
    site = sorted(last["bytes_up"])[0]
    return last["bytes_up"][site], last["bytes_down"][site]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10.0, help="the hospital's link, Mbit/s each way")
    parser.add_argument("--results", type=Path, help="a fedmrg run's results.json (its last round's sizes)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    jobs = dict(JOBS)
    if args.results:
        jobs["fedmrg"] = measured_sizes(args.results)
    network = Network(["server", "hospital"], tag=f"fmlink{int(time.time()) % 10000}")
    try:
        network.create({})
        network.shape("hospital", Link(rate_mbit=args.rate))
        print(f"one round of one hospital on a {args.rate:g} Mbit/s link (each way), median of {args.repeats}:")
        print(f"  {'job':<32}{'up B':>10}{'down B':>10}{'down s':>9}{'up s':>9}{'round trip s':>14}")
        seconds = {}
        for job, (up, down) in jobs.items():
            down_s = statistics.median(transfer(network, "server", "hospital", down) for _ in range(args.repeats))
            up_s = statistics.median(transfer(network, "hospital", "server", up) for _ in range(args.repeats))
            seconds[job] = down_s + up_s
            print(f"  {job:<32}{up:>10,}{down:>10,}{down_s:>9.2f}{up_s:>9.2f}{down_s + up_s:>14.2f}")
    finally:
        network.remove()
    for job in list(jobs)[1:]:
        print(f"fedmrg's transfer is {seconds[job] / seconds['fedmrg']:.1f}x shorter than {job}'s")


if __name__ == "__main__":
    main()
