"""Peak resident memory of this Python process, for the benchmark scripts."""

import resource


def peak_mib():
    """This process's peak resident memory in MiB, torch included. On Linux it is VmHWM, which
    belongs to the memory map that exec created: ru_maxrss would also count the resident memory
    the parent (the Rust benchmark, which may still hold a loaded model) had at fork."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
