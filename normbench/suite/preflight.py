"""The driver's preflight: everything `normbench run` checks before Ray starts and before it
writes anything, so that a mistake costs one line and exit status 2, never a hang, a traceback
or a half-written run directory. `--dry-run` runs the same checks and prints what they found.

In order (cheapest first; the data check comes last because it may download or extract):
1. the output directory: not a file, not inside another run's directory, and writable (a
   probe file is created and removed in the nearest existing folder); `--storage` with DDP
   trials is refused (their ranks share checkpoints through the run directory);
2. `--address`: a `ray://` address needs the Ray client extra (`ray[client]`); the cluster must
   answer (a TCP connection first, so a wrong host fails in seconds, then Ray's own join);
3. resources: each trial's `cpus`/`gpus` must fit on one node (a DDP trial: `devices` such
   bundles, one per Ray Train worker, on any nodes), else Ray would keep the trial
   pending forever. Local Ray offers this machine's CPUs (or `num_cpus`) and CUDA devices; a
   cluster's nodes are read once joined. `--allow-autoscaling` skips the check for clusters
   that add nodes on demand;
4. the task's own preflight (`preflight(options)`, optional): files it reads at run time;
5. data: each distinct data set is prepared once (`normbench.data.prepare`): downloaded and
   extracted when needed, by this process alone, before trials start; and no batch may be
   larger than its training set (training drops the last incomplete batch, so no step would
   run).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normbench.errors import UserError, one_line

# Written first by every run; a `.lock` alone is not a run (pytest keeps one in its tmp root).
RUN_DIR_MARKER = "suite.resolved.json"
CONNECT_TIMEOUT_S = 5.0


class PreflightError(UserError):
    """A run that cannot succeed, found before Ray starts and before anything is written."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


@dataclass
class Preflight:
    """What the checks found. `shutdown` is set when a cluster was joined (`--address`): the
    run keeps that connection, and whoever ends the run calls it."""

    lines: list[str] = field(default_factory=list)
    shutdown: Callable[[], None] | None = None
    # trials whose resources fit side by side on `where` (None: none fits now, autoscaling)
    fits: int | None = None
    where: str = "this machine"

    def text(self) -> str:
        return "\n".join(["preflight:", *(f"  {line}" for line in self.lines)])


def run_preflight(
    suite: Any,
    run_dir: Path,
    *,
    address: str | None,
    num_cpus: int | None,
    allow_autoscaling: bool,
    fetch: bool,
    storage: str | None = None,
) -> Preflight:
    """All checks in order; raises PreflightError at the first refusal (and leaves no
    connection open). `fetch=False` (--dry-run) downloads and extracts nothing."""
    found = Preflight()
    found.lines.append(check_output(run_dir))
    check_storage(suite, storage)
    try:
        nodes, found.where = _nodes(found, address, num_cpus)
        found.lines.append(check_resources(suite, nodes, found.where, allow_autoscaling))
        side_by_side = _slots(nodes, suite.resources.cpus, suite.resources.gpus)
        found.fits = side_by_side // suite.ddp_devices or None
        found.lines += check_task(suite)
        found.lines += check_data(suite, fetch=fetch)
    except BaseException:
        if found.shutdown is not None:
            found.shutdown()
            found.shutdown = None
        raise
    return found


def check_storage(suite: Any, storage: str | None) -> None:
    """`--storage` uploads one process's checkpoint folder through Tune; the ranks of a DDP
    trial share theirs through the run directory, so the two do not combine (yet)."""
    devices = suite.ddp_devices
    if storage and devices > 1:
        raise PreflightError(
            f"{suite.path}: --storage {storage} is not supported for trials with "
            f"train.devices: {devices} (the DDP ranks share checkpoints through the run "
            "directory); drop --storage and put --output on a folder every node reaches, or "
            "use train.parallel: virtual"
        )


# ------------------------------------------------------------------------- output directory
def check_output(run_dir: Path) -> str:
    """Refuse an output that is a file, sits inside another run, or cannot be written."""
    path = Path(os.path.abspath(run_dir.expanduser()))
    shown = str(run_dir)
    if path.exists() and not path.is_dir():
        raise PreflightError(f"output {shown} is a file, not a directory; choose another --output")
    for parent in path.parents:
        if (parent / RUN_DIR_MARKER).exists():
            raise PreflightError(
                f"output {shown} is inside the run directory {parent} of another run; "
                "choose an --output outside it"
            )
    base = path
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise PreflightError(f"output {shown} cannot be created: {base} is a file")
    _probe_writable(base, shown)
    if (path / "suite.resolved.json").exists():
        return f"output {shown}: holds a run of this name; finished trials are skipped"
    return f"output {shown}: " + ("exists, writable" if base == path else "will be created")


