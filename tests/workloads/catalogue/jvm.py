"""jvm: a Java program (JvmWorkload.java beside this file, run from source by the JRE's
single-file launcher, `java JvmWorkload.java`, compiled in memory: no class files) as the
child of this rank, which reads its verdicts from a pipe.

Covers: a JVM (its JIT and GC threads, a heap reserved far larger than it uses, a
ConcurrentHashMap updated by eight threads, a blocking queue between threads). The Java side
checks itself and prints one line per check, "ok" or "error <why>": eight workers each add one
to a random key of the map and to their own count, under a read lock; a checker thread takes
the write lock every 20 ms and checks the map's values add up to the workers' counts and that
no count went back; each worker also queues sequence-numbered messages with a checksum, which
a consumer thread checks (none lost, repeated or corrupted) fifty at a time. This rank counts
the "ok" lines and records the errors; the JVM ending is an error.

The JVM runs with -XX:-UsePerfData (no memory-mapped /tmp/hsperfdata_<user>/<pid> file for a
restore to find) and -XX:+DisableAttachMechanism. SIGTERM stops it. Progress: checks the Java
side reported "ok"."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.workloads.catalogue import _common, _servers

SOURCE = Path(__file__).with_name("JvmWorkload.java")
# default-jre-headless's java (Debian's default JRE), else whichever java is on PATH
DEFAULT_JAVA = "/usr/lib/jvm/default-java/bin/java"


def start_java(args: _common.Args) -> _servers.Child:
    java = _servers.find_program("java", DEFAULT_JAVA)
    argv = [
        java,
        *("-XX:-UsePerfData", "-XX:+DisableAttachMechanism", "-Xmx128m"),
        f"-Djava.io.tmpdir={args.work_dir}",
        str(SOURCE),
    ]
    return _servers.spawn(
        "java", argv, log=args.work_dir / "java.log", stdout=subprocess.PIPE, cwd=args.work_dir
    )


def main() -> None:
    args, status = _common.start("jvm")
    try:
        java = start_java(args)
        assert java.process.stdout is not None
        for line in java.process.stdout:
            verdict = line.decode(errors="replace").strip()
            if verdict == "ok":
                status.ok()
            else:
                status.error(f"java: {verdict.removeprefix('error ')}")
        java.process.wait()
        status.error(f"{java.problem()}")
    except (OSError, _servers.ProgramMissing) as exc:
        status.error(f"jvm: {exc!r}")
    _common.idle_forever()


if __name__ == "__main__":
    main()
