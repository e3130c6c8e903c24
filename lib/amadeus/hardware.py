"""What machine a figure was measured on (benchmarks and metrics record it)."""

import platform


def machine() -> str:
    """The CPU model name (as lscpu prints it), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
