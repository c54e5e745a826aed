"""What an interrupted download costs with stirflow.download.fetch and with pooch, over loopback HTTP.

A file of ``--mb`` megabytes is served by the test mirror (tests/http_mirror.py), whose first
answer is cut off after half the body (a connection lost mid-transfer). Each way downloads it with
one retry; printed per way: bytes the server sent, wall time, and the time an already verified
file costs on the next call (stirflow keeps a sidecar of verified md5s, pooch hashes the file again).
The bytes are what a network link pays; the last lines convert the extra bytes of a 2.7 GB
CIFAR-10-C archive cut off half-way into time at a few link speeds (arithmetic, not measured here).

    python benchmarks/download_resume.py --mb 256
    /tmp/venv-pooch/bin/python benchmarks/download_resume.py --mb 256   # with pooch installed
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from http_mirror import serve  # noqa: E402

from stirflow.download import fetch, file_md5  # noqa: E402

NAME = "blob.bin"
CIFAR10_C_BYTES = 19 * 50_000 * 32 * 32 * 3  # CIFAR-10-C.tar's 19 uint8 image arrays (2.7 GiB)


def write_blob(path: Path, mb: int) -> str:
    """``mb`` MiB of seeded random bytes at ``path``; returns their md5."""
    rng, hasher = np.random.default_rng(0), hashlib.md5()
    with open(path, "wb") as f:
        for _ in range(mb):
            chunk = rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
            f.write(chunk)
            hasher.update(chunk)
    return hasher.hexdigest()


def bytes_sent(requests, size: int) -> int:
    """Body bytes the mirror sent: a cut answer half its payload, a ranged one from its offset."""
    total = 0
    for r in requests:
        start = int(r.range[len("bytes="):-1]) if r.status == 206 else 0
        payload = size - start
        total += payload // 2 if r.fault in ("truncate", "stall") else payload
    return total


def with_stirflow(url: str, dest: Path, md5: str) -> None:
    fetch(url, dest, md5=md5, retries=1, progress=False, backoff=0.0)


def with_pooch(url: str, dest: Path, md5: str) -> None:
    import pooch

    # pooch.retrieve never retries; a Pooch with retry_if_failed does (after a 1 s sleep)
    store = pooch.create(path=dest.parent, base_url=url.rsplit("/", 1)[0] + "/", registry={dest.name: f"md5:{md5}"},
                         retry_if_failed=1)
    store.fetch(dest.name, downloader=pooch.HTTPDownloader(chunk_size=1 << 20))  # its default reads 1 kB at a time


def measure(way, root: Path, size: int, md5: str, out: Path) -> dict:
    dest = out / NAME
    with serve(root, faults={NAME: ["truncate"]}) as mirror:
        t0 = time.perf_counter()
        way(f"{mirror}/{NAME}", dest, md5)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        way(f"{mirror}/{NAME}", dest, md5)  # already there and verified
        again = time.perf_counter() - t0
    assert file_md5(dest) == md5
    return {"sent": bytes_sent(mirror.requests, size), "requests": len(mirror.requests), "seconds": first,
            "again": again}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="file size in MiB (the mirror holds it in memory)")
    args = parser.parse_args(argv)
    ways = {"stirflow.download.fetch": with_stirflow}
    try:
        import pooch

        ways[f"pooch {pooch.__version__} Pooch.fetch"] = with_pooch
    except ImportError:
        print("# pooch is not installed: only stirflow's way is measured")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "served"
        root.mkdir()
        md5 = write_blob(root / NAME, args.mb)
        size = (root / NAME).stat().st_size
        t0 = time.perf_counter()
        file_md5(root / NAME)
        md5_rate = size / (time.perf_counter() - t0)
        print(f"# {size / 2**20:.0f} MiB, first answer cut after half its body, one retry; md5 {md5_rate / 1e6:.0f} MB/s")
        print(f"{'way':34s} {'requests':>8s} {'sent/size':>9s} {'seconds':>8s} {'verified again, s':>18s}")
        for k, (label, way) in enumerate(ways.items()):
            out = Path(tmp) / f"out{k}"
            out.mkdir()
            r = measure(way, root, size, md5, out)
            print(f"{label:34s} {r['requests']:8d} {r['sent'] / size:9.2f} {r['seconds']:8.2f} {r['again']:18.3f}")
    extra = CIFAR10_C_BYTES / 2
    print(f"# without resume, CIFAR-10-C ({CIFAR10_C_BYTES / 1e9:.2f} GB) cut half-way sends {extra / 1e9:.2f} GB again: "
          + ", ".join(f"{extra / (rate * 1e6) / 60:.1f} min at {rate} MB/s" for rate in (5, 20, 100)))
    print(f"# hashing it again on every call (no verified-md5 record): {CIFAR10_C_BYTES / md5_rate:.1f} s at the md5 rate above")


if __name__ == "__main__":
    main()