def _probe_writable(folder: Path, shown: str) -> None:
    """Create and remove a file in `folder`: the only test that sees read-only mounts,
    immutable folders and other users' folders alike."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".normbench-probe-", dir=folder)
    except OSError as exc:
        raise PreflightError(
            f"output {shown} is not writable: cannot create a file in {folder} "
            f"({exc.strerror or exc}); choose another --output"
        ) from exc
    os.close(fd)
    os.unlink(probe)


# ------------------------------------------------------------------------- Ray and resources
Nodes = list[dict[str, float]]  # per alive node: {"CPU": n, "GPU": n}


def _nodes(found: Preflight, address: str | None, num_cpus: int | None) -> tuple[Nodes, str]:
    if not address:
        cpus = float(num_cpus or os.cpu_count() or 1)
        gpus = float(_local_gpus())
        found.lines.append(f"ray: local, started for the run with {cpus:g} CPUs, {gpus:g} GPUs")
        return [{"CPU": cpus, "GPU": gpus}], "this machine"
    check_address(address)
    found.shutdown = join_cluster(address)
    from normbench.suite import ray_adapter

    nodes = ray_adapter.node_resources()
    found.lines.append(f"ray: joined the cluster at {address} ({len(nodes)} nodes)")
    return nodes, f"the cluster at {address}"


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_address(address: str) -> None:
    """Refuse a `ray://` address without the client extra, and an address nobody answers."""
    client = address.startswith("ray://")
    if client:
        try:
            import grpc  # noqa: F401  (what ray[client] adds)
        except ImportError as exc:
            raise PreflightError(
                f"--address {address}: a ray:// address needs the Ray client, which is not "
                "installed; pip install 'ray[client]' (or use the cluster's GCS address "
                "HOST:6379 from a node of the cluster)"
            ) from exc
        hostport = address[len("ray://") :]
    else:
        hostport = address
    host, _, port = hostport.rpartition(":")
    if address != "auto" and (not host or not port.isdigit()):
        raise PreflightError(f"--address {address}: expected 'auto', HOST:PORT or ray://HOST:PORT")
    if not client:  # where Ray itself will connect ('auto' found, 127.0.0.1 -> this node's IP)
        hostport = _bootstrap(address)
        host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        shown = address[len("ray://") :] if client else address
        at = hostport if hostport == shown else f"{hostport}, where Ray connects for {shown}"
        raise PreflightError(
            f"--address {address}: no Ray cluster answers at {at} ({why}); start one "
            "with `ray start --head` or check the host and port"
        ) from exc


def _bootstrap(address: str) -> str:
    """HOST:PORT of the cluster `address` names ('auto' finds a running one)."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as exc:
        raise PreflightError(
            f"--address {address}: {one_line(str(exc)).split('. ')[0]}; start a cluster with "
            "`ray start --head`, or leave --address out to run on this machine"
        ) from exc
    if found is None:
        raise PreflightError(f"--address {address}: names no cluster; leave --address out")
    return found


def join_cluster(address: str) -> Callable[[], None]:
    from normbench.suite import ray_adapter

    try:
        return ray_adapter.init_ray(address)
    except Exception as exc:  # Ray's own connection errors vary by version and transport
        raise PreflightError(
            f"--address {address}: cannot join the Ray cluster: {type(exc).__name__}: "
            f"{one_line(str(exc))[:300]}"
        ) from exc


