"""A dead man's switch for frozen ranks.

A checkpoint freezes ranks through their cgroups; the agent thaws them when the checkpoint ends.
If the agent dies in between, nobody would. So before freezing, the agent starts a guard
process (in a session of its own, outside the ranks' cgroups) that waits on a pipe: released
with "ok", it just exits; if the pipe closes without it (the agent died), it keeps the ranks'
cgroups thawed for a while — long enough for a CRIU that lost its agent to roll back (CRIU puts a
cgroup it found frozen back to FROZEN) — so the ranks run on even if no agent ever returns."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Sequence

from agent.freezer import RankCgroup

GUARD_SECONDS = 20.0

# Run as ``sh -c GUARD guard VERSION SECONDS TABLE PATH...`` with the pipe on stdin (sh: it
# starts in a millisecond, so it takes no CPU from the dump it guards). TABLE may be empty.
_GUARD = r"""
version=$1; seconds=$2; table=$3; shift 3
read -r word
[ "$word" = ok ] && exit 0
[ -n "$table" ] && nft delete table inet "$table" 2>/dev/null
end=$(( $(date +%s) + ${seconds%.*} ))
while [ "$(date +%s)" -lt "$end" ]; do
    for path in "$@"; do
        if [ "$version" = 1 ]; then
            grep -qx THAWED "$path/freezer.state" 2>/dev/null ||
                echo THAWED > "$path/freezer.state" 2>/dev/null
        else
            echo 0 > "$path/cgroup.freeze" 2>/dev/null
        fi
    done
    sleep 0.05
done
"""


class ThawGuard:
    def __init__(
        self,
        cgroups: Sequence[RankCgroup],
        seconds: float = GUARD_SECONDS,
        *,
        unlock_table: str = "",
    ) -> None:
        read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        version = str(cgroups[0].version) if cgroups else "1"
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [
                    "sh",
                    "-c",
                    _GUARD,
                    "crctl-thaw-guard",
                    version,
                    str(seconds),
                    unlock_table,
                    *(str(c.path) for c in cgroups),
                ],
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(read_fd)

    def release(self) -> None:
        """The checkpoint ended normally (the agent thawed what it froze): stand down."""
        if self._write_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self._write_fd, b"ok\n")
            os.close(self._write_fd)
            self._write_fd = -1
        proc, self._proc = self._proc, None
        if proc is not None:
            threading.Thread(target=proc.wait, name="thaw-guard-reaper", daemon=True).start()
