"""What a run used of the machine it trained on, logged with its epochs (no Keras here).

The readers below are sampled by the training process itself at most every `SAMPLE_SECONDS` between batches, and
averaged over each epoch into metrics under MLflow's names: `system/cpu_utilization_percentage`,
`system/system_memory_usage_megabytes`, `system/gpu_0_utilization_percentage`,
`system/gpu_0_memory_usage_megabytes`, ... They go through the run's own logging (not MLflow's monitor thread,
which would be a second writer to a sqlite store), so a worker process of the `processes` executor measures
itself. MLflow's CPU % is the whole machine's (every core, whoever uses them): next to it
`system/process_cpu_utilization_percentage` is the training process's own (100: one core busy, as `top` counts),
so that runs sharing a machine in a parallel sweep are told apart. `system/process_peak_memory_megabytes` is the
training process's peak resident memory so far.

The readers: `CPUReader`, psutil's CPU and memory exactly as MLflow's `CPUMonitor` reads them (importing that
class imports mlflow, 0.9 s of a worker's start), `ProcessReader`, this process's CPU, and for every NVIDIA GPU
MLflow's own `GPUMonitor` (nvidia-ml-py), imported only where NVML sees a GPU.
"""

import logging
import resource
import sys
import time
from collections import defaultdict

import psutil

SAMPLE_SECONDS = 1.0
PREFIX = "system/"
PEAK_MEMORY = PREFIX + "process_peak_memory_megabytes"
PROCESS_CPU = PREFIX + "process_cpu_utilization_percentage"


class CPUReader:
    """MLflow's `CPUMonitor` (`mlflow.system_metrics.metrics.cpu_monitor`) without mlflow: the same readings
    under the same names, the same means rounded to 0.1, the same `collect_metrics` / `aggregate_metrics` /
    `clear_metrics` / `metrics` interface as its GPU reader."""

    def __init__(self):
        self.metrics: dict[str, list[float]] = defaultdict(list)

    def collect_metrics(self) -> None:
        memory = psutil.virtual_memory()
        self.metrics["cpu_utilization_percentage"].append(psutil.cpu_percent())  # every core, since the last read
        self.metrics["system_memory_usage_megabytes"].append(memory.used / 1e6)
        self.metrics["system_memory_usage_percentage"].append(memory.used / memory.total * 100)

    def aggregate_metrics(self) -> dict[str, float]:
        return {key: round(sum(values) / len(values), 1) for key, values in self.metrics.items()}

    def clear_metrics(self) -> None:
        self.metrics.clear()


class ProcessReader(CPUReader):
    """This process's CPU since the last read, every thread of it (psutil's `Process.cpu_percent`: 100 is one
    core busy the whole time, 200 two), with `CPUReader`'s interface and rounding."""

    def __init__(self):
        super().__init__()
        self.process = psutil.Process()

    def collect_metrics(self) -> None:
        self.metrics[PROCESS_CPU.removeprefix(PREFIX)].append(self.process.cpu_percent())


def gpu_monitor():
    """MLflow's NVML reader of every NVIDIA GPU, or None where there is no GPU or no nvidia-ml-py."""
    try:
        import pynvml

        pynvml.nvmlInit()  # raises without a driver; checked first, so that a CPU machine never imports mlflow
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
        return GPUMonitor()
    except Exception:  # no pynvml, no driver, no device: nothing to read
        return None


def gpu_names() -> list[str]:
    """The NVIDIA GPUs NVML sees (empty where there are none)."""
    monitor = gpu_monitor()
    if monitor is None:
        return []
    import pynvml

    names = [pynvml.nvmlDeviceGetName(handle) for handle in monitor.gpu_handles]
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


class SystemSampler:
    """Samples the machine between batches and hands each epoch's means (`flush`)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.monitors = [m for m in (CPUReader(), ProcessReader(), gpu_monitor()) if m is not None]
        self.last = -float("inf")
        for monitor in self.monitors:  # CPU % is measured between reads: the first one only starts the clock
            monitor.collect_metrics()
            monitor.clear_metrics()

    def maybe_sample(self) -> None:
        """Sample when `SAMPLE_SECONDS` have passed since the last sample."""
        now = self.clock()
        if now - self.last >= SAMPLE_SECONDS:
            self.last = now
            for monitor in self.monitors:
                monitor.collect_metrics()

    def flush(self) -> dict[str, float]:
        """The means of the samples since the last flush (one taken now if there were none), and the peak
        memory of this process, as `system/...` metrics."""
        if not any(monitor.metrics for monitor in self.monitors):
            self.last = -float("inf")
            self.maybe_sample()
        metrics = {}
        for monitor in self.monitors:
            metrics.update({PREFIX + key: float(value) for key, value in monitor.aggregate_metrics().items()})
            monitor.clear_metrics()
        metrics[PEAK_MEMORY] = peak_memory_megabytes()
        return metrics


def peak_memory_megabytes() -> float:
    """This process's peak resident memory so far, in MB (10^6 bytes, as MLflow's memory metrics).

    On Linux its memory's high-water mark (`VmHWM` in /proc/self/status): `getrusage`'s `ru_maxrss` survives
    `fork` and `exec`, so a worker spawned by a process that once held 1.5 GB would read 1.5 GB before it
    allocated anything. Elsewhere `ru_maxrss`.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6  # kB
    except OSError:  # no procfs: not Linux
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # bytes on macOS, KiB on Linux