def check_resources(suite: Any, nodes: Nodes, where: str, allow_autoscaling: bool) -> str:
    """Each trial's resources must fit: one node for a one-device trial; for a DDP trial of N
    devices, N per-device bundles (Ray Train workers, which may sit on different nodes)."""
    cpus, gpus = suite.resources.cpus, suite.resources.gpus
    devices = suite.ddp_devices
    ask = amount(cpus, gpus)
    if devices > 1:
        ask = f"{devices} devices x ({ask}) = {amount(devices * cpus, devices * gpus)}"
    if _slots(nodes, cpus, gpus) >= devices:
        return f"resources: each trial asks for {ask}; fits on {where}"
    if allow_autoscaling:
        return f"resources: each trial asks for {ask}; no node has it now (--allow-autoscaling)"
    most = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    has = f"{most.get('CPU', 0):g} CPUs and {most.get('GPU', 0):g} GPUs"
    has = has if len(nodes) == 1 else f"at most {has} per node ({len(nodes)} nodes)"
    # suggest only what would lower the ask: per-device resources above 1 CPU / 0 GPUs, devices
    lower = [f"--set resources.cpus={min(cpus, 1):g}"] if cpus > 1 else []
    lower += ["--set resources.gpus=0"] if gpus > 0 else []
    lower += [f"--set train.devices={max(_slots(nodes, cpus, gpus), 1)}"] if devices > 1 else []
    hint = f"lower them (e.g. {' '.join(lower)})" if lower else "lower them"
    raise PreflightError(
        f"{suite.path}: resources: each trial asks for {ask}, but {where} has {has}, so no "
        f"trial could ever start; {hint}, join a bigger cluster with "
        "--address, or pass --allow-autoscaling if the cluster adds nodes on demand"
    )


def amount(cpus: float, gpus: float) -> str:
    return f"{cpus:g} CPU{'s' if cpus != 1 else ''} and {gpus:g} GPU{'s' if gpus != 1 else ''}"


def _slots(nodes: Nodes, cpus: float, gpus: float) -> int:
    """How many bundles of (cpus, gpus) the nodes hold together (each bundle on one node)."""
    total = 0
    for n in nodes:
        fit = [
            int(n.get(kind, 0) // need) for kind, need in (("CPU", cpus), ("GPU", gpus)) if need > 0
        ]
        total += min(fit) if fit else 1 << 30
    return total


# ------------------------------------------------------------------------- task
def check_task(suite: Any) -> list[str]:
    """Each distinct task's own preflight: the optional classmethod `preflight(options) ->
    line` (docs/tasks.md) finds the files the task reads at run time (the generation task's
    Inception weights) or raises UserError with one line saying which file to put where."""
    from normbench.tasks import TASKS

    lines: dict[str, str] = {}
    for t in suite.trials():
        key = json.dumps([t.spec.task, t.spec.task_options], sort_keys=True, default=str)
        hook = getattr(TASKS.get(t.spec.task).obj, "preflight", None)
        if key in lines or not callable(hook):
            continue
        try:
            lines[key] = f"task {t.spec.task}: {hook(dict(t.spec.task_options))}"
        except UserError as exc:
            raise PreflightError(f"{suite.path}: task: {exc}") from exc
    return list(lines.values())


# ------------------------------------------------------------------------- data
def check_data(suite: Any, *, fetch: bool) -> list[str]:
    """Prepare each distinct data set once; refuse missing data and oversized batches."""
    from normbench.data.prepare import prepare_dataset

    groups: dict[str, tuple[str, dict[str, Any], list[Any]]] = {}
    for t in suite.trials():
        key = json.dumps([t.spec.dataset, t.spec.dataset_options], sort_keys=True, default=str)
        groups.setdefault(key, (t.spec.dataset, t.spec.dataset_options, []))[2].append(t.spec)
    lines = []
    for name, options, specs in groups.values():
        try:
            report = prepare_dataset(name, options, fetch=fetch)
        except UserError as exc:
            raise PreflightError(f"{suite.path}: dataset: {exc}") from exc
        lines.append(f"data {name}: {report.found}")
        if report.train_size is not None:
            _check_batches(suite, name, options, report.train_size, specs)
    return lines


def _check_batches(
    suite: Any, name: str, options: dict[str, Any], n: int, specs: list[Any]
) -> None:
    spec = max(specs, key=lambda s: s.batch_size * s.devices)  # a step takes devices x batch
    batch = spec.batch_size * spec.devices
    if batch <= n:
        return
    held = options.get("val_fraction", 0.1)
    what = (
        f"batch {batch}"
        if spec.devices == 1
        else (f"the optimiser batch {batch} ({spec.devices} devices x {spec.batch_size})")
    )
    raise PreflightError(
        f"{suite.path}: batch_sizes: {what} is larger than the {n} training images of "
        f"{name} (after val_fraction {held:g} is held out); training drops the last incomplete "
        "batch, so no step would run: use a smaller batch or more data"
    )
