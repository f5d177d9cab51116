"""The standard error of one process of a multi-host run, relayed so that a lost host is one line.

When one process of a run over several hosts dies, JAX's coordination service ends the others
itself: the coordinator's process when the lost one misses its heartbeats
(`charrnn.placement.HEARTBEAT_TIMEOUT`), every other process at once when the coordinator is the
one lost. It ends them from C++ with a fatal log of a few dozen lines and an abort, which no
Python code in the dying process can intercept. So `charrnn train` over several hosts sends its
standard error through this small process (`python -m charrnn.cli.host_log PROCESS COUNT`): it
passes every line on, except the C++ log records of XLA and gloo's connection messages, and when
the record that ends the process comes, prints instead one line naming the process that was lost.

It imports nothing heavy and ignores Ctrl-C and SIGTERM (they are the training process's to
handle: its last lines still come through); it ends when the training process closes its end.
"""

import re
import signal
import sys

# "E1129 02:52:33.017377   22734 coordination_service.cc:1518] ..." (absl / glog format)
RECORD = re.compile(rb"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w./+-]+:\d+\] ")
NOISE = re.compile(rb"^\[Gloo\] ")
FATAL = b"Terminating process because the JAX distributed service detected fatal errors"
UNHEALTHY = re.compile(rb"tasks are unhealthy \(stopped sending heartbeats\):\s*((?:\d+\s+)+)")
OUR_LINES = (b"charrnn: ", b"step ", b"Traceback")  # lines that cannot continue a C++ record
LEADER_LOST = (b"leader task was preempted/died", b"Failed to send RPC to coordination service")


def lost_process(log: bytes, process: int) -> str:
    """Which process the coordination service's error text says was lost, in words."""
    if found := UNHEALTHY.search(log):
        ids = [int(i) for i in found.group(1).split()]
        names = ", ".join(str(i) for i in ids)
        return f"process {names} stopped (no heartbeat)" if len(ids) == 1 else f"processes {names} stopped"
    if process != 0 and any(words in log for words in LEADER_LOST):
        return "process 0, the coordinator, stopped"
    return "another process of the run stopped"


def relay(source, sink, process: int, count: int) -> None:
    """Copy `source` to `sink` line by line, dropping C++ log records (their first line and the
    lines that continue it, up to a blank line or our own output) and gloo's connection messages,
    and saying in one line why the process ends when the coordination service ends it. A fatal
    record of any other kind is passed on whole at the end: nothing that explains a crash is lost."""
    in_record, log, told = False, b"", False
    for line in iter(source.readline, b""):
        if told:
            continue
        if RECORD.match(line):
            in_record = True
        elif in_record and (not line.strip() or line.startswith(OUR_LINES)):
            in_record = False
            if not line.strip():
                continue
        if in_record:
            log += line
            if FATAL in line:
                sink.write(
                    f"charrnn: error: process {process} of {count}: {lost_process(log, process)}; this one stops "
                    "too (the last complete checkpoint is kept: continue the run with --resume)\n".encode()
                )
                told = True
        elif not NOISE.match(line):
            sink.write(line)
        sink.flush()
    if not told and re.search(rb"(^|\n)F\d{4} ", log):
        sink.write(log)
        sink.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    process, count = int(sys.argv[1]), int(sys.argv[2])
    try:
        relay(sys.stdin.buffer, sys.stderr.buffer, process, count)
    except BrokenPipeError:  # nobody reads our standard error any more
        pass


if __name__ == "__main__":
    main()
