"""Python SDK for stockade: disposable, resource-capped Linux sandboxes
for coding agents, driven through the ``stockade serve`` daemon.

    from stockade import Sandbox

    with Sandbox(memory="2G", cpus=1, net="none") as sb:
        r = sb.process.run(["python3", "-c", "print(1)"], timeout=30)
        print(r.exit_code, r.stdout)

No dependencies beyond the standard library.
"""

from ._http import DEFAULT_SOCKET, SseEvent, SseStream
from .client import Client, Command, Duration, EventStream, Signal
from .errors import StockadeConnectionError, StockadeError
from .images import Images, PullProgress
from .models import Event, FileEntry, OutputChunk, ProcessInfo, ProcessResult, SandboxInfo, TaskResult, TopProcess
from .sandbox import Files, OutputCallback, Process, Processes, Sandbox, build_policy

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SOCKET",
    "Client",
    "Command",
    "Duration",
    "Event",
    "EventStream",
    "FileEntry",
    "Files",
    "Images",
    "OutputCallback",
    "OutputChunk",
    "Process",
    "ProcessInfo",
    "ProcessResult",
    "Processes",
    "PullProgress",
    "Sandbox",
    "SandboxInfo",
    "Signal",
    "TaskResult",
    "TopProcess",
    "SseEvent",
    "SseStream",
    "StockadeConnectionError",
    "StockadeError",
    "build_policy",
    "__version__",
]
