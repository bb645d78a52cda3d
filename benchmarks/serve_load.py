"""Load on `blendmask serve`: N concurrent local clients for a bounded time.

1. The plain `Predictor` loop in this process (one image at a time, records made with
   `Detections.to_json` as the server makes them): the reference throughput and latency;
2. the server (`--max-batch B`) at 1, 4 and 16 concurrent clients: throughput, p50 / p99
   latency; at 16 clients also with `--max-batch 1`: the batching gain is the ratio;
3. 64 clients against `--max-queue 8`: only 200s and 503s (with Retry-After), the server
   process's RSS sampled all along (flat: the queue and the uploads in memory are bounded),
   then one client alone: 200s again.

Clients are threads of this process sending one PNG (POST /predict, raw bytes) in a loop over
loopback; they share the machine's cores with the server. The model is the `tiny` preset with
random weights (seed 0), 4 classes, a 128 px test size; the image 128 x 128 noise.

    nice python benchmarks/serve_load.py --json benchmarks/results/serve_load.json [--seconds 8]
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import cpu_model, write_json
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_model(path: Path, size: int) -> Path:
    from blendmask.checkpoint_io import save_model_file
    from blendmask.factory import build
    from blendmask.presets import get_preset

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.model.fcos.num_classes = 4
    cfg.data.category_names = ["circle", "rectangle", "triangle", "star"]
    cfg.data.category_ids = [1, 2, 3, 4]
    cfg.data.min_size_test = cfg.data.max_size_test = size
    model, _, _ = build(cfg.validate(), load_pretrained=False)
    save_model_file(path, cfg, model)
    return path


def latency_stats(latencies: list[float], seconds: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {
        "requests": len(ordered),
        "throughput_per_s": len(ordered) / seconds,
        "p50_ms": statistics.median(ordered) * 1000 if ordered else None,
        "p99_ms": pick(0.99) if ordered else None,
    }


def predictor_loop(weights: Path, image: np.ndarray, seconds: float) -> dict[str, Any]:
    """The loop on a thread of its own, as the server runs its batches: on this machine the
    main thread with 2 OpenMP threads ran many times slower than any other thread."""
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(_loop(weights, image, seconds)))
    thread.start()
    thread.join()
    return result


def _loop(weights: Path, image: np.ndarray, seconds: float) -> dict[str, Any]:
    from blendmask.predictor import Predictor

    predictor = Predictor.from_checkpoint(weights, device="cpu")
    predictor(image)[0].to_json()  # warm-up: the optimised copy is made at the first call
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        predictor(image)[0].to_json()
        latencies.append(time.perf_counter() - t)
    return latency_stats(latencies, time.perf_counter() - start)


class Server:
    def __init__(self, weights: Path, *args: str, threads: int) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
        command = [sys.executable, "-m", "blendmask", "serve", "--weights", str(weights)]
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 180
        while post(self.url + "/health", None)[0] != 200:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.3)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def post(url: str, data: bytes | None) -> tuple[int, Any]:
    """(status, headers: case-insensitive) of a GET or POST; 0 for a connection error."""
    request = urllib.request.Request(url, data=data)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return response.status, response.headers
    except urllib.error.HTTPError as error:
        error.read()
        return error.code, error.headers
    except OSError:
        return 0, {}


def run_clients(url: str, data: bytes, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` threads POSTing `data` in a loop for `seconds`: latencies of the 200s, the
    count of every status (0: connection error), 503s without Retry-After."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    missing_retry_after = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            status, headers = post(url + "/predict", data)
            elapsed = time.perf_counter() - t
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(elapsed)
                elif status == 503 and headers.get("Retry-After") is None:
                    missing_retry_after[0] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = latency_stats(latencies, time.perf_counter() - start)
    result["statuses"] = {str(k): v for k, v in sorted(statuses.items())}
    result["503_without_retry_after"] = missing_retry_after[0]
    return result


def overload(weights: Path, data: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """64 clients against --max-queue 8, RSS sampled every 0.25 s, then one client alone."""
    server = Server(weights, "--max-batch", "4", "--max-queue", "8", threads=args.threads)
    try:
        run_clients(server.url, data, 1, 1.0)  # warm-up
        rss: list[float] = [server.rss_mb()]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.25):
                rss.append(server.rss_mb())

        sampler = threading.Thread(target=sample)
        sampler.start()
        loaded = run_clients(server.url, data, args.overload_clients, args.seconds)
        done.set()
        sampler.join()
        after = run_clients(server.url, data, 1, 2.0)
        return {
            "clients": args.overload_clients,
            "max_queue": 8,
            "max_batch": 4,
            "under_load": loaded,
            "rss_mb": {
                "before": rss[0],
                "max": max(rss),
                "end": rss[-1],
                "samples": len(rss),
                "growth_first_to_last_half_max_mb": max(rss[len(rss) // 2 :])
                - max(rss[: max(1, len(rss) // 2)]),
            },
            "after": after,
            "only_200_and_503": set(loaded["statuses"]) <= {"200", "503"},
            "all_200_after": set(after["statuses"]) == {"200"},
        }
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--overload-clients", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="image and test size")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, each side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    weights = make_model(tmp / "model.pt", args.size)
    pixels = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
    results: dict[str, Any] = {
        "machine": {
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "load_average_start": list(os.getloadavg()),
            "note": "shared machine: other jobs ran alongside; compare figures within this run",
        },
        "setup": {**vars(args), "json": str(args.json), "image_bytes": len(data)},
        "predictor_loop": predictor_loop(weights, pixels, args.seconds),
    }
    print("predictor loop", results["predictor_loop"], flush=True)
    for max_batch in sorted({args.max_batch, 1}, reverse=True):
        server_args = ("--max-batch", str(max_batch), "--max-queue", "64")
        server = Server(weights, *server_args, threads=args.threads)
        try:
            run_clients(server.url, data, 1, 1.0)  # warm-up
            levels = args.clients if max_batch == args.max_batch else [max(args.clients)]
            for clients in levels:
                result = run_clients(server.url, data, clients, args.seconds)
                results.setdefault(f"server_max_batch_{max_batch}", {})[str(clients)] = result
                print(f"server max-batch {max_batch}, {clients} clients", result, flush=True)
        finally:
            server.stop()
    top = str(max(args.clients))
    batched = results[f"server_max_batch_{args.max_batch}"][top]["throughput_per_s"]
    single = results["server_max_batch_1"][top]["throughput_per_s"]
    results["batching_gain"] = {"clients": int(top), "ratio": batched / single if single else None}
    results["overload"] = overload(weights, data, args)
    print("overload", results["overload"], flush=True)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
